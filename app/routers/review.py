"""Review: trainers build queues from a run's samples or playground comparisons; reviewers review; trainers read
the agreement summary and export the reviews. The rules live in app/review.py."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy import select

from app import review
from app.deps import MAX_ID, CurrentUser, IdPath, ReviewerDep, SessionDep, TrainerDep
from app.schemas import API_ERRORS, BODY_ERRORS, error_responses
from app.store.models import PlaygroundGeneration, Review, ReviewItem, ReviewQueue, Run, utcnow
from meal_core.config import ConfigError
from meal_core.enums import QueueKind, QueueStatus, ReviewStatus, Role

router = APIRouter(prefix="/api/review", tags=["review"], responses=API_ERRORS)


class SampleSource(BaseModel):
    type: Literal["samples"] = "samples"
    run_id: int = Field(..., ge=1, le=MAX_ID)
    step_min: int | None = Field(None, ge=0, le=MAX_ID)
    step_max: int | None = Field(None, ge=0, le=MAX_ID)
    weight_objective: str | None = Field(None, max_length=32, description="With weight_min/_max: a weight region.")
    weight_min: float = Field(0.0, ge=0.0, le=1.0)
    weight_max: float = Field(1.0, ge=0.0, le=1.0)
    accepted_only: StrictBool = False
    random_n: int | None = Field(None, ge=1, le=review.MAX_ITEMS)
    seed: int = Field(0, ge=0, le=MAX_ID)


class PlaygroundSource(BaseModel):
    type: Literal["playground"] = "playground"
    generation_ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field(..., min_length=1, max_length=500)


class QueueIn(BaseModel):
    name: str = Field(..., min_length=1, max_length=200)
    blind: StrictBool = False
    source: Annotated[SampleSource | PlaygroundSource, Field(discriminator="type")]
    rubric: dict[Annotated[str, Field(max_length=32)], Annotated[str, Field(min_length=1, max_length=500)]] = Field(
        default_factory=dict,
        max_length=9,
        description="Objective (or 'overall') → what its rating means; the rest come from the objectives' types.",
    )


class QueueOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    created_by: str
    kind: QueueKind
    blind: bool
    status: QueueStatus
    objectives: list[str]
    rubric: dict[str, str] = Field(description="Objective and 'overall' → what a rating means.")
    source: dict[str, Any] = Field(
        description="What the items were drawn from (run, steps, weight region, generations); {} for a reviewer "
        "below trainer in a blind queue."
    )
    created_at: datetime
    closed_at: datetime | None
    items: int = 0
    mine: dict[str, int] = Field(default_factory=dict, description="Your drafts and submitted reviews here.")


class ReviewIn(BaseModel):
    ratings: dict[Annotated[str, Field(max_length=32)], Annotated[str, Field(max_length=3)] | None] = Field(
        default_factory=dict, max_length=8, description="Objective → '1'…'5' (single) or 'A' / 'B' / 'tie'."
    )
    overall: str | None = Field(None, max_length=3)
    comment: str = Field("", max_length=4000)
    submit: StrictBool = Field(
        False,
        description="false: a draft (refused, 409, once the review is submitted); true: submitted, replaced by "
        "another complete submission until the queue closes.",
    )


def _queue(session: SessionDep, queue_id: int) -> ReviewQueue:
    queue = session.get(ReviewQueue, queue_id)
    if queue is None:
        raise HTTPException(404, f"review queue {queue_id} not found")
    return queue


def _queue_out(session: SessionDep, queue: ReviewQueue, user: CurrentUser) -> QueueOut:
    out = QueueOut.model_validate(queue)
    if queue.blind and not user.can(Role.TRAINER):
        out.source = {}  # the run and weight region are the condition a blind queue hides
    out.items = review.item_count(session, queue)
    out.mine = review.progress(session, queue).get(user.name, {ReviewStatus.DRAFT: 0, ReviewStatus.SUBMITTED: 0})
    return out


@router.post(
    "/queues",
    response_model=QueueOut,
    status_code=status.HTTP_201_CREATED,
    responses={**BODY_ERRORS, **error_responses(404)},
)
def create_queue(body: QueueIn, session: SessionDep, user: TrainerDep) -> QueueOut:
    source = body.source
    try:
        if isinstance(source, SampleSource):
            run = session.get(Run, source.run_id)
            if run is None:
                raise HTTPException(404, f"run {source.run_id} not found")
            objectives = run.objective_names
            selection = review.SampleSelection(**source.model_dump(exclude={"type"}))
            items, kind = review.sample_items(session, selection, objectives), QueueKind.SINGLE
        else:
            runs = {
                g.run_id
                for g in session.scalars(
                    select(PlaygroundGeneration).where(PlaygroundGeneration.id.in_(source.generation_ids))
                )
            }
            if len(runs) != 1:
                raise review.ReviewError("source.generation_ids: generations of exactly one run")
            run = session.get(Run, runs.pop())
            assert run is not None
            objectives = run.objective_names
            items, kind = review.comparison_items(session, source.generation_ids, objectives), QueueKind.COMPARISON
        review.check_rubric(body.rubric, objectives)
        try:
            types: list[tuple[str, str]] = [(o.name, o.type) for o in run.run_config().objectives]
        except ConfigError:  # a run stored by an older version: its objectives by name only
            types = [(name, "") for name in objectives]
        rubric = {**review.default_rubric(types, kind), **body.rubric}
        queue = review.create_queue(
            session, body.name, user.name, kind, body.blind, objectives, items, source.model_dump(), rubric=rubric
        )
    except review.ReviewError as error:
        raise HTTPException(422, str(error)) from None
    return _queue_out(session, queue, user)


@router.get("/queues", response_model=list[QueueOut])
def list_queues(
    session: SessionDep, user: ReviewerDep, status_filter: str | None = Query(None, alias="status", max_length=16)
) -> list[QueueOut]:
    query = select(ReviewQueue).order_by(ReviewQueue.id.desc()).limit(500)
    if status_filter:
        query = query.where(ReviewQueue.status == status_filter)
    return [_queue_out(session, queue, user) for queue in session.scalars(query)]


@router.get("/queues/{queue_id}", response_model=QueueOut, responses=error_responses(404))
def get_queue(queue_id: IdPath, session: SessionDep, user: ReviewerDep) -> QueueOut:
    return _queue_out(session, _queue(session, queue_id), user)


@router.get("/queues/{queue_id}/items", responses=error_responses(404))
def queue_items(queue_id: IdPath, session: SessionDep, user: ReviewerDep) -> list[dict[str, Any]]:
    """The queue's items as you may see them, each with your review (blind queues: the responses' text only)."""
    queue = _queue(session, queue_id)
    query = select(ReviewItem).where(ReviewItem.queue_id == queue.id).order_by(ReviewItem.position)
    items = list(session.scalars(query))
    mine = {
        r.item_id: r
        for r in session.scalars(
            select(Review).where(Review.item_id.in_([i.id for i in items]), Review.reviewer == user.name)
        )
    }
    return [review.item_view(queue, item, mine.get(item.id)) for item in items]


@router.put("/items/{item_id}/review", responses={**BODY_ERRORS, **error_responses(404, 409)})
def put_review(item_id: IdPath, body: ReviewIn, session: SessionDep, user: ReviewerDep) -> dict[str, Any]:
    item = session.get(ReviewItem, item_id)
    if item is None:
        raise HTTPException(404, f"review item {item_id} not found")
    queue = _queue(session, item.queue_id)
    if queue.status != QueueStatus.OPEN:
        raise HTTPException(409, "the queue is closed: reviews can no longer change")
    try:
        saved = review.save_review(
            session, queue, item, user.name, body.ratings, body.overall, body.comment, body.submit
        )
    except review.ReviewConflict as conflict:
        raise HTTPException(409, str(conflict)) from None
    except review.ReviewError as error:
        raise HTTPException(422, str(error)) from None
    return review.item_view(queue, item, saved)


@router.post("/queues/{queue_id}/close", response_model=QueueOut, responses=error_responses(404))
def close_queue(queue_id: IdPath, session: SessionDep, user: TrainerDep) -> QueueOut:
    queue = _queue(session, queue_id)
    if queue.status == QueueStatus.OPEN:
        queue.status, queue.closed_at = QueueStatus.CLOSED, utcnow()
    return _queue_out(session, queue, user)


@router.get("/queues/{queue_id}/summary", responses=error_responses(404))
def queue_summary(queue_id: IdPath, session: SessionDep, user: TrainerDep) -> dict[str, Any]:
    """Progress per reviewer and, per objective and overall: Krippendorff's alpha, pairwise agreement between
    reviewers, and agreement of the team with the reward objective."""
    return review.summary(session, _queue(session, queue_id))


@router.get(
    "/queues/{queue_id}/export",
    response_class=Response,
    responses={
        200: {
            "description": "The submitted reviews: one JSON object a line (jsonl), or CSV with a header row.",
            "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            },
        },
        **error_responses(404),
    },
)
def export(
    queue_id: IdPath, session: SessionDep, user: TrainerDep, format: Literal["jsonl", "csv"] = Query("jsonl")
) -> Response:
    queue = _queue(session, queue_id)
    if format == "csv":
        body, media = review.export_csv(session, queue), "text/csv; charset=utf-8"
    else:
        body, media = review.export_jsonl(session, queue), "application/x-ndjson"
    filename = f"review-queue-{queue.id}.{format}"
    return Response(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'})
