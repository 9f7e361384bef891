"""The run life cycle (app/run_state.py) on SQLite and PostgreSQL: every transition is one conditional UPDATE."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import update

from app.store import run_state
from app.store.db import session_scope
from app.store.models import ModelExport, PlaygroundGeneration, Run
from meal_core.enums import JobStatus, RunPhase, RunStatus

TIMEOUT = timedelta(seconds=120)


def new_run(url: str, name: str = "r") -> int:
    with session_scope(url) as session:
        return run_state.create_run(session, name, {"iterations": 5}, 5, "tester").id


def load(url: str, run_id: int) -> Run:
    with session_scope(url) as session:
        run = session.get(Run, run_id)
        assert run is not None
        return run


def claimed_run(url: str, worker: str = "w1") -> int:
    run_id = new_run(url)
    with session_scope(url) as session:
        assert run_state.claim(session, run_id, worker)
    return run_id


def set_heartbeat(url: str, run_id: int, when: datetime) -> None:
    with session_scope(url) as session:
        session.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=when))


def test_claim_is_exclusive(database_url: str) -> None:
    run_id = new_run(database_url)
    with session_scope(database_url) as session:
        assert run_state.claim(session, run_id, "w1") is True
    with session_scope(database_url) as session:
        assert run_state.claim(session, run_id, "w2") is False
    run = load(database_url, run_id)
    assert (run.status, run.worker, run.attempts) == (RunStatus.RUNNING, "w1", 1)
    assert run.started_at is not None and run.heartbeat_at is not None


def test_claim_of_a_stopped_run_does_nothing(database_url: str) -> None:
    run_id = new_run(database_url)
    with session_scope(database_url) as session:
        assert run_state.request_stop(session, run_id) == RunStatus.STOPPED
    with session_scope(database_url) as session:
        assert run_state.claim(session, run_id, "w1") is False
    run = load(database_url, run_id)
    assert (run.status, run.attempts, run.worker) == (RunStatus.STOPPED, 0, None)


def test_finish_only_by_the_claiming_worker(database_url: str) -> None:
    run_id = claimed_run(database_url, "w1")
    before = load(database_url, run_id)
    with session_scope(database_url) as session:
        assert run_state.finish(session, run_id, "w2", RunStatus.SUCCEEDED) is False
    assert load(database_url, run_id).status == RunStatus.RUNNING
    with session_scope(database_url) as session:
        assert run_state.finish(session, run_id, "w1", RunStatus.SUCCEEDED) is True
    run = load(database_url, run_id)
    assert run.status == RunStatus.SUCCEEDED
    assert run.finished_at is not None and run.version > before.version
    with session_scope(database_url) as session:  # the last word is said once
        assert run_state.finish(session, run_id, "w1", RunStatus.FAILED, "late") is False
    assert load(database_url, run_id).status == RunStatus.SUCCEEDED


def test_heartbeat_only_from_the_claiming_worker(database_url: str) -> None:
    run_id = claimed_run(database_url, "w1")
    old = datetime.now(UTC) - timedelta(hours=1)
    set_heartbeat(database_url, run_id, old)
    with session_scope(database_url) as session:
        run_state.heartbeat(session, run_id, "w2")
    assert load(database_url, run_id).heartbeat_at == old
    with session_scope(database_url) as session:
        run_state.heartbeat(session, run_id, "w1")
    beat = load(database_url, run_id).heartbeat_at
    assert beat is not None and beat > old + timedelta(minutes=59)


def test_stop_transitions(database_url: str) -> None:
    queued = new_run(database_url)
    with session_scope(database_url) as session:
        assert run_state.request_stop(session, queued) == RunStatus.STOPPED
    with session_scope(database_url) as session, pytest.raises(run_state.TransitionError, match="stopped"):
        run_state.request_stop(session, queued)

    running = claimed_run(database_url)
    with session_scope(database_url) as session:
        assert run_state.request_stop(session, running) == RunStatus.STOPPING
    run = load(database_url, running)
    assert (run.status, run.stop_requested) == (RunStatus.STOPPING, True)
    with session_scope(database_url) as session:  # asking again is harmless
        assert run_state.request_stop(session, running) == RunStatus.STOPPING
        assert run_state.stop_requested(session, running) is True
    with session_scope(database_url) as session:
        assert run_state.finish(session, running, "w1", RunStatus.STOPPED)
    assert load(database_url, running).stop_requested is False


def test_requeue_only_failed_or_stopped(database_url: str) -> None:
    for status in (RunStatus.QUEUED, RunStatus.RUNNING):
        run_id = new_run(database_url) if status == RunStatus.QUEUED else claimed_run(database_url)
        with session_scope(database_url) as session, pytest.raises(run_state.TransitionError, match=status):
            run_state.requeue(session, run_id)
        assert load(database_url, run_id).status == status


def test_enqueue_failed_is_a_visible_transition_of_a_queued_run(database_url: str) -> None:
    run_id = new_run(database_url)
    version = load(database_url, run_id).version
    with session_scope(database_url) as session:
        assert run_state.enqueue_failed(session, run_id, "broker unavailable: refused") is True
    run = load(database_url, run_id)
    assert (run.status, run.error) == (RunStatus.FAILED, "broker unavailable: refused")
    assert run.finished_at is not None and run.version > version, "event streams must see the change"
    # A run that a worker took meanwhile (from an older message) is left alone.
    running = claimed_run(database_url)
    with session_scope(database_url) as session:
        assert run_state.enqueue_failed(session, running, "broker unavailable") is False
    assert load(database_url, running).status == RunStatus.RUNNING


def test_stale_running_run_fails_and_can_be_resumed(database_url: str) -> None:
    stale, fresh = claimed_run(database_url, "lost-worker"), claimed_run(database_url, "live-worker")
    with session_scope(database_url) as session:
        run_state.report_phase(session, stale, RunPhase.EVALUATING, 96, 264, 720.0)
    assert load(database_url, stale).phase == RunPhase.EVALUATING
    set_heartbeat(database_url, stale, datetime.now(UTC) - TIMEOUT - timedelta(seconds=5))
    with session_scope(database_url) as session:
        failed = run_state.fail_stale_runs(session, TIMEOUT)
    assert stale in failed and fresh not in failed
    run = load(database_url, stale)
    assert run.status == RunStatus.FAILED
    assert (run.phase, run.phase_done, run.phase_total, run.phase_eta_seconds) == (None, 0, 0, None), "no worker"
    assert run.error is not None and "worker vanished" in run.error
    assert run.finished_at is not None and run.stop_requested is False
    assert load(database_url, fresh).status == RunStatus.RUNNING

    with session_scope(database_url) as session:  # the sweep does not fail a run twice
        assert stale not in run_state.fail_stale_runs(session, TIMEOUT)
    with session_scope(database_url) as session:  # the vanished worker's late word is ignored
        assert run_state.finish(session, stale, "lost-worker", RunStatus.SUCCEEDED) is False

    with session_scope(database_url) as session:
        run_state.requeue(session, stale)
    run = load(database_url, stale)
    assert (run.status, run.error, run.finished_at, run.worker) == (RunStatus.QUEUED, None, None, None)
    with session_scope(database_url) as session:
        assert run_state.claim(session, stale, "new-worker")
    run = load(database_url, stale)
    assert (run.status, run.worker, run.attempts) == (RunStatus.RUNNING, "new-worker", 2)


def test_wall_seconds_sum_every_attempt(database_url: str) -> None:
    """Claim to finish, and for a worker that vanished claim to its last heartbeat (not to the sweep)."""
    run_id = claimed_run(database_url, "lost-worker")
    now = datetime.now(UTC)
    with session_scope(database_url) as session:
        session.execute(update(Run).where(Run.id == run_id).values(started_at=now - timedelta(seconds=1000)))
    set_heartbeat(database_url, run_id, now - timedelta(seconds=1000 - 300))
    with session_scope(database_url) as session:
        assert run_state.fail_stale_runs(session, TIMEOUT) == [run_id]
    assert load(database_url, run_id).wall_seconds == pytest.approx(300)
    with session_scope(database_url) as session:
        run_state.requeue(session, run_id)
        assert run_state.claim(session, run_id, "w2")
        session.execute(update(Run).where(Run.id == run_id).values(started_at=now - timedelta(seconds=60)))
    with session_scope(database_url) as session:
        assert run_state.finish(session, run_id, "w2", RunStatus.SUCCEEDED)
    second = (datetime.now(UTC) - (now - timedelta(seconds=60))).total_seconds()  # 60 and this test's own time
    run = load(database_url, run_id)
    assert run.attempts == 2 and 300 + 60 <= run.wall_seconds <= 300 + second


def test_a_stopping_run_without_heartbeat_is_stale_too(database_url: str) -> None:
    run_id = claimed_run(database_url)
    with session_scope(database_url) as session:
        run_state.request_stop(session, run_id)
    set_heartbeat(database_url, run_id, datetime.now(UTC) - timedelta(hours=2))
    with session_scope(database_url) as session:
        assert run_id in run_state.fail_stale_runs(session, TIMEOUT)
    run = load(database_url, run_id)
    assert (run.status, run.stop_requested) == (RunStatus.FAILED, False)


@pytest.mark.parametrize("offset_hours", [-8, 5, 14])
def test_stale_cutoff_is_independent_of_time_zones(database_url: str, offset_hours: int) -> None:
    """`now` in any zone means the same instant; SQLite, which stores no zone, must compare in UTC too."""
    zone = timezone(timedelta(hours=offset_hours))
    fresh = claimed_run(database_url)
    old = claimed_run(database_url)
    set_heartbeat(database_url, old, (datetime.now(UTC) - timedelta(minutes=10)).astimezone(zone))
    with session_scope(database_url) as session:
        failed = run_state.fail_stale_runs(session, TIMEOUT, now=datetime.now(zone))
    assert old in failed
    assert fresh not in failed
    assert load(database_url, fresh).status == RunStatus.RUNNING


def test_datetimes_come_back_aware_in_utc(database_url: str) -> None:
    run_id = claimed_run(database_url)
    set_heartbeat(database_url, run_id, datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))))
    run = load(database_url, run_id)
    for value in (run.created_at, run.started_at, run.heartbeat_at):
        assert value is not None and value.utcoffset() == timedelta(0), value
    assert run.heartbeat_at == datetime(2030, 1, 2, 1, 4, 5, tzinfo=UTC)


def test_queue_positions_oldest_first(database_url: str) -> None:
    with session_scope(database_url) as session:
        before = run_state.queue_positions(session)
    a, b, c = new_run(database_url), new_run(database_url), new_run(database_url)
    with session_scope(database_url) as session:
        run_state.request_stop(session, b)
    with session_scope(database_url) as session:
        positions = run_state.queue_positions(session)
    assert b not in positions
    assert positions[a] == len(before) + 1 and positions[c] == len(before) + 2
    assert sorted(positions.values()) == list(range(1, len(positions) + 1))


def test_a_playground_generation_whose_worker_died_fails(database_url: str) -> None:
    """A generation takes seconds: one still running long after it was asked for lost its worker."""
    run_id = new_run(database_url)
    now = datetime.now(UTC)
    ids = {}
    with session_scope(database_url) as session:
        for name, status, age in (
            ("dead", JobStatus.RUNNING, TIMEOUT + timedelta(seconds=5)),
            ("young", JobStatus.RUNNING, timedelta(seconds=5)),
            ("waiting", JobStatus.QUEUED, TIMEOUT * 3),  # its worker may be busy or restarting: it keeps waiting
        ):
            generation = PlaygroundGeneration(
                run_id=run_id,
                created_by="t",
                prompt="p",
                weights=[[1, 0]],
                seed=0,
                temperature=0.7,
                max_new_tokens=4,
                samples=1,
                status=status,
                created_at=now - age,
            )
            session.add(generation)
            session.flush()
            ids[name] = generation.id
    with session_scope(database_url) as session:
        assert run_state.fail_stale_generations(session, TIMEOUT) == [ids["dead"]]
    with session_scope(database_url) as session:
        status = {name: session.get(PlaygroundGeneration, i) for name, i in ids.items()}
        assert {name: g.status for name, g in status.items() if g} == {
            "dead": JobStatus.FAILED,
            "young": JobStatus.RUNNING,
            "waiting": JobStatus.QUEUED,
        }
        dead = status["dead"]
        assert dead is not None and dead.error is not None and "vanished" in dead.error and dead.finished_at
    with session_scope(database_url) as session:
        assert run_state.fail_stale_generations(session, TIMEOUT) == []


def test_a_model_export_whose_worker_died_fails(database_url: str) -> None:
    run_id = new_run(database_url)
    now = datetime.now(UTC)
    ids = {}
    with session_scope(database_url) as session:
        for name, status, age in (
            ("dead", JobStatus.RUNNING, TIMEOUT + timedelta(seconds=5)),
            ("young", JobStatus.RUNNING, timedelta(seconds=5)),
            ("done", JobStatus.SUCCEEDED, TIMEOUT * 3),
        ):
            export = ModelExport(run_id=run_id, created_by="t", weights=[1.0, 0.0], status=status, created_at=now - age)
            session.add(export)
            session.flush()
            ids[name] = export.id
    with session_scope(database_url) as session:
        assert run_state.fail_stale_exports(session, TIMEOUT) == [ids["dead"]]
        assert run_state.fail_stale_generations(session, TIMEOUT) == []  # the tables are swept apart
    with session_scope(database_url) as session:
        found = {name: session.get(ModelExport, i) for name, i in ids.items()}
        assert {name: e.status for name, e in found.items() if e} == {
            "dead": JobStatus.FAILED,
            "young": JobStatus.RUNNING,
            "done": JobStatus.SUCCEEDED,
        }
        dead = found["dead"]
        assert dead is not None and dead.error is not None and "exporting worker vanished" in dead.error


def test_a_job_is_claimed_once(database_url: str) -> None:
    """A redelivered playground or export message (or a second worker) finds its job running: nothing to do."""
    run_id = new_run(database_url)
    with session_scope(database_url) as session:
        export = ModelExport(run_id=run_id, created_by="t", weights=[1.0, 0.0], status=JobStatus.QUEUED)
        done = ModelExport(run_id=run_id, created_by="t", weights=[1.0, 0.0], status=JobStatus.SUCCEEDED)
        session.add_all([export, done])
        session.flush()
        export_id, done_id = export.id, done.id
    with session_scope(database_url) as session:
        claimed = run_state.claim_job(session, ModelExport, export_id)
        assert claimed is not None and claimed.status == JobStatus.RUNNING
    with session_scope(database_url) as session:
        assert run_state.claim_job(session, ModelExport, export_id) is None
        assert run_state.claim_job(session, ModelExport, done_id) is None
        assert run_state.claim_job(session, ModelExport, 10**9) is None
