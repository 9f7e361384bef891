"""API request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorItem(BaseModel):
    """One thing wrong with a request: where (`loc`, e.g. ["body", "config", "seed"]), what, and its kind."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(BaseModel):
    """The body of every error answer."""

    detail: str | list[ErrorItem] = Field(
        ..., description="What is wrong: a message, or (422) one item per invalid field."
    )


ERRORS: dict[int, str] = {
    400: "The request body could not be read (not UTF-8 JSON).",
    401: "Not logged in, or an invalid or revoked API token.",
    403: "The user's role is too low, or a change without its session's CSRF token or from another site.",
    404: "No such object.",
    409: "The object's state does not allow this.",
    413: "The request body is over the server's limit.",
    422: "Invalid input: the detail names each invalid field, or what is wrong.",
    429: "Too many failed attempts: try again later (Retry-After).",
    503: "The message broker is unavailable: stored, but not queued.",
}


def error_responses(*codes: int, descriptions: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for these error codes, each with the ErrorOut body and the shared description (or the
    one `descriptions` gives)."""
    described = {**ERRORS, **(descriptions or {})}
    return {code: {"model": ErrorOut, "description": described[code]} for code in codes}


#: Every authenticated API route: not logged in, not allowed, invalid parameters.
API_ERRORS = error_responses(401, 403, 422)
#: Routes that read a JSON body: also a body that cannot be read, or one over the limit.
BODY_ERRORS = error_responses(400, 413, 422)


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=200)
    config: dict[str, Any] = Field(default_factory=dict, description="A RunConfig; omitted fields take defaults.")


class RunSummary(BaseModel):
    """A run as the runs list shows it: no config (it can be large, and the list is polled every few seconds)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    status: str
    objectives: list[str] = Field(default_factory=list, description="The config's objective names.")
    created_by: str | None
    stopped_by: str | None
    resumed_by: str | None
    task_id: str | None
    worker: str | None
    error: str | None
    stop_requested: bool
    iteration: int
    total_iterations: int
    eta_seconds: float | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    queue_position: int | None = None
    latest: dict[str, float] = Field(default_factory=dict, description="Latest value of every reward metric.")


class RunOut(RunSummary):
    config: dict[str, Any]
    traceback: str | None
    event_cursor: str | None = Field(None, description="Pass to the event stream to receive only what comes next.")


class SampleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    step: int
    position: int
    prompt_id: str
    prompt: str
    weights: list[float]
    response: str
    raw_rewards: dict[str, float]
    normalized_rewards: dict[str, float]
    accepted: bool


class EvaluationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    step: int
    objectives: list[str]
    points: list[dict[str, Any]]
    hypervolume: float
    reference_point: list[float]
    controllability: dict[str, float]
    probe: dict[str, float]
    controllability_grid: dict[str, float]
    controllability_null: dict[str, float]
    degenerate_share: float | None
    responses: int | None
    auto_weights: dict[str, float]
    created_at: datetime
