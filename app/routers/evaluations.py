"""Evaluations: the Pareto front points, hypervolume, controllability and probe of each evaluation a run recorded
while training, and apart from them its final held-out evaluation (an experiment's `held_out`), if it has one."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import select

from app.deps import REQUIRE, RunDep, SessionDep
from app.schemas import API_ERRORS, EvaluationList, HeldOutEvaluationOut, error_responses
from app.store.models import Evaluation, HeldOutEvaluation
from meal_core.enums import Role

router = APIRouter(
    prefix="/api/runs", tags=["evaluations"], dependencies=[Depends(REQUIRE[Role.TRAINER])], responses=API_ERRORS
)


@router.get("/{run_id}/evaluations", response_model=EvaluationList, responses=error_responses(404))
def run_evaluations(run: RunDep, session: SessionDep) -> list[Evaluation]:
    return list(session.scalars(select(Evaluation).where(Evaluation.run_id == run.id).order_by(Evaluation.step)))


@router.get(
    "/{run_id}/held-out-evaluation",
    response_model=HeldOutEvaluationOut | None,
    responses=error_responses(404),
)
def run_held_out_evaluation(run: RunDep, session: SessionDep) -> HeldOutEvaluation | None:
    """The run's final evaluation on its experiment's held-out prompts; null until it has one (a run outside an
    experiment with `held_out` never has one). Not among /evaluations: it is no training step."""
    return session.scalar(select(HeldOutEvaluation).where(HeldOutEvaluation.run_id == run.id))
