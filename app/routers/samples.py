"""Samples a run generated, with their weights and per-objective rewards."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy import func, select

from app.deps import MAX_ID, REQUIRE, RunDep, SessionDep
from app.schemas import API_ERRORS, SampleList, error_responses
from app.store.models import Sample
from meal_core.enums import Role

router = APIRouter(
    prefix="/api/runs", tags=["samples"], dependencies=[Depends(REQUIRE[Role.TRAINER])], responses=API_ERRORS
)


@router.get("/{run_id}/samples", response_model=SampleList, responses=error_responses(404))
def run_samples(
    run: RunDep,
    session: SessionDep,
    step: int | None = Query(None, ge=0, le=MAX_ID, description="Only this iteration; default: the latest one."),
    accepted: bool | None = Query(None),
    limit: int = Query(100, ge=1, le=1000),
) -> list[Sample]:
    if step is None:
        step = session.scalar(select(func.max(Sample.step)).where(Sample.run_id == run.id))
    query = select(Sample).where(Sample.run_id == run.id, Sample.step == step)
    if accepted is not None:
        query = query.where(Sample.accepted == accepted)
    return list(session.scalars(query.order_by(Sample.position).limit(limit)))


@router.get("/{run_id}/sample-steps", responses=error_responses(404))
def sample_steps(run: RunDep, session: SessionDep) -> list[int]:
    """The iterations that have samples, for the run page's step slider."""
    return list(session.scalars(select(Sample.step).where(Sample.run_id == run.id).distinct().order_by(Sample.step)))
