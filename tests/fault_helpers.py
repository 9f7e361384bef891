"""What the fault tests and the topology test share: runs paced to outlive a fault, workers as processes, a panel
to drive them through the API, and what the database holds of a run, checked complete and free of duplicates."""

from __future__ import annotations

import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import WorkerProcess, bearer, tiny_run_config
from live_server import live_server
from sqlalchemy import func, select

from app.store.db import session_scope
from app.store.models import Evaluation, MetricPoint, Sample
from app.store.settings import Settings
from meal_core.checkpoint import latest_checkpoint

KEY = "reward/positivity"  # recorded at every iteration
# As in test_worker.py: the workers share two CPU cores with the test, the server and whatever else runs.
CHEAP = {
    "data__prompts_per_iteration": 2,
    "algorithm__samples_per_prompt": 2,
    "algorithm__max_new_tokens": 8,
    "algorithm__calibration_prompts": 2,
    "eval__prompts": 1,
    "eval__grid_points": 2,
    "eval__probe_pairs": 2,
    "eval__at_start": False,
}
SAMPLES_PER_ITERATION = 4  # every candidate: 2 prompts x 2 samples
# What an iteration records whatever the values (others, e.g. correlations, only when they are finite).
ALWAYS_RECORDED = ["accept_rate", "degenerate_rate", "replay_size", "train/generated_responses", "time/update"]
ALWAYS_RECORDED_PER_OBJECTIVE = ["pref_weight", "reward"]
# positivity, and a python objective that takes a second a batch: a run lasting at least a second per iteration.
PACED_OBJECTIVES = [
    {"name": "positivity", "type": "sentiment"},
    {"name": "paced", "type": "python", "function": "helpers:paced_letters"},
]
OBJECTIVES = ("positivity", "readability")  # tiny_run_config's
PACED = ("positivity", "paced")
HEARTBEAT_TIMEOUT_S = 10.0  # the panel's (the default is 120 s): a killed worker's run fails within seconds
OUTAGE_S = 20.0  # how long PostgreSQL is unreachable; the recorder gives up after 60 s (DatabaseRecorder.give_up_s)
FINISHED = ("succeeded", "failed", "stopped")
TIMES = (("started_at", +1), ("finished_at", -1))  # a run's time in training; an end sorts before a start


# -- the pieces: workers, a panel, the database's view of a run --------------------------------------------------------


def env_for(database_url: str, broker_url: str, data_dir: Path) -> dict[str, str]:
    """A `meal worker`'s environment: only these decide where its data and messages go."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MEAL_")}
    env.update(
        MEAL_DATABASE_URL=database_url,
        MEAL_BROKER_URL=broker_url,
        MEAL_DATA_DIR=str(data_dir),
        MEAL_RECORDER_FLUSH_S="0.2",
        MEAL_HEARTBEAT_INTERVAL_S="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",  # two workers on two cores
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(Path(__file__).parent),  # helpers:paced_letters
    )
    return env


class Workers:
    """The test's `meal worker` processes; all are stopped at teardown, and their output printed if it failed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[WorkerProcess] = []

    def start(self, env: dict[str, str]) -> WorkerProcess:
        worker = WorkerProcess(env, self.directory)
        worker.start()
        self.started.append(worker)
        return worker


def name_of(worker: WorkerProcess) -> str:
    """The run's `worker` field for runs that `worker` trains: host:pid (the solo pool trains in the main process)."""
    assert worker.process is not None
    return f"{socket.gethostname()}:{worker.process.pid}"


def ready(*started: WorkerProcess) -> None:
    for worker in started:
        worker.wait_for(" ready.", timeout=180)


