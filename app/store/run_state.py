"""The run life cycle, in one place: queued → running → stopping → succeeded | failed | stopped.

Every transition is one conditional UPDATE, so two actors (two workers, a worker and the API, the stale-run
sweeper) can never both win: a redelivered task finds its run no longer queued and does nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.store.models import ModelExport, PlaygroundGeneration, Run, utcnow
from app.store.sql import storable_text
from meal_core.enums import (
    FINISHED_RUN_STATUSES,
    HELD_RUN_STATUSES,
    RESUMABLE_RUN_STATUSES,
    JobStatus,
    RunPhase,
    RunStatus,
)

#: A run that no worker holds has no phase: every transition out of running or stopping writes this.
NO_PHASE: dict[str, Any] = {"phase": None, "phase_done": 0, "phase_total": 0, "phase_eta_seconds": None}


class TransitionError(RuntimeError):
    """The run is not in a state that allows this action."""


def _transition(session: Session, run_id: int, allowed: Collection[RunStatus], **values: Any) -> bool:
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.in_(sorted(allowed)))
        .values(version=Run.version + 1, **values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def create_run(
    session: Session,
    name: str,
    config: dict[str, Any],
    total_iterations: int,
    user: str | None,
    experiment_id: int | None = None,
    variant: str | None = None,
    tags: list[str] | None = None,
    note: str = "",
) -> Run:
    run = Run(
        name=name,
        config=config,
        total_iterations=total_iterations,
        created_by=user,
        status=RunStatus.QUEUED,
        experiment_id=experiment_id,
        variant=variant,
        tags=tags or [],
        note=note,
    )
    session.add(run)
    session.flush()
    return run


def set_task_id(session: Session, run_id: int, task_id: str) -> None:
    session.execute(update(Run).where(Run.id == run_id).values(task_id=task_id))


def request_stop(session: Session, run_id: int, user: str | None = None) -> str:
    """A queued run stops at once; a running one is asked to checkpoint and stop. Returns the new status."""
    if _transition(
        session, run_id, (RunStatus.QUEUED,), status=RunStatus.STOPPED, finished_at=utcnow(), stopped_by=user
    ):
        return RunStatus.STOPPED
    if _transition(
        session, run_id, (RunStatus.RUNNING,), status=RunStatus.STOPPING, stop_requested=True, stopped_by=user
    ):
        return RunStatus.STOPPING
    status = session.scalar(select(Run.status).where(Run.id == run_id))
    if status == RunStatus.STOPPING:
        return status
    raise TransitionError(f"run {run_id} is {status}; only queued or running runs can be stopped")


def requeue(session: Session, run_id: int, user: str | None = None) -> None:
    """Resume a failed or stopped run: back in the queue, continuing from its last checkpoint (and back in the runs
    list, if it was archived)."""
    if not _transition(
        session,
        run_id,
        RESUMABLE_RUN_STATUSES,
        status=RunStatus.QUEUED,
        archived=False,
        resumed_by=user,
        stop_requested=False,
        error=None,
        traceback=None,
        finished_at=None,
        worker=None,
        **NO_PHASE,
    ):
        status = session.scalar(select(Run.status).where(Run.id == run_id))
        raise TransitionError(f"run {run_id} is {status}; only failed or stopped runs can be resumed")


def archive(session: Session, run_id: int) -> None:
    """Out of the runs list (until unarchived); only a finished run, so that nothing in progress is hidden. One
    conditional UPDATE: a run resumed meanwhile is refused, never archived while queued."""
    if not _transition(session, run_id, FINISHED_RUN_STATUSES, archived=True):
        status = session.scalar(select(Run.status).where(Run.id == run_id))
        raise TransitionError(f"run {run_id} is {status}: stop it, or let it finish, before archiving it")


def unarchive(session: Session, run_id: int) -> None:
    """Back in the runs list, whatever its status."""
    _transition(session, run_id, set(RunStatus), archived=False)


def enqueue_failed(session: Session, run_id: int, error: str) -> bool:
    """The broker did not take the run's message: the queued run becomes failed, and so resumable, with the reason.

    A transition like any other (the version moves, so event streams report it); False if the run is no longer
    queued, e.g. an older message for it reached a worker meanwhile.
    """
    return _transition(session, run_id, (RunStatus.QUEUED,), status=RunStatus.FAILED, error=error, finished_at=utcnow())


def claim(session: Session, run_id: int, worker: str) -> bool:
    """A worker takes a queued run. False if it is not queued (stopped meanwhile, or already taken)."""
    now = utcnow()
    return _transition(
        session,
        run_id,
        (RunStatus.QUEUED,),
        status=RunStatus.RUNNING,
        worker=worker,
        started_at=now,
        heartbeat_at=now,
        attempts=Run.attempts + 1,
    )


def heartbeat(session: Session, run_id: int, worker: str) -> None:
    session.execute(
        update(Run).where(Run.id == run_id, Run.worker == worker, Run.status.in_(HELD)).values(heartbeat_at=utcnow())
    )


def report_progress(session: Session, run_id: int, iteration: int, total: int, eta_seconds: float | None) -> None:
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(iteration=iteration, total_iterations=total, eta_seconds=eta_seconds, version=Run.version + 1)
    )


def report_phase(
    session: Session, run_id: int, phase: RunPhase, done: int, total: int, eta_seconds: float | None
) -> None:
    """What the run's worker does now. Only while a worker holds the run: a late write after the run ended (or was
    failed as stale) must not bring a phase back."""
    session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.in_(HELD))
        .values(phase=phase, phase_done=done, phase_total=total, phase_eta_seconds=eta_seconds, version=Run.version + 1)
    )


def record_reproducibility(session: Session, run_id: int, record: dict[str, Any]) -> None:
    session.execute(update(Run).where(Run.id == run_id).values(reproducibility=record, version=Run.version + 1))


def stop_requested(session: Session, run_id: int) -> bool:
    return bool(session.scalar(select(Run.stop_requested).where(Run.id == run_id)))


def finish(
    session: Session, run_id: int, worker: str, status: str, error: str | None = None, traceback: str | None = None
) -> bool:
    """The worker's last word; ignored if the run was meanwhile failed as stale and maybe taken by another."""
    now = utcnow()
    started = session.scalar(select(Run.started_at).where(Run.id == run_id))
    return bool(
        session.execute(
            update(Run)
            .where(Run.id == run_id, Run.worker == worker, Run.status.in_(HELD))
            .values(
                status=status,
                wall_seconds=Run.wall_seconds + attempt_seconds(started, now),
                # Exception texts can quote model output.
                error=storable_text(error) if error is not None else None,
                traceback=storable_text(traceback) if traceback is not None else None,
                finished_at=now,
                eta_seconds=None,
                stop_requested=False,
                version=Run.version + 1,
                **NO_PHASE,
            )
        ).rowcount  # type: ignore[attr-defined]
    )


