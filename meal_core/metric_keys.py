"""Every metric key a run records, named once.

Keys are flat with a slash (`reward/brevity`, `loss/policy`): what the trainer writes, the database stores, the API
filters on and the charts ask for. The trainer builds them here, the routers and scripts read them from here, and
the browser gets the same templates in app/static/js/contracts.js (written from this module).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PerObjective:
    """A key with one objective's name in it: `REWARD("brevity") == "reward/brevity"`."""

    template: str

    def __call__(self, objective: str) -> str:
        return self.template.format(objective=objective)

    @property
    def prefix(self) -> str:
        """What every key of this family starts with (to select them all)."""
        return self.template.partition("{")[0]


# -- each training iteration ------------------------------------------------------------------------------------------
ACCEPT_RATE = "accept_rate"  # share of candidates kept by rejection sampling
DEGENERATE_RATE = "degenerate_rate"  # share of candidates the degeneracy guard refused
LOSS_POLICY = "loss/policy"  # mean total loss per policy step
LOSS_SFT = "loss/sft"
LOSS_PAIRWISE = "loss/pairwise"
LOSS_WEIGHTS = "loss/weights"  # mean KL of the hindsight update of the learnable weights
LOSS_META = "loss/meta"  # the preference-weight-net's first meta-step loss
PAIRWISE_MARGIN = "train/pairwise_margin"
POLICY_STEPS = "train/policy_steps"
GENERATED_RESPONSES = "train/generated_responses"
GENERATED_TOKENS = "train/generated_tokens"
REPLAY_SIZE = "replay_size"
TOKENS_PER_S = "throughput/tokens_per_s"
TIME_GENERATE = "time/generate"  # seconds of the iteration spent in each phase
TIME_SCORE = "time/score"
TIME_UPDATE = "time/update"
TIME_PREFIX = "time/"
PREF_WEIGHT_MOVED = "pref_weight_moved"
PREF_WEIGHT_UPDATES = "pref_weight_updates"
WEIGHT_ENTROPY = "weight_entropy"

PREF_WEIGHT = PerObjective("pref_weight/{objective}")  # mean weight the batch was generated under
PREF_WEIGHT_LEARNED = PerObjective("pref_weight_learned/{objective}")  # mean learnable weight softmax(z_x)
PREF_WEIGHT_STD = PerObjective("pref_weight_std/{objective}")  # spread of the learned (or net) weights
PREF_WEIGHT_NET = PerObjective("pref_weight_net/{objective}")  # mean net proposal f_φ(x)
REWARD = PerObjective("reward/{objective}")  # mean raw score of every candidate
REWARD_NORM = PerObjective("reward_norm/{objective}")  # …normalised with the calibrated statistics
REWARD_ACCEPTED = PerObjective("reward_accepted/{objective}")  # mean raw score of the kept candidates
REWARD_NORM_ACCEPTED = PerObjective("reward_norm_accepted/{objective}")
LABEL_ADVANTAGE_CORR = PerObjective("train/label_advantage_corr/{objective}")

# -- before the loop (step 0) -----------------------------------------------------------------------------------------
CALIBRATION_MEAN = PerObjective("calibration/mean/{objective}")
CALIBRATION_STD = PerObjective("calibration/std/{objective}")
WARM_START_SAMPLES = "warm_start/samples"
WARM_START_LOSS = "warm_start/loss"


def calibration_correlation(objective: str, other: str) -> str:
    return f"calibration/correlation/{objective}/{other}"


# -- each evaluation --------------------------------------------------------------------------------------------------
EVAL_HYPERVOLUME = "eval/hypervolume"
EVAL_DEGENERATE_SHARE = "eval/degenerate_share"
EVAL_CONTROLLABILITY = PerObjective("eval/controllability/{objective}")
EVAL_CONTROLLABILITY_GRID = PerObjective("eval/controllability_grid/{objective}")
EVAL_CONTROLLABILITY_NULL = PerObjective("eval/controllability_null/{objective}")
EVAL_PROBE = PerObjective("eval/probe/{objective}")
EVAL_AUTO_WEIGHTS = PerObjective("eval/auto_weights/{objective}")  # its names are kl_net and kl_uniform


def exported() -> dict[str, str]:
    """Name → key or template of every constant above: what the browser's contracts.js carries."""
    return {
        name: value.template if isinstance(value, PerObjective) else value
        for name, value in globals().items()
        if name.isupper() and isinstance(value, str | PerObjective)
    }