@dataclass
class Panel:
    base_url: str
    settings: Settings
    headers: dict[str, str]
    watched: list[WorkerProcess] = field(default_factory=list)  # a wait fails at once if one of them exits

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.base_url}{path}", params=params, headers=self.headers, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, json: Any = None) -> httpx.Response:
        return httpx.post(f"{self.base_url}{path}", json=json, headers=self.headers, timeout=60)

    def launch(self, config: dict[str, Any], name: str) -> dict[str, Any]:
        response = self.post("/api/runs", {"name": name, "config": config})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def run(self, run_id: int) -> dict[str, Any]:
        return dict(self.get(f"/api/runs/{run_id}"))

    def wait_run(
        self, run_id: int, done: Callable[[dict[str, Any]], bool], what: str, timeout: float = 300
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if done(run):
                return run
            if time.monotonic() > deadline:
                pytest.fail(f"run {run_id}: not {what} within {timeout} s; now {run['status']}: {run}")
            for worker in self.watched:
                if not worker.alive():
                    pytest.fail(f"a worker exited while waiting for run {run_id} to be {what}")
            time.sleep(0.2)

    def wait_finished(self, run_id: int, timeout: float = 300) -> dict[str, Any]:
        return self.wait_run(run_id, lambda r: r["status"] in FINISHED, "finished", timeout)


@contextmanager
def panel(settings: Settings, *watched: WorkerProcess, role: str = "trainer") -> Iterator[Panel]:
    with live_server(settings) as base_url:
        yield Panel(base_url, settings, bearer(settings, role), list(watched))


@dataclass
class Stored:
    """What the database holds for one run, with how many rows each key has (the constraints say one)."""

    metrics: dict[tuple[str, int], int]
    samples: dict[tuple[int, int], int]
    evaluations: dict[int, int]
    values: dict[int, float]  # KEY's value at each step

    def steps(self, key: str = KEY) -> list[int]:
        return sorted(step for k, step in self.metrics if k == key)

    def duplicates(self) -> int:
        counts = [*self.metrics.values(), *self.samples.values(), *self.evaluations.values()]
        return sum(n - 1 for n in counts)

    def check_complete(self, total: int, evaluated: list[int], objectives: tuple[str, ...] = OBJECTIVES) -> int:
        """Iterations 1..total each recorded once: every key an iteration always records (the rest depend on the
        values, e.g. a correlation of constant values is NaN and not stored), every sample, and an evaluation at each
        step of `evaluated`; nothing at any other step. Returns how many metric points are stored."""
        assert self.duplicates() == 0
        steps = list(range(1, total + 1))
        for key in [*ALWAYS_RECORDED, *(f"{p}/{o}" for p in ALWAYS_RECORDED_PER_OBJECTIVE for o in objectives)]:
            assert self.steps(key) == steps, key
        assert {step for _, step in self.metrics} <= {0, *steps}  # step 0: calibration
        assert sorted(self.evaluations) == evaluated
        assert self.steps("eval/hypervolume") == evaluated
        positions: dict[int, set[int]] = defaultdict(set)
        for step, position in self.samples:
            positions[step].add(position)
        assert positions == {step: set(range(SAMPLES_PER_ITERATION)) for step in steps}
        return len(self.metrics)


def stored(database_url: str, run_id: int) -> Stored:
    with session_scope(database_url) as session:
        metrics = session.execute(
            select(MetricPoint.key, MetricPoint.step, func.count())
            .where(MetricPoint.run_id == run_id)
            .group_by(MetricPoint.key, MetricPoint.step)
        ).all()
        samples = session.execute(
            select(Sample.step, Sample.position, func.count())
            .where(Sample.run_id == run_id)
            .group_by(Sample.step, Sample.position)
        ).all()
        evaluations = session.execute(
            select(Evaluation.step, func.count()).where(Evaluation.run_id == run_id).group_by(Evaluation.step)
        ).all()
        values = session.execute(
            select(MetricPoint.step, MetricPoint.value).where(MetricPoint.run_id == run_id, MetricPoint.key == KEY)
        ).all()
    return Stored(
        {(k, s): n for k, s, n in metrics},
        {(s, p): n for s, p, n in samples},
        {s: n for s, n in evaluations},
        {s: v for s, v in values},
    )


def checkpointed(run_dir: Path) -> int:
    """The iteration of the run's newest complete checkpoint on disk (0: none)."""
    latest = latest_checkpoint(run_dir)
    return int(latest.name.removeprefix("iter-")) if latest else 0


def paced_config(model_dir: Path, total: int, **overrides: Any) -> dict[str, Any]:
    """A run of at least a second per iteration, however fast the machine: still training when a fault is over."""
    overrides = {"checkpoint__every": 1, "eval__every": 0, **CHEAP, **overrides}
    return tiny_run_config(model_dir, iterations=total, objectives=PACED_OBJECTIVES, **overrides).model_dump(
        mode="json"
    )


def figures(test: str, **values: Any) -> None:
    print(f"\nfigures: {test}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
