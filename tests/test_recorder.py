"""The worker's DatabaseRecorder on SQLite and PostgreSQL: what the engine records lands in the database, model
output that PostgreSQL cannot hold is made storable, and a write that keeps failing fails the run with its error
while heartbeats go on."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import pytest
from sqlalchemy import select

from app.store import run_state
from app.store.db import session_scope
from app.store.models import Evaluation, MetricLatest, Run, Sample
from meal_core.enums import RunPhase, RunStatus
from meal_core.evaluation import EvaluationResult, FrontPoint
from meal_core.recorder import SampleRecord
from worker.recorder import DatabaseRecorder, RecorderError

WORKER = "test-worker"


def claimed_run(url: str) -> int:
    with session_scope(url) as session:
        run_id = run_state.create_run(session, "recorded", {"iterations": 3}, 3, "tester").id
    with session_scope(url) as session:
        assert run_state.claim(session, run_id, WORKER)
    return run_id


def sample(step: int, response: str, **fields: object) -> SampleRecord:
    values: dict[str, object] = {
        "step": step,
        "prompt_id": "p0",
        "prompt": "Say something.",
        "weights": [0.5, 0.5],
        "response": response,
        "raw_rewards": {"a": 1.0, "b": 2.0},
        "normalized_rewards": {"a": 0.1, "b": -0.1},
        "accepted": True,
    } | fields
    return SampleRecord(**values)  # type: ignore[arg-type]


def heartbeat_at(url: str, run_id: int) -> datetime | None:
    with session_scope(url) as session:
        return session.scalar(select(Run.heartbeat_at).where(Run.id == run_id))


def test_everything_recorded_is_stored_and_nul_characters_become_storable(database_url: str) -> None:
    run_id = claimed_run(database_url)
    recorder = DatabaseRecorder(database_url, run_id, WORKER, flush_s=0.05, heartbeat_s=0.05)
    recorder.metrics(1, {"reward/a": 1.5, "loss/policy": 0.25})
    recorder.samples(1, [sample(1, "tiny models say\x00odd things"), sample(1, "plain")])
    result = EvaluationResult(1, ["a", "b"], [FrontPoint([0.5, 0.5], [0.1, 0.2], [1.0, 2.0], True)], 0.5, [0, 0], {})
    recorder.evaluation(result)
    recorder.progress(1, 3, 12.0)
    assert recorder.should_stop() is False
    recorder.close()

    with session_scope(database_url) as session:
        stored = session.execute(select(MetricLatest.key, MetricLatest.value).where(MetricLatest.run_id == run_id))
        latest = {key: value for key, value in stored}
        responses = session.scalars(select(Sample.response).where(Sample.run_id == run_id).order_by(Sample.position))
        evaluation = session.scalars(select(Evaluation).where(Evaluation.run_id == run_id)).one()
        run = session.get(Run, run_id)
        assert latest == {"reward/a": 1.5, "loss/policy": 0.25}
        assert list(responses) == ["tiny models say\ufffdodd things", "plain"]
        assert (evaluation.step, evaluation.hypervolume, evaluation.points[0]["on_front"]) == (1, 0.5, True)
        assert run is not None and (run.iteration, run.eta_seconds) == (1, 12.0) and run.heartbeat_at is not None


def test_a_stop_event_stops_the_run(database_url: str) -> None:
    run_id = claimed_run(database_url)
    event = threading.Event()
    recorder = DatabaseRecorder(database_url, run_id, WORKER, flush_s=0.05, also_stop_when=event)
    try:
        assert recorder.should_stop() is False
        event.set()
        assert recorder.should_stop() is True
    finally:
        recorder.close()


def test_writes_that_keep_failing_fail_the_run_while_heartbeats_go_on(database_url: str) -> None:
    run_id = claimed_run(database_url)
    recorder = DatabaseRecorder(database_url, run_id, WORKER, flush_s=0.05, heartbeat_s=0.05, give_up_s=3.0)
    recorder.samples(1, [sample(1, "refused", accepted=None)])  # the database refuses it: NOT NULL
    first_beat = None
    deadline = time.monotonic() + 30
    while first_beat is None and time.monotonic() < deadline:
        first_beat = heartbeat_at(database_url, run_id)
        time.sleep(0.05)
    assert first_beat is not None
    assert recorder.should_stop() is False, "failing for less than give_up_s: keep training, the flush retries"

    time.sleep(3.5)
    with pytest.raises(RecorderError, match=r"could not be stored for \d+ s; last error: IntegrityError"):
        recorder.should_stop()
    later_beat = heartbeat_at(database_url, run_id)
    assert later_beat is not None and later_beat > first_beat, "the worker is alive: it keeps saying so"
    with pytest.raises(Exception, match="accepted"):
        recorder.close()  # the last flush fails the same way, and says so


def test_an_unreachable_database_is_tolerated_for_give_up_s_then_fails_the_run() -> None:
    unreachable = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"  # nothing listens on port 1
    recorder = DatabaseRecorder(unreachable, 1, WORKER, flush_s=0.05, heartbeat_s=0.05, give_up_s=2.0)
    recorder.metrics(1, {"loss/policy": 1.0})
    assert recorder.should_stop() is False, "a blip: training goes on"
    time.sleep(2.5)
    with pytest.raises(RecorderError, match="last error: OperationalError"):
        recorder.should_stop()
    with pytest.raises(Exception, match="127.0.0.1"):
        recorder.close()


def stored_phase(url: str, run_id: int) -> tuple[str | None, int, int, float | None]:
    with session_scope(url) as session:
        run = session.get(Run, run_id)
        assert run is not None
        return run.phase, run.phase_done, run.phase_total, run.phase_eta_seconds


def test_phases_are_stored_at_each_flush_and_cleared_when_the_run_ends(database_url: str) -> None:
    """The trainer reports its phase after every generate call; the recorder keeps the latest and writes it with
    the periodic flush (one UPDATE, whatever the number of reports). finish() clears it, and a late write from a
    worker that lost the run cannot bring it back."""
    run_id = claimed_run(database_url)
    recorder = DatabaseRecorder(database_url, run_id, WORKER, flush_s=3600, heartbeat_s=3600)  # flushed by hand
    try:
        recorder.phase(RunPhase.LOADING, 0, 0, None)
        recorder.flush()
        assert stored_phase(database_url, run_id) == ("loading", 0, 0, None)
        with session_scope(database_url) as session:
            version = session.get(Run, run_id).version  # type: ignore[union-attr]
        for done in range(0, 265, 8):
            recorder.phase(RunPhase.EVALUATING, done, 264, None if done == 0 else 3.0 * (264 - done))
        recorder.flush()
        assert stored_phase(database_url, run_id) == ("evaluating", 264, 264, 0.0)
        with session_scope(database_url) as session:
            assert session.get(Run, run_id).version == version + 1  # type: ignore[union-attr]
        recorder.phase(RunPhase.TRAINING, 1, 3, 20.0)
    finally:
        recorder.close()  # writes what is left
    assert stored_phase(database_url, run_id) == ("training", 1, 3, 20.0)

    with session_scope(database_url) as session:
        assert run_state.finish(session, run_id, WORKER, RunStatus.SUCCEEDED)
    assert stored_phase(database_url, run_id) == (None, 0, 0, None)
    with session_scope(database_url) as session:
        run_state.report_phase(session, run_id, RunPhase.CHECKPOINTING, 0, 0, None)
    assert stored_phase(database_url, run_id) == (None, 0, 0, None), "only a held run has a phase"
