"""The playground end to end: the API, a real `meal worker --queues playground` process, a trained tiny run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import WorkerProcess, bearer, trained_run, worker_env
from sqlalchemy import select

from app.main import create_app
from app.store.db import get_engine, session_scope
from app.store.migrate import upgrade
from app.store.models import PlaygroundGeneration
from app.store.queue import PLAYGROUND_QUEUE
from app.store.settings import Settings


@dataclass
class Playground:
    client: TestClient
    settings: Settings
    run_id: int
    worker: WorkerProcess

    def generate(self, **body: Any) -> dict[str, Any]:
        response = self.client.post("/api/playground", json={"run_id": self.run_id, **body})
        assert response.status_code == 201, response.text
        return self.wait(response.json()["id"])

    def wait(self, generation_id: int, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            generation = self.client.get(f"/api/playground/{generation_id}").json()
            if generation["status"] in ("succeeded", "failed"):
                return dict(generation)
            if time.monotonic() > deadline or not self.worker.alive():
                pytest.fail(f"generation {generation_id} not done: {generation}\n{self.worker.output()[-3000:]}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def playground(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Playground]:
    """A run trained for two iterations (two checkpoints, an evaluation in the database) and a playground worker."""
    directory = tmp_path_factory.mktemp("playground")
    settings = Settings(data_dir=directory / "data", broker_url=f"sqla+sqlite:///{directory / 'broker.sqlite'}")
    upgrade(settings.database_url)
    # A larger step than the default: the tiny model's next-token distributions are nearly flat, and a small
    # adapter change left some seeded samples of the trained checkpoint identical to the base model's.
    run_id = trained_run(settings, tiny_model_dir, algorithm__policy_lr=5e-2)
    worker = WorkerProcess(worker_env(settings), directory, "--queues", PLAYGROUND_QUEUE)
    worker.start()
    try:
        worker.wait_for(" ready.", timeout=120)
        with TestClient(create_app(settings), headers=bearer(settings, "trainer", "ana")) as client:
            yield Playground(client, settings, run_id, worker)
    finally:
        worker.stop()
        get_engine(settings.database_url).dispose()


def test_a_comparison_through_a_real_worker(playground: Playground) -> None:
    generation = playground.generate(
        prompt="How do I keep basil alive?", weights=[[1, 0], [1, 3], "auto"], samples=2, seed=3, max_new_tokens=8
    )
    assert generation["status"] == "succeeded", generation
    assert generation["checkpoint"] == "iter-000002"  # none asked for: the latest
    outputs = generation["outputs"]
    assert [o["weights"] for o in outputs[:2]] == [[1.0, 0.0], [0.25, 0.75]]  # in the order asked, normalised
    assert [o["auto"] for o in outputs] == [False, False, True]
    assert sum(outputs[2]["weights"]) == pytest.approx(1.0, abs=1e-3)
    for output in outputs:
        assert len(output["samples"]) == 2
        for sample in output["samples"]:
            assert isinstance(sample["text"], str)
            assert set(sample["scores"]) == set(sample["normalized"]) == {"positivity", "readability"}
            front = sample["front"]
            assert front["evaluation_step"] == 2 and front["front_points"] >= 1
            assert 0 <= front["dominated_by"] <= front["front_points"]
    # Kept: who, when, run, checkpoint, weights, seed, outputs.
    with session_scope(playground.settings.database_url) as session:
        stored = session.scalar(select(PlaygroundGeneration).where(PlaygroundGeneration.id == generation["id"]))
        assert stored is not None and stored.created_by == "ana" and stored.seed == 3 and stored.outputs == outputs


def test_the_same_seed_gives_the_same_outputs_and_the_base_model_differs(playground: Playground) -> None:
    body = {"prompt": "Name a fruit.", "weights": [[0, 1]], "samples": 2, "seed": 11, "max_new_tokens": 8}
    first, again = playground.generate(**body), playground.generate(**body)
    assert first["outputs"] == again["outputs"]
    base = playground.generate(**body, checkpoint="base")
    assert base["status"] == "succeeded" and base["checkpoint"] == "base"
    assert base["outputs"][0]["samples"] != first["outputs"][0]["samples"]
    older = playground.generate(**body, checkpoint="iter-000001")
    assert older["checkpoint"] == "iter-000001"


def test_bad_requests_are_refused_and_a_missing_checkpoint_fails_the_generation(playground: Playground) -> None:
    client, run_id = playground.client, playground.run_id
    cases = [
        ({"weights": [[1, 0, 0]]}, "weights.0: 2 values"),
        ({"weights": [[0, 0]]}, "positive sum"),
        ({"weights": [[-1, 2]]}, "non-negative"),
        ({"weights": []}, "at least 1"),
        ({"weights": [[1, 0]] * 5}, "at most 4"),
        ({"checkpoint": "../../etc"}, "pattern"),
        ({"prompt": "x" * 4001}, "at most 4000"),
        ({"samples": 9}, "less than or equal to 8"),
    ]
    for change, message in cases:
        body = {"run_id": run_id, "prompt": "Hi", "weights": [[1, 0]], **change}
        response = client.post("/api/playground", json=body)
        assert response.status_code == 422 and message in response.text, (change, response.text)
    missing_run = client.post("/api/playground", json={"run_id": 2**31 - 1, "prompt": "Hi", "weights": [[1, 0]]})
    assert missing_run.status_code == 404
    failed = playground.generate(prompt="Hi", weights=[[1, 0]], checkpoint="iter-000099")
    assert failed["status"] == "failed" and "iter-000099" in failed["error"]
    assert client.get(f"/api/runs/{run_id}/checkpoints").json() == ["iter-000002", "iter-000001", "base"]


def test_model_output_is_stored_as_text(playground: Playground) -> None:
    """Untrusted text in, untrusted text out: the prompt is kept as given, the page renders it with textContent."""
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(1)>'
    generation = playground.generate(prompt=hostile, weights=[[1, 0], [0, 1]], max_new_tokens=4)
    assert generation["prompt"] == hostile and generation["status"] == "succeeded"
    assert np.isfinite([s["scores"]["positivity"] for o in generation["outputs"] for s in o["samples"]]).all()
