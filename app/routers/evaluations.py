"""Evaluations: the Pareto front points, hypervolume, controllability and probe of each evaluation."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import select

from app.deps import REQUIRE, RunDep, SessionDep
from app.schemas import API_ERRORS, EvaluationList, error_responses
from app.store.models import Evaluation
from meal_core.enums import Role

router = APIRouter(
    prefix="/api/runs", tags=["evaluations"], dependencies=[Depends(REQUIRE[Role.TRAINER])], responses=API_ERRORS
)


@router.get("/{run_id}/evaluations", response_model=EvaluationList, responses=error_responses(404))
def run_evaluations(run: RunDep, session: SessionDep) -> list[Evaluation]:
    return list(session.scalars(select(Evaluation).where(Evaluation.run_id == run.id).order_by(Evaluation.step)))
