"""API request and response bodies."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator

from app.store.models import RUN_NAME_LENGTH, Base, Evaluation, HeldOutEvaluation, Sample
from meal_core.enums import RunPhase, RunStatus
from meal_core.evaluation import EvaluationResult, HeldOutResult
from meal_core.recorder import SampleRecord


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


# -- a run's tags and note: one definition, used by the create and edit bodies and the runs list's tag filter ------

MAX_TAGS = 16
MAX_TAG_LENGTH = 32
MAX_NOTE_LENGTH = 4000
TAG_PATTERN = re.compile(r"^[\w.:+/-]+$")


def normalize_tag(tag: str) -> str:
    """A tag as stored: trimmed, lower case, inner spaces as hyphens ("  Baseline Seed " → "baseline-seed"); a
    ValueError (a 422 naming it) for an empty one, an over-long one, or one with other characters than letters,
    digits and . : + / - _."""
    normal = "-".join(tag.strip().lower().split())
    if not normal:
        raise ValueError("a tag cannot be empty")
    if len(normal) > MAX_TAG_LENGTH:
        raise ValueError(f"a tag has at most {MAX_TAG_LENGTH} characters")
    if not TAG_PATTERN.match(normal):
        raise ValueError("a tag holds letters, digits and . : + / - _ only")
    return normal


def _distinct(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))  # the first of each, in the order given


def _storable_note(note: str) -> str:
    if "\x00" in note:
        raise ValueError("the note contains a NUL character (\\u0000)")
    return note


Tag = Annotated[str, Field(max_length=4 * MAX_TAG_LENGTH), AfterValidator(normalize_tag)]
Tags = Annotated[
    list[Tag],
    Field(max_length=MAX_TAGS, description=f"Up to {MAX_TAGS} tags of up to {MAX_TAG_LENGTH} characters, normalised."),
    AfterValidator(_distinct),
]
Note = Annotated[
    str, Field(max_length=MAX_NOTE_LENGTH, description="Free text about the run."), AfterValidator(_storable_note)
]


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=RUN_NAME_LENGTH)
    config: dict[str, Any] = Field(default_factory=dict, description="A RunConfig; omitted fields take defaults.")
    tags: Tags = Field(default_factory=list)
    note: Note = ""


class RunUpdate(BaseModel):
    """`PATCH /api/runs/{id}`: what is given replaces what is stored (tags as a whole list)."""

    model_config = ConfigDict(extra="forbid")

    tags: Tags | None = None
    note: Note | None = None

    @model_validator(mode="after")
    def _something(self) -> RunUpdate:
        if self.tags is None and self.note is None:
            raise ValueError("give tags, note or both")
        return self


class RunPhaseOut(BaseModel):
    """What a held run's worker does now, with the phase's own progress: the run's `phase*` columns, as the runs
    list, the run page and the event stream's status event send them."""

    model_config = ConfigDict(from_attributes=True)

    phase: RunPhase | None = Field(None, description="What the worker does now; null while no worker holds the run.")
    phase_done: int = Field(0, description="Units of the phase done: responses, generations or iterations.")
    phase_total: int = Field(0, description="The phase's units in all; 0 where the phase is not counted.")
    phase_eta_seconds: float | None = Field(
        None, description="When the phase should be done, from the rate measured inside it; null until a unit is."
    )


class RunSummary(RunPhaseOut):
    """A run as the runs list shows it: no config (it can be large, and the list is polled every few seconds)."""

    id: int
    name: str
    status: RunStatus
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
    experiment_id: int | None = Field(None, description="The experiment the run belongs to, if any.")
    variant: str | None = Field(None, description="Its variant in that experiment.")
    tags: list[str] = Field(default_factory=list)
    note: str = ""
    archived: bool = Field(False, description="Archived runs are left out of the runs list unless asked for.")
    queue_position: int | None = None
    latest: dict[str, float] = Field(default_factory=dict, description="Latest value of every reward metric.")


class RunOut(RunSummary):
    config: dict[str, Any]
    traceback: str | None
    reproducibility: dict[str, Any] | None = Field(
        None, description="Packages, git revision, fingerprints of model, reward models and data, seeds, calibration."
    )
    event_cursor: str | None = Field(None, description="Pass to the event stream to receive only what comes next.")


