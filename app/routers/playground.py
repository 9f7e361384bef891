"""The playground: one prompt, several preference weights, a trained run's policy side by side.

A generation is stored, then handed to a worker on the `playground` queue (never behind training); the page polls
it. The run's objectives score every output, on the run's normalised scale, and place it against the run's latest
evaluation front.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from app.config_policy import path_refusal
from app.deps import MAX_ID, REQUIRE, IdPath, SessionDep, SettingsDep, TrainerDep
from app.schemas import API_ERRORS, BODY_ERRORS, error_responses
from app.store.artifacts import ArtifactError, open_store
from app.store.models import PlaygroundGeneration, Run
from app.store.queue import BrokerUnavailable, enqueue_playground
from meal_core.config import ConfigError
from meal_core.data import DataError, is_hub_id, load_prompts
from meal_core.enums import JobStatus, Role
from meal_core.inference import BASE, MAX_NEW_TOKENS

STORE_WAIT_S = 5.0  # how long a page waits on an artefact store that fails before it answers 503
PROMPTS_LISTED = 200  # held-out prompts the playground offers

router = APIRouter(tags=["playground"], dependencies=[Depends(REQUIRE[Role.TRAINER])], responses=API_ERRORS)

MAX_PROMPT = 4000
WeightVector = Annotated[list[float], Field(min_length=2, max_length=8)]


class PlaygroundIn(BaseModel):
    run_id: int = Field(..., ge=1, le=MAX_ID)
    checkpoint: str | None = Field(
        None, pattern=r"^(base|iter-\d{6})$", description="'iter-000012', 'base', or none: the latest."
    )
    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT)
    weights: list[WeightVector | Literal["auto"]] = Field(
        ..., min_length=1, max_length=4, description="1–4 weight vectors (one value per objective) or 'auto'."
    )
    seed: int = Field(0, ge=0, le=MAX_ID)
    temperature: float = Field(0.7, gt=0.0, le=2.0)
    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS)
    samples: int = Field(1, ge=1, le=8, description="Responses per weight vector.")


class Created(BaseModel):
    id: int


class PlaygroundOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: int
    status: JobStatus
    created_by: str
    checkpoint: str | None
    prompt: str
    weights: list[Any]
    seed: int
    temperature: float
    max_new_tokens: int
    samples: int
    outputs: list[dict[str, Any]] | None = Field(
        None,
        description="One per weight vector, in the order asked: {weights, auto, samples: [{text, scores, "
        "normalized, front}]}.",
    )
    error: str | None
    created_at: datetime
    finished_at: datetime | None


def check_weights(weights: Sequence[list[float] | Literal["auto"]], objectives: list[str]) -> None:
    for index, vector in enumerate(weights):
        if isinstance(vector, str):
            continue
        where = f"weights.{index}"
        if len(vector) != len(objectives):
            raise HTTPException(422, f"{where}: {len(objectives)} values, one per objective ({', '.join(objectives)})")
        # The sum too: [1e308, 1e308] sums to inf, and was stored normalised as [0, 0] (the worker then failed).
        total = sum(vector)  # math.fsum would raise OverflowError on it
        if not all(math.isfinite(v) and v >= 0 for v in vector) or not 0 < total < math.inf:
            raise HTTPException(422, f"{where}: non-negative finite numbers with a positive sum (a finite one)")


@router.post(
    "/api/playground",
    response_model=Created,
    status_code=status.HTTP_201_CREATED,
    responses={**BODY_ERRORS, **error_responses(404, 503)},
)
def create_generation(body: PlaygroundIn, session: SessionDep, settings: SettingsDep, user: TrainerDep) -> Created:
    run = session.get(Run, body.run_id)
    if run is None:
        raise HTTPException(404, f"run {body.run_id} not found")
    objectives = run.objective_names
    check_weights(body.weights, objectives)
    generation = PlaygroundGeneration(
        run_id=run.id,
        created_by=user.name,
        checkpoint=body.checkpoint,
        prompt=body.prompt,
        weights=[w if w == "auto" else [v / sum(w) for v in w] for w in body.weights],
        seed=body.seed,
        temperature=body.temperature,
        max_new_tokens=body.max_new_tokens,
        samples=body.samples,
        status=JobStatus.QUEUED,
    )
    session.add(generation)
    session.commit()  # the worker must find it when the message arrives
    try:
        enqueue_playground(settings.broker_url, generation.id)
    except BrokerUnavailable as unavailable:
        generation.status, generation.error = JobStatus.FAILED, str(unavailable)
        session.commit()
        raise HTTPException(503, f"generation {generation.id} stored but not queued: {unavailable}") from None
    return Created(id=generation.id)


@router.get("/api/playground/{generation_id}", response_model=PlaygroundOut, responses=error_responses(404))
def get_generation(generation_id: IdPath, session: SessionDep) -> PlaygroundGeneration:
    generation = session.get(PlaygroundGeneration, generation_id)
    if generation is None:
        raise HTTPException(404, f"generation {generation_id} not found")
    return generation


@router.get("/api/playground", response_model=list[PlaygroundOut])
def list_generations(
    session: SessionDep,
    run_id: int | None = Query(None, ge=1, le=MAX_ID),
    limit: int = Query(50, ge=1, le=500),
) -> list[PlaygroundGeneration]:
    query = select(PlaygroundGeneration).order_by(PlaygroundGeneration.id.desc()).limit(limit)
    if run_id is not None:
        query = query.where(PlaygroundGeneration.run_id == run_id)
    return list(session.scalars(query))


@router.get("/api/runs/{run_id}/checkpoints", response_model=list[str], responses=error_responses(404, 503))
def run_checkpoints(run_id: IdPath, session: SessionDep, settings: SettingsDep) -> list[str]:
    """The run's checkpoints, newest first, then "base" (the untrained policy)."""
    if session.get(Run, run_id) is None:
        raise HTTPException(404, f"run {run_id} not found")
    try:
        names = open_store(settings, retry_s=STORE_WAIT_S).checkpoint_names(run_id)
    except ArtifactError as exc:
        raise HTTPException(503, str(exc)) from exc
    except Exception as exc:  # a URL fsspec cannot open, a bucket that is gone: the operator's to fix, not a 500
        raise HTTPException(503, f"the artefact store cannot be read: {type(exc).__name__}") from exc
    return [*reversed(names), BASE]


