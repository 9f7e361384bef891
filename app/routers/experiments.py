"""Experiments: seeds × algorithms × settings launched as one (each run created and queued as POST /api/runs does),
listed, and read back with the variant table, the paired comparison and stability computed from the runs' stored
evaluations and metrics (meal_core.experiment)."""

from __future__ import annotations

import logging
import math
from dataclasses import fields
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from sqlalchemy import case, func, or_, select
from sqlalchemy import delete as sql_delete

from app.config_policy import ConfigNotAllowed, check_config, check_prompts
from app.deps import REQUIRE, IdPath, SessionDep, SettingsDep, TrainerDep
from app.routers.playground import STORE_WAIT_S
from app.routers.runs import _enqueue, check_owner
from app.schemas import (
    API_ERRORS,
    BODY_ERRORS,
    ExperimentCreate,
    ExperimentOut,
    ExperimentRun,
    ExperimentSummary,
    error_responses,
)
from app.store import run_state
from app.store.artifacts import ArtifactError, open_store
from app.store.models import RUN_NAME_LENGTH, Evaluation, Experiment, HeldOutEvaluation, MetricPoint, Run
from app.store.run_delete import delete_run
from meal_core import metric_keys as keys
from meal_core.config import ConfigError
from meal_core.enums import FINISHED_RUN_STATUSES, Role, RunStatus
from meal_core.evaluation import HeldOutResult
from meal_core.experiment import (
    ATTEMPTS,
    SERIES_FAMILIES,
    WALL_MINUTES,
    compute_report,
    parse_experiment,
    report,
    run_figures,
    series_of,
)

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/api/experiments",
    tags=["experiments"],
    dependencies=[Depends(REQUIRE[Role.TRAINER])],
    responses=API_ERRORS,
)
# The metric keys an experiment's figures read; its series (rewards, learned weights) are read by prefix.
FIGURE_KEYS = (
    keys.GENERATED_RESPONSES,
    keys.GENERATED_TOKENS,
    keys.POLICY_STEPS,
    keys.TIME_GENERATE,
    keys.TIME_SCORE,
    keys.TIME_UPDATE,
)


def experiment_errors_as_422(error: ConfigError) -> HTTPException:
    detail = [
        {"loc": ["body", "experiment", *where.split(".")], "msg": message, "type": "config_error"}
        for where, message in error.fields
    ]
    return HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)


def get_experiment(experiment_id: IdPath, session: SessionDep) -> Experiment:
    found = session.get(Experiment, experiment_id)
    if found is None:
        raise HTTPException(status_code=404, detail=f"experiment {experiment_id} not found")
    return found


ExperimentDep = Annotated[Experiment, Depends(get_experiment)]


def _members(session: SessionDep, experiment_id: int) -> list[Run]:
    return list(session.scalars(select(Run).where(Run.experiment_id == experiment_id).order_by(Run.id)))


def _seed(run: Run) -> int | None:
    seed = run.config.get("seed") if isinstance(run.config, dict) else None
    return seed if isinstance(seed, int) else None


def _counts(session: SessionDep, ids: list[int]) -> dict[int, tuple[int, int]]:
    rows = session.execute(
        select(Run.experiment_id, func.count(), func.sum(case((Run.status == RunStatus.SUCCEEDED, 1), else_=0)))
        .where(Run.experiment_id.in_(ids))
        .group_by(Run.experiment_id)
    )
    return {eid: (int(total), int(done or 0)) for eid, total, done in rows}


def summary_of(found: Experiment, counts: tuple[int, int]) -> ExperimentSummary:
    return ExperimentSummary(
        id=found.id,
        name=found.name,
        baseline=found.baseline,
        created_by=found.created_by,
        created_at=found.created_at,
        runs=counts[0],
        finished=counts[1],
    )


