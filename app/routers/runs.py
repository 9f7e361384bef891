"""Runs: create (validate, store, enqueue), list, get, stop, resume."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, HTTPException, Query, status
from sqlalchemy import select

from app.config_policy import ConfigNotAllowed, check_config
from app.deps import REQUIRE, RunDep, SessionDep, SettingsDep, TrainerDep
from app.events import current_cursor
from app.schemas import API_ERRORS, BODY_ERRORS, RunCreate, RunOut, RunSummary, error_responses
from app.store import run_state
from app.store.models import MetricLatest, Run
from app.store.queue import BrokerUnavailable, enqueue_training
from meal_core import metric_keys as keys
from meal_core.config import ConfigError, RunConfig, parse_config
from meal_core.enums import Role

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
    run = run_state.create_run(session, body.name, config.model_dump(mode="json"), config.iterations, user.name)
    _enqueue(session, settings, run)
    return run_out(session, run)


@router.get("", response_model=list[RunSummary])
def list_runs(
    session: SessionDep,
    settings: SettingsDep,
    status_filter: str | None = Query(None, alias="status", max_length=16, description="Only runs with this status."),
) -> list[RunSummary]:
    query = select(Run).order_by(Run.id.desc()).limit(settings.max_runs_listed)
    if status_filter:
        query = query.where(Run.status == status_filter)
    runs = list(session.scalars(query))
    positions = run_state.queue_positions(session)
    latest = latest_rewards(session, [run.id for run in runs])  # one query for the table, not one per row
    return [run_summary(session, run, positions, latest[run.id]) for run in runs]


@router.get("/{run_id}", response_model=RunOut, responses=error_responses(404))
def get_run(run: RunDep, session: SessionDep) -> RunOut:
    return run_out(session, run, cursor=True)


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
