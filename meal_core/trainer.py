"""The Meal training loop.

One iteration: propose → generate → score → reject → hindsight → meta step → base step → record.
Every step is a method below; the algorithms `meal`, `static`, `meal_no_meta` and `meal_no_learnable` differ
only inside propose, hindsight and meta step. docs/algorithm.md explains each choice.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meal_core import checkpoint
from meal_core.conditioning import conditioned_prompt
from meal_core.config import RunConfig, dump_config
from meal_core.data import Prompt, load_prompts
from meal_core.evaluation import EvaluationResult, linear_correlation, summarize, weight_grid
from meal_core.normalization import Normalizer
from meal_core.objectives import Objective, build_objectives
from meal_core.policy import Policy
from meal_core.recorder import NullRecorder, Recorder, SampleRecord
from meal_core.selection import is_degenerate, select
from meal_core.weights import LearnableWeights, PreferenceNet, entropy, hindsight_target, kl_to_net

USES_NET = {"meal", "meal_no_learnable"}
USES_LEARNABLE = {"meal", "meal_no_meta"}


@dataclass
class ProposedBatch:
    prompts: list[Prompt]
    weights: np.ndarray  # (B, K): the weights each prompt's candidates are generated under
    explored: np.ndarray  # (B,) True where the weight is a Dirichlet draw rather than the learned proposal
    net_weights: np.ndarray | None  # (B, K): f_φ(x), where the algorithm has a net


@dataclass
class Candidates:
    texts: list[str]  # B·M responses, prompt-major
    token_ids: list[list[int]]
    new_tokens: int


@dataclass
class Scores:
    raw: np.ndarray  # (B·M, K) as the scorers return them
    calibrated: np.ndarray  # (B·M, K) normalised with the calibrated statistics (comparable across iterations)
    relative: np.ndarray  # (B·M, K) what selection and hindsight use (group or calibrated, per config)
    valid: np.ndarray  # (B·M,) False for degenerate responses


@dataclass
class Acceptance:
    group: int  # prompt index in the batch
    candidate: int  # flat candidate index
    label: np.ndarray  # the weight under which the candidate won
    explored: bool  # label is a Dirichlet draw (exploration row or extra label), not the proposal
    target: np.ndarray = field(default_factory=lambda: np.empty(0))  # hindsight trade-off t, set by hindsight
    refined: np.ndarray = field(default_factory=lambda: np.empty(0))  # w*: what the base step conditions on


@dataclass
class ReplayItem:
    prompt_id: str
    prompt: str
    response_ids: list[int]
    weights: list[float]
    step: int


@dataclass
class ProbeSet:
    prompts: list[str]  # 2·P entries: two responses per prompt
    response_ids: list[list[int]]
    relative: np.ndarray  # (2·P, K) calibrated-normalised scores


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        recorder: Recorder | None = None,
        policy: Policy | None = None,
        objectives: list[Objective] | None = None,
    ) -> None:
        self.config = config
        self.algo = config.algorithm
        self.names = config.objective_names
        self.k = len(self.names)
        self.run_dir = Path(run_dir)
        self.recorder: Recorder = recorder or NullRecorder()
        if config.model.cpu_threads:
            torch.set_num_threads(config.model.cpu_threads)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)

        self.train_prompts = load_prompts(config.data.train_prompts, config.data.max_train_prompts)
        self.eval_prompts = load_prompts(config.data.eval_prompts)
        self.policy = policy or Policy(config.model, config.lora)
        self.objectives = objectives or build_objectives(config.objectives, str(self.policy.device))
        self.policy_optimizer = torch.optim.AdamW(self.policy.trainable_parameters(), lr=self.algo.policy_lr)

        self._embeddings: dict[str, torch.Tensor] = {}
        self.net: PreferenceNet | None = None
        self.meta_optimizer: torch.optim.Optimizer | None = None
        if self.algo.name in USES_NET:
            width = self.policy.model.get_input_embeddings().embedding_dim
            self.net = PreferenceNet(width, self.algo.net_hidden, self.k)
            self.meta_optimizer = torch.optim.Adam(self.net.parameters(), lr=self.algo.meta_lr)
        self.learnable = LearnableWeights(self.k) if self.algo.name in USES_LEARNABLE else None

        self.replay: deque[ReplayItem] = deque(maxlen=self.algo.replay_size)
        self.normalizer: Normalizer | None = None
        self.probe_set: ProbeSet | None = None
        self.iteration = 0
        self._order: list[int] = []
        self._cursor = 0

    # -- the loop -----------------------------------------------------------------------------------------------

    def train(self, iterations: int | None = None) -> str:
        """Run until `iterations` (default: config) are done or the recorder asks to stop; returns the status."""
        total = iterations or self.config.iterations
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(dump_config(self.config))
        self.recorder.status("running")
        if self.normalizer is None:
            self.calibrate()
            self.build_probe_set()
            if self.config.eval.at_start:
                self.evaluate(0)
            self.warm_start()
        started, first = time.monotonic(), self.iteration
        self.recorder.progress(self.iteration, total, None)
        while self.iteration < total:
            step = self.iteration + 1
            batch = self.propose()
            t0 = time.monotonic()
            candidates = self.generate(batch)
            t1 = time.monotonic()
            scores = self.score(candidates, batch)
            t2 = time.monotonic()
            accepted = self.reject(batch, scores)
            weight_loss = self.hindsight(batch, scores, accepted)
            meta_loss = self.meta_step(batch, accepted)
            policy_loss = self.base_step(step, batch, candidates, accepted)
            t3 = time.monotonic()
            self.iteration = step
            timings = {"time/generate": t1 - t0, "time/score": t2 - t1, "time/update": t3 - t2}
            self.record(step, batch, candidates, scores, accepted, weight_loss, meta_loss, policy_loss, timings)
            if self.config.eval.every and step % self.config.eval.every == 0:
                self.evaluate(step)
            if self.config.checkpoint.every and step % self.config.checkpoint.every == 0:
                self.save_checkpoint()
            per_iteration = (time.monotonic() - started) / (step - first)
            self.recorder.progress(step, total, per_iteration * (total - step))
            if step < total and self.recorder.should_stop():
                self.save_checkpoint()
                self.recorder.status("stopped", f"stopped after iteration {step}")
                return "stopped"
        if not self.config.eval.every or self.iteration % self.config.eval.every:
            self.evaluate(self.iteration)
        self.save_checkpoint()
        self.recorder.status("succeeded")
        return "succeeded"

    # -- 1. propose ---------------------------------------------------------------------------------------------

    def next_prompts(self) -> list[Prompt]:
        """The next B training prompts of a reshuffled-every-epoch order."""
        chosen = []
        for _ in range(min(self.config.data.prompts_per_iteration, len(self.train_prompts))):
            if self._cursor >= len(self._order):
                self._order = self.rng.permutation(len(self.train_prompts)).tolist()
                self._cursor = 0
            chosen.append(self.train_prompts[self._order[self._cursor]])
            self._cursor += 1
        return chosen

    def embed(self, prompts: list[Prompt]) -> torch.Tensor:
        """Frozen prompt embeddings, computed once per prompt."""
        missing = [p for p in prompts if p.id not in self._embeddings]
        if missing:
            vectors = self.policy.embed_prompts([p.text for p in missing])
            self._embeddings.update({p.id: v for p, v in zip(missing, vectors, strict=True)})
        return torch.stack([self._embeddings[p.id] for p in prompts])

    @torch.no_grad()
    def net_weights(self, prompts: list[Prompt]) -> np.ndarray:
        assert self.net is not None
        return self.net(self.embed(prompts)).exp().double().numpy()

    def propose(self) -> ProposedBatch:
        prompts = self.next_prompts()
        b = len(prompts)
        net_weights = self.net_weights(prompts) if self.net is not None else None
        if self.learnable is not None:
            for i, p in enumerate(prompts):
                self.learnable.ensure(p.id, net_weights[i] if net_weights is not None else np.full(self.k, 1 / self.k))
            weights = self.learnable.weights([p.id for p in prompts])
        elif net_weights is not None:
            weights = net_weights.copy()
        else:
            weights = np.full((b, self.k), 1 / self.k)
        explore_share = 1.0 if self.algo.name == "static" else self.algo.exploration_share
        explored = np.zeros(b, dtype=bool)
        explored[self.rng.permutation(b)[: int(round(explore_share * b))]] = True
        draws = self.rng.dirichlet(np.full(self.k, self.algo.dirichlet_alpha), size=b)
        weights = np.where(explored[:, None], draws, weights)
        return ProposedBatch(prompts, weights, explored, net_weights)

    # -- 2. generate --------------------------------------------------------------------------------------------

    def conditioned(self, prompt: str, weights: np.ndarray) -> str:
        return conditioned_prompt(
            self.policy.tokenizer, prompt, self.names, weights, self.config.model.use_chat_template
        )

    def generate(self, batch: ProposedBatch) -> Candidates:
        texts = [self.conditioned(p.text, w) for p, w in zip(batch.prompts, batch.weights, strict=True)]
        out = self.policy.generate(
            texts,
            num_return_sequences=self.algo.samples_per_prompt,
            max_new_tokens=self.algo.max_new_tokens,
            temperature=self.algo.temperature,
            top_p=self.algo.top_p,
            top_k=self.algo.top_k,
        )
        return Candidates(
            texts=[t for group in out.texts for t in group],
            token_ids=[ids for group in out.token_ids for ids in group],
            new_tokens=out.new_tokens,
        )

    # -- 3. score -----------------------------------------------------------------------------------------------

    def oriented_scores(self, prompts: list[str], responses: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(raw, oriented) scores, each (N, K); oriented ones are higher-is-better."""
        raw = np.stack([o.score(prompts, responses) for o in self.objectives], axis=1)
        signs = np.array([o.sign for o in self.objectives])
        return raw, raw * signs

    def score(self, candidates: Candidates, batch: ProposedBatch) -> Scores:
        assert self.normalizer is not None
        m = self.algo.samples_per_prompt
        prompts = [p.text for p in batch.prompts for _ in range(m)]
        valid = np.array([not is_degenerate(t, self.algo.max_repeated_ngram_share) for t in candidates.texts])
        raw, oriented = self.oriented_scores(prompts, candidates.texts)
        calibrated = self.normalizer(oriented)
        if self.algo.normalization == "group":
            # Degenerate candidates would distort their group's statistics: standardise over valid ones only.
            relative = np.zeros_like(oriented)
            for g in range(len(batch.prompts)):
                rows = np.arange(g * m, (g + 1) * m)
                keep = rows[valid[rows]]
                if len(keep):
                    relative[keep] = self.normalizer.within_groups(oriented[keep], len(keep))
        else:
            relative = calibrated
        return Scores(raw, calibrated, relative, valid)

    # -- 4. reject ----------------------------------------------------------------------------------------------

    def reject(self, batch: ProposedBatch, scores: Scores) -> list[Acceptance]:
        """Per prompt: keep the winners under its own weight, and under each extra Dirichlet label."""
        m = self.algo.samples_per_prompt
        accepted = []
        for g in range(len(batch.prompts)):
            rows = slice(g * m, (g + 1) * m)
            relative, valid = scores.relative[rows], scores.valid[rows]
            labels = [(batch.weights[g], bool(batch.explored[g]))]
            extra = self.rng.dirichlet(
                np.full(self.k, self.algo.dirichlet_alpha), size=self.algo.extra_labels_per_group
            )
            labels += [(w, True) for w in extra]
            for label, explored in labels:
                kept = select(
                    relative @ label, relative, valid, self.algo.selection, self.algo.top_q, self.algo.ric_quantile
                )
                accepted += [Acceptance(g, g * m + int(i), label, explored) for i in kept]
        return accepted

    # -- 5. hindsight (policy → preference) ----------------------------------------------------------------------

    def hindsight(self, batch: ProposedBatch, scores: Scores, accepted: list[Acceptance]) -> float:
        """Set each acceptance's target t and refined weight w*; move z_x toward t. Returns the mean KL."""
        for a in accepted:
            a.target = hindsight_target(scores.relative[a.candidate], self.algo.hindsight_temperature)
        if self.algo.name == "static":
            for a in accepted:
                a.refined = a.label  # the rigid target: train on the weight that was drawn
            return 0.0
        kls = []
        if self.learnable is not None:
            for g, prompt in enumerate(batch.prompts):
                own = [a.target for a in accepted if a.group == g and not a.explored]
                if own:
                    kls.append(self.learnable.update(prompt.id, np.mean(own, axis=0), self.algo.weight_lr))
        mix = self.algo.hindsight_mix
        for a in accepted:
            if a.explored or self.learnable is None:
                a.refined = (1 - mix) * a.label + mix * a.target
            else:
                a.refined = self.learnable.weights([batch.prompts[a.group].id])[0]
        return float(np.mean(kls)) if kls else 0.0

    # -- 6. meta step (outer) -----------------------------------------------------------------------------------

    def meta_step(self, batch: ProposedBatch, accepted: list[Acceptance]) -> float | None:
        """Fit f_φ to the refined preferences (meal) or straight to hindsight targets (meal_no_learnable)."""
        if self.net is None or self.meta_optimizer is None or self.algo.meta_steps == 0:
            return None
        if self.learnable is not None:
            by_id = {p.id: p for p in self.train_prompts}
            prompts = [by_id[i] for i in self.learnable.logits]
            targets = self.learnable.weights([p.id for p in prompts])
        else:
            own = [a for a in accepted if not a.explored]
            if not own:
                return None
            prompts = [batch.prompts[a.group] for a in own]
            targets = np.stack([a.target for a in own])
        inputs, target = self.embed(prompts), torch.tensor(targets, dtype=torch.float32)
        first_loss = None
        for _ in range(self.algo.meta_steps):
            loss = kl_to_net(target, self.net(inputs))
            self.meta_optimizer.zero_grad()
            loss.backward()
            self.meta_optimizer.step()
            first_loss = loss.item() if first_loss is None else first_loss
        return first_loss

    # -- 7. base step (inner) -----------------------------------------------------------------------------------

    def base_step(self, step: int, batch: ProposedBatch, candidates: Candidates, accepted: list[Acceptance]) -> float:
        """SFT on this iteration's acceptances plus as many replayed earlier ones, conditioned on w*."""
        fresh = [
            ReplayItem(
                batch.prompts[a.group].id,
                batch.prompts[a.group].text,
                candidates.token_ids[a.candidate],
                np.asarray(a.refined).tolist(),
                step,
            )
            for a in accepted
        ]
        older = list(self.replay)
        replayed = [older[i] for i in self.rng.permutation(len(older))[: len(fresh)]]
        self.replay.extend(fresh)
        return self.fit(fresh + replayed, self.algo.policy_epochs, self.algo.max_policy_steps)

    def fit(self, items: list[ReplayItem], epochs: int, max_steps: int) -> float:
        losses: list[float] = []
        for _ in range(epochs):
            order = [items[i] for i in self.rng.permutation(len(items))]
            for chunk in _chunks(order, self.algo.micro_batch_size):
                if len(losses) >= max_steps:
                    break
                prompts = [self.conditioned(item.prompt, np.asarray(item.weights)) for item in chunk]
                loss = self.policy.sft_loss(prompts, [item.response_ids for item in chunk])
                self.policy_optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), self.algo.max_grad_norm)
                self.policy_optimizer.step()
                losses.append(loss.item())
        return float(np.mean(losses)) if losses else math.nan

    # -- 8. record ----------------------------------------------------------------------------------------------

    def record(
        self,
        step: int,
        batch: ProposedBatch,
        candidates: Candidates,
        scores: Scores,
        accepted: list[Acceptance],
        weight_loss: float,
        meta_loss: float | None,
        policy_loss: float,
        timings: dict[str, float],
    ) -> None:
        kept = sorted({a.candidate for a in accepted})
        values: dict[str, float] = {
            "accept_rate": len(kept) / len(candidates.texts),
            "degenerate_rate": float(1 - scores.valid.mean()),
            "loss/policy": policy_loss,
            "loss/weights": weight_loss,
            "replay_size": float(len(self.replay)),
            "throughput/tokens_per_s": candidates.new_tokens / max(timings["time/generate"], 1e-9),
            **timings,
        }
        if meta_loss is not None:
            values["loss/meta"] = meta_loss
        learned = self.learnable.weights([p.id for p in batch.prompts]) if self.learnable is not None else None
        net_now = self.net_weights(batch.prompts) if self.net is not None else None
        spread_source = learned if learned is not None else net_now
        if spread_source is not None:
            values["weight_entropy"] = float(entropy(spread_source).mean())
        for k, name in enumerate(self.names):
            values[f"pref_weight/{name}"] = float(batch.weights[:, k].mean())
            if learned is not None:
                values[f"pref_weight_learned/{name}"] = float(learned[:, k].mean())
            if spread_source is not None:
                values[f"pref_weight_std/{name}"] = float(spread_source[:, k].std())
            if net_now is not None:
                values[f"pref_weight_net/{name}"] = float(net_now[:, k].mean())
            values[f"reward/{name}"] = float(scores.raw[:, k].mean())
            values[f"reward_norm/{name}"] = float(scores.calibrated[:, k].mean())
            if kept:
                values[f"reward_accepted/{name}"] = float(scores.raw[kept, k].mean())
                values[f"reward_norm_accepted/{name}"] = float(scores.calibrated[kept, k].mean())
        self.recorder.metrics(step, {k: v for k, v in values.items() if math.isfinite(v)})
        m = self.algo.samples_per_prompt
        kept_set = set(kept)
        self.recorder.samples(
            step,
            [
                SampleRecord(
                    step=step,
                    prompt_id=batch.prompts[i // m].id,
                    prompt=batch.prompts[i // m].text,
                    weights=batch.weights[i // m].round(4).tolist(),
                    response=text,
                    raw_rewards=dict(zip(self.names, scores.raw[i].tolist(), strict=True)),
                    normalized_rewards=dict(zip(self.names, scores.calibrated[i].round(4).tolist(), strict=True)),
                    accepted=i in kept_set,
                )
                for i, text in enumerate(candidates.texts)
            ],
        )

    # -- before the loop: calibration, probe set, warm start -------------------------------------------------------

    def sample_base(self, prompts: list[Prompt], samples: int) -> tuple[Candidates, np.ndarray, np.ndarray]:
        """Responses under uniform weights, with (raw, oriented) scores."""
        uniform = ProposedBatch(
            prompts, np.full((len(prompts), self.k), 1 / self.k), np.zeros(len(prompts), bool), None
        )
        texts = [self.conditioned(p.text, w) for p, w in zip(prompts, uniform.weights, strict=True)]
        out = self.policy.generate(
            texts, samples, self.algo.max_new_tokens, self.algo.temperature, self.algo.top_p, self.algo.top_k
        )
        candidates = Candidates(
            [t for g in out.texts for t in g], [i for g in out.token_ids for i in g], out.new_tokens
        )
        raw, oriented = self.oriented_scores([p.text for p in prompts for _ in range(samples)], candidates.texts)
        return candidates, raw, oriented

    def calibrate(self) -> None:
        """μ, σ of each objective on the base policy's own responses; also how the objectives correlate there."""
        count = min(self.algo.calibration_prompts, len(self.train_prompts))
        prompts = [self.train_prompts[i] for i in self.rng.permutation(len(self.train_prompts))[:count]]
        candidates, _, oriented = self.sample_base(prompts, self.algo.samples_per_prompt)
        valid = np.array([not is_degenerate(t, self.algo.max_repeated_ngram_share) for t in candidates.texts])
        basis = oriented[valid] if valid.sum() >= 2 else oriented
        self.normalizer = Normalizer.calibrate(self.names, basis, self.algo.clip)
        values = {}
        for k, name in enumerate(self.names):
            values[f"calibration/mean/{name}"] = float(self.normalizer.mean[k])
            values[f"calibration/std/{name}"] = float(self.normalizer.std[k])
            for j in range(k + 1, self.k):
                values[f"calibration/correlation/{name}/{self.names[j]}"] = linear_correlation(basis[:, k], basis[:, j])
        self.recorder.metrics(0, values)

    def build_probe_set(self) -> None:
        """Two base-policy responses for each of P held-out prompts not used by the sampled evaluation."""
        pairs = self.config.eval.probe_pairs
        pool = self.eval_prompts[self.config.eval.prompts :] or self.eval_prompts
        if pairs == 0:
            return
        prompts = [pool[i % len(pool)] for i in range(pairs)]
        candidates, _, oriented = self.sample_base(prompts, 2)
        assert self.normalizer is not None
        self.probe_set = ProbeSet(
            [p.text for p in prompts for _ in range(2)], candidates.token_ids, self.normalizer(oriented)
        )

    def warm_start(self) -> None:
        """RiC's offline stage: hindsight-labelled base-model samples, trained on before the online loop."""
        count = min(self.algo.warm_start_prompts, len(self.train_prompts))
        if count == 0:
            return
        assert self.normalizer is not None
        prompts = [self.train_prompts[i] for i in self.rng.permutation(len(self.train_prompts))[:count]]
        m = self.algo.samples_per_prompt
        candidates, _, oriented = self.sample_base(prompts, m)
        relative = self.normalizer(oriented)
        items = []
        for i, text in enumerate(candidates.texts):
            if not is_degenerate(text, self.algo.max_repeated_ngram_share):
                target = hindsight_target(relative[i], self.algo.hindsight_temperature)
                items.append(
                    ReplayItem(prompts[i // m].id, prompts[i // m].text, candidates.token_ids[i], target.tolist(), 0)
                )
        self.replay.extend(items)
        steps = math.ceil(len(items) / self.algo.micro_batch_size) * self.algo.warm_start_epochs
        loss = self.fit(items, self.algo.warm_start_epochs, steps)
        self.recorder.metrics(0, {"warm_start/samples": float(len(items)), "warm_start/loss": loss})

    # -- evaluation ---------------------------------------------------------------------------------------------

    def evaluate(self, step: int) -> EvaluationResult:
        """Grid of weights × held-out prompts → front, hypervolume, controllability, plus the probe.

        Runs on its own seeded RNG stream so that evaluating does not change the training that follows.
        """
        assert self.normalizer is not None
        cfg = self.config.eval
        grid = weight_grid(self.k, cfg.grid_points, cfg.lattice_divisions)
        prompts = self.eval_prompts[: cfg.prompts]
        jobs = [(p, w) for w in grid for p in prompts]
        with torch.random.fork_rng(devices=[self.policy.device] if self.policy.device.type == "cuda" else []):
            torch.manual_seed(self.config.seed * 100_003 + step)
            texts: list[str] = []
            for chunk in _chunks(jobs, 64):
                out = self.policy.generate(
                    [self.conditioned(p.text, w) for p, w in chunk],
                    cfg.samples_per_weight,
                    cfg.max_new_tokens or self.algo.max_new_tokens,
                    cfg.temperature,
                    self.algo.top_p,
                    self.algo.top_k,
                )
                texts += [t for group in out.texts for t in group]
        n = cfg.samples_per_weight
        asked = np.repeat(np.stack([w for _, w in jobs]), n, axis=0)
        raw, oriented = self.oriented_scores([p.text for p, _ in jobs for _ in range(n)], texts)
        reference = np.asarray(cfg.reference_point or [-self.algo.clip] * self.k, dtype=np.float64)
        result = summarize(step, self.names, grid, asked, self.normalizer(oriented), raw, reference, self.probe())
        self.recorder.evaluation(result)
        metrics = {"eval/hypervolume": result.hypervolume}
        metrics.update({f"eval/controllability/{n}": v for n, v in result.controllability.items()})
        metrics.update({f"eval/probe/{n}": v for n, v in result.probe.items()})
        self.recorder.metrics(step, metrics)
        return result

    def probe(self) -> dict[str, float]:
        """Teacher-forced conditioning probe: does raising w_k raise log p(y) more for responses that do better on k?

        For each objective k, contrast the weight e_k against uniform weight on the others; correlate, over the
        response pairs of each prompt, the difference in that log-likelihood shift with the difference in
        (r_k − mean of the other r). Needs no sampling, so it sees conditioning long before sampled means do.
        """
        if self.probe_set is None:
            return {}
        probe, result = self.probe_set, {}
        for k, name in enumerate(self.names):
            high = np.eye(self.k)[k]
            low = (1 - high) / (self.k - 1)
            shift = np.zeros(len(probe.prompts))
            for sign, weights in ((1.0, high), (-1.0, low)):
                texts = [self.conditioned(p, weights) for p in probe.prompts]
                shift += sign * np.asarray(self.policy.score_logprobs(texts, probe.response_ids))
            others = np.delete(probe.relative, k, axis=1).mean(axis=1)
            advantage = probe.relative[:, k] - others
            result[name] = linear_correlation(shift[0::2] - shift[1::2], advantage[0::2] - advantage[1::2])
        return result

    # -- checkpoints --------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "policy_optimizer": self.policy_optimizer.state_dict(),
            "net": self.net.state_dict() if self.net is not None else None,
            "meta_optimizer": self.meta_optimizer.state_dict() if self.meta_optimizer is not None else None,
            "learnable": self.learnable.state_dict() if self.learnable is not None else None,
            "normalizer": self.normalizer.state_dict() if self.normalizer is not None else None,
            "replay": [asdict(item) for item in self.replay],
            # Batch composition changes padding and so the last bits of an embedding: keep them for exact resume.
            "embeddings": self._embeddings,
            "probe_set": asdict(self.probe_set) if self.probe_set is not None else None,
            "order": self._order,
            "cursor": self._cursor,
            "rng": checkpoint.rng_state(self.rng),
        }

    def save_checkpoint(self) -> Path:
        return checkpoint.save_checkpoint(
            self.run_dir, self.iteration, self.policy.save_adapter, self.state_dict(), self.config.checkpoint.keep_last
        )

    def load_checkpoint(self, path: Path) -> None:
        state = checkpoint.load_state(path)
        self.policy.load_adapter(path / "adapter")
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        if self.net is not None and self.meta_optimizer is not None:
            self.net.load_state_dict(state["net"])
            self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        if self.learnable is not None:
            self.learnable.load_state_dict(state["learnable"])
        self.normalizer = Normalizer.from_state_dict(state["normalizer"]) if state["normalizer"] else None
        self._embeddings = dict(state["embeddings"])
        self.replay = deque((ReplayItem(**item) for item in state["replay"]), maxlen=self.algo.replay_size)
        probe = state["probe_set"]
        self.probe_set = (
            ProbeSet(probe["prompts"], probe["response_ids"], np.asarray(probe["relative"])) if probe else None
        )
        self._order, self._cursor = list(state["order"]), int(state["cursor"])
        self.iteration = int(state["iteration"])
        checkpoint.restore_rng_state(state["rng"], self.rng)

    def resume(self) -> bool:
        """Load the newest checkpoint of the run directory; False if there is none."""
        latest = checkpoint.latest_checkpoint(self.run_dir)
        if latest is None:
            return False
        self.load_checkpoint(latest)
        return True

    # -- inference ----------------------------------------------------------------------------------------------

    def auto_weights(self, prompt: Prompt) -> np.ndarray:
        """What the meta-learner proposes for a prompt: f_φ(x), else the learned z_x, else uniform."""
        if self.net is not None:
            return self.net_weights([prompt])[0]
        if self.learnable is not None and prompt.id in self.learnable:
            return self.learnable.weights([prompt.id])[0]
        return np.full(self.k, 1 / self.k)
