"""The whole loop on a tiny model: the bi-level updates do what they claim, and resume is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import deterministic_metrics, tiny_run_config

from meal_core import trainer as trainer_module
from meal_core.enums import RunPhase
from meal_core.recorder import JsonlRecorder, NullRecorder, read_jsonl
from meal_core.trainer import CORNER, DRAW, PROPOSAL, Trainer
from meal_core.weights import softmax


def kl(target: np.ndarray, weights: np.ndarray) -> float:
    return float((target * (np.log(target) - np.log(weights))).sum())


@pytest.fixture
def prepared(tiny_model_dir: Path, tmp_path: Path) -> Trainer:
    trainer = Trainer(tiny_run_config(tiny_model_dir), tmp_path / "run")
    trainer.calibrate()
    return trainer


def test_hindsight_moves_learnable_weights_toward_targets(prepared: Trainer) -> None:
    batch = prepared.propose()
    scores = prepared.score(prepared.generate(batch), batch)
    accepted = prepared.reject(batch, scores)
    assert prepared.learnable is not None
    before = {p.id: softmax(prepared.learnable.logits[p.id]) for p in batch.prompts}
    prepared.hindsight(batch, scores, accepted)
    moved = 0
    for g, prompt in enumerate(batch.prompts):
        own = [a.target for a in accepted if a.group == g and a.kind == PROPOSAL]
        if not own:
            continue
        target = np.mean(own, axis=0)
        after = prepared.learnable.weights([prompt.id])[0]
        if kl(target, before[prompt.id]) < 1e-9:
            assert np.allclose(after, before[prompt.id])  # already there: nothing to learn
            continue
        assert kl(target, after) < kl(target, before[prompt.id])
        moved += 1
    assert moved > 0, "no proposal-conditioned prompt with something to learn in the batch"
    for a in accepted:
        assert a.refined is not None and np.isclose(a.refined.sum(), 1.0)


def test_meta_step_lowers_the_meta_loss(prepared: Trainer) -> None:
    batch = prepared.propose()
    scores = prepared.score(prepared.generate(batch), batch)
    accepted = prepared.reject(batch, scores)
    prepared.hindsight(batch, scores, accepted)
    first = prepared.meta_step(batch, accepted)
    second = prepared.meta_step(batch, accepted)
    assert first is not None and second is not None
    assert second < first


def test_base_step_lowers_the_nll_of_accepted_samples(prepared: Trainer) -> None:
    batch = prepared.propose()
    candidates = prepared.generate(batch)
    scores = prepared.score(candidates, batch)
    accepted = prepared.reject(batch, scores)
    prepared.hindsight(batch, scores, accepted)

    def accepted_nll() -> float:
        prompts = [batch.prompts[a.group].text for a in accepted]
        weights = np.stack([a.refined for a in accepted])
        responses = [candidates.token_ids[a.candidate] for a in accepted]
        return -float(np.mean(prepared.policy.score_logprobs(prompts, weights, responses)))

    before = accepted_nll()
    fitted = prepared.base_step(1, batch, candidates, scores, accepted)
    assert np.isfinite(fitted.loss) and fitted.steps > 0
    assert accepted_nll() < before
    assert len(prepared.replay) == len(accepted)


@pytest.mark.parametrize("algorithm", ["meal", "static", "meal_no_meta", "meal_no_learnable"])
def test_every_algorithm_runs_through_the_same_loop(tiny_model_dir: Path, tmp_path: Path, algorithm: str) -> None:
    config = tiny_run_config(tiny_model_dir, algorithm__name=algorithm, iterations=2)
    recorder = JsonlRecorder(tmp_path)
    assert Trainer(config, tmp_path, recorder).train() == "succeeded"
    keys = {row["key"] for row in read_jsonl(tmp_path / "metrics.jsonl")}
    for name in ("positivity", "readability"):
        assert {f"pref_weight/{name}", f"reward/{name}", f"reward_accepted/{name}"} <= keys
    assert {"accept_rate", "loss/policy", "time/generate", "throughput/tokens_per_s", "eval/hypervolume"} <= keys
    assert ("loss/meta" in keys) == (algorithm in ("meal", "meal_no_learnable"))
    assert ("pref_weight_net/positivity" in keys) == (algorithm in ("meal", "meal_no_learnable"))
    assert ("pref_weight_learned/positivity" in keys) == (algorithm in ("meal", "meal_no_meta"))
    evaluation = read_jsonl(tmp_path / "evaluations.jsonl")[-1]
    assert evaluation["step"] == 2 and len(evaluation["points"]) == 3
    assert set(evaluation["controllability"]) == {"positivity", "readability"}
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert len(samples) == 2 * 4 * 3 and any(s["accepted"] for s in samples)


def test_static_trains_on_the_drawn_weight(prepared: Trainer, tiny_model_dir: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_run_config(tiny_model_dir, algorithm__name="static"), tmp_path / "static")
    trainer.calibrate()
    batch = trainer.propose()
    corners = batch.kinds.count(CORNER)
    assert corners == round(trainer.algo.corner_share * len(batch.prompts))
    assert batch.kinds[corners:] == [DRAW] * (len(batch.prompts) - corners)
    scores = trainer.score(trainer.generate(batch), batch)
    accepted = trainer.reject(batch, scores)
    trainer.hindsight(batch, scores, accepted)
    assert all(np.array_equal(a.refined, a.label) for a in accepted)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"model__conditioning": "tag"}, {"algorithm__base_loss": "sft+pairwise", "lora__shared": True}],
    ids=["experts", "tag", "pairwise-shared"],
)
def test_resume_is_exact(tiny_model_dir: Path, tmp_path: Path, overrides: dict[str, object]) -> None:
    config = tiny_run_config(tiny_model_dir, **overrides)
    straight = tmp_path / "straight"
    Trainer(config, straight, JsonlRecorder(straight)).train(4)

    split = tmp_path / "split"
    Trainer(config, split, JsonlRecorder(split)).train(2)
    resumed = Trainer(config, split, JsonlRecorder(split))
    assert resumed.resume() and resumed.iteration == 2
    resumed.train(4)

    assert deterministic_metrics(split) == deterministic_metrics(straight)
    assert read_jsonl(split / "samples.jsonl") == read_jsonl(straight / "samples.jsonl")
    adapter = split / "checkpoints" / "iter-000004" / "adapter"
    assert (adapter / "mixing.json").is_file()
    folders = [adapter] if config.model.conditioning == "tag" else [adapter / a for a in resumed.policy.adapters]
    assert all((folder / "adapter_config.json").is_file() for folder in folders)


class StopAfter(NullRecorder):
    def __init__(self, iterations: int) -> None:
        self.iterations, self.done, self.statuses = iterations, 0, []

    def progress(self, done: int, total: int, eta_seconds: float | None) -> None:
        self.done = done

    def status(self, status: str, message: str | None = None) -> None:
        self.statuses.append(status)

    def should_stop(self) -> bool:
        return self.done >= self.iterations


def test_stop_checkpoints_and_resume_continues(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = tiny_run_config(tiny_model_dir, checkpoint__every=0, iterations=3)
    stopper = StopAfter(1)
    assert Trainer(config, tmp_path, stopper).train() == "stopped"
    assert stopper.statuses == ["running", "stopped"]
    resumed = Trainer(config, tmp_path)
    assert resumed.resume() and resumed.iteration == 1
    assert resumed.train() == "succeeded" and resumed.iteration == 3


class CheckpointWatcher(NullRecorder):
    """Notes, at each before_checkpoint, which checkpoints already exist and how many steps were recorded."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.recorded, self.calls = run_dir, 0, []

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.recorded = max(self.recorded, step)

    def before_checkpoint(self) -> None:
        existing = sorted(p.name for p in (self.run_dir / "checkpoints").glob("iter-*"))
        self.calls.append((self.recorded, existing))


