"""Metric series for charts, downsampled on the server (per bucket: last, min, max)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query
from sqlalchemy import select

from app.deps import REQUIRE, RunDep, SessionDep, SettingsDep
from app.schemas import API_ERRORS, error_responses
from app.store.metric_store import query_series
from app.store.models import MetricLatest
from meal_core.enums import Role

router = APIRouter(
    prefix="/api/runs", tags=["metrics"], dependencies=[Depends(REQUIRE[Role.TRAINER])], responses=API_ERRORS
)


@router.get("/{run_id}/metrics", responses=error_responses(404))
def run_metrics(
    run: RunDep,
    session: SessionDep,
    settings: SettingsDep,
    keys: str | None = Query(
        None, max_length=20_000, description="Comma-separated metric keys; default: every key of the run."
    ),
    start_step: int | None = Query(None, ge=0, le=2**62),
    end_step: int | None = Query(None, ge=0, le=2**62),
    max_points: int = Query(1000, ge=2, description="At most this many buckets per series (capped by the server)."),
) -> dict[str, Any]:
    if start_step is not None and end_step is not None and start_step > end_step:
        raise HTTPException(status_code=422, detail="start_step must not exceed end_step")
    limit = min(max_points, settings.max_chart_points)
    known = list(
        session.scalars(select(MetricLatest.key).where(MetricLatest.run_id == run.id).order_by(MetricLatest.key))
    )
    wanted = [k.strip() for k in keys.split(",") if k.strip()] if keys else known
    if len(wanted) > settings.max_metric_keys or any(len(k) > 128 for k in wanted):
        raise HTTPException(422, f"keys: at most {settings.max_metric_keys} keys of at most 128 characters")
    return {
        "run_id": run.id,
        "max_points": limit,
        "series": [query_series(session, run.id, key, start_step, end_step, limit).to_json() for key in wanted],
    }


@router.get("/{run_id}/metric-keys", responses=error_responses(404))
def metric_keys(run: RunDep, session: SessionDep) -> list[dict[str, Any]]:
    """Every metric key of the run with its latest step and value."""
    rows = session.execute(
        select(MetricLatest.key, MetricLatest.step, MetricLatest.value)
        .where(MetricLatest.run_id == run.id)
        .order_by(MetricLatest.key)
    )
    return [{"key": key, "step": step, "value": value} for key, step, value in rows]
