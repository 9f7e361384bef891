// The contracts between the server and these pages, written by `python -m app.contracts` from meal_core/enums.py,
// meal_core/metric_keys.py and meal_core/experiment.py. Do not edit: change those modules and rewrite this file.

export const RUN_STATUS = Object.freeze({"QUEUED": "queued", "RUNNING": "running", "STOPPING": "stopping", "SUCCEEDED": "succeeded", "FAILED": "failed", "STOPPED": "stopped"});
export const RUN_PHASE = Object.freeze({"LOADING": "loading", "CALIBRATING": "calibrating", "EVALUATING": "evaluating", "WARM_START": "warm_start", "TRAINING": "training", "CHECKPOINTING": "checkpointing"});
export const JOB_STATUS = Object.freeze({"QUEUED": "queued", "RUNNING": "running", "SUCCEEDED": "succeeded", "FAILED": "failed"});
export const ROLE = Object.freeze({"REVIEWER": "reviewer", "TRAINER": "trainer", "ADMIN": "admin"});
export const QUEUE_KIND = Object.freeze({"SINGLE": "single", "COMPARISON": "comparison"});
export const QUEUE_STATUS = Object.freeze({"OPEN": "open", "CLOSED": "closed"});
export const REVIEW_STATUS = Object.freeze({"DRAFT": "draft", "SUBMITTED": "submitted"});
export const RUN_STATUSES = Object.freeze({"ACTIVE": ["queued", "running", "stopping"], "FINISHED": ["succeeded", "failed", "stopped"], "RESUMABLE": ["failed", "stopped"], "HELD": ["running", "stopping"], "STOPPABLE": ["queued", "running"]});
export const ROLES = Object.freeze(["reviewer", "trainer", "admin"]);
export const PENDING_JOB_STATUSES = Object.freeze(["queued", "running"]);
export const METRIC = Object.freeze({"ACCEPT_RATE": "accept_rate", "DEGENERATE_RATE": "degenerate_rate", "LOSS_POLICY": "loss/policy", "LOSS_SFT": "loss/sft", "LOSS_PAIRWISE": "loss/pairwise", "LOSS_WEIGHTS": "loss/weights", "LOSS_META": "loss/meta", "PAIRWISE_MARGIN": "train/pairwise_margin", "POLICY_STEPS": "train/policy_steps", "GENERATED_RESPONSES": "train/generated_responses", "GENERATED_TOKENS": "train/generated_tokens", "REPLAY_SIZE": "replay_size", "TOKENS_PER_S": "throughput/tokens_per_s", "TIME_GENERATE": "time/generate", "TIME_SCORE": "time/score", "TIME_UPDATE": "time/update", "TIME_PREFIX": "time/", "PREF_WEIGHT_MOVED": "pref_weight_moved", "PREF_WEIGHT_UPDATES": "pref_weight_updates", "WEIGHT_ENTROPY": "weight_entropy", "PREF_WEIGHT": "pref_weight/{objective}", "PREF_WEIGHT_LEARNED": "pref_weight_learned/{objective}", "PREF_WEIGHT_STD": "pref_weight_std/{objective}", "PREF_WEIGHT_NET": "pref_weight_net/{objective}", "REWARD": "reward/{objective}", "REWARD_NORM": "reward_norm/{objective}", "REWARD_ACCEPTED": "reward_accepted/{objective}", "REWARD_NORM_ACCEPTED": "reward_norm_accepted/{objective}", "LABEL_ADVANTAGE_CORR": "train/label_advantage_corr/{objective}", "CALIBRATION_MEAN": "calibration/mean/{objective}", "CALIBRATION_STD": "calibration/std/{objective}", "WARM_START_SAMPLES": "warm_start/samples", "WARM_START_LOSS": "warm_start/loss", "EVAL_HYPERVOLUME": "eval/hypervolume", "EVAL_DEGENERATE_SHARE": "eval/degenerate_share", "EVAL_CONTROLLABILITY": "eval/controllability/{objective}", "EVAL_CONTROLLABILITY_GRID": "eval/controllability_grid/{objective}", "EVAL_CONTROLLABILITY_NULL": "eval/controllability_null/{objective}", "EVAL_PROBE": "eval/probe/{objective}", "EVAL_AUTO_WEIGHTS": "eval/auto_weights/{objective}"});
export const ALGORITHMS = Object.freeze(["meal", "static", "meal_no_meta", "meal_no_learnable"]);
export const EXPERIMENT_SET_BY = Object.freeze({"seed": "seeds", "algorithm.name": "algorithms"});
export const FIGURE = Object.freeze({"HV_FINAL": "hv_final", "HV_GAIN": "hv_gain", "CONTROL_FINAL": "control_final", "HELD_OUT_HV": "held_out_hv", "HELD_OUT_CONTROL": "held_out_control", "HELD_OUT_DEGENERATE": "held_out_degenerate", "WALL_MINUTES": "wall_minutes"});

// A metric key of one objective: metricKey(METRIC.REWARD, "brevity") === "reward/brevity".
export const metricKey = (template, objective) => template.replace("{objective}", objective);

// What every key of a family starts with: metricPrefix(METRIC.REWARD) === "reward/".
export const metricPrefix = (template) => template.split("{")[0];
