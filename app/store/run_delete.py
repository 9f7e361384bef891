"""Deleting a run: its row, every row that refers to it, and its artefacts — all of it, or (on a failure) none of
its rows.

The order, within one transaction that the caller commits only once `delete_run` has returned:

1. the gate: one conditional UPDATE on the run's status (finished, and no export or playground generation of it
   waiting or in progress). It takes the run row's lock (PostgreSQL) or the database's write lock (SQLite), so a
   resume racing the delete either came first (and the delete is refused, 409) or waits and then finds no run;
2. the rows: every table with a `run_id` column, found in the models' metadata (a table added later is included
   without an edit here), the review items that show one of the run's generations, then the run;
3. the artefacts (`ArtifactStore.delete_run`): config, checkpoints and exports in the store, and this machine's
   cached copy. Other machines' workers drop theirs when they next start a task (`forget_deleted_runs`).

Should the store fail (unreachable: ArtifactError), the caller rolls back: the rows stay, and the run is still
listed, with whatever of its artefacts the store kept (a half-deleted checkpoint is never visible: markers go
first), until a repeated delete finishes. The other order could leave artefacts no row points to, that nobody
would find again; this one never leaves a row without its run, and the database never forgets what the store
still holds.
"""

from __future__ import annotations

from sqlalchemy import Table, delete, exists, select, update
from sqlalchemy.orm import Session

from app.store.artifacts import ArtifactStore
from app.store.models import Base, ModelExport, PlaygroundGeneration, ReviewItem, Run
from app.store.run_state import TransitionError
from app.store.sql import json_list_holds
from meal_core.enums import FINISHED_RUN_STATUSES, PENDING_JOB_STATUSES

PENDING_JOBS = sorted(PENDING_JOB_STATUSES)  # a list: SQL IN takes a sequence


def run_tables() -> list[Table]:
    """Every table whose rows belong to a run (a `run_id` column), children before parents."""
    return [table for table in reversed(Base.metadata.sorted_tables) if "run_id" in table.c]


def delete_run(session: Session, store: ArtifactStore, run_id: int) -> dict[str, int]:
    """Delete the run (see the module's docstring for the order); returns the rows deleted per table. Raises
    TransitionError while the run is active or a job of it pending, ArtifactError if the store fails; either way
    the caller rolls back."""
    _gate(session, run_id)
    deleted: dict[str, int] = {}
    review_items = json_list_holds(session, ReviewItem.responses, run_id, key="run_id")
    deleted[ReviewItem.__tablename__] = _count(session.execute(delete(ReviewItem).where(review_items)))
    for table in run_tables():
        deleted[table.name] = _count(session.execute(delete(table).where(table.c.run_id == run_id)))
    deleted[Run.__tablename__] = _count(session.execute(delete(Run).where(Run.id == run_id)))
    session.flush()
    store.delete_run(run_id)
    return deleted


def forget_deleted_runs(session: Session, store: ArtifactStore) -> list[int]:
    """Drop this machine's cached copies of runs deleted on another machine (delete_run clears the store and only
    the deleting machine's cache); returns their ids. The cache is listed before the rows are read, and a run's
    row exists before any folder of it, so a run created meanwhile is never taken for a deleted one."""
    cached = store.cached_runs()
    if not cached:
        return []
    existing = set(session.scalars(select(Run.id).where(Run.id.in_(cached))))
    gone = [run_id for run_id in cached if run_id not in existing]
    for run_id in gone:
        store.forget(run_id)
    return gone


def _gate(session: Session, run_id: int) -> None:
    pending = [
        exists().where(job.run_id == run_id, job.status.in_(PENDING_JOBS))
        for job in (ModelExport, PlaygroundGeneration)
    ]
    locked = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.in_(sorted(FINISHED_RUN_STATUSES)), ~pending[0], ~pending[1])
        .values(version=Run.version + 1)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if locked:
        return
    status = session.scalar(select(Run.status).where(Run.id == run_id))
    if status in FINISHED_RUN_STATUSES:
        raise TransitionError(
            f"run {run_id} has an export or a playground generation waiting or in progress: delete it once done"
        )
    raise TransitionError(f"run {run_id} is {status}: stop it, or let it finish, before deleting it")


def _count(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
