"""End to end: the API, a real Celery worker process (`meal worker`) and a real broker and database.

Two setups, following the `database_url` parameter: PostgreSQL with a Redis broker (deployed mode), and SQLite with
the SQLite broker (`sqla+sqlite://`, embedded mode). The worker trains a tiny random model on the CPU.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from db_fixtures import REDIS_DB_WORKER, redis_broker_url
from fault_helpers import CHEAP
from helpers import WorkerProcess, bearer, tiny_run_config, with_signal
from live_server import Event, EventStream, live_server

from app.store.queue import enqueue_training
from app.store.settings import Settings
from meal_core.checkpoint import latest_checkpoint
from meal_core.enums import RunPhase

TOTAL = 8  # iterations of the stop/resume run
KEY = "reward/positivity"  # recorded at every iteration


@dataclass
class Setup:
    base_url: str
    settings: Settings
    worker: WorkerProcess
    headers: dict[str, str]  # a trainer's API token

    @property
    def runs_dir(self) -> Path:
        return self.settings.runs_dir

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.base_url}{path}", params=params, headers=self.headers, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, json: Any = None) -> httpx.Response:
        return httpx.post(f"{self.base_url}{path}", json=json, headers=self.headers, timeout=60)

    def run(self, run_id: int) -> dict[str, Any]:
        return dict(self.get(f"/api/runs/{run_id}"))

    def wait_run(self, run_id: int, done: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if done(run):
                return run
            if time.monotonic() > deadline:
                pytest.fail(f"run {run_id}: not {what} within {timeout} s; now {run['status']}: {run}")
            if not self.worker.alive():
                pytest.fail(f"the worker exited while waiting for run {run_id} to be {what}")
            time.sleep(0.1)

    def series(self, run_id: int, key: str) -> dict[str, Any]:
        (series,) = self.get(f"/api/runs/{run_id}/metrics", keys=key)["series"]
        return dict(series)

    def wait_skipped(self, task_id: str) -> None:
        """Until the worker has handled this message and found nothing to do."""
        self.worker.wait_for(f"Task meal.train_run[{task_id}] succeeded", timeout=120)
        line = next(line for line in self.worker.output().splitlines() if f"[{task_id}] succeeded" in line)
        assert line.endswith("'skipped'"), line


def worker_setup(database_url: str, directory: Path, redis_db: int) -> Iterator[Setup]:
    """The API server and a real `meal worker` on this database and a broker of its own (Redis database `redis_db`
    with PostgreSQL, a SQLite broker in `directory` otherwise), for a module's tests; the worker's output is
    printed if it exited early. test_experiment_heldout.py takes it with its own Redis database."""
    if database_url.startswith("postgresql"):
        broker = redis_broker_url(redis_db)  # flushed: no stale message from an earlier session
    else:
        broker = f"sqla+sqlite:///{directory / 'broker.sqlite'}"
    settings = Settings(database_url=database_url, broker_url=broker, data_dir=directory / "data", events_poll_s=0.1)
    env = {key: value for key, value in os.environ.items() if not key.startswith("MEAL_")}
    env.update(
        MEAL_DATABASE_URL=database_url,
        MEAL_BROKER_URL=broker,
        MEAL_DATA_DIR=str(settings.data_dir),
        MEAL_RECORDER_FLUSH_S="0.2",
        MEAL_HEARTBEAT_INTERVAL_S="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    worker = WorkerProcess(env, directory)
    worker.start()
    try:
        with live_server(settings) as base_url:
            worker.wait_for(" ready.", timeout=120)
            yield Setup(base_url, settings, worker, bearer(settings))
    finally:
        crashed = worker.process is not None and worker.process.poll() is not None
        worker.stop()
        if crashed:
            print(f"---- worker exited early ({worker.process and worker.process.returncode}) ----\n{worker.output()}")


@pytest.fixture(scope="module")
def setup(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    yield from worker_setup(database_url, tmp_path_factory.mktemp("worker"), REDIS_DB_WORKER)


@pytest.fixture
def live(setup: Setup, request: pytest.FixtureRequest) -> Iterator[Setup]:
    """The module's setup; the worker's output is printed for any test that fails."""
    start = len(setup.worker.output())
    assert setup.worker.alive(), setup.worker.output()
    yield setup
    report = getattr(request.node, "report_call", None)
    if report is None or report.failed:
        print(f"---- worker output during {request.node.name} ----\n{setup.worker.output()[start:]}")


def launch(live: Setup, config: dict[str, Any], name: str) -> dict[str, Any]:
    response = live.post("/api/runs", {"name": name, "config": config})
    assert response.status_code == 201, response.text
    return dict(response.json())


def metric_steps(events: list[Event], key: str | None = None) -> list[int]:
    return [
        int(step)
        for e in events
        if e.name == "metrics"
        for k, points in e.data.items()
        if key in (None, k)
        for step, _ in points
    ]


def status_is(*statuses: str) -> Callable[[Event], bool]:
    return lambda event: event.name == "status" and event.data["status"] in statuses


def phases(events: list[Event]) -> list[str | None]:
    """The phase of each status event, in order, repeats dropped; every counted one within its total."""
    seen: list[str | None] = []
    for e in events:
        if e.name != "status":
            continue
        phase, done, total = e.data["phase"], e.data["phase_done"], e.data["phase_total"]
        assert phase is None or phase in set(RunPhase), e.data
        assert total == 0 or 0 <= done <= total, e.data
        if not seen or seen[-1] != phase:
            seen.append(phase)
    return seen


def test_engine_failure_at_start_is_stored_with_its_traceback(live: Setup, tiny_model_dir: Path) -> None:
    missing = live.settings.data_dir / "uploads" / "no-such-model"  # where configs may name files
    config = tiny_run_config(tiny_model_dir, model__name_or_path=str(missing)).model_dump(mode="json")
    run = launch(live, config, "broken")
    failed = live.wait_run(run["id"], lambda r: r["status"] == "failed", 120, "failed")
    assert "ModelLoadError" in failed["error"] and "no such directory" in failed["error"]
    assert str(missing) in failed["error"]
    assert failed["traceback"].startswith("Traceback (most recent call last)")
    assert "ModelLoadError" in failed["traceback"]
    assert failed["attempts"] == 1 and failed["worker"] and failed["finished_at"]

    # A second delivery of the task finds the run finished and does nothing.
    duplicate = enqueue_training(live.settings.broker_url, run["id"])
    live.wait_skipped(duplicate)
    after = live.run(run["id"])
    assert (after["status"], after["attempts"], after["error"]) == ("failed", 1, failed["error"])
    assert after["event_cursor"] == failed["event_cursor"], "nothing about the run changed"


def test_train_stop_resume_and_finish(live: Setup, tiny_model_dir: Path) -> None:
    config = tiny_run_config(tiny_model_dir, iterations=TOTAL, checkpoint__every=1, eval__every=0, **CHEAP)
    run = launch(live, config.model_dump(mode="json"), "stop-and-resume")
    run_id = run["id"]
    assert run["status"] in ("queued", "running") and run["total_iterations"] == TOTAL  # a worker may be quick
    run_dir = live.runs_dir / f"run-{run_id}"

    with EventStream(f"{live.base_url}/api/runs/{run_id}/events", headers=live.headers) as stream:
        live.wait_run(run_id, lambda r: r["status"] == "running", 120, "running")
        # Sent while the run is being trained: the solo worker takes it once the run is stopped, and skips it.
        duplicate = enqueue_training(live.settings.broker_url, run_id)

        live.wait_run(run_id, lambda r: max(live.series(run_id, KEY)["steps"], default=0) >= 2, 120, "at step 2")
        stopping = live.post(f"/api/runs/{run_id}/stop")
        assert stopping.status_code == 200
        assert stopping.json()["status"] in ("stopping", "stopped")
        stopped = live.wait_run(run_id, lambda r: r["status"] == "stopped", 120, "stopped")
        stop_at = stopped["iteration"]
        assert 2 <= stop_at < TOTAL
        assert stopped["stop_requested"] is False and stopped["finished_at"] and stopped["error"] is None
        latest = latest_checkpoint(run_dir)
        assert latest is not None and latest.name == f"iter-{stop_at:06d}"
        assert live.series(run_id, KEY)["steps"] == list(range(1, stop_at + 1))

        # The stream carried the same points, and the status changes.
        before_stop = stream.until(status_is("stopped"), timeout=60)
        before_stop += stream.drain(quiet=1.0)  # the rest of that poll: a status event comes first within each poll
        assert sorted(metric_steps(stream.received, KEY)) == list(range(1, stop_at + 1))
        assert any(e.name == "status" and e.data["status"] == "running" for e in stream.received)
        assert any(e.name == "samples" for e in before_stop)
        streamed = {step: value for e in stream.received if e.name == "metrics" for step, value in e.data.get(KEY, [])}
        assert [streamed[step] for step in range(1, stop_at + 1)] == live.series(run_id, KEY)["values"]
        # The stream named what the worker did, in the trainer's order; a stopped run has no phase.
        before = phases(stream.received)
        assert before[-1] is None and stopped["phase"] is None
        assert set(before) & {RunPhase.TRAINING, RunPhase.CHECKPOINTING}, before
        assert set(before) <= {None, *RunPhase} - {RunPhase.EVALUATING, RunPhase.WARM_START}, before  # CHEAP
        training = before.index(RunPhase.TRAINING) if RunPhase.TRAINING in before else len(before)
        assert not {RunPhase.LOADING, RunPhase.CALIBRATING} & set(before[training:]), before

    live.wait_skipped(duplicate)
    assert live.run(run_id)["attempts"] == 1, "the duplicate message did not train the run again"

    cursor = live.run(run_id)["event_cursor"]
    resumed = live.post(f"/api/runs/{run_id}/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] in ("queued", "running")
    assert resumed.json()["task_id"] and resumed.json()["task_id"] != run["task_id"]

    events = f"{live.base_url}/api/runs/{run_id}/events"
    with EventStream(events, params={"cursor": cursor}, headers=live.headers) as stream:
        live.wait_run(run_id, lambda r: r["iteration"] > stop_at, 120, f"past iteration {stop_at}")
        done = live.wait_run(run_id, lambda r: r["status"] in ("succeeded", "failed"), 180, "finished")
        assert done["status"] == "succeeded", done["error"]
        assert (done["iteration"], done["attempts"], done["error"]) == (TOTAL, 2, None)
        stream.until(status_is("succeeded"), timeout=60)
        stream.drain(quiet=1.0)
        after_resume = stream.received
    # Resumed from its checkpoint, calibration and all: no calibrating this time.
    resumed_phases = phases(after_resume)
    assert RunPhase.CALIBRATING not in resumed_phases and resumed_phases[-1] is None, resumed_phases
    assert done["phase"] is None and (done["phase_done"], done["phase_total"]) == (0, 0)

    # Training continued from the checkpoint: new steps start right after the stop point, none is repeated.
    assert min(metric_steps(after_resume)) == stop_at + 1
    assert metric_steps(after_resume, KEY) == list(range(stop_at + 1, TOTAL + 1))
    assert live.series(run_id, KEY)["steps"] == list(range(1, TOTAL + 1))
    latest = latest_checkpoint(run_dir)
    assert latest is not None and latest.name == f"iter-{TOTAL:06d}"

    evaluations = live.get(f"/api/runs/{run_id}/evaluations")
    assert [e["step"] for e in evaluations] == [TOTAL], "eval.every 0: only the final evaluation"
    assert any(e.name == "evaluations" for e in after_resume)
    samples = live.get(f"/api/runs/{run_id}/samples")
    assert samples and {s["step"] for s in samples} == {TOTAL}
    assert live.get(f"/api/runs/{run_id}/sample-steps") == list(range(1, TOTAL + 1))

    # A redelivered message for the finished run is skipped: the run is not trained a third time.
    duplicate = enqueue_training(live.settings.broker_url, run_id)
    live.wait_skipped(duplicate)
    final = live.run(run_id)
    assert (final["status"], final["attempts"], final["iteration"]) == ("succeeded", 2, TOTAL)
    assert final["event_cursor"] == live.run(run_id)["event_cursor"]
    record = final["reproducibility"]
    assert record["packages"]["torch"].startswith("2.13") and record["seed"] == final["config"]["seed"]
    assert record["base_model"]["sha256"] and record["calibration"]["names"] == final["objectives"]


def test_worker_shutdown_stops_the_run_with_a_checkpoint(live: Setup, tiny_model_dir: Path) -> None:
    """SIGTERM to the worker (what `meal up` sends on Ctrl-C, and `docker compose stop`): the run stops after its
    current iteration with a checkpoint, the worker exits cleanly, and a new worker resumes the run from there."""
    total = 40  # enough that the run cannot finish before the signal lands
    config = tiny_run_config(tiny_model_dir, iterations=total, checkpoint__every=0, eval__every=0, **CHEAP)
    run_id = launch(live, config.model_dump(mode="json"), "worker-shutdown")["id"]
    live.wait_run(run_id, lambda r: r["iteration"] >= 1, 120, "past iteration 1")
    process = live.worker.process
    assert process is not None
    with_signal(process.pid, signal.SIGTERM)
    assert process.wait(timeout=120) == 0, live.worker.output()[-3000:]

    stopped = live.run(run_id)
    assert stopped["status"] == "stopped", stopped
    stop_at = stopped["iteration"]
    assert 1 <= stop_at < total
    assert stopped["error"] == f"the worker shut down after iteration {stop_at}; resume to continue"
    latest = latest_checkpoint(live.runs_dir / f"run-{run_id}")
    assert latest is not None and latest.name == f"iter-{stop_at:06d}", "checkpoint.every is 0: the stop saved it"

    live.worker.start()
    live.worker.wait_for(" ready.", timeout=120)
    assert live.post(f"/api/runs/{run_id}/resume").status_code == 200
    done = live.wait_run(run_id, lambda r: r["status"] in ("succeeded", "failed"), 300, "finished")
    assert (done["status"], done["iteration"], done["attempts"], done["error"]) == ("succeeded", total, 2, None)
    assert live.series(run_id, KEY)["steps"] == list(range(1, total + 1))


def test_a_run_trains_from_a_teams_dataset_file(live: Setup, tiny_model_dir: Path) -> None:
    """HH-style conversations in a parquet file under the data folder: launched through the API, trained by the
    worker, its samples carrying the conversations' prompts."""
    import datasets

    uploads = live.settings.data_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    rows = [{"chosen": f"\n\nHuman: Question {i}?\n\nAssistant: Answer {i}.", "rejected": "x"} for i in range(40)]
    datasets.Dataset.from_list(rows).to_parquet(str(uploads / "hh.parquet"))
    spec = str(uploads / "hh.parquet")
    config = tiny_run_config(
        tiny_model_dir, iterations=1, eval__every=0, data__train_prompts=spec, data__eval_prompts=spec, **CHEAP
    )
    run = launch(live, config.model_dump(mode="json"), "from-a-dataset")
    done = live.wait_run(run["id"], lambda r: r["status"] in ("succeeded", "failed"), 300, "finished")
    assert done["status"] == "succeeded", done["error"]
    prompts = {s["prompt"] for s in live.get(f"/api/runs/{run['id']}/samples")}
    assert prompts and all(p.startswith("Question ") and p.endswith("?") for p in prompts)
    assert done["reproducibility"]["data"]["train_prompts"]["sha256"]


