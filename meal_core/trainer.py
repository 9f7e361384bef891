"""The Meal training loop.

One iteration: propose → generate → score → reject → hindsight → meta step → base step → record.
Every step is a method below; the algorithms `meal`, `static`, `meal_no_meta` and `meal_no_learnable` differ
only inside propose, hindsight and meta step. docs/algorithm.md explains each choice.

Each row of a batch is of one kind, and each accepted response carries the kind of the label it won under:
- `corner`: generated under (or, with `algorithm.labels: corners`, the group's best for) a corner weight e_k or
  the uniform weight; the label is exact, so it is trained under as it is.
- `proposal`: generated under Meal's proposal softmax(z_x); its winners refine z_x and train under the refined w*.
- `draw`: generated under (or labelled with) a Dirichlet draw; trained under the draw moved toward its hindsight
  target (`static`: under the draw itself).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meal_core import checkpoint
from meal_core import metric_keys as keys
from meal_core.config import RunConfig, dump_config
from meal_core.data import Prompt, filter_by_length, load_prompt_sets
from meal_core.enums import RunPhase, RunStatus
from meal_core.evaluation import (
    EvaluationResult,
    auto_weight_fit,
    linear_correlation,
    rank_correlation,
    summarize,
    weight_grid,
)
from meal_core.normalization import Normalizer
from meal_core.objectives import Objective, build_objectives, score_responses
from meal_core.policy import Policy, Sampling
from meal_core.provenance import reproducibility_record
from meal_core.recorder import NullRecorder, PhaseProgress, Recorder, SampleRecord
from meal_core.rollout import Sampler, sample_prompts, sampler_for
from meal_core.selection import DegeneracyGuard, select
from meal_core.weights import LearnableWeights, PreferenceNet, entropy, hindsight_target, kl_to_net

USES_NET = {"meal", "meal_no_learnable"}
USES_LEARNABLE = {"meal", "meal_no_meta"}
# Row and label kinds (see the module docstring).
CORNER, PROPOSAL, DRAW = "corner", "proposal", "draw"
# Every sampling call is seeded by (run seed, stream, …) alone, so that what it draws does not depend on what ran
# before it: calibration and evaluation pair across algorithms, and a resumed run draws what a straight one would.
CALIBRATION_STREAM, PROBE_STREAM, WARM_START_STREAM, ROLLOUT_STREAM, EVALUATION_STREAM = 1, 2, 3, 4, 100_003
# Responses per generate call before the loop (calibration, probe, warm start): the phase's progress moves after each.
BASE_BATCH = 64
# Prompt × weight jobs per generate call of an evaluation.
EVALUATION_BATCH = 64


@dataclass
class ProposedBatch:
    prompts: list[Prompt]
    weights: np.ndarray  # (B, K): the weights each prompt's candidates are generated under
    kinds: list[str]  # (B,) CORNER, PROPOSAL or DRAW
    net_weights: np.ndarray | None  # (B, K): f_φ(x), where the algorithm has a net


@dataclass
class Candidates:
    texts: list[str]  # B·M responses, prompt-major
    token_ids: list[list[int]]
    new_tokens: int

    @classmethod
    def joined(cls, parts: list[Candidates]) -> Candidates:
        """The responses of several generate calls, in order."""
        return cls(
            [t for part in parts for t in part.texts],
            [ids for part in parts for ids in part.token_ids],
            sum(part.new_tokens for part in parts),
        )


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
    kind: str  # CORNER, PROPOSAL or DRAW: where the label comes from
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
class PairItem:
    """Two responses to one prompt: `chosen` is preferred over `rejected` under `weights` (a corner)."""

    prompt_id: str
    prompt: str
    chosen_ids: list[int]
    rejected_ids: list[int]
    weights: list[float]
    step: int


@dataclass
class FitResult:
    loss: float  # mean total loss per optimizer step
    sft: float  # mean SFT part (nan if not used)
    pairwise: float  # mean pairwise part (nan if not used)
    margin: float  # mean pairwise margin (nan if not used)
    steps: int


@dataclass
class IterationOutcome:
    """What one iteration produced: the record (step 8) is made of it."""

    step: int
    batch: ProposedBatch
    candidates: Candidates
    scores: Scores
    accepted: list[Acceptance]
    weight_loss: float  # mean KL of the learnable weights' hindsight update
    meta_loss: float | None  # None where the algorithm has no net or took no meta step
    fitted: FitResult
    timings: dict[str, float]  # seconds per phase, keyed by metric_keys.TIME_*


@dataclass
class PreferenceState:
    """The preference side after an iteration, for the batch's prompts (None where the algorithm lacks the part)."""

    learned: np.ndarray | None  # (B, K) softmax(z_x)
    net: np.ndarray | None  # (B, K) f_φ(x)
    moved: float | None  # mean movement of the learnable weights since they were first seen
    updates: float | None  # mean number of updates per learnable prompt


