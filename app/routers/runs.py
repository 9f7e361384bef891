"""Runs: create (validate, store, enqueue), list and search, get, stop, resume; tag, note, archive and delete.

Changing what a run is (its tags and note, archiving, deleting) is its owner's or an admin's; stopping and resuming
are any trainer's, as before.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from pydantic import AfterValidator, BeforeValidator
from sqlalchemy import select, update

from app.config_policy import ConfigNotAllowed, check_config
from app.deps import REQUIRE, CurrentUser, RunDep, SessionDep, SettingsDep, TrainerDep
from app.events import current_cursor
from app.routers.playground import STORE_WAIT_S
from app.schemas import (
    API_ERRORS,
    BODY_ERRORS,
    MAX_TAG_LENGTH,
    RunCreate,
    RunOut,
    RunSummary,
    RunUpdate,
    error_responses,
    normalize_tag,
)
from app.store import run_state
from app.store.artifacts import ArtifactError, open_store
from app.store.models import MAX_ID, Experiment, MetricLatest, Run
from app.store.queue import BrokerUnavailable, enqueue_training
from app.store.run_delete import delete_run as delete_run_and_artifacts
from app.store.run_search import RunFilter, find_runs
from meal_core import metric_keys as keys
from meal_core.config import ConfigError, RunConfig, parse_config
from meal_core.enums import Role, RunStatus
from meal_core.experiment import ALGORITHMS

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/api/runs", tags=["runs"], dependencies=[Depends(REQUIRE[Role.TRAINER])], responses=API_ERRORS
)


def config_errors_as_422(error: ConfigError) -> HTTPException:
    detail = [
        {"loc": ["body", "config", *where.split(".")], "msg": message, "type": "config_error"}
        for where, message in error.fields
    ]
    return HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)


def allowed_or_refuse(config: RunConfig, settings: SettingsDep, user: TrainerDep) -> None:
    """The server's policy (app/config_policy.py) for this user: a 422 (or 403) naming the field it refuses."""
    try:
        check_config(config, settings, user.role)
    except ConfigNotAllowed as refused:
        loc = ["body", "config", *refused.field.split(".")]
        detail = [{"loc": loc, "msg": refused.message, "type": "not_allowed"}]
        raise HTTPException(status_code=403 if refused.forbidden else 422, detail=detail) from None


def latest_rewards(session: SessionDep, run_ids: list[int]) -> dict[int, dict[str, float]]:
    """Latest value of every reward metric, for many runs in one query."""
    found: dict[int, dict[str, float]] = {run_id: {} for run_id in run_ids}
    rows = session.execute(
        select(MetricLatest.run_id, MetricLatest.key, MetricLatest.value).where(
            MetricLatest.run_id.in_(run_ids), MetricLatest.key.startswith(keys.REWARD.prefix)
        )
    )
    for run_id, key, value in rows:
        found[run_id][key] = value
    return found


def _fill(out: RunSummary, run: Run, positions: dict[int, int], latest: dict[str, float]) -> None:
    out.objectives = run.objective_names
    out.queue_position = positions.get(run.id)
    out.latest = latest


def run_out(session: SessionDep, run: Run, cursor: bool = False) -> RunOut:
    out = RunOut.model_validate(run)
    _fill(out, run, run_state.queue_positions(session), latest_rewards(session, [run.id])[run.id])
    if cursor:
        out.event_cursor = current_cursor(session, run.id).encode()
    return out


def run_summary(session: SessionDep, run: Run, positions: dict[int, int], latest: dict[str, float]) -> RunSummary:
    out = RunSummary.model_validate(run)
    _fill(out, run, positions, latest)
    return out