def test_an_experiment_of_tiny_runs_trains_to_a_filled_report(live: Setup, tiny_model_dir: Path) -> None:
    """2 seeds × meal and static × 1 iteration, launched as one through the API and trained by the real worker: the
    experiment reads back every run finished, the table filled for both variants and meal paired against static."""
    base = tiny_run_config(tiny_model_dir, iterations=1).model_dump(mode="json")
    experiment = {"base": base, "seeds": 2, "algorithms": ["meal", "static"], "baseline": "static"}
    response = live.post("/api/experiments", {"name": "tiny", "experiment": experiment})
    assert response.status_code == 201, response.text
    created = response.json()
    for member in created["members"]:
        live.wait_run(member["id"], lambda run: run["status"] == "succeeded", 300, "succeeded")
    found = live.get(f"/api/experiments/{created['id']}")
    assert found["finished"] == 4
    report = found["report"]
    assert report["baseline"] == "static"
    for variant in ("meal", "static"):
        assert report["table"][variant]["hv_final"]["n"] == 2
        assert report["table"][variant]["training_responses"]["mean"] == 4 * 3  # B × M × 1 iteration
        assert report["stability"][variant]["hypervolume"]["n"] == 2
        # What each run spent, measured, within what its config commits it to.
        budget = found["compute"][variant]
        for run in report["runs"][variant].values():
            assert 0 < run["training_tokens"] <= budget["max_training_tokens"], (run, budget)
            assert 0 < run["policy_steps"] <= budget["max_policy_steps"], (run, budget)
            assert run["attempts"] == 1 and run["wall_minutes"] > 0
    compared = report["comparison"]["meal"]["hv_final"]
    assert compared["n"] == 2 and compared["seeds"] == [0, 1]
