"""What is new in a run since a client's cursor: the content of the run page's event stream.

A cursor is four numbers, "seq.sample.evaluation.version": the last metric ingest batch, sample id, evaluation
id and run version the client has. It travels as the SSE event id, so a reconnecting browser sends it back in
Last-Event-ID and resumes exactly where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Evaluation, MetricPoint, Run, Sample
from app.schemas import EvaluationOut, RunOut, SampleOut

MAX_POINTS_PER_EVENT = 5000
MAX_SAMPLES_PER_EVENT = 200


@dataclass(frozen=True)
class Cursor:
    seq: int = 0
    sample: int = 0
    evaluation: int = 0
    version: int = -1

    def encode(self) -> str:
        return f"{self.seq}.{self.sample}.{self.evaluation}.{self.version}"

    @classmethod
    def decode(cls, text: str | None) -> Cursor:
        """A missing or malformed cursor means "from the beginning"."""
        try:
            seq, sample, evaluation, version = (int(part) for part in (text or "").split("."))
        except ValueError:
            return cls()
        return cls(seq, sample, evaluation, version)


def current_cursor(session: Session, run_id: int) -> Cursor:
    return Cursor(
        session.scalar(select(func.max(MetricPoint.seq)).where(MetricPoint.run_id == run_id)) or 0,
        session.scalar(select(func.max(Sample.id)).where(Sample.run_id == run_id)) or 0,
        session.scalar(select(func.max(Evaluation.id)).where(Evaluation.run_id == run_id)) or 0,
        session.scalar(select(Run.version).where(Run.id == run_id)) or 0,
    )


def new_events(session: Session, run_id: int, cursor: Cursor) -> tuple[list[tuple[str, Any]], Cursor]:
    """(event name, payload) pairs newer than `cursor`, and the cursor after them."""
    events: list[tuple[str, Any]] = []
    run = session.get(Run, run_id)
    if run is None:
        return [("gone", {"run_id": run_id})], cursor
    version = cursor.version
    if run.version != cursor.version:
        status = RunOut.model_validate(run).model_dump(
            mode="json",
            include={
                "id",
                "status",
                "iteration",
                "total_iterations",
                "eta_seconds",
                "error",
                "traceback",
                "heartbeat_at",
                "started_at",
                "finished_at",
                "stop_requested",
            },
        )
        events.append(("status", status))
        version = run.version

    seq = cursor.seq
    upto = session.scalar(
        select(func.max(MetricPoint.seq)).where(MetricPoint.run_id == run_id, MetricPoint.seq > cursor.seq)
    )
    if upto is not None:
        # Whole ingest batches only, so that the cursor never splits one; a huge backlog comes in several events.
        first = cursor.seq + 1
        query = (
            select(MetricPoint.key, MetricPoint.step, MetricPoint.value, MetricPoint.seq)
            .where(MetricPoint.run_id == run_id)
            .order_by(MetricPoint.seq, MetricPoint.key, MetricPoint.step)
        )
        rows = session.execute(query.where(MetricPoint.seq.between(first, upto)).limit(MAX_POINTS_PER_EVENT + 1)).all()
        if len(rows) > MAX_POINTS_PER_EVENT:
            last_seq = rows[-1].seq
            rows = [r for r in rows if r.seq < last_seq] or session.execute(
                query.where(MetricPoint.seq == last_seq)  # one batch larger than an event: send it whole
            ).all()
        seq = max(r.seq for r in rows)
        points: dict[str, list[list[float]]] = {}
        for r in rows:
            points.setdefault(r.key, []).append([r.step, r.value])
        events.append(("metrics", points))

    sample_id = cursor.sample
    samples = session.scalars(
        select(Sample)
        .where(Sample.run_id == run_id, Sample.id > cursor.sample)
        .order_by(Sample.id)
        .limit(MAX_SAMPLES_PER_EVENT)
    ).all()
    if samples:
        sample_id = samples[-1].id
        events.append(("samples", [SampleOut.model_validate(s).model_dump(mode="json") for s in samples]))

    evaluation_id = cursor.evaluation
    evaluations = session.scalars(
        select(Evaluation).where(Evaluation.run_id == run_id, Evaluation.id > cursor.evaluation).order_by(Evaluation.id)
    ).all()
    if evaluations:
        evaluation_id = evaluations[-1].id
        events.append(("evaluations", [EvaluationOut.model_validate(e).model_dump(mode="json") for e in evaluations]))
    return events, Cursor(seq, sample_id, evaluation_id, version)
