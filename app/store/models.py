"""SQLAlchemy 2 models. The schema changes only through Alembic migrations (migrations/versions)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from meal_core.config import MAX_PATH, ConfigError, RunConfig, parse_config
from meal_core.enums import JobStatus, QueueStatus, ReviewStatus, RunStatus

JsonColumn = JSON().with_variant(JSONB(), "postgresql")
MAX_ID = 2**31 - 1  # ids (and steps, seeds) are 32-bit integers in PostgreSQL: a larger one names nothing


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database.

    SQLite has no time zones: it stores the wall-clock digits and returns naive datetimes, so a value in another
    zone would compare wrongly and API responses would lose their offset. Values are converted to UTC on the way
    in (naive ones are taken as UTC) and come back aware, in UTC, from SQLite and PostgreSQL alike.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return _as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return _as_utc(value)


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


RUN_NAME_LENGTH = 200


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "run"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(RUN_NAME_LENGTH))
    status: Mapped[str] = mapped_column(String(16), index=True, default=RunStatus.QUEUED)
    config: Mapped[dict[str, Any]] = mapped_column(JsonColumn)  # written once, at creation
    created_by: Mapped[str | None] = mapped_column(String(100))
    stopped_by: Mapped[str | None] = mapped_column(String(100))
    resumed_by: Mapped[str | None] = mapped_column(String(100))
    task_id: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    iteration: Mapped[int] = mapped_column(Integer, default=0)
    total_iterations: Mapped[int] = mapped_column(Integer)
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    # What the worker does now (meal_core.enums.RunPhase), with that phase's own count and ETA; NULL while no
    # worker holds the run (run_state.finish and the stale-run sweeper clear it).
    phase: Mapped[str | None] = mapped_column(String(16))
    phase_done: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # 0: the phase is not counted (loading, checkpointing)
    phase_total: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    phase_eta_seconds: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Every attempt's span, claim to finish (or to the last heartbeat of a worker that vanished), summed.
    wall_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    # Bumped on every status or progress change, so event streams can tell cheaply whether to send one.
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # meal_core.provenance: packages, git revision, fingerprints, seeds, calibration (written once calibrated)
    reproducibility: Mapped[dict[str, Any] | None] = mapped_column(JsonColumn)
    # The experiment the run belongs to, and its variant there (meal_core.experiment.VariantRun.variant).
    experiment_id: Mapped[int | None] = mapped_column(
        ForeignKey("experiment.id", ondelete="SET NULL", name="fk_run_experiment_id_experiment"), index=True
    )
    variant: Mapped[str | None] = mapped_column(String(200))
    # What its owner says of it (app.schemas.Tags and Note validate them): searchable tags, a free-text note, and
    # whether it is archived (left out of the runs list unless asked for).
    tags: Mapped[list[str]] = mapped_column(JsonColumn, default=list, server_default=text("'[]'"))
    note: Mapped[str] = mapped_column(Text, default="", server_default=text("''"))
    archived: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false(), index=True)

    # SQLite: AUTOINCREMENT, so that the id of a deleted run is never given to a new one (it would meet the old
    # run's files in a machine's cache of the artefact store). PostgreSQL's sequences never reuse one.
    __table_args__ = {"sqlite_autoincrement": True}

    def run_config(self) -> RunConfig:
        """The stored config read through its contract (objectives, prompts, defaults): see read_config."""
        key = (self.id, self.created_at)
        config = _CONFIGS.get(key)
        if config is None:
            config = _CONFIGS[key] = read_config(self.config)
            while len(_CONFIGS) > 2048:  # a few runs lists' worth; a config is written once, so never stale
                del _CONFIGS[next(iter(_CONFIGS))]
        return config

    @property
    def objective_names(self) -> list[str]:
        """The config's objective names. Where the stored config no longer validates (stored by a version whose
        fields have changed since), the names as stored: one old run must not break the runs list."""
        try:
            return self.run_config().objective_names
        except ConfigError:
            objectives = self.config.get("objectives", []) if isinstance(self.config, dict) else []
            return [str(o.get("name")) for o in objectives if isinstance(o, dict)]


def read_config(stored: dict[str, Any]) -> RunConfig:
    """A run's stored config as a RunConfig. It was written once, from a validated RunConfig, so this fails
    (ConfigError) only for a config stored by a version whose fields have changed since."""
    return parse_config(stored)


_CONFIGS: dict[tuple[int, datetime], RunConfig] = {}


class Experiment(Base):
    """Seeds × algorithms × settings launched as one: the definition (ExperimentConfig as JSON) and the baseline
    variant; its runs point here (run.experiment_id)."""

    __tablename__ = "experiment"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(JsonColumn)
    baseline: Mapped[str] = mapped_column(String(200))
    created_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MetricPoint(Base):
    """One value of one metric at one step. The primary key makes a re-sent point a no-op.

    No foreign key to run, on purpose (nor on MetricRollup): its per-row check was most of the ingest cost. Ingest
    upserts MetricLatest, which has one, in the same transaction, so points never land for a missing run. Deleting a
    run (app.store.run_delete) deletes every row of every table with a run_id, these included.
    """

    __tablename__ = "metric_point"

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    wall_time: Mapped[float] = mapped_column(Float)
    # Per-run ingest batch number: event streams send the points of batches newer than the client's cursor.
    seq: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_metric_point_run_seq", "run_id", "seq"),)


class MetricLatest(Base):
    __tablename__ = "metric_latest"

    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    step: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    wall_time: Mapped[float] = mapped_column(Float)


class MetricRollup(Base):
    """Min, max and last value of a metric over aligned step buckets of width ROLLUP_BASE**level.

    Kept up to date at ingest so that a chart query over a million points reads a few thousand rows.
    """

    __tablename__ = "metric_rollup"

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    min_value: Mapped[float] = mapped_column(Float)
    max_value: Mapped[float] = mapped_column(Float)
    last_step: Mapped[int] = mapped_column(Integer)
    last_value: Mapped[float] = mapped_column(Float)


class Sample(Base):
    __tablename__ = "sample"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)  # index within the step's batch: makes re-sends no-ops
    prompt_id: Mapped[str] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text)
    weights: Mapped[list[float]] = mapped_column(JsonColumn)
    response: Mapped[str] = mapped_column(Text)
    raw_rewards: Mapped[dict[str, float]] = mapped_column(JsonColumn)
    normalized_rewards: Mapped[dict[str, float]] = mapped_column(JsonColumn)
    accepted: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (UniqueConstraint("run_id", "step", "position", name="uq_sample_run_step_position"),)


class EvaluationColumns:
    """The columns of a stored EvaluationResult (meal_core.evaluation): one per field of the record, beside the
    row's own id, run and time (tests/test_records.py holds each table to its record)."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    objectives: Mapped[list[str]] = mapped_column(JsonColumn)
    points: Mapped[list[dict[str, Any]]] = mapped_column(JsonColumn)
    hypervolume: Mapped[float] = mapped_column(Float)
    reference_point: Mapped[list[float]] = mapped_column(JsonColumn)
    controllability: Mapped[dict[str, float]] = mapped_column(JsonColumn)
    probe: Mapped[dict[str, float]] = mapped_column(JsonColumn)
    controllability_grid: Mapped[dict[str, float]] = mapped_column(JsonColumn, server_default=text("'{}'"))
    controllability_null: Mapped[dict[str, float]] = mapped_column(JsonColumn, server_default=text("'{}'"))
    degenerate_share: Mapped[float | None] = mapped_column(Float)
    responses: Mapped[int | None] = mapped_column(Integer)
    auto_weights: Mapped[dict[str, float]] = mapped_column(JsonColumn, server_default=text("'{}'"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Evaluation(EvaluationColumns, Base):
    """The evaluations a run records during training, one per evaluated step (the charts, the compare page, the
    playground's front and the experiment report's hv_final read these)."""

    __tablename__ = "evaluation"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_evaluation_run_step"),)


class HeldOutEvaluation(EvaluationColumns, Base):
    """A run's final evaluation on an experiment's held-out prompts (meal_core.evaluation.HeldOutResult), at most
    one per run: the unique run_id makes a repeated store a no-op. Kept apart from `evaluation` so that nothing
    that reads training-step evaluations meets it."""

    __tablename__ = "held_out_evaluation"

    prompts: Mapped[str] = mapped_column(String(MAX_PATH))
    samples_per_weight: Mapped[int] = mapped_column(Integer)

    __table_args__ = (UniqueConstraint("run_id", name="uq_held_out_evaluation_run"),)


# -- users, sessions, tokens ------------------------------------------------------------------------------------------


USER_NAME_PATTERN = r"^[a-z][a-z0-9_.-]{1,31}$"


class User(Base):
    __tablename__ = "app_user"  # "user" is a reserved word in PostgreSQL

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(32), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # a Role
    password_hash: Mapped[str | None] = mapped_column(String(255))  # None: logs in by link or token only
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    """A script's credential: `Authorization: Bearer <token>`. Only a keyed hash of the token is stored."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class UserSession(Base):
    """A browser's login: the cookie holds a random id, the table its keyed hash and the CSRF token of its pages."""

    __tablename__ = "user_session"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LoginLink(Base):
    """A one-time login link (the first admin's, printed by `meal up`): used once, then dead."""

    __tablename__ = "login_link"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# -- the playground ---------------------------------------------------------------------------------------------------


class PlaygroundGeneration(Base):
    """One comparison asked for in the playground, and what it produced: every generation is kept."""

    __tablename__ = "playground_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), index=True)
    created_by: Mapped[str] = mapped_column(String(100))
    checkpoint: Mapped[str | None] = mapped_column(String(32))  # None: the latest (resolved when generated)
    prompt: Mapped[str] = mapped_column(Text)
    weights: Mapped[list[Any]] = mapped_column(JsonColumn)  # as asked: weight vectors or "auto"
    seed: Mapped[int] = mapped_column(Integer)
    temperature: Mapped[float] = mapped_column(Float)
    max_new_tokens: Mapped[int] = mapped_column(Integer)
    samples: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    outputs: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonColumn)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ModelExport(Base):
    """A trained run taken away from the panel: `meal export` run by a worker, its folder zipped into the artefact
    store (`run-<id>/exports/<artifact>`) for download. Every export is kept."""

    __tablename__ = "model_export"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), index=True)
    created_by: Mapped[str] = mapped_column(String(100))
    checkpoint: Mapped[str | None] = mapped_column(String(32))  # None: the latest (resolved when exported)
    weights: Mapped[list[float] | None] = mapped_column(JsonColumn)  # None: adapters only, the weight chosen later
    adapters: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    artifact: Mapped[str | None] = mapped_column(String(64))  # the zip's name in the run's exports folder
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)  # a 7B model is 14 GB
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# -- review -----------------------------------------------------------------------------------------------------------