def test_the_recorder_is_flushed_before_each_checkpoint_and_each_iteration_saved_once(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A checkpoint must not run ahead of the records: the recorder gets before_checkpoint() when the iteration's
    records are in and the checkpoint is not yet on disk. The last iteration, due by `every` and at the end, is
    saved once."""
    config = tiny_run_config(tiny_model_dir, checkpoint__every=2, iterations=4)
    watcher = CheckpointWatcher(tmp_path)
    saved: list[str] = []
    Trainer(config, tmp_path, watcher, on_checkpoint=lambda path: saved.append(path.name)).train()
    assert saved == ["iter-000002", "iter-000004"]
    assert [recorded for recorded, _ in watcher.calls] == [2, 4]
    assert [existing for _, existing in watcher.calls] == [[], ["iter-000002"]]


class PhaseLog(NullRecorder):
    """Every phase report, in order: (phase, done, total, eta_seconds)."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, int, int, float | None]] = []

    def phase(self, phase: RunPhase, done: int, total: int, eta_seconds: float | None) -> None:
        self.reports.append((phase, done, total, eta_seconds))


def test_the_trainer_reports_each_phase_in_order_with_growing_progress(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading, calibrating, the step-0 evaluation, training, checkpoints and the final evaluation, each counted in
    its own units and advanced after every generate call (small batches here, so that there are several)."""
    monkeypatch.setattr(trainer_module, "BASE_BATCH", 3)  # one calibration prompt (3 responses) per call
    monkeypatch.setattr(trainer_module, "EVALUATION_BATCH", 2)
    config = tiny_run_config(tiny_model_dir, iterations=2, eval__every=0, checkpoint__every=0)
    log = PhaseLog()
    Trainer(config, tmp_path, log).train()

    phases = [phase for i, (phase, *_) in enumerate(log.reports) if i == 0 or log.reports[i - 1][0] != phase]
    P = RunPhase
    assert phases == [
        P.LOADING, P.CALIBRATING, P.EVALUATING, P.TRAINING, P.EVALUATING, P.CHECKPOINTING,
    ]  # fmt: skip

    calibration = 4 * 3 + 2 * 3  # calibration prompts × samples per prompt, and the probe pairs' two responses each
    evaluation = 2 * 3 * 2  # prompts × grid points × samples per weight
    expected = {P.CALIBRATING: calibration, P.EVALUATING: evaluation, P.TRAINING: 2, P.LOADING: 0, P.CHECKPOINTING: 0}
    for phase, total in expected.items():
        reports = [(done, t, eta) for p, done, t, eta in log.reports if p == phase]
        assert {t for _, t, _ in reports} == {total}, phase
        dones = [done for done, _, _ in reports]
        assert dones == sorted(dones) or phase == P.EVALUATING, phase  # the evaluations each count from 0
        assert all(eta is None for done, _, eta in reports if done == 0), "no ETA before a unit is done"
    calibrating = [done for p, done, _, _ in log.reports if p == P.CALIBRATING]
    assert calibrating == [0, 3, 6, 9, 12, 14, 16, 18], "after every call: 4 of calibration, 3 of the probe set"
    first_evaluation = [done for _, done, _, _ in log.reports[: log.reports.index((P.TRAINING, 0, 2, None))]]
    assert first_evaluation[-4:] == [0, 4, 8, 12], "3 evaluation calls of 2 jobs × 2 samples"
    training = [(done, eta) for p, done, _, eta in log.reports if p == P.TRAINING]
    assert [done for done, _ in training] == [0, 0, 1, 1, 2]  # each iteration reported as it starts and ends
    assert all(eta is not None and eta >= 0 for done, eta in training if done > 0)


def test_the_held_out_evaluation_reports_its_own_evaluating_phase(tiny_model_dir: Path, tmp_path: Path) -> None:
    """After training, the held-out evaluation (meal experiment run's and the worker's) is counted as an
    evaluating phase over its own generations: the run page shows "evaluating k/N", not the last phase's ETA."""
    from meal_core.experiment_runs import held_out_evaluation

    config = tiny_run_config(tiny_model_dir, iterations=1, eval__every=0, checkpoint__every=0)
    log = PhaseLog()
    trainer = Trainer(config, tmp_path, log)
    trainer.train()
    prompts = tmp_path / "heldout.txt"
    prompts.write_text("Describe a quiet morning.\nWhy is the sea salty?\nName a river.\n")
    trained = len(log.reports)
    held_out_evaluation(trainer, str(prompts), 2, None)
    reports = log.reports[trained:]
    assert {(phase, total) for phase, _, total, _ in reports} == {(RunPhase.EVALUATING, 3 * 3 * 2)}
    assert reports[0][1] == 0 and reports[-1][1] == 3 * 3 * 2  # prompts × grid points × samples per weight
