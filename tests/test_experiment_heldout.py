"""An experiment's final evaluation on held-out prompts, through the panel: launched through the API, evaluated by a
real Celery worker after each run's last iteration (Trainer.evaluation, as `meal experiment run` does), stored once
apart from the training evaluations and read by the experiment's report. A run whose training finished but whose
held-out evaluation did not gets exactly one on resume, without training again.

The API, worker, broker and database are set up as in test_worker.py (PostgreSQL with Redis, SQLite with the SQLite
broker).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_worker
from fault_helpers import CHEAP
from helpers import tiny_run_config
from sqlalchemy import func, select
from test_worker import Setup

from app.store.db import session_scope
from app.store.models import HeldOutEvaluation, Run
from app.store.queue import enqueue_training
from meal_core.checkpoint import latest_checkpoint
from meal_core.experiment import HeldOutConfig
from meal_core.trainer import Trainer
from worker.tasks import evaluate_held_out

# Its own Redis database: a redelivered message must reach this module's worker, not a worker of test_worker.py
# (REDIS_DB_WORKER) in another session on this machine.
REDIS_DB_HELD_OUT = 13
live = test_worker.live  # the module's setup, the worker's output printed for a failed test


@pytest.fixture(scope="module")
def setup(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """test_worker.py's setup: the API server and a real `meal worker` on this module's database and broker."""
    yield from test_worker.worker_setup(database_url, tmp_path_factory.mktemp("held-out-worker"), REDIS_DB_HELD_OUT)


PROMPTS = ["Tell me about the sea.", "What makes a good friend?", "Describe a quiet morning."]
GRID = 2  # CHEAP's eval.grid_points
ITERATIONS = 2


def launch_experiment(live: Setup, model_dir: Path, name: str, held_out: dict[str, Any]) -> dict[str, Any]:
    """One meal run (one seed) of two iterations that asks for a held-out evaluation."""
    config = tiny_run_config(model_dir, iterations=ITERATIONS, checkpoint__every=1, eval__every=0, **CHEAP)
    base = config.model_dump(mode="json")
    experiment = {"base": base, "seeds": 1, "algorithms": ["meal"], "held_out": held_out}
    response = live.post("/api/experiments", {"name": name, "experiment": experiment})
    assert response.status_code == 201, response.text
    return dict(response.json())


def held_out_rows(live: Setup, run_id: int) -> int:
    with session_scope(live.settings.database_url) as session:
        return int(session.scalar(select(func.count()).where(HeldOutEvaluation.run_id == run_id)) or 0)


def finished(run: dict[str, Any]) -> bool:
    return run["status"] in ("succeeded", "failed")


def test_each_run_is_evaluated_on_the_held_out_prompts_once_and_the_report_reads_it(
    live: Setup, tiny_model_dir: Path
) -> None:
    uploads = live.settings.data_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    (uploads / "heldout.txt").write_text("\n".join(PROMPTS) + "\n")
    spec = str(uploads / "heldout.txt")
    created = launch_experiment(live, tiny_model_dir, "held-out", {"prompts": spec, "samples_per_weight": 1})
    (member,) = created["members"]
    run_id = member["id"]
    done = live.wait_run(run_id, finished, 300, "finished")
    assert done["status"] == "succeeded", done["error"]

    held = live.get(f"/api/runs/{run_id}/held-out-evaluation")
    assert (held["prompts"], held["samples_per_weight"], held["step"]) == (spec, 1, ITERATIONS)
    assert held["responses"] == len(PROMPTS) * GRID * 1, "every held-out prompt under every weight of the grid"
    assert held["objectives"] == ["positivity", "readability"] and len(held["points"]) == GRID
    assert held_out_rows(live, run_id) == 1
    # Apart from the training evaluations: eval.every 0, so only the final one, as without a held-out file.
    assert [e["step"] for e in live.get(f"/api/runs/{run_id}/evaluations")] == [ITERATIONS]

    report = live.get(f"/api/experiments/{created['id']}")["report"]
    row = report["table"]["meal"]
    assert row["held_out_hv"]["n"] == 1 and row["held_out_hv"]["mean"] == held["hypervolume"]
    control = held["controllability"]
    assert row["held_out_control"]["mean"] == (control["positivity"] + control["readability"]) / 2
    assert row["hv_final"]["n"] == 1, "the training evaluations still give hv_final"

    # A redelivered message finds the run finished: no second held-out evaluation.
    live.wait_skipped(enqueue_training(live.settings.broker_url, run_id))
    assert held_out_rows(live, run_id) == 1
    assert live.worker.output().count(f"run {run_id}: held-out evaluation on") == 1


def test_a_run_trained_to_the_end_without_its_held_out_evaluation_gets_exactly_one_on_resume(
    live: Setup, tiny_model_dir: Path
) -> None:
    """The file is not there yet when the run finishes training: the held-out evaluation fails, the run fails with
    its training kept (the state a worker that died in the evaluation leaves, once its heartbeat is overdue). On
    resume the worker evaluates without training again; evaluating once more stores nothing."""
    uploads = live.settings.data_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    spec = str(uploads / "later.txt")
    created = launch_experiment(live, tiny_model_dir, "held-out-later", {"prompts": spec, "samples_per_weight": 1})
    run_id = created["members"][0]["id"]
    failed = live.wait_run(run_id, finished, 300, "finished")
    assert failed["status"] == "failed", failed
    assert failed["error"].startswith("HeldOutFailed: training finished, but the held-out evaluation on")
    assert "resume to evaluate again" in failed["error"] and failed["iteration"] == ITERATIONS
    assert held_out_rows(live, run_id) == 0
    steps_before = live.series(run_id, "reward/positivity")["steps"]
    evaluations_before = live.get(f"/api/runs/{run_id}/evaluations")
    checkpoint = latest_checkpoint(live.runs_dir / f"run-{run_id}")
    assert checkpoint is not None and checkpoint.name == f"iter-{ITERATIONS:06d}"
    report = live.get(f"/api/experiments/{created['id']}")["report"]
    assert report["table"] == {}, "a failed run is not in the table"

    (uploads / "later.txt").write_text("\n".join(PROMPTS) + "\n")
    assert live.post(f"/api/runs/{run_id}/resume").status_code == 200
    done = live.wait_run(run_id, finished, 300, "finished")
    assert (done["status"], done["error"], done["attempts"]) == ("succeeded", None, 2)
    assert held_out_rows(live, run_id) == 1
    held = live.get(f"/api/runs/{run_id}/held-out-evaluation")
    assert held["step"] == ITERATIONS and held["responses"] == len(PROMPTS) * GRID
    # Training was not repeated: no new metric steps, the same evaluations, the same last checkpoint.
    assert live.series(run_id, "reward/positivity")["steps"] == steps_before == list(range(1, ITERATIONS + 1))
    assert live.get(f"/api/runs/{run_id}/evaluations") == evaluations_before
    checkpoint = latest_checkpoint(live.runs_dir / f"run-{run_id}")
    assert checkpoint is not None and checkpoint.name == f"iter-{ITERATIONS:06d}"
    table = live.get(f"/api/experiments/{created['id']}")["report"]["table"]
    assert table["meal"]["held_out_hv"]["mean"] == held["hypervolume"]

    # Asked again (a worker that died after storing it, then resumed): the stored one stands, nothing is sampled.
    with session_scope(live.settings.database_url) as session:
        run = session.get(Run, run_id)
        assert run is not None
        config = run.run_config()
    trainer = Trainer(config, live.runs_dir / f"run-{run_id}")
    assert trainer.resume() and trainer.iteration == ITERATIONS
    asked = HeldOutConfig(prompts=spec, samples_per_weight=1)
    assert evaluate_held_out(live.settings.database_url, run_id, trainer, asked) is False
    assert held_out_rows(live, run_id) == 1