def _enqueue(session: SessionDep, settings: SettingsDep, run: Run) -> None:
    """Hand the run to the broker; if that fails, the run is kept as failed (and resumable) with the reason."""
    session.commit()  # the worker must find the run queued when the message arrives
    try:
        task_id = enqueue_training(settings.broker_url, run.id)
    except BrokerUnavailable as unavailable:
        run_state.enqueue_failed(session, run.id, str(unavailable))
        session.commit()
        raise HTTPException(status_code=503, detail=f"run {run.id} stored but not queued: {unavailable}") from None
    run_state.set_task_id(session, run.id, task_id)
    session.commit()
    session.refresh(run)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=RunOut,
    responses={**BODY_ERRORS, **error_responses(503)},
)
def create_run(body: RunCreate, session: SessionDep, settings: SettingsDep, user: TrainerDep) -> RunOut:
    try:
        config = parse_config(body.config)
    except ConfigError as error:
        raise config_errors_as_422(error) from None
    allowed_or_refuse(config, settings, user)
    run = run_state.create_run(
        session,
        body.name,
        config.model_dump(mode="json"),
        config.iterations,
        user.name,
        tags=body.tags,
        note=body.note,
    )
    _enqueue(session, settings, run)
    return run_out(session, run)


def _no_nul(value: object) -> object:
    """A filter's text, refused with a NUL (PostgreSQL could not compare it)."""
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("contains a NUL character (\\u0000)")
    return value


def _status_filter(value: object) -> object:
    return None if value == "" else _no_nul(value)  # `?status=`: any status, as for the other filters


def _known_algorithm(value: str | None) -> str | None:
    if value and value not in ALGORITHMS:
        raise ValueError(f"not an algorithm: choose from {', '.join(ALGORITHMS)}")
    return value


def _tag_filter(value: str | None) -> str:
    return normalize_tag(value) if value and value.strip() else ""


# Query parameters: each bounded, a NUL refused by name, an empty one ignored.
SearchText = Annotated[str | None, BeforeValidator(_no_nul), Query(max_length=200)]


@router.get("", response_model=list[RunSummary])
def list_runs(
    session: SessionDep,
    settings: SettingsDep,
    name: Annotated[SearchText, Query(description="A part of the run's name, in any case.")] = None,
    tag: Annotated[
        str | None,
        BeforeValidator(_no_nul),
        AfterValidator(_tag_filter),
        Query(max_length=4 * MAX_TAG_LENGTH, description="One of the run's tags."),
    ] = None,
    status_filter: Annotated[
        RunStatus | None,
        BeforeValidator(_status_filter),
        Query(alias="status", description="Only runs with this status."),
    ] = None,
    algorithm: Annotated[
        str | None,
        BeforeValidator(_no_nul),
        AfterValidator(_known_algorithm),
        Query(max_length=32, description=f"config.algorithm.name: {', '.join(ALGORITHMS)}."),
    ] = None,
    objective: Annotated[SearchText, Query(description="The name of one of the run's objectives.")] = None,
    experiment: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Only the runs of this experiment (its id).")
    ] = None,
    archived: Annotated[bool, Query(description="Include archived runs (left out by default).")] = False,
) -> list[RunSummary]:
    where = RunFilter(
        name=name or None,
        tag=tag or None,
        status=status_filter,
        algorithm=algorithm or None,
        objective=objective or None,
        experiment_id=experiment,
        archived=archived,
    )
    runs = find_runs(session, where, settings.max_runs_listed)
    positions = run_state.queue_positions(session)
    latest = latest_rewards(session, [run.id for run in runs])  # one query for the table, not one per row
    return [run_summary(session, run, positions, latest[run.id]) for run in runs]


@router.get("/{run_id}", response_model=RunOut, responses=error_responses(404))
def get_run(run: RunDep, session: SessionDep) -> RunOut:
    return run_out(session, run, cursor=True)


def check_owner(owned: Run | Experiment, user: CurrentUser, doing: str) -> None:
    """A run's tags, note, archiving and deletion, and an experiment's deletion, are its creator's, or an admin's
    (403 otherwise)."""
    if owned.created_by != user.name and not user.can(Role.ADMIN):
        owner = owned.created_by or "nobody"
        raise HTTPException(
            403, f"{owned.__tablename__} {owned.id} is {owner}'s: only {owner} or an admin may {doing} it"
        )


