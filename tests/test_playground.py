"""The playground end to end: the API, a real `meal worker --queues playground` process, a trained tiny run; and
exports of that run from the panel, which the same queue's worker writes."""

from __future__ import annotations

import io
import json
import time
import zipfile
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
from app.store.models import ModelExport, PlaygroundGeneration, Run
from app.store.queue import PLAYGROUND_QUEUE
from app.store.settings import Settings
from meal_core.config import RunConfig


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


# -- exports: the same trained run, exported by the same playground-queue worker --------------------------------------


def wait_export(playground: Playground, export_id: int, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        export = playground.client.get(f"/api/exports/{export_id}").json()
        if export["status"] in ("succeeded", "failed"):
            return dict(export)
        if time.monotonic() > deadline or not playground.worker.alive():
            pytest.fail(f"export {export_id} not done: {export}\n{playground.worker.output()[-3000:]}")
        time.sleep(0.2)


def export(playground: Playground, **body: Any) -> dict[str, Any]:
    response = playground.client.post(f"/api/runs/{playground.run_id}/exports", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "queued" and response.json()["created_by"] == "ana"
    return wait_export(playground, response.json()["id"])


def downloaded(playground: Playground, export_id: int, into: Path) -> Path:
    """The export's zip, downloaded and unpacked; returns its one top folder."""
    response = playground.client.get(f"/api/exports/{export_id}/download")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        tops = {name.split("/", 1)[0] for name in archive.namelist()}
        archive.extractall(into)
    assert len(tops) == 1, tops
    return into / tops.pop()


def test_a_merged_export_from_the_panel_is_the_policy_at_that_weight(playground: Playground, tmp_path: Path) -> None:
    from test_export import engine_logits, exported_logits

    from meal_core.policy import Policy

    done = export(playground, weights=[1, 3])
    assert done["status"] == "succeeded", done["error"]
    assert done["checkpoint"] == "iter-000002" and done["weights"] == [0.25, 0.75] and done["size_bytes"] > 0
    folder = downloaded(playground, done["id"], tmp_path)
    note = json.loads((folder / "meal_export.json").read_text())
    assert note["kind"] == "merged" and note["weights"] == {"positivity": 0.25, "readability": 0.75}
    assert "hypervolume" in (folder / "README.md").read_text()  # the card has the run's last evaluation
    # The engine's policy at that checkpoint and weight gives the same logits as the downloaded model.
    config = read_config_of(playground)
    policy = Policy(config.model, config.lora, config.objective_names)
    policy.load_adapter(playground.settings.runs_dir / f"run-{playground.run_id}/checkpoints/iter-000002/adapter")
    weights = np.array([0.25, 0.75])
    torch_close(exported_logits(folder, policy, weights), engine_logits(policy, weights))
    listed = playground.client.get(f"/api/runs/{playground.run_id}/exports").json()
    assert done["id"] in [e["id"] for e in listed]


def test_an_adapters_export_keeps_the_weight_open(playground: Playground, tmp_path: Path) -> None:
    done = export(playground, adapters=True, checkpoint="iter-000001")
    assert done["status"] == "succeeded" and done["weights"] is None and done["checkpoint"] == "iter-000001"
    folder = downloaded(playground, done["id"], tmp_path)
    assert (folder / "mixing.json").is_file() and json.loads((folder / "meal_export.json").read_text())["kind"] == (
        "adapters"
    )


def test_bad_exports_are_refused_with_the_reason(playground: Playground) -> None:
    client, run_id = playground.client, playground.run_id
    cases = [
        ({}, 422, "needed for a merged export"),
        ({"weights": [1, 0, 0]}, 422, "2 values"),
        ({"weights": [1e308, 1e308]}, 422, "finite"),
        ({"weights": [-1, 2]}, 422, "non-negative"),
        ({"weights": [0, 0]}, 422, "positive sum"),
        ({"weights": [1, 0], "adapters": 1}, 422, "valid boolean"),
        ({"weights": [1, 0], "checkpoint": "../../etc"}, 422, "pattern"),
        ({"weights": [1, 0], "extra": True}, 422, "extra"),
        ({"weights": [1, 0], "checkpoint": "iter-000099"}, 409, "iter-000001, iter-000002"),
    ]
    for body, code, message in cases:
        response = client.post(f"/api/runs/{run_id}/exports", json=body)
        assert response.status_code == code and message in response.text, (body, response.text)
    assert client.post("/api/runs/2147483647/exports", json={"weights": [1, 0]}).status_code == 404
    assert client.get("/api/exports/2147483647").status_code == 404
    # A run with no checkpoint yet has nothing to export.
    from app.store import run_state

    with session_scope(playground.settings.database_url) as session:
        fresh = run_state.create_run(session, "fresh", read_config_of(playground).model_dump(mode="json"), 1, "ana").id
    response = client.post(f"/api/runs/{fresh}/exports", json={"weights": [1, 0]})
    assert response.status_code == 409 and "no checkpoint yet" in response.text
    # Nothing to download before it is done; a reviewer may neither export nor download.
    with session_scope(playground.settings.database_url) as session:
        queued = ModelExport(run_id=run_id, created_by="ana", weights=[1.0, 0.0], adapters=False)
        session.add(queued)
        session.flush()
        queued_id = queued.id
    response = client.get(f"/api/exports/{queued_id}/download")
    assert response.status_code == 409 and "queued" in response.text
    reviewer = bearer(playground.settings, "reviewer", "rita")
    assert client.post(f"/api/runs/{run_id}/exports", json={"weights": [1, 0]}, headers=reviewer).status_code == 403
    assert client.get(f"/api/exports/{queued_id}/download", headers=reviewer).status_code == 403


def read_config_of(playground: Playground) -> RunConfig:
    with session_scope(playground.settings.database_url) as session:
        run = session.get(Run, playground.run_id)
        assert run is not None
        return run.run_config()


def torch_close(actual: Any, expected: Any) -> None:
    import torch

    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