def stream_seed(*parts: int) -> int:
    """The seed of one sampling call, a function of its parts alone (run seed, stream, step, chunk)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


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
        on_checkpoint: Callable[[Path], None] | None = None,
    ) -> None:
        """`on_checkpoint(path)` is called after each checkpoint is saved, complete (the worker publishes it)."""
        self.recorder: Recorder = recorder or NullRecorder()
        PhaseProgress(self.recorder, RunPhase.LOADING)  # minutes for a large model or reward model
        self.config = config
        self.on_checkpoint = on_checkpoint
        self._saved: Path | None = None  # the checkpoint this process saved last
        self.algo = config.algorithm
        self.names = config.objective_names
        self.k = len(self.names)
        self.run_dir = Path(run_dir)
        if config.model.cpu_threads:
            torch.set_num_threads(config.model.cpu_threads)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)

        data = config.data
        self.train_prompts, self.eval_prompts = load_prompt_sets(
            data.train_prompts, data.eval_prompts, data.source_options("train"), data.source_options("eval")
        )
        self.policy = policy or Policy(config.model, config.lora, self.names)
        length = self.policy.prompt_length
        self.train_prompts = filter_by_length(self.train_prompts, length, data.max_prompt_length)
        self.train_prompts = (
            self.train_prompts[: data.max_train_prompts] if data.max_train_prompts else self.train_prompts
        )
        self.eval_prompts = filter_by_length(self.eval_prompts, length, data.max_prompt_length)
        self.policy.add_conversations(self.train_prompts + self.eval_prompts)
        self.objectives = objectives or build_objectives(config.objectives, str(self.policy.device))
        # model.rollout: every response of the run (rollouts, calibration, probe, warm start, evaluation) is drawn
        # here; with vLLM the engine follows the policy's adapters after each step on its own.
        self.sampler: Sampler = sampler_for(self.policy, config)
        self.guard = DegeneracyGuard.of(self.algo)
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
        self.pair_replay: deque[PairItem] = deque(maxlen=self.algo.replay_size)
        self.normalizer: Normalizer | None = None
        self.probe_set: ProbeSet | None = None
        self.iteration = 0
        self._order: list[int] = []
        self._cursor = 0
        self._corner_turn = 0  # which objective the next corner row goes to

    # -- the loop -----------------------------------------------------------------------------------------------

    def train(self, iterations: int | None = None) -> RunStatus:
        """Run until `iterations` (default: config) are done or the recorder asks to stop; returns the status."""
        total = iterations or self.config.iterations
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(dump_config(self.config))
        self.recorder.status(RunStatus.RUNNING)
        if self.normalizer is None:
            self.prepare()
        assert self.normalizer is not None
        self.recorder.reproducibility(reproducibility_record(self.config, self.normalizer.state_dict()))
        self.recorder.progress(self.iteration, total, None)
        training = PhaseProgress(self.recorder, RunPhase.TRAINING, total, self.iteration)
        while self.iteration < total:
            training.report()  # again after an evaluation or a checkpoint
            outcome = self.run_iteration()
            step = outcome.step
            self.record(outcome)
            if self.config.eval.every and step % self.config.eval.every == 0:
                self.evaluate(step)
            if self.config.checkpoint.every and step % self.config.checkpoint.every == 0:
                self.save_checkpoint()
            # After its evaluation and checkpoint: the iteration a run shows is recorded and, where due, saved.
            training.advance()
            self.recorder.progress(step, total, training.eta_seconds())
            if step < total and self.recorder.should_stop():
                self.save_checkpoint()
                self.recorder.status(RunStatus.STOPPED, f"stopped after iteration {step}")
                return RunStatus.STOPPED
        if not self.config.eval.every or self.iteration % self.config.eval.every:
            self.evaluate(self.iteration)
        self.save_checkpoint()
        self.recorder.status(RunStatus.SUCCEEDED)
        return RunStatus.SUCCEEDED

    def prepare(self) -> None:
        """Before the first iteration: calibrate on the base policy (with the probe set, from the same policy),
        evaluate the untrained policy, warm start. On a busy machine this can take longer than the training, so
        each part reports its phase."""
        calibrating = PhaseProgress(self.recorder, RunPhase.CALIBRATING, self.calibration_size())
        self.calibrate(calibrating)
        self.build_probe_set(calibrating)
        if self.config.eval.at_start:
            self.evaluate(0)
        self.warm_start()

    def run_iteration(self) -> IterationOutcome:
        """Steps 1–7 of one iteration, timed by phase (rollout, scoring, the rest: the policy and preference
        updates); records nothing. Needs the calibration (`calibrate`) done."""
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
        fitted = self.base_step(step, batch, candidates, scores, accepted)
        t3 = time.monotonic()
        self.iteration = step
        timings = {keys.TIME_GENERATE: t1 - t0, keys.TIME_SCORE: t2 - t1, keys.TIME_UPDATE: t3 - t2}
        return IterationOutcome(step, batch, candidates, scores, accepted, weight_loss, meta_loss, fitted, timings)

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
        """Weights for the next B prompts: corners first, then exploration draws and the learned proposals."""
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
        kinds = [PROPOSAL] * b
        corners = int(round(self.algo.corner_share * b))
        for row in range(corners):
            kinds[row] = CORNER
            weights[row] = np.eye(self.k)[(self._corner_turn + row) % self.k]
        self._corner_turn = (self._corner_turn + corners) % self.k
        rest = np.arange(corners, b)
        explore_share = 1.0 if self.algo.name == "static" else self.algo.exploration_share
        draws = self.rng.dirichlet(np.full(self.k, self.algo.dirichlet_alpha), size=b)
        for row in rest[self.rng.permutation(len(rest))[: int(round(explore_share * len(rest)))]]:
            kinds[row] = DRAW
            weights[row] = draws[row]
        return ProposedBatch(prompts, weights, kinds, net_weights)

    # -- 2. generate --------------------------------------------------------------------------------------------

    def sample(
        self, prompts: list[str], weights: np.ndarray, samples: int, sampling: Sampling, seed: int
    ) -> Candidates:
        """`samples` responses per prompt under its weights, flattened prompt-major, through `model.rollout`."""
        rollout = sample_prompts(self.sampler, self.policy, prompts, weights, samples, sampling, seed)
        flat = [c for group in rollout.completions for c in group]
        return Candidates(
            texts=[c.text for c in flat], token_ids=[c.token_ids for c in flat], new_tokens=rollout.new_tokens
        )

    def generate(self, batch: ProposedBatch) -> Candidates:
        """The iteration's rollout, seeded by the step it is for."""
        seed = stream_seed(self.config.seed, ROLLOUT_STREAM, self.iteration + 1)
        return self.sample(
            [p.text for p in batch.prompts], batch.weights, self.algo.samples_per_prompt, Sampling.of(self.algo), seed
        )

    # -- 3. score -----------------------------------------------------------------------------------------------

    def oriented_scores(self, prompts: list[str], responses: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(raw, oriented) scores, each (N, K); oriented ones are higher-is-better."""
        return score_responses(self.objectives, prompts, responses)

    def score(self, candidates: Candidates, batch: ProposedBatch) -> Scores:
        assert self.normalizer is not None
        m = self.algo.samples_per_prompt
        prompts = [p.text for p in batch.prompts for _ in range(m)]
        valid = self.guard.valid(candidates.texts)
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
        """Per prompt: the winners under the weight it was generated with, and under each further label.

        A corner row keeps only its own corner's winner: expert k learns from its own samples alone. Other rows
        add `extra_labels_per_group` Dirichlet draws and, with `labels: corners`, every corner and the uniform
        weight, each keeping its own winner.
        """
        m = self.algo.samples_per_prompt
        accepted = []
        for g in range(len(batch.prompts)):
            rows = slice(g * m, (g + 1) * m)
            relative, valid = scores.relative[rows], scores.valid[rows]
            labels = [(batch.weights[g], batch.kinds[g])]
            if batch.kinds[g] != CORNER:
                extra = self.rng.dirichlet(
                    np.full(self.k, self.algo.dirichlet_alpha), size=self.algo.extra_labels_per_group
                )
                labels += [(w, DRAW) for w in extra]
                if self.algo.labels == "corners":
                    labels += [(corner, CORNER) for corner in self.corner_labels()]
            for label, kind in labels:
                kept = select(
                    relative @ label, relative, valid, self.algo.selection, self.algo.top_q, self.algo.ric_quantile
                )
                accepted += [Acceptance(g, g * m + int(i), label, kind) for i in kept]
        return accepted

    def corner_labels(self) -> list[np.ndarray]:
        """e_1 … e_K and the uniform weight."""
        return [*np.eye(self.k), np.full(self.k, 1 / self.k)]

    # -- 5. hindsight (policy → preference) ----------------------------------------------------------------------

    def hindsight(self, batch: ProposedBatch, scores: Scores, accepted: list[Acceptance]) -> float:
        """Set each acceptance's target t and refined weight w*; move z_x toward t. Returns the mean KL."""
        for a in accepted:
            a.target = hindsight_target(scores.relative[a.candidate], self.algo.hindsight_temperature)
        kls = []
        if self.learnable is not None:
            for g, prompt in enumerate(batch.prompts):
                own = [a.target for a in accepted if a.group == g and a.kind == PROPOSAL]
                if own:
                    kls.append(self.learnable.update(prompt.id, np.mean(own, axis=0), self.algo.weight_lr))
        mix = self.algo.hindsight_mix
        for a in accepted:
            if a.kind == CORNER or self.algo.name == "static":
                a.refined = a.label  # a corner label is exact; static keeps the rigid target it drew
            elif a.kind == PROPOSAL and self.learnable is not None:
                a.refined = self.learnable.weights([batch.prompts[a.group].id])[0]
            else:
                a.refined = (1 - mix) * a.label + mix * a.target
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
            own = [a for a in accepted if a.kind == PROPOSAL]
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

    def base_step(
        self, step: int, batch: ProposedBatch, candidates: Candidates, scores: Scores, accepted: list[Acceptance]
    ) -> FitResult:
        """This iteration's acceptances (and corner pairs) plus as many replayed earlier ones, conditioned on w*."""
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
        items = fresh + self.replayed(self.replay, len(fresh))
        self.replay.extend(fresh)
        pairs: list[PairItem] = []
        if "pairwise" in self.algo.base_loss:
            new_pairs = self.corner_pairs(step, batch, candidates, scores)
            pairs = new_pairs + self.replayed(self.pair_replay, len(new_pairs))
            self.pair_replay.extend(new_pairs)
        if self.algo.base_loss == "pairwise":
            items = []
        return self.fit(items, pairs, self.algo.policy_epochs, self.algo.max_policy_steps)

    def replayed(self, buffer: deque[Any], count: int) -> list[Any]:
        older = list(buffer)
        return [older[i] for i in self.rng.permutation(len(older))[:count]]

    def corner_pairs(self, step: int, batch: ProposedBatch, candidates: Candidates, scores: Scores) -> list[PairItem]:
        """Per group and pair of objectives (k, j): the best on k preferred under e_k over the best on j, and
        the reverse under e_j, when the two are different responses."""
        m, eye = self.algo.samples_per_prompt, np.eye(self.k)
        pairs = []
        for g, prompt in enumerate(batch.prompts):
            rows = slice(g * m, (g + 1) * m)
            relative, valid = scores.relative[rows], scores.valid[rows]
            if valid.sum() < 2:
                continue
            best = [g * m + int(select(relative[:, k], relative, valid, "best")[0]) for k in range(self.k)]
            for k in range(self.k):
                for j in range(k + 1, self.k):
                    if best[k] == best[j]:
                        continue
                    for winner, loser, corner in ((best[k], best[j], k), (best[j], best[k], j)):
                        pairs.append(
                            PairItem(
                                prompt.id,
                                prompt.text,
                                candidates.token_ids[winner],
                                candidates.token_ids[loser],
                                eye[corner].tolist(),
                                step,
                            )
                        )
        return pairs

    def fit(self, items: list[ReplayItem], pairs: list[PairItem], epochs: int, max_steps: int) -> FitResult:
        """Up to `max_steps` AdamW steps, each on one micro-batch of items (SFT) and one of pairs (pairwise), while
        the sampler has given back what memory it can (vLLM's sleep mode on GPUs)."""
        with self.sampler.released():
            return self.policy_steps(items, pairs, epochs, max_steps)

    def policy_steps(self, items: list[ReplayItem], pairs: list[PairItem], epochs: int, max_steps: int) -> FitResult:
        item_batches = self.micro_batches(items, epochs, max_steps)
        pair_batches = self.micro_batches(pairs, epochs, max_steps)
        sft_losses, pair_losses, margins, totals = [], [], [], []
        for index in range(max(len(item_batches), len(pair_batches))):
            loss = torch.zeros((), device=self.policy.device)
            if index < len(item_batches):
                chunk = item_batches[index]
                sft = self.policy.sft_loss(
                    [item.prompt for item in chunk],
                    np.array([item.weights for item in chunk]),
                    [item.response_ids for item in chunk],
                )
                sft_losses.append(sft.item())
                loss = loss + sft
            if index < len(pair_batches):
                chunk = pair_batches[index]
                pairwise, margin = self.policy.pairwise_loss(
                    [pair.prompt for pair in chunk],
                    np.array([pair.weights for pair in chunk]),
                    [pair.chosen_ids for pair in chunk],
                    [pair.rejected_ids for pair in chunk],
                    self.algo.pairwise_beta,
                )
                pair_losses.append(pairwise.item())
                margins.append(margin.item())
                loss = loss + pairwise
            self.policy_optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), self.algo.max_grad_norm)
            self.policy_optimizer.step()
            totals.append(loss.item())

        def mean(values: list[float]) -> float:
            return float(np.mean(values)) if values else math.nan

        return FitResult(mean(totals), mean(sft_losses), mean(pair_losses), mean(margins), len(totals))

    def micro_batches(self, items: list[Any], epochs: int, max_steps: int) -> list[list[Any]]:
        """`epochs` reshuffled passes over `items` in micro-batches, at most `max_steps` of them."""
        batches: list[list[Any]] = []
        for _ in range(epochs if items else 0):
            order = [items[i] for i in self.rng.permutation(len(items))]
            batches += list(_chunks(order, self.algo.micro_batch_size))
        return batches[:max_steps]

    # -- 8. record ----------------------------------------------------------------------------------------------

    def record(self, outcome: IterationOutcome) -> None:
        """The iteration's metrics and samples, to the recorder."""
        prompt_ids = [p.id for p in outcome.batch.prompts]
        preferences = PreferenceState(
            learned=self.learnable.weights(prompt_ids) if self.learnable is not None else None,
            net=self.net_weights(outcome.batch.prompts) if self.net is not None else None,
            moved=self.learnable.mean_movement() if self.learnable is not None and self.learnable.logits else None,
            updates=self.learnable.mean_updates() if self.learnable is not None and self.learnable.logits else None,
        )
        self.recorder.metrics(outcome.step, iteration_metrics(self.names, outcome, preferences, len(self.replay)))
        self.recorder.samples(outcome.step, sample_records(self.names, outcome, self.algo.samples_per_prompt))

    # -- before the loop: calibration, probe set, warm start -------------------------------------------------------

    def sample_base(
        self, prompts: list[Prompt], samples: int, stream: int, progress: PhaseProgress | None = None
    ) -> tuple[Candidates, np.ndarray, np.ndarray]:
        """Responses under uniform weights, with (raw, oriented) scores, from the run's `stream`, about BASE_BATCH
        responses per generate call (`progress` advances by each call's responses). The first call is seeded by
        the stream alone, later ones also by their index: a run whose base sample fits one call draws as before."""
        sampling = Sampling.of(self.algo)
        parts = []
        for index, chunk in enumerate(_chunks(prompts, max(1, BASE_BATCH // samples))):
            seed = stream_seed(self.config.seed, stream, *([index] if index else []))
            uniform = np.full((len(chunk), self.k), 1 / self.k)
            parts.append(self.sample([p.text for p in chunk], uniform, samples, sampling, seed))
            if progress is not None:
                progress.advance(len(chunk) * samples)
        candidates = Candidates.joined(parts)
        raw, oriented = self.oriented_scores([p.text for p in prompts for _ in range(samples)], candidates.texts)
        return candidates, raw, oriented

    def calibration_size(self) -> int:
        """Base-policy responses that calibration and the probe set draw."""
        return min(self.algo.calibration_prompts, len(self.train_prompts)) * self.algo.samples_per_prompt + (
            2 * self.config.eval.probe_pairs
        )

    def calibrate(self, progress: PhaseProgress | None = None) -> None:
        """μ, σ of each objective on the base policy's own responses; also how the objectives correlate there."""
        count = min(self.algo.calibration_prompts, len(self.train_prompts))
        prompts = [self.train_prompts[i] for i in self.rng.permutation(len(self.train_prompts))[:count]]
        # Its own random stream: the same seed calibrates on the same samples whatever the algorithm.
        candidates, _, oriented = self.sample_base(prompts, self.algo.samples_per_prompt, CALIBRATION_STREAM, progress)
        valid = self.guard.valid(candidates.texts)
        basis = oriented[valid] if valid.sum() >= 2 else oriented
        self.normalizer = Normalizer.calibrate(self.names, basis, self.algo.clip)
        values = {}
        for k, name in enumerate(self.names):
            values[keys.CALIBRATION_MEAN(name)] = float(self.normalizer.mean[k])
            values[keys.CALIBRATION_STD(name)] = float(self.normalizer.std[k])
            for j in range(k + 1, self.k):
                values[keys.calibration_correlation(name, self.names[j])] = linear_correlation(basis[:, k], basis[:, j])
        self.recorder.metrics(0, values)

    def build_probe_set(self, progress: PhaseProgress | None = None) -> None:
        """Two base-policy responses for each of P held-out prompts not used by the sampled evaluation."""
        pairs = self.config.eval.probe_pairs
        pool = self.eval_prompts[self.config.eval.prompts :] or self.eval_prompts
        if pairs == 0:
            return
        prompts = [pool[i % len(pool)] for i in range(pairs)]
        candidates, _, oriented = self.sample_base(prompts, 2, PROBE_STREAM, progress)
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
        warming = PhaseProgress(self.recorder, RunPhase.WARM_START, count * m)
        candidates, _, oriented = self.sample_base(prompts, m, WARM_START_STREAM, warming)
        relative = self.normalizer(oriented)
        tau = self.algo.hindsight_temperature
        items = [
            ReplayItem(
                prompts[i // m].id,
                prompts[i // m].text,
                candidates.token_ids[i],
                hindsight_target(relative[i], tau).tolist(),
                0,
            )
            for i in np.flatnonzero(self.guard.valid(candidates.texts))
        ]
        self.replay.extend(items)
        steps = math.ceil(len(items) / self.algo.micro_batch_size) * self.algo.warm_start_epochs
        loss = self.fit(items, [], self.algo.warm_start_epochs, steps).loss
        self.recorder.metrics(0, {keys.WARM_START_SAMPLES: float(len(items)), keys.WARM_START_LOSS: loss})

    # -- evaluation ---------------------------------------------------------------------------------------------

    def evaluate(self, step: int) -> EvaluationResult:
        """Evaluate on the run's held-out prompts and record the result."""
        cfg = self.config.eval
        prompts = self.eval_prompts[: cfg.prompts]
        result = self.evaluation(
            prompts, cfg.samples_per_weight, step, self.evaluating(prompts, cfg.samples_per_weight)
        )
        self.recorder.evaluation(result)
        self.recorder.metrics(step, result.metrics())
        return result

    def evaluating(self, prompts: list[Prompt], samples_per_weight: int) -> PhaseProgress:
        """The evaluating phase's progress, told to the recorder: every generation of `evaluation`."""
        cfg = self.config.eval
        generations = len(prompts) * len(weight_grid(self.k, cfg.grid_points, cfg.lattice_divisions))
        return PhaseProgress(self.recorder, RunPhase.EVALUATING, generations * samples_per_weight)

    def evaluation(
        self, prompts: list[Prompt], samples_per_weight: int, step: int, progress: PhaseProgress | None = None
    ) -> EvaluationResult:
        """Grid of weights × prompts → front, hypervolume, controllability (per response, over the grid, and a
        shuffled-weights null), degenerate share, the probe, and how well the net's auto weights fit. `progress`
        advances by the generations of each generate call.

        Samples from seeds of its own, so that evaluating does not change the training that follows and
        the same seed and step sample alike whatever the algorithm. Records nothing.
        """
        assert self.normalizer is not None
        cfg = self.config.eval
        grid = weight_grid(self.k, cfg.grid_points, cfg.lattice_divisions)
        jobs = [(p, w) for w in grid for p in prompts]
        sampling = Sampling.of(self.algo, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
        texts: list[str] = []
        for index, chunk in enumerate(_chunks(jobs, EVALUATION_BATCH)):
            seed = stream_seed(self.config.seed, EVALUATION_STREAM, step, index)
            texts += self.sample(
                [p.text for p, _ in chunk], np.stack([w for _, w in chunk]), samples_per_weight, sampling, seed
            ).texts
            if progress is not None:
                progress.advance(len(chunk) * samples_per_weight)
        n = samples_per_weight
        asked = np.repeat(np.stack([w for _, w in jobs]), n, axis=0)
        raw, oriented = self.oriented_scores([p.text for p, _ in jobs for _ in range(n)], texts)
        normalized = self.normalizer(oriented)
        valid = self.guard.valid(texts)
        reference = np.asarray(cfg.reference_point or [-self.algo.clip] * self.k, dtype=np.float64)
        result = summarize(step, self.names, grid, asked, normalized, raw, reference, self.probe(), valid, seed=step)
        if self.net is not None:
            prompt_rows = np.tile(np.repeat(np.arange(len(prompts)), n), len(grid))
            result.auto_weights = auto_weight_fit(
                normalized, prompt_rows, self.net_weights(prompts), self.algo.hindsight_temperature
            )
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
                rows = np.tile(weights, (len(probe.prompts), 1))
                shift += sign * np.asarray(self.policy.score_logprobs(probe.prompts, rows, probe.response_ids))
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
            "pair_replay": [asdict(pair) for pair in self.pair_replay],
            "corner_turn": self._corner_turn,
            # Batch composition changes padding and so the last bits of an embedding: keep them for exact resume.
            "embeddings": self._embeddings,
            "probe_set": asdict(self.probe_set) if self.probe_set is not None else None,
            "order": self._order,
            "cursor": self._cursor,
            "rng": checkpoint.rng_state(self.rng),
        }

    def save_checkpoint(self) -> Path:
        """Save (once per iteration: the last one may be due both by `checkpoint.every` and at the end or a stop)
        after the recorder has written what it holds, then hand it to `on_checkpoint`."""
        if self._saved is not None and self._saved.name == checkpoint.name_of(self.iteration):
            return self._saved
        PhaseProgress(self.recorder, RunPhase.CHECKPOINTING)
        self.recorder.before_checkpoint()
        self._saved = checkpoint.save_checkpoint(
            self.run_dir, self.iteration, self.policy.save_adapter, self.state_dict(), self.config.checkpoint.keep_last
        )
        if self.on_checkpoint is not None:
            self.on_checkpoint(self._saved)
        return self._saved

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
        self.pair_replay = deque(
            (PairItem(**pair) for pair in state.get("pair_replay", [])), maxlen=self.algo.replay_size
        )
        self._corner_turn = int(state.get("corner_turn", 0))
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


# -- the record of an iteration: pure functions of what it produced ----------------------------------------------------


def iteration_metrics(
    names: list[str], outcome: IterationOutcome, preferences: PreferenceState, replay_size: int
) -> dict[str, float]:
    """The iteration's metric points, keyed by meal_core.metric_keys; non-finite values (a loss not used) left out."""
    batch, scores, fitted = outcome.batch, outcome.scores, outcome.fitted
    kept = sorted({a.candidate for a in outcome.accepted})
    values: dict[str, float] = {
        keys.ACCEPT_RATE: len(kept) / len(outcome.candidates.texts),
        keys.DEGENERATE_RATE: float(1 - scores.valid.mean()),
        keys.LOSS_POLICY: fitted.loss,
        keys.LOSS_SFT: fitted.sft,
        keys.LOSS_PAIRWISE: fitted.pairwise,
        keys.PAIRWISE_MARGIN: fitted.margin,
        keys.POLICY_STEPS: float(fitted.steps),
        keys.GENERATED_RESPONSES: float(len(outcome.candidates.texts)),
        keys.GENERATED_TOKENS: float(outcome.candidates.new_tokens),
        keys.LOSS_WEIGHTS: outcome.weight_loss,
        keys.REPLAY_SIZE: float(replay_size),
        keys.TOKENS_PER_S: outcome.candidates.new_tokens / max(outcome.timings[keys.TIME_GENERATE], 1e-9),
        **outcome.timings,
        **label_advantage_correlation(names, scores, outcome.accepted),
    }
    if preferences.moved is not None and preferences.updates is not None:
        values[keys.PREF_WEIGHT_MOVED] = preferences.moved
        values[keys.PREF_WEIGHT_UPDATES] = preferences.updates
    if outcome.meta_loss is not None:
        values[keys.LOSS_META] = outcome.meta_loss
    spread_source = preferences.learned if preferences.learned is not None else preferences.net
    if spread_source is not None:
        values[keys.WEIGHT_ENTROPY] = float(entropy(spread_source).mean())
    for k, name in enumerate(names):
        values[keys.PREF_WEIGHT(name)] = float(batch.weights[:, k].mean())
        if preferences.learned is not None:
            values[keys.PREF_WEIGHT_LEARNED(name)] = float(preferences.learned[:, k].mean())
        if spread_source is not None:
            values[keys.PREF_WEIGHT_STD(name)] = float(spread_source[:, k].std())
        if preferences.net is not None:
            values[keys.PREF_WEIGHT_NET(name)] = float(preferences.net[:, k].mean())
        values[keys.REWARD(name)] = float(scores.raw[:, k].mean())
        values[keys.REWARD_NORM(name)] = float(scores.calibrated[:, k].mean())
        if kept:
            values[keys.REWARD_ACCEPTED(name)] = float(scores.raw[kept, k].mean())
            values[keys.REWARD_NORM_ACCEPTED(name)] = float(scores.calibrated[kept, k].mean())
    return {key: value for key, value in values.items() if math.isfinite(value)}


def sample_records(names: list[str], outcome: IterationOutcome, samples_per_prompt: int) -> list[SampleRecord]:
    """Every candidate of the iteration with the weight it was generated under, its scores and whether it was kept."""
    batch, scores, m = outcome.batch, outcome.scores, samples_per_prompt
    kept = {a.candidate for a in outcome.accepted}
    return [
        SampleRecord(
            step=outcome.step,
            prompt_id=batch.prompts[i // m].id,
            prompt=batch.prompts[i // m].text,
            weights=batch.weights[i // m].round(4).tolist(),
            response=text,
            raw_rewards=dict(zip(names, scores.raw[i].tolist(), strict=True)),
            normalized_rewards=dict(zip(names, scores.calibrated[i].round(4).tolist(), strict=True)),
            accepted=i in kept,
        )
        for i, text in enumerate(outcome.candidates.texts)
    ]


def label_advantage_correlation(names: list[str], scores: Scores, accepted: list[Acceptance]) -> dict[str, float]:
    """Per objective k: Spearman, over this iteration's training labels, between the weight w*_k a response is
    trained under and its advantage on k (relative r_k minus the mean of the others). Near 0: the labels
    carry no information about w, and nothing can teach the policy to follow it."""
    if len(accepted) < 3:
        return {}
    labels = np.stack([a.refined for a in accepted])
    relative = scores.relative[[a.candidate for a in accepted]]
    values = {}
    for k, name in enumerate(names):
        advantage = relative[:, k] - np.delete(relative, k, axis=1).mean(axis=1)
        values[keys.LABEL_ADVANTAGE_CORR(name)] = rank_correlation(labels[:, k], advantage)
    return values