def record_schema(
    name: str,
    record: type[Any],
    table: type[Base],
    leading: dict[str, Any] | None = None,
    trailing: dict[str, Any] | None = None,
) -> type[BaseModel]:
    """The API model of a stored engine record: the record's fields (a meal_core dataclass), typed as the record
    types them — nested records as the JSON objects the table holds — and `| None` where the column may hold
    NULL (rows from before a column existed), between the row's own `leading` and `trailing` fields (name →
    (type, default)). A field added to the record appears here without another edit (tests/test_records.py)."""
    hints = get_type_hints(record)
    columns = table.__table__.columns
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(record):
        annotation = _as_stored(hints[field.name])
        column = columns.get(field.name)
        fields[field.name] = (annotation | None if column is not None and column.nullable else annotation, ...)
    model: type[BaseModel] = create_model(
        name,
        __config__=ConfigDict(from_attributes=True),
        __doc__=f"A stored {record.__name__} (meal_core), with its row's id.",
        **(leading or {}),
        **fields,
        **(trailing or {}),
    )
    return model


def _as_stored(annotation: Any) -> Any:
    """`list[FrontPoint]` → `list[dict[str, Any]]`: a nested record is served as the JSON its column stores."""
    if get_origin(annotation) is list and dataclasses.is_dataclass(get_args(annotation)[0]):
        return list[dict[str, Any]]
    return annotation


SampleOut = record_schema("SampleOut", SampleRecord, Sample, leading={"id": (int, ...), "position": (int, ...)})
EvaluationOut = record_schema(
    "EvaluationOut", EvaluationResult, Evaluation, leading={"id": (int, ...)}, trailing={"created_at": (datetime, ...)}
)
HeldOutEvaluationOut = record_schema(
    "HeldOutEvaluationOut",
    HeldOutResult,
    HeldOutEvaluation,
    leading={"id": (int, ...)},
    trailing={"created_at": (datetime, ...)},
)
# Lists of the models above, for `response_model=`: mypy cannot see a model made at import time as a type.
SampleList = list[SampleOut]  # type: ignore[valid-type]
EvaluationList = list[EvaluationOut]  # type: ignore[valid-type]


class ExperimentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=120)
    experiment: dict[str, Any] = Field(
        default_factory=dict,
        description="A meal_core.experiment.ExperimentConfig: base (a RunConfig), seeds (a list or a count), "
        "algorithms, vary ({dotted field: [values]}), baseline and held_out ({prompts, samples_per_weight, "
        "max_prompts}: every run's final evaluation on held-out prompts).",
    )
    tags: Tags = Field(default_factory=list, description="Given to every run of the experiment.")
    note: Note = Field("", description="Given to every run of the experiment.")


class ExperimentRun(BaseModel):
    id: int
    name: str
    variant: str | None
    seed: int | None
    status: RunStatus


class ExperimentSummary(BaseModel):
    id: int
    name: str
    baseline: str
    created_by: str | None
    created_at: datetime
    runs: int = Field(..., description="Runs in the experiment.")
    finished: int = Field(..., description="Of those, runs that succeeded.")


class ExperimentOut(ExperimentSummary):
    config: dict[str, Any] = Field(..., description="The experiment as launched (ExperimentConfig).")
    members: list[ExperimentRun]
    compute: dict[str, dict[str, int]] = Field(..., description="Per variant, the compute its config implies.")
    compute_differences: list[dict[str, Any]] = Field(
        ..., description="Each quantity that differs between variants: values per variant and max / min."
    )
    report: dict[str, Any] = Field(
        ...,
        description="baseline, figures, runs (variant → seed → figure → value: each finished run's own figures, "
        "wall_minutes and attempts included), table (variant → figure → n, mean, sd, low, high), comparison (variant → "
        "figure → paired difference against the baseline: n, seeds, mean_difference, sd, low, high, p) and "
        "stability (variant → series → n, final_sd, band, jumpiness) of the finished runs, and curves (variant → "
        "series → [{step, n, mean, sd, low, high}]: hypervolume per evaluation, reward/<objective> and "
        "pref_weight_learned/<objective> per iteration, averaged over the seeds that have each step, runs still "
        "training included); null where a figure is undefined.",
    )