@router.patch("/{run_id}", response_model=RunOut, responses={**BODY_ERRORS, **error_responses(404)})
def update_run(body: RunUpdate, run: RunDep, session: SessionDep, user: TrainerDep) -> RunOut:
    """Replace the run's tags (the whole list) and/or its note."""
    check_owner(run, user, "edit")
    values = body.model_dump(exclude_none=True)
    edited = session.execute(update(Run).where(Run.id == run.id).values(**values, version=Run.version + 1))
    if not edited.rowcount:  # type: ignore[attr-defined]
        raise HTTPException(404, f"run {run.id} not found")  # deleted meanwhile
    session.commit()
    session.refresh(run)
    return run_out(session, run)


@router.post("/{run_id}/archive", response_model=RunOut, responses=error_responses(404, 409))
def archive_run(run: RunDep, session: SessionDep, user: TrainerDep) -> RunOut:
    """Out of the runs list (`GET /api/runs?archived=true` still lists it); a queued or running run is refused."""
    check_owner(run, user, "archive")
    try:
        run_state.archive(session, run.id)
    except run_state.TransitionError as error:
        raise HTTPException(status_code=409, detail=str(error)) from None
    session.commit()
    session.refresh(run)
    return run_out(session, run)


@router.post("/{run_id}/unarchive", response_model=RunOut, responses=error_responses(404))
def unarchive_run(run: RunDep, session: SessionDep, user: TrainerDep) -> RunOut:
    check_owner(run, user, "unarchive")
    run_state.unarchive(session, run.id)
    session.commit()
    session.refresh(run)
    return run_out(session, run)


@router.delete(
    "/{run_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(
        404, 409, 503, descriptions={503: "The artefact store could not be reached: nothing was deleted."}
    ),
)
def delete_run(run: RunDep, session: SessionDep, settings: SettingsDep, user: TrainerDep) -> Response:
    """The run, every row that refers to it (metrics, samples, evaluations, playground generations, exports, the
    review items showing its generations) and its artefacts (config, checkpoints, exports in the store). Refused
    while it is queued or running (409); if the artefact store fails, nothing is deleted (503)."""
    check_owner(run, user, "delete")
    run_id = run.id
    session.expunge(run)  # its row is deleted below: the session must not try to refresh or flush it
    try:
        deleted = delete_run_and_artifacts(session, open_store(settings, retry_s=STORE_WAIT_S), run_id)
    except run_state.TransitionError as error:
        session.rollback()
        raise HTTPException(status_code=409, detail=str(error)) from None
    except ArtifactError as error:
        session.rollback()
        raise HTTPException(status_code=503, detail=f"run {run_id} not deleted: {error}") from error
    session.commit()
    log.info("run %s deleted by %s: %s", run_id, user.name, deleted)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{run_id}/stop", response_model=RunOut, responses=error_responses(404, 409))
def stop_run(run: RunDep, session: SessionDep, user: TrainerDep) -> RunOut:
    try:
        run_state.request_stop(session, run.id, user.name)
    except run_state.TransitionError as error:
        raise HTTPException(status_code=409, detail=str(error)) from None
    session.commit()
    session.refresh(run)
    return run_out(session, run)


@router.post("/{run_id}/resume", response_model=RunOut, responses=error_responses(404, 409, 422, 503))
def resume_run(run: RunDep, session: SessionDep, settings: SettingsDep, user: TrainerDep) -> RunOut:
    """Back in the queue, if the config is still one this server allows this user (a run stored before the path
    policy was what it is now may name the server's own files)."""
    try:
        config = run.run_config()
    except ConfigError:
        config = None  # no longer readable: the worker fails it with the reason, as before
    if config is not None:
        allowed_or_refuse(config, settings, user)
    try:
        run_state.requeue(session, run.id, user.name)
    except run_state.TransitionError as error:
        raise HTTPException(status_code=409, detail=str(error)) from None
    session.refresh(run)
    _enqueue(session, settings, run)
    return run_out(session, run)
