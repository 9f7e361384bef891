"""A Recorder that writes a run's events to the database from a background thread.

The training loop only appends to in-memory buffers; a thread flushes them in one transaction at least every
`flush_s` seconds (idempotent upserts, so a retried flush changes nothing) and sends heartbeats in transactions of
their own, so that a write that keeps failing is not mistaken for a vanished worker: the run fails with its error.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, fields
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.store import run_state
from app.store.db import session_scope
from app.store.metric_store import Point, ingest
from app.store.models import Evaluation, Sample
from app.store.sql import insert_ignoring_duplicates, storable_text
from meal_core.enums import RunPhase
from meal_core.evaluation import EvaluationResult
from meal_core.recorder import SampleRecord

log = logging.getLogger(__name__)


def sample_rows(run_id: int, samples: list[SampleRecord]) -> list[dict[str, object]]:
    """The `sample` table's rows of one step's records: the record's fields, its position in the step, text that
    the database can store."""
    return [
        {
            **asdict(s),
            "prompt_id": storable_text(s.prompt_id),
            "prompt": storable_text(s.prompt),
            "response": storable_text(s.response),
            "run_id": run_id,
            "position": i,
        }
        for i, s in enumerate(samples)
    ]


def evaluation_row(run_id: int, result: EvaluationResult) -> dict[str, object]:
    """The `evaluation` table's row of a result: the record's own fields, as its JSON form has them."""
    return {"run_id": run_id, **result.to_json()}


def evaluation_record(row: Evaluation) -> dict[str, Any]:
    """The reverse: an `evaluation` row as the record's JSON form (what evaluations.jsonl holds)."""
    return {f.name: getattr(row, f.name) for f in fields(EvaluationResult)}


class RecorderError(RuntimeError):
    """The run's records could not be stored for longer than the recorder waits: the run should fail."""


