"""Writing and reading metric series: idempotent ingest, and downsampled chart queries.

Ingest inserts points keyed by (run, key, step), so a re-sent batch changes nothing; only points that were
really new update the latest value and the rollups. A chart query returns at most `max_points` buckets, each
with its last, min and max value, reading precomputed rollups instead of every point.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from app.store.models import MetricLatest, MetricPoint, MetricRollup
from app.store.sql import DialectInsert, insert_rows

ROLLUP_BASE = 4
ROLLUP_LEVELS = 9  # bucket widths 4, 16, …, 262144 steps


@dataclass(frozen=True)
class Point:
    key: str
    step: int
    value: float
    wall_time: float


def _pairwise(session: Session, name: str) -> Any:
    """Two-argument min/max: SQLite's scalar min()/max(), PostgreSQL's LEAST/GREATEST."""
    if session.get_bind().dialect.name == "postgresql":
        return {"min": func.least, "max": func.greatest}[name]
    return {"min": func.min, "max": func.max}[name]


def ingest(session: Session, run_id: int, points: Sequence[Point]) -> int:
    """Store points; returns how many were new. Non-finite values are dropped (JSON and charts can't carry them)."""
    finite = {(p.key, p.step): p for p in points if math.isfinite(p.value)}
    if not finite:
        return 0
    # metric_latest holds each key's last stored step, written in the same transaction as the points. A point after
    # it is new for certain and goes in with a plain INSERT; only the rest (a re-sent batch, a late point) need the
    # slower INSERT … ON CONFLICT DO NOTHING, and only those come back to say whether they were new.
    stored = session.execute(select(MetricLatest.key, MetricLatest.step).where(MetricLatest.run_id == run_id))
    last_stored = {key: step for key, step in stored}
    ahead = [p for p in finite.values() if p.key not in last_stored or p.step > last_stored[p.key]]
    behind = [p for p in finite.values() if p.key in last_stored and p.step <= last_stored[p.key]]
    seq = (session.scalar(select(func.max(MetricPoint.seq)).where(MetricPoint.run_id == run_id)) or 0) + 1
    table = MetricPoint.__table__
    new = list(ahead)
    if behind:
        returned = insert_rows(
            session,
            table,
            _point_rows(run_id, seq, behind),
            lambda insert: insert.on_conflict_do_nothing(index_elements=["run_id", "key", "step"]).returning(
                table.c.key, table.c.step
            ),
        )
        new += [finite[(row.key, row.step)] for row in returned]
    if ahead:
        insert_rows(session, table, _point_rows(run_id, seq, ahead))
    if new:
        _update_latest(session, run_id, new)
        _update_rollups(session, run_id, new, last_stored)
    return len(new)


def _point_rows(run_id: int, seq: int, points: list[Point]) -> list[dict[str, Any]]:
    return [
        {"run_id": run_id, "key": p.key, "step": p.step, "value": p.value, "wall_time": p.wall_time, "seq": seq}
        for p in points
    ]


def _update_latest(session: Session, run_id: int, points: list[Point]) -> None:
    newest: dict[str, Point] = {}
    for p in points:
        if p.key not in newest or p.step > newest[p.key].step:
            newest[p.key] = p
    rows = [
        {"run_id": run_id, "key": p.key, "step": p.step, "value": p.value, "wall_time": p.wall_time}
        for p in newest.values()
    ]
    table = MetricLatest.__table__
    insert_rows(
        session,
        table,
        rows,
        lambda insert: insert.on_conflict_do_update(
            index_elements=["run_id", "key"],
            set_={"step": insert.excluded.step, "value": insert.excluded.value, "wall_time": insert.excluded.wall_time},
            where=insert.excluded.step >= table.c.step,
        ),
    )


def _update_rollups(session: Session, run_id: int, points: list[Point], last_stored: dict[str, int]) -> None:
    # Level 1 from the points, then each level from the one below: a bucket of level L+1 is ROLLUP_BASE buckets of
    # level L, so the work is about 4/3 of the points instead of ROLLUP_LEVELS times them.
    buckets: dict[tuple[str, int], list[float]] = {}  # (key, bucket) → [min, max, last_step, last]
    for p in points:
        _merge(buckets, (p.key, p.step // ROLLUP_BASE), p.value, p.value, p.step, p.value)
    fresh: list[dict[str, Any]] = []  # buckets that start after the key's last stored step: no row exists yet
    seams: list[dict[str, Any]] = []  # buckets that may already hold stored points: merged into the row
    for level in range(1, ROLLUP_LEVELS + 1):
        width = ROLLUP_BASE**level
        for (key, bucket), (lo, hi, last_step, last) in buckets.items():
            row = {
                "run_id": run_id,
                "key": key,
                "level": level,
                "bucket": bucket,
                "min_value": lo,
                "max_value": hi,
                "last_step": int(last_step),
                "last_value": last,
            }
            (fresh if key not in last_stored or bucket * width > last_stored[key] else seams).append(row)
        if level < ROLLUP_LEVELS:
            parents: dict[tuple[str, int], list[float]] = {}
            for (key, bucket), (lo, hi, last_step, last) in buckets.items():
                _merge(parents, (key, bucket // ROLLUP_BASE), lo, hi, last_step, last)
            buckets = parents
    table = MetricRollup.__table__
    if fresh:
        insert_rows(session, table, fresh)
    if seams:
        smaller, larger = _pairwise(session, "min"), _pairwise(session, "max")

        def merge(insert: DialectInsert) -> DialectInsert:
            excluded = insert.excluded
            newer = excluded.last_step >= table.c.last_step
            return insert.on_conflict_do_update(
                index_elements=["run_id", "key", "level", "bucket"],
                set_={
                    "min_value": smaller(table.c.min_value, excluded.min_value),
                    "max_value": larger(table.c.max_value, excluded.max_value),
                    "last_value": case((newer, excluded.last_value), else_=table.c.last_value),
                    "last_step": larger(table.c.last_step, excluded.last_step),
                },
            )

        insert_rows(session, table, seams, merge)


@dataclass
class Series:
    """Buckets in step order: `steps` is each bucket's last step, `values` its last value."""

    key: str
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    mins: list[float] = field(default_factory=list)
    maxs: list[float] = field(default_factory=list)
    downsampled: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "steps": self.steps,
            "values": self.values,
            "min": self.mins,
            "max": self.maxs,
            "downsampled": self.downsampled,
        }


def _merge(into: dict[Any, list[float]], bucket: Any, lo: float, hi: float, last_step: float, last: float) -> None:
    """Fold a bucket's [min, max, last_step, last] into `into[bucket]`."""
    slot = into.get(bucket)
    if slot is None:
        into[bucket] = [lo, hi, last_step, last]
        return
    slot[0], slot[1] = min(slot[0], lo), max(slot[1], hi)
    if last_step > slot[2]:
        slot[2], slot[3] = last_step, last


def query_series(
    session: Session, run_id: int, key: str, start: int | None, end: int | None, max_points: int
) -> Series:
    where = and_(MetricPoint.run_id == run_id, MetricPoint.key == key)
    # First and last step as two ORDER BY … LIMIT 1 lookups: one seek each in the primary key index on any database.
    # (min() and max() in one SELECT make SQLite scan every point of the series, and PostgreSQL too while the table
    # has no statistics yet, e.g. during a run's first minutes.)
    column = MetricPoint.step
    lo, hi = session.execute(
        select(
            select(column).where(where).order_by(column).limit(1).scalar_subquery(),
            select(column).where(where).order_by(column.desc()).limit(1).scalar_subquery(),
        )
    ).one()
    series = Series(key)
    if lo is None:
        return series
    lo, hi = max(lo, start) if start is not None else lo, min(hi, end) if end is not None else hi
    if lo > hi:
        return series
    raw = select(MetricPoint.step, MetricPoint.value).where(where).order_by(MetricPoint.step)
    if hi - lo + 1 <= max_points:  # steps are integers: the span bounds the number of points
        for step, value in session.execute(raw.where(MetricPoint.step.between(lo, hi))):
            series.steps.append(step)
            series.values.append(value)
            series.mins.append(value)
            series.maxs.append(value)
        return series

    # Output buckets of `width` steps, aligned to multiples of `width`; at most max_points of them.
    width = math.ceil((hi - lo + 1) / max(max_points - 1, 1))
    level = min(int(math.log(width, ROLLUP_BASE) + 1e-9), ROLLUP_LEVELS)
    level_width = ROLLUP_BASE**level if level >= 1 else 1
    width = math.ceil(width / level_width) * level_width
    merged: dict[int, list[float]] = {}
    if level >= 1:
        # Rollup buckets entirely inside [lo, hi]; the partial ones at either edge are read as raw points.
        first = -(-lo // level_width)
        last = (hi + 1) // level_width - 1
        rollups = select(
            MetricRollup.bucket,
            MetricRollup.min_value,
            MetricRollup.max_value,
            MetricRollup.last_step,
            MetricRollup.last_value,
        ).where(
            MetricRollup.run_id == run_id,
            MetricRollup.key == key,
            MetricRollup.level == level,
            MetricRollup.bucket.between(first, last),
        )
        for bucket, mn, mx, last_step, last_value in session.execute(rollups):
            _merge(merged, bucket * level_width // width, mn, mx, last_step, last_value)
        edges: Iterable[tuple[int, int]] = [(lo, first * level_width - 1), ((last + 1) * level_width, hi)]
        if first > last:
            edges = [(lo, hi)]
    else:
        edges = [(lo, hi)]
    for a, b in edges:
        if a <= b:
            for step, value in session.execute(raw.where(MetricPoint.step.between(a, b))):
                _merge(merged, step // width, value, value, step, value)
    for bucket in sorted(merged):
        low, high, final_step, final_value = merged[bucket]
        series.steps.append(int(final_step))
        series.values.append(final_value)
        series.mins.append(low)
        series.maxs.append(high)
    series.downsampled = True
    return series