class ReviewQueue(Base):
    """A set of generations a team reviews: single responses (rated 1–5) or comparisons (A / B / tie)."""

    __tablename__ = "review_queue"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_by: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))  # a QueueKind
    blind: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default=QueueStatus.OPEN)
    objectives: Mapped[list[str]] = mapped_column(JsonColumn)
    source: Mapped[dict[str, Any]] = mapped_column(JsonColumn)  # how it was built
    # What a rating means, per objective and "overall" (what a 5 is for brevity): shown beside each rating row.
    rubric: Mapped[dict[str, str]] = mapped_column(JsonColumn, server_default=text("'{}'"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ReviewItem(Base):
    __tablename__ = "review_item"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("review_queue.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    # One response (single) or two (comparison, A then B): {text, run_id, step, weights, scores, origin}.
    responses: Mapped[list[dict[str, Any]]] = mapped_column(JsonColumn)
    swapped: Mapped[bool] = mapped_column(Boolean, default=False)  # blind queues show B first where True

    __table_args__ = (UniqueConstraint("queue_id", "position", name="uq_review_item_queue_position"),)


class Review(Base):
    """One reviewer's judgement of one item: a draft until submitted, editable until the queue closes."""

    __tablename__ = "review"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("review_item.id", ondelete="CASCADE"), index=True)
    reviewer: Mapped[str] = mapped_column(String(100))
    ratings: Mapped[dict[str, Any]] = mapped_column(JsonColumn)  # objective → 1–5, or "A" / "B" / "tie"
    overall: Mapped[str | None] = mapped_column(String(8))  # "1"…"5", or "A" / "B" / "tie"
    comment: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default=ReviewStatus.DRAFT)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("item_id", "reviewer", name="uq_review_item_reviewer"),)