def member_name(experiment: str, run: str) -> str:
    """'<experiment> · <variant>/seed-<n>', the experiment's name cut short (…) where the whole would not fit a run
    name; the variant and seed are kept whole (the run's variant column holds the variant too)."""
    room = RUN_NAME_LENGTH - len(run) - len(" · ")
    if len(experiment) > room:
        experiment = experiment[: room - 1] + "…"
    return f"{experiment} · {run}"


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ExperimentOut,
    responses={**BODY_ERRORS, **error_responses(503)},
)
def create_experiment(
    body: ExperimentCreate, session: SessionDep, settings: SettingsDep, user: TrainerDep
) -> ExperimentOut:
    """Expand the grid (refused whole, with the field named, if any run's config is), then create and queue every
    run, seed-major, as POST /api/runs does."""
    try:
        definition = parse_experiment(body.experiment)
        runs = definition.expand()
    except ConfigError as error:
        raise experiment_errors_as_422(error) from None
    for run in runs:
        try:
            check_config(run.config, settings, user.role)
        except ConfigNotAllowed as refused:
            loc = ["body", "experiment", "base", *refused.field.split(".")]
            detail = [{"loc": loc, "msg": f"{run.name}: {refused.message}", "type": "not_allowed"}]
            raise HTTPException(status_code=403 if refused.forbidden else 422, detail=detail) from None
    if definition.held_out is not None:
        try:
            check_prompts("held_out.prompts", definition.held_out.prompts, settings)
        except ConfigNotAllowed as refused:
            detail = [
                {"loc": ["body", "experiment", "held_out", "prompts"], "msg": refused.message, "type": "not_allowed"}
            ]
            raise HTTPException(status_code=422, detail=detail) from None
    baseline = definition.baseline or runs[0].variant
    found = Experiment(
        name=body.name,
        config=definition.model_dump(mode="json"),
        baseline=baseline,
        created_by=user.name,
    )
    session.add(found)
    session.flush()
    created = [
        run_state.create_run(
            session,
            member_name(body.name, run.name),
            run.config_dict(),
            run.config.iterations,
            user.name,
            experiment_id=found.id,
            variant=run.variant,
            tags=body.tags,
            note=body.note,
        )
        for run in runs
    ]
    for queued, row in enumerate(created):
        try:
            _enqueue(session, settings, row)
        except HTTPException as refused:  # the broker is down: the runs after this one would wait for nothing
            for rest in created[queued + 1 :]:
                run_state.enqueue_failed(session, rest.id, "not queued: the broker was unreachable")
            session.commit()
            message = (
                f"experiment {found.id} stored, {len(created) - queued} of its {len(created)} runs not queued "
                f"(kept failed: resume them from the experiment page): {refused.detail}"
            )
            raise HTTPException(status_code=refused.status_code, detail=message) from None
    return experiment_out(session, found, None)


@router.get("", response_model=list[ExperimentSummary])
def list_experiments(session: SessionDep, settings: SettingsDep) -> list[ExperimentSummary]:
    found = list(session.scalars(select(Experiment).order_by(Experiment.id.desc()).limit(settings.max_runs_listed)))
    counts = _counts(session, [e.id for e in found])
    return [summary_of(e, counts.get(e.id, (0, 0))) for e in found]


def run_records(
    session: SessionDep, runs: list[Run]
) -> dict[int, tuple[list[dict[str, Any]], list[tuple[int, str, float]]]]:
    """Each run's evaluations (as EvaluationResult.to_json(), in step order) and the metric points figures read."""
    ids = [r.id for r in runs]
    found: dict[int, tuple[list[dict[str, Any]], list[tuple[int, str, float]]]] = {i: ([], []) for i in ids}
    for row in session.scalars(select(Evaluation).where(Evaluation.run_id.in_(ids)).order_by(Evaluation.step)):
        found[row.run_id][0].append(
            {
                "step": row.step,
                "objectives": row.objectives,
                "points": row.points,
                "hypervolume": row.hypervolume,
                "controllability": row.controllability,
                "controllability_grid": row.controllability_grid,
                "controllability_null": row.controllability_null,
                "degenerate_share": row.degenerate_share or 0.0,
            }
        )
    points = session.execute(
        select(MetricPoint.run_id, MetricPoint.step, MetricPoint.key, MetricPoint.value)
        .where(
            MetricPoint.run_id.in_(ids),
            or_(
                MetricPoint.key.in_(FIGURE_KEYS),
                *(MetricPoint.key.startswith(family.prefix) for family in SERIES_FAMILIES),
            ),
        )
        .order_by(MetricPoint.run_id, MetricPoint.step)
    )
    for run_id, step, key, value in points:
        found[run_id][1].append((step, key, value))
    return found


def held_out_records(session: SessionDep, runs: list[Run]) -> dict[int, dict[str, Any]]:
    """Each run's held-out evaluation (as HeldOutResult.to_json()), for the runs that have one."""
    rows = session.scalars(select(HeldOutEvaluation).where(HeldOutEvaluation.run_id.in_([r.id for r in runs])))
    return {row.run_id: {f.name: getattr(row, f.name) for f in fields(HeldOutResult)} for row in rows}


CURVE_POINTS = 300  # steps per averaged curve the page gets by default: enough for a chart a screen wide