class DatabaseRecorder:
    def __init__(
        self,
        database_url: str,
        run_id: int,
        worker: str,
        flush_s: float = 0.5,
        heartbeat_s: float = 5.0,
        also_stop_when: threading.Event | None = None,
        give_up_s: float = 60.0,
    ) -> None:
        """`also_stop_when`: besides a stop requested through the panel, stop the run once this is set.
        `give_up_s`: once writes have failed for this long, `should_stop` raises RecorderError."""
        self.database_url, self.run_id, self.worker = database_url, run_id, worker
        self.flush_s, self.heartbeat_s, self.give_up_s = flush_s, heartbeat_s, give_up_s
        self.also_stop_when = also_stop_when
        self._failing_since: float | None = None  # monotonic time of the first of the failed writes in a row
        self._last_error = ""
        self._lock = threading.Lock()
        self._points: list[Point] = []
        self._samples: list[dict[str, object]] = []
        self._evaluations: list[EvaluationResult] = []
        self._progress: tuple[int, int, float | None] | None = None
        # Only the latest phase report is kept: the trainer reports after every generate batch, the database
        # sees where the phase stood at each flush.
        self._phase: tuple[RunPhase, int, int, float | None] | None = None
        self._reproducibility: dict[str, object] | None = None
        self._closing = threading.Event()
        self._last_heartbeat = 0.0
        self._thread = threading.Thread(target=self._loop, name=f"recorder-run-{run_id}", daemon=True)
        self._thread.start()

    # -- the Recorder protocol (called from the training loop) ---------------------------------------------------

    def metrics(self, step: int, values: dict[str, float]) -> None:
        now = time.time()
        with self._lock:
            self._points += [Point(key, step, float(value), now) for key, value in values.items()]

    def samples(self, step: int, samples: list[SampleRecord]) -> None:
        rows = sample_rows(self.run_id, samples)
        with self._lock:
            self._samples += rows

    def evaluation(self, result: EvaluationResult) -> None:
        with self._lock:
            self._evaluations.append(result)

    def status(self, status: str, message: str | None = None) -> None:
        log.info("run %s: %s%s", self.run_id, status, f" ({message})" if message else "")

    def progress(self, done: int, total: int, eta_seconds: float | None) -> None:
        with self._lock:
            self._progress = (done, total, eta_seconds)

    def phase(self, phase: RunPhase, done: int, total: int, eta_seconds: float | None) -> None:
        with self._lock:
            self._phase = (phase, done, total, eta_seconds)

    def reproducibility(self, record: dict[str, object]) -> None:
        with self._lock:
            self._reproducibility = record

    def should_stop(self) -> bool:
        if self.also_stop_when is not None and self.also_stop_when.is_set():
            return True
        try:
            with session_scope(self.database_url) as session:
                stop = run_state.stop_requested(session, self.run_id)
        except SQLAlchemyError as error:  # a database blip: train on; give_up_s decides when it is not a blip
            self._failed(error)
            stop = False
        failing_since = self._failing_since
        if failing_since is not None and time.monotonic() - failing_since > self.give_up_s:
            raise RecorderError(
                f"run {self.run_id}: its records could not be stored for {time.monotonic() - failing_since:.0f} s; "
                f"last error: {self._last_error}"
            )
        return stop

    # -- flushing -----------------------------------------------------------------------------------------------

    def before_checkpoint(self) -> None:
        """Flush now, so that a checkpoint is not published ahead of its records. If the database is away, the
        rows stay buffered and the flush loop and close() keep trying, as always (give_up_s decides)."""
        try:
            self.flush()
        except Exception as error:
            log.warning("run %s: records not flushed before the checkpoint: %s", self.run_id, error)

    def _loop(self) -> None:
        failures = 0
        while not self._closing.wait(self.flush_s):
            try:
                self.flush()
                failures = 0
            except Exception:  # keep training; the next flush retries the same rows, idempotently
                failures += 1
                if failures == 1:
                    log.exception("run %s: flush failed, will retry", self.run_id)
                elif failures % 20 == 0:
                    log.error("run %s: flush failed %d times in a row: %s", self.run_id, failures, self._last_error)

    def flush(self) -> None:
        """Heartbeat if one is due, then write what is buffered. Raises if either fails (nothing is lost)."""
        touched = False  # only a write that reached the database shows that failures are over
        try:
            if time.monotonic() - self._last_heartbeat >= self.heartbeat_s:
                with session_scope(self.database_url) as session:
                    run_state.heartbeat(session, self.run_id, self.worker)
                self._last_heartbeat = time.monotonic()
                touched = True
            with self._lock:
                points, samples, evaluations, progress = self._points, self._samples, self._evaluations, self._progress
                record, self._reproducibility = self._reproducibility, None
                phase, self._phase = self._phase, None
                self._points, self._samples, self._evaluations, self._progress = [], [], [], None
            if points or samples or evaluations or progress or record or phase:
                try:
                    with session_scope(self.database_url) as session:
                        self._write(session, points, samples, evaluations, progress)
                        if phase is not None:
                            run_state.report_phase(session, self.run_id, *phase)
                        if record is not None:
                            run_state.record_reproducibility(session, self.run_id, record)
                    touched = True
                except Exception:
                    with self._lock:  # put them back in front, in order, for the next attempt
                        self._points[:0], self._samples[:0], self._evaluations[:0] = points, samples, evaluations
                        self._progress = self._progress or progress
                        self._phase = self._phase or phase
                        self._reproducibility = self._reproducibility or record
                    raise
        except Exception as error:
            self._failed(error)
            raise
        if touched:
            self._failing_since = None

    def _failed(self, error: Exception) -> None:
        self._last_error = f"{type(error).__name__}: {error}"
        if self._failing_since is None:
            self._failing_since = time.monotonic()

    def _write(
        self,
        session: Session,
        points: list[Point],
        samples: list[dict[str, object]],
        evaluations: list[EvaluationResult],
        progress: tuple[int, int, float | None] | None,
    ) -> None:
        if points:
            ingest(session, self.run_id, points)
        if samples:
            insert_ignoring_duplicates(session, Sample, samples, ["run_id", "step", "position"])
        if evaluations:
            rows = [evaluation_row(self.run_id, e) for e in evaluations]
            insert_ignoring_duplicates(session, Evaluation, rows, ["run_id", "step"])
        if progress:
            run_state.report_progress(session, self.run_id, *progress)

    def close(self) -> None:
        """Stop the thread and write whatever is still buffered. A database that is away is waited for as during
        training, until writes have failed for give_up_s: a run that ends during a short outage keeps its last
        records (the last flush used to be tried once, and the run's last iterations and result were lost)."""
        self._closing.set()
        self._thread.join()
        self._last_heartbeat = 0.0
        while True:
            try:
                self.flush()
                return
            except Exception:
                failing_since = self._failing_since
                if failing_since is None or time.monotonic() - failing_since > self.give_up_s:
                    raise
                log.warning("run %s: last records not stored yet, will retry: %s", self.run_id, self._last_error)
                time.sleep(min(1.0, self.flush_s * 5))
