"""What is new in a run since a client's cursor: the content of the run page's event stream.

A cursor is four numbers, "seq.sample.evaluation.version": the last metric ingest batch, sample id, evaluation
id and run version the client has. It travels as the SSE event id, so a reconnecting browser sends it back in
Last-Event-ID and resumes exactly where it stopped. Each event carries the cursor just after itself (not after the
whole poll), so a connection that drops between two events of one poll loses neither of them.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, replace
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, func, select, true
from sqlalchemy.orm import Session

from app.schemas import EvaluationOut, RunOut, RunPhaseOut, SampleOut
from app.store.models import Evaluation, MetricPoint, Run, Sample

MAX_POINTS_PER_EVENT = 5000
MAX_SAMPLES_PER_EVENT = 200


@dataclass(frozen=True)
class Cursor:
    seq: int = 0
    sample: int = 0
    evaluation: int = 0
    version: int = -1

    def covers(self, other: Cursor) -> bool:
        """Whether a client at this cursor has everything up to `other`."""
        return all(mine >= theirs for mine, theirs in zip(astuple(self), astuple(other), strict=True))

    def encode(self) -> str:
        return f"{self.seq}.{self.sample}.{self.evaluation}.{self.version}"

    @classmethod
    def decode(cls, text: str | None) -> Cursor:
        """A missing or malformed cursor (or one with parts no database id could reach) means "from the beginning"."""
        if not text or len(text) > 100:
            return cls()
        try:
            parts = [int(part) for part in text.split(".")]
        except ValueError:
            return cls()
        if len(parts) != 4 or not all(0 <= part < 2**62 for part in parts):
            return cls()
        return cls(*parts)


class StreamEvent(NamedTuple):
    name: str
    data: Any
    cursor: Cursor  # what the client has once it has this event: the event's SSE id


def current_cursor(session: Session, run_id: int) -> Cursor:
    return Cursor(
        session.scalar(select(func.max(MetricPoint.seq)).where(MetricPoint.run_id == run_id)) or 0,
        session.scalar(select(func.max(Sample.id)).where(Sample.run_id == run_id)) or 0,
        session.scalar(select(func.max(Evaluation.id)).where(Evaluation.run_id == run_id)) or 0,
        session.scalar(select(Run.version).where(Run.id == run_id)) or 0,
    )


#: The cursor part each event moves (`gone` moves none).
PART_OF_EVENT = {"status": "version", "metrics": "seq", "samples": "sample", "evaluations": "evaluation"}


def _within(column: Any, upto: Cursor | None, part: str) -> ColumnElement[bool]:
    return true() if upto is None else column <= getattr(upto, part)


def new_events(
    session: Session, run_id: int, cursor: Cursor, upto: Cursor | None = None
) -> tuple[list[StreamEvent], Cursor]:
    """Events newer than `cursor` (name, payload, cursor after the event), and the cursor after them all. With
    `upto`, only rows up to that cursor (a client catching up to where a shared poller stands); the status event is
    always the run's current one."""
    events: list[StreamEvent] = []
    run = session.get(Run, run_id)
    if run is None:
        return [StreamEvent("gone", {"run_id": run_id}, cursor)], cursor
    if run.version != cursor.version and (upto is None or cursor.version < upto.version):
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
                "tags",
                "note",
                "archived",
                *RunPhaseOut.model_fields,
            },
        )
        cursor = replace(cursor, version=run.version)
        events.append(StreamEvent("status", status, cursor))

    last = session.scalar(
        select(func.max(MetricPoint.seq)).where(
            MetricPoint.run_id == run_id, MetricPoint.seq > cursor.seq, _within(MetricPoint.seq, upto, "seq")
        )
    )
    if last is not None:
        # Whole ingest batches only, so that the cursor never splits one; a huge backlog comes in several events.
        first = cursor.seq + 1
        query = (
            select(MetricPoint.key, MetricPoint.step, MetricPoint.value, MetricPoint.seq)
            .where(MetricPoint.run_id == run_id)
            .order_by(MetricPoint.seq, MetricPoint.key, MetricPoint.step)
        )
        rows = session.execute(query.where(MetricPoint.seq.between(first, last)).limit(MAX_POINTS_PER_EVENT + 1)).all()
        if len(rows) > MAX_POINTS_PER_EVENT:
            last_seq = rows[-1].seq
            rows = [r for r in rows if r.seq < last_seq] or session.execute(
                query.where(MetricPoint.seq == last_seq)  # one batch larger than an event: send it whole
            ).all()
        points: dict[str, list[list[float]]] = {}
        for r in rows:
            points.setdefault(r.key, []).append([r.step, r.value])
        cursor = replace(cursor, seq=max(r.seq for r in rows))
        events.append(StreamEvent("metrics", points, cursor))

    samples = session.scalars(
        select(Sample)
        .where(Sample.run_id == run_id, Sample.id > cursor.sample, _within(Sample.id, upto, "sample"))
        .order_by(Sample.id)
        .limit(MAX_SAMPLES_PER_EVENT)
    ).all()
    if samples:
        cursor = replace(cursor, sample=samples[-1].id)
        events.append(
            StreamEvent("samples", [SampleOut.model_validate(s).model_dump(mode="json") for s in samples], cursor)
        )

    evaluations = session.scalars(
        select(Evaluation)
        .where(
            Evaluation.run_id == run_id, Evaluation.id > cursor.evaluation, _within(Evaluation.id, upto, "evaluation")
        )
        .order_by(Evaluation.id)
    ).all()
    if evaluations:
        cursor = replace(cursor, evaluation=evaluations[-1].id)
        payload = [EvaluationOut.model_validate(e).model_dump(mode="json") for e in evaluations]
        events.append(StreamEvent("evaluations", payload, cursor))
    return events, cursor