HELD = sorted(HELD_RUN_STATUSES)  # a list: SQL IN takes a sequence


def fail_stale_runs(session: Session, timeout: timedelta, now: datetime | None = None) -> list[int]:
    """Runs whose worker vanished (no heartbeat within `timeout`) become failed, and so resumable."""
    cutoff = (now or utcnow()) - timeout
    stale = session.scalars(
        select(Run.id).where(Run.status.in_(HELD), func.coalesce(Run.heartbeat_at, Run.started_at) < cutoff)
    )
    return _fail_live(session, stale, f"worker vanished: no heartbeat for {int(timeout.total_seconds())} s")


def fail_runs_of_worker(session: Session, worker: str, reason: str) -> list[int]:
    """The worker `worker` (host:pid) is known dead: its runs fail now, resumable, instead of once their heartbeat
    is overdue."""
    held = session.scalars(select(Run.id).where(Run.worker == worker, Run.status.in_(HELD)))
    return _fail_live(session, held, reason)


def attempt_seconds(started: datetime | None, ended: datetime | None) -> float:
    """An attempt's wall seconds, from its claim; 0 where either end is unknown."""
    return max((ended - started).total_seconds(), 0.0) if started and ended else 0.0


def _fail_live(session: Session, run_ids: Iterable[int], reason: str) -> list[int]:
    """Each run still running or stopping fails, resumable from its last checkpoint; its attempt counts up to its
    worker's last heartbeat, the last sign that it was working."""
    failed = list(run_ids)
    for run_id in failed:
        started, last_seen = session.execute(select(Run.started_at, Run.heartbeat_at).where(Run.id == run_id)).one()
        _transition(
            session,
            run_id,
            HELD,
            status=RunStatus.FAILED,
            wall_seconds=Run.wall_seconds + attempt_seconds(started, last_seen),
            finished_at=utcnow(),
            stop_requested=False,
            error=f"{reason}; resume to continue from the last checkpoint",
            **NO_PHASE,
        )
    return failed


def fail_stale_generations(session: Session, timeout: timedelta, now: datetime | None = None) -> list[int]:
    """Playground generations still running `timeout` after they were asked for: their worker died with them
    (a generation takes seconds). They fail, so the page stops waiting; asking again queues a new one."""
    return _fail_stale_jobs(session, PlaygroundGeneration, timeout, now, "the playground worker vanished")


def fail_stale_exports(session: Session, timeout: timedelta, now: datetime | None = None) -> list[int]:
    """Model exports still running `timeout` after they were asked for (a 7B merge takes minutes, not hours)."""
    return _fail_stale_jobs(session, ModelExport, timeout, now, "the exporting worker vanished")


Job = TypeVar("Job", PlaygroundGeneration, ModelExport)


def claim_job(session: Session, job: type[Job], job_id: int) -> Job | None:
    """A playground generation or export, queued → running by one conditional UPDATE (a redelivered message, or a
    second worker, finds nothing to do): the row, or None if it was not queued."""
    claimed = session.execute(
        update(job).where(job.id == job_id, job.status == JobStatus.QUEUED).values(status=JobStatus.RUNNING)
    ).rowcount  # type: ignore[attr-defined]
    return session.get(job, job_id) if claimed else None


def _fail_stale_jobs(
    session: Session,
    job: type[PlaygroundGeneration] | type[ModelExport],
    timeout: timedelta,
    now: datetime | None,
    reason: str,
) -> list[int]:
    cutoff = (now or utcnow()) - timeout
    stale = list(session.scalars(select(job.id).where(job.status == JobStatus.RUNNING, job.created_at < cutoff)))
    if stale:
        session.execute(
            update(job)
            .where(job.id.in_(stale), job.status == JobStatus.RUNNING)
            .values(
                status=JobStatus.FAILED,
                finished_at=utcnow(),
                error=f"{reason}: still running after {int(timeout.total_seconds())} s",
            )
        )
    return stale


def queue_positions(session: Session) -> dict[int, int]:
    """1-based position of each queued run, oldest first."""
    queued = session.scalars(select(Run.id).where(Run.status == RunStatus.QUEUED).order_by(Run.created_at, Run.id))
    return {run_id: position for position, run_id in enumerate(queued, start=1)}