@router.get("/api/runs/{run_id}/prompts", response_model=list[str], responses=error_responses(404, 422))
def run_eval_prompts(run_id: IdPath, session: SessionDep, settings: SettingsDep) -> list[str]:
    """The run's held-out evaluation prompts: the shipped set, a dataset id, or a file the path policy lets configs
    name (app/config_policy.py). Checked again here, for runs stored before the policy was what it is now. A file
    the panel may not read, or that holds no prompts (a binary file), is a 422 naming data.eval_prompts."""
    run = session.get(Run, run_id)
    if run is None:
        raise HTTPException(404, f"run {run_id} not found")
    try:
        data = run.run_config().data
    except ConfigError:
        return []  # a run stored by an older version, whose config no longer reads
    spec = data.eval_prompts
    # A web request reads a few rows at most, whatever the dataset's size.
    options = replace(data.source_options("eval"), max_rows=min(data.max_rows or PROMPTS_LISTED, PROMPTS_LISTED))
    if not spec.startswith("builtin:") and not is_hub_id(spec):
        refusal = path_refusal(spec, settings)
        if refusal is not None:
            raise HTTPException(422, f"data.eval_prompts: {refusal}")
    try:
        return [p.text for p in load_prompts(spec, options=options)][:PROMPTS_LISTED]
    except (DataError, OSError) as error:
        raise HTTPException(422, f"data.eval_prompts: {str(error)[:500]}") from None