def experiment_out(
    session: SessionDep, found: Experiment, baseline: str | None, curve_points: int = CURVE_POINTS
) -> ExperimentOut:
    members = _members(session, found.id)
    try:
        planned = parse_experiment(found.config).expand()
    except ConfigError:  # stored by a version whose config fields have changed since
        planned = []
    per_variant, differences = compute_report(planned)
    chosen = baseline or found.baseline
    if baseline is not None and planned and baseline not in per_variant:
        detail = [{"loc": ["query", "baseline"], "msg": f"no variant {baseline!r}", "type": "value_error"}]
        raise HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)
    # Every run's records: the table and stability read the finished runs, the curves also those still training.
    records = run_records(session, members)
    finished = [r for r in members if r.status == RunStatus.SUCCEEDED]
    held_out = held_out_records(session, finished)
    results: dict[str, dict[int, dict[str, float]]] = {}
    series: dict[str, dict[int, dict[str, list[tuple[int, float]]]]] = {}
    live_series: dict[str, dict[int, dict[str, list[tuple[int, float]]]]] = {}
    for run in members:
        seed = _seed(run)
        if run.variant is None or seed is None:
            continue
        evaluations, rows = records[run.id]
        live_series.setdefault(run.variant, {})[seed] = series_of(evaluations, rows)
        if run.status != RunStatus.SUCCEEDED:
            continue
        metrics: dict[str, list[float]] = {}
        for _, key, value in rows:
            metrics.setdefault(key, []).append(value)
        figures = run_figures(evaluations, metrics, held_out.get(run.id))
        figures.update({WALL_MINUTES: run.wall_seconds / 60, ATTEMPTS: run.attempts})
        results.setdefault(run.variant, {})[seed] = figures
        series.setdefault(run.variant, {})[seed] = live_series[run.variant][seed]
    return ExperimentOut(
        **summary_of(found, (len(members), sum(r.status == RunStatus.SUCCEEDED for r in members))).model_dump(),
        config=found.config,
        members=[
            ExperimentRun(id=r.id, name=r.name, variant=r.variant, seed=_seed(r), status=RunStatus(r.status))
            for r in members
        ],
        compute=per_variant,
        compute_differences=[
            {"quantity": d.quantity, "values": d.values, "ratio": d.ratio if math.isfinite(d.ratio) else None}
            for d in differences
        ],
        report=report(results, chosen, series, live_series, curve_points).to_json(),
    )


@router.get("/{experiment_id}", response_model=ExperimentOut, responses=error_responses(404))
def get_experiment_out(
    found: ExperimentDep,
    session: SessionDep,
    baseline: str | None = Query(
        None, max_length=200, description="Compare against this variant (default: the experiment's baseline)."
    ),
    curve_points: int = Query(
        CURVE_POINTS, ge=2, le=5000, description="At most this many steps per averaged curve (evenly spaced)."
    ),
) -> ExperimentOut:
    return experiment_out(session, found, baseline, curve_points)


@router.delete(
    "/{experiment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(
        404, 409, 503, descriptions={503: "The artefact store failed part way: the runs deleted so far stay deleted."}
    ),
)
def delete_experiment(found: ExperimentDep, session: SessionDep, settings: SettingsDep, user: TrainerDep) -> Response:
    """The experiment and every run of it, each deleted as DELETE /api/runs/{id} deletes one (its rows and its
    artefacts). Refused whole, before anything is deleted, if the user may not delete one of its runs (403: its
    owner's or an admin's) or one is queued, running or stopping (409). One transaction a run: should the store
    fail part way (503), the runs deleted so far stay deleted and the rest stay with the experiment; repeat."""
    check_owner(found, user, "delete")
    members = _members(session, found.id)
    for run in members:
        check_owner(run, user, "delete")
    active = [f"{run.id} ({run.status})" for run in members if run.status not in FINISHED_RUN_STATUSES]
    if active:
        raise HTTPException(409, f"experiment {found.id} has runs not finished: {', '.join(active)}; stop them first")
    experiment_id, ids = found.id, [run.id for run in members]
    session.expunge_all()  # their rows are deleted below: the session must not refresh or flush them
    store = open_store(settings, retry_s=STORE_WAIT_S)
    for done, run_id in enumerate(ids):
        try:
            delete_run(session, store, run_id)
        except (run_state.TransitionError, ArtifactError) as error:
            session.rollback()
            code = 409 if isinstance(error, run_state.TransitionError) else 503
            detail = (
                f"experiment {experiment_id}: {done} of its {len(ids)} runs deleted, then {error}; repeat to finish"
            )
            raise HTTPException(code, detail) from None
        session.commit()
    session.execute(sql_delete(Experiment).where(Experiment.id == experiment_id))
    session.commit()
    log.info("experiment %s deleted by %s with its runs %s", experiment_id, user.name, ids)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
