"""meal_core.objectives: the built-in scorers, the hf_classifier and python plug-ins, batching and building."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import build_tiny_tokenizer, tiny_llama_config, tiny_run_config

from meal_core.config import RelevanceObjective, parse_config
from meal_core.objectives import Objective, ObjectiveError, build_objective, build_objectives
from meal_core.objectives.base import Objective as BaseObjective
from meal_core.objectives.hf_classifier import HFClassifierScorer, parse_output_spec
from meal_core.objectives.python_function import PythonScorer, import_function
from meal_core.objectives.relevance import RelevanceScorer
from meal_core.objectives.text_scorers import BrevityScorer, CoverageScorer, ReadabilityScorer, SentimentScorer

PROMPTS = [
    "How do I cook rice so it comes out fluffy?",
    "Why is the sky blue?",
    "Give me one tip for sleeping better.",
    "What is a budget?",
]
RESPONSES = [
    "Rinse it, then simmer with a lid.",
    "Sunlight scatters off air molecules, and blue light scatters the most, so the sky looks blue to us.",
    "Sleep.",
    "A plan for money.",
]


# -- the base class --------------------------------------------------------------------------------------------


class _Counting(BaseObjective):
    """A real Objective subclass: scores are response lengths, and every batch size is recorded."""

    def __init__(self, batch_size: int) -> None:
        super().__init__("counting", batch_size=batch_size)
        self.calls: list[int] = []

    def score_batch(self, prompts: Any, responses: Any) -> list[float]:
        self.calls.append(len(responses))
        return [float(len(r)) for r in responses]


def test_score_returns_float64_array_in_order() -> None:
    objective = _Counting(batch_size=3)
    scores = objective.score(["p"] * 5, ["a", "bb", "ccc", "dddd", "eeeee"])
    assert scores.dtype == np.float64
    assert scores.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert objective.calls == [3, 2]


def test_score_of_nothing_makes_no_call() -> None:
    objective = _Counting(batch_size=3)
    assert objective.score([], []).shape == (0,)
    assert objective.calls == []


def test_score_length_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        _Counting(batch_size=3).score(["a", "b"], ["x"])


@pytest.mark.parametrize(("direction", "sign"), [("maximize", 1.0), ("minimize", -1.0)])
def test_direction_gives_sign(direction: str, sign: float) -> None:
    assert SentimentScorer("s", direction=direction).sign == sign
    assert BrevityScorer("b", direction=direction).sign == sign


# -- offline text scorers ------------------------------------------------------------------------------------------


def test_sentiment_positive_beats_negative() -> None:
    scorer = SentimentScorer("positivity")
    scores = scorer.score(
        ["How was the trip?"] * 3,
        [
            "It was wonderful, I loved every minute and the people were great!",
            "The hotel is on the corner of the street.",
            "It was terrible, awful and I hated it.",
        ],
    )
    assert scores[0] > 0.5
    assert scores[2] < -0.5
    assert scores[0] > scores[1] > scores[2]
    assert abs(scores[1]) < 0.3
    assert ((scores >= -1) & (scores <= 1)).all()


def test_sentiment_ignores_the_prompt() -> None:
    scorer = SentimentScorer("positivity")
    a = scorer.score(["I hate everything."], ["That sounds nice."])
    b = scorer.score(["I love everything!"], ["That sounds nice."])
    assert a.tolist() == b.tolist()


def test_readability_cap_floor_and_empty() -> None:
    scorer = ReadabilityScorer("readability")
    easy = "The cat sat. The dog ran. I am glad."
    hard = (
        "Notwithstanding institutional considerations, interdisciplinary epistemological methodologies "
        "characteristically necessitate comprehensive reconceptualization of organizational infrastructures"
    )
    plain = "Water helps the body keep a steady temperature and carries nutrients to the cells that need them."
    scores = scorer.score(["p"] * 5, [easy, hard, plain, "", "   \n "])
    assert scores[0] == 90.0  # capped
    assert scores[1] == -20.0  # floored
    assert -20.0 < scores[2] < 90.0
    assert scores[3] == -20.0  # empty → floor
    assert scores[4] == -20.0  # whitespace only → floor


def test_readability_custom_bounds() -> None:
    scorer = ReadabilityScorer("readability", cap=50.0, floor=0.0)
    scores = scorer.score(["p", "p", "p"], ["The cat sat. The dog ran.", "", "Supercalifragilistic expialidocious."])
    assert scores.tolist() == [50.0, 0.0, 0.0]


def test_brevity_words_and_characters() -> None:
    responses = ["one two three", "  spaced   out  ", "", "a\nb\tc d"]
    words = BrevityScorer("short").score(["p"] * 4, responses)
    assert words.tolist() == [-3.0, -2.0, -0.0, -4.0]
    chars = BrevityScorer("short", unit="characters").score(["p"] * 4, responses)
    assert chars.tolist() == [-13.0, -16.0, -0.0, -7.0]


def test_coverage_counts_distinct_content_words() -> None:
    responses = [
        "Water the basil daily; basil loves sun and water.",
        "It is what it is, and so on.",
        "",
        "Use a pot, a pot, a POT!",
    ]
    scores = CoverageScorer("coverage").score(["p"] * 4, responses)
    # water, basil, daily, loves, sun — each once; "the", "and" are function words.
    assert scores.tolist() == [5.0, 0.0, 0.0, 2.0]  # use, pot
    assert CoverageScorer("coverage", min_letters=4).score(["p"], responses[:1]).tolist() == [4.0]  # not "sun"


def test_objective_types_come_from_the_config_union() -> None:
    from typing import get_args

    from meal_core.config import OBJECTIVE_TYPES, ObjectiveConfig

    members = get_args(get_args(ObjectiveConfig)[0])
    assert len(OBJECTIVE_TYPES) == len(members) and "coverage" in OBJECTIVE_TYPES
    for kind in OBJECTIVE_TYPES:  # every type the config accepts builds (python needs a function)
        if kind in ("hf_classifier", "python", "relevance"):
            continue
        pair = [{"name": "a", "type": kind}, {"name": "b", "type": kind}]
        assert build_objective(parse_config({"objectives": pair}).objectives[0]).name == "a"


# -- relevance (real MiniLM, offline) ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relevance() -> Objective:
    return build_objective(RelevanceObjective(name="relevance", batch_size=2))


def test_relevance_on_topic_beats_off_topic(relevance: Objective) -> None:
    assert isinstance(relevance, RelevanceScorer)
    prompts = ["How do I cook rice so it comes out fluffy?"] * 2 + ["Why is the sky blue?"] * 2
    responses = [
        "Rinse the rice, use a little less water and let it steam with the lid on.",
        "The stock market fell sharply on Tuesday after the earnings report.",
        "Sunlight is scattered by air molecules, and blue light is scattered the most.",
        "Put the rice in boiling water for twelve minutes.",
    ]
    scores = relevance.score(prompts, responses)
    assert scores[0] > scores[1] + 0.2
    assert scores[2] > scores[3] + 0.2
    assert ((scores >= -1.0 - 1e-6) & (scores <= 1.0 + 1e-6)).all()


def test_relevance_identical_text_is_one_and_batching_is_consistent(relevance: Objective) -> None:
    text = "Explain how photosynthesis works in simple words."
    assert relevance.score([text], [text])[0] == pytest.approx(1.0, abs=1e-5)
    # Five pairs in batches of two give the same scores as one at a time.
    prompts = PROMPTS + [PROMPTS[0]]
    responses = RESPONSES + ["Use a rice cooker."]
    together = relevance.score(prompts, responses)
    alone = [relevance.score([p], [r])[0] for p, r in zip(prompts, responses, strict=True)]
    assert np.allclose(together, alone, atol=1e-5)


def test_relevance_missing_model_path(tmp_path: Path) -> None:
    with pytest.raises(ObjectiveError, match="does not exist"):
        RelevanceScorer("relevance", model_path=str(tmp_path / "missing"))


# -- hf_classifier -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForSequenceClassification with three labels, saved with the tiny tokenizer."""
    from transformers import LlamaForSequenceClassification

    directory = tmp_path_factory.mktemp("tiny-classifier")
    tokenizer = build_tiny_tokenizer(directory)
    torch.manual_seed(1)
    config = tiny_llama_config(tokenizer, num_labels=3)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():  # the score head starts tiny: make the labels clearly differ
        model.score.weight.normal_(0.0, 0.2)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def reference_model(classifier_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    return AutoTokenizer.from_pretrained(classifier_dir), model


def _logits_one_by_one(reference: tuple[Any, Any], inputs: list[tuple[str, ...]]) -> torch.Tensor:
    """Each input alone, unpadded: the ground truth a batched, padded scorer must match."""
    tokenizer, model = reference
    rows = []
    with torch.no_grad():
        for args in inputs:
            encoded = tokenizer(*args, return_tensors="pt")
            rows.append(model(**encoded).logits[0].float())
    return torch.stack(rows)


def _expected(reference: tuple[Any, Any], input_format: str, separator: str = "\n\n") -> torch.Tensor:
    if input_format == "pair":
        inputs = [(p + separator + r,) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    elif input_format == "response_only":
        inputs = [(r,) for r in RESPONSES]
    elif input_format == "hh":
        inputs = [(f"\n\nHuman: {p}\n\nAssistant: {r}",) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    else:
        inputs = list(zip(PROMPTS, RESPONSES, strict=True))
    return _logits_one_by_one(reference, inputs)


@pytest.mark.parametrize("input_format", ["pair", "response_only", "text_pair", "hh"])
@pytest.mark.parametrize(
    ("output", "read"),
    [
        ("logit[1]", lambda x: x[:, 1]),
        ("logit[2]-logit[0]", lambda x: x[:, 2] - x[:, 0]),
        ("softmax[2]", lambda x: torch.softmax(x, dim=-1)[:, 2]),
    ],
)
def test_hf_classifier_formats_and_outputs(
    classifier_dir: Path, reference_model: tuple[Any, Any], input_format: str, output: str, read: Any
) -> None:
    scorer = HFClassifierScorer(
        "rm", str(classifier_dir), input_format=input_format, output=output, batch_size=3, max_length=256
    )
    scores = scorer.score(PROMPTS, RESPONSES)
    expected = read(_expected(reference_model, input_format)).numpy()
    assert scores.shape == (4,)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    # Not a constant: the check above could not pass by accident.
    assert np.ptp(scores) > 1e-4


def test_hf_classifier_input_formats_really_differ(classifier_dir: Path) -> None:
    results = {
        fmt: HFClassifierScorer("rm", str(classifier_dir), input_format=fmt, output="logit[0]").score(
            PROMPTS, RESPONSES
        )
        for fmt in ("pair", "response_only", "text_pair", "hh")
    }
    assert not np.allclose(results["pair"], results["hh"])
    assert not np.allclose(results["pair"], results["response_only"])
    assert not np.allclose(results["pair"], results["text_pair"])
    assert not np.allclose(results["response_only"], results["text_pair"])


def test_hf_classifier_custom_separator(classifier_dir: Path, reference_model: tuple[Any, Any]) -> None:
    scorer = HFClassifierScorer("rm", str(classifier_dir), output="logit[0]", separator=" ### ")
    expected = _expected(reference_model, "pair", separator=" ### ")[:, 0].numpy()
    np.testing.assert_allclose(scorer.score(PROMPTS, RESPONSES), expected, rtol=1e-4, atol=1e-5)


def test_hf_classifier_softmax_is_a_probability(classifier_dir: Path) -> None:
    scorers = [HFClassifierScorer("rm", str(classifier_dir), output=f"softmax[{i}]") for i in range(3)]
    total = sum(s.score(PROMPTS, RESPONSES) for s in scorers)
    np.testing.assert_allclose(total, 1.0, atol=1e-5)


@pytest.mark.parametrize("output", ["logit[3]", "softmax[5]", "logit[0]-logit[3]"])
def test_hf_classifier_output_beyond_labels(classifier_dir: Path, output: str) -> None:
    with pytest.raises(ObjectiveError, match=r"rm: output .* model's 3 labels"):
        HFClassifierScorer("rm", str(classifier_dir), output=output)


@pytest.mark.parametrize("relative", ["missing", "a/b/c"])
def test_hf_classifier_missing_local_path(tmp_path: Path, relative: str) -> None:
    path = str(tmp_path / relative)
    with pytest.raises(ObjectiveError, match="does not exist") as info:
        HFClassifierScorer("rm", path)
    assert path in str(info.value)


def test_hf_classifier_folder_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(ObjectiveError, match="rm: cannot load classifier"):
        HFClassifierScorer("rm", str(tmp_path))


def test_hf_classifier_unreachable_hub_id_offline() -> None:
    with pytest.raises(ObjectiveError, match="cannot load classifier 'no-such-org/no-such-model'"):
        HFClassifierScorer("rm", "no-such-org/no-such-model")


def test_hf_classifier_tokenizer_without_pad_token(tmp_path: Path, classifier_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir)
    model.config.pad_token_id = None
    model.save_pretrained(tmp_path)
    scorer = HFClassifierScorer("rm", str(tmp_path), output="logit[1]", input_format="response_only")
    assert scorer.shared.tokenizer.pad_token == "<|im_end|>"
    scores = scorer.score(PROMPTS, RESPONSES)
    # The padded batch matches one-at-a-time scoring (no text contains the eos token used as padding).
    alone = [scorer.score([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    np.testing.assert_allclose(scores, alone, rtol=1e-4, atol=1e-5)


def test_parse_output_spec_reads_tensor() -> None:
    logits = torch.tensor([[1.0, 2.0, 4.0], [0.0, 0.0, 0.0]])
    assert parse_output_spec("logit[2]")(logits).tolist() == [4.0, 0.0]
    assert parse_output_spec(" logit[0] - logit[2] ")(logits).tolist() == [-3.0, 0.0]
    np.testing.assert_allclose(
        parse_output_spec("softmax[1]")(logits).numpy(), [np.exp(2) / (np.e + np.exp(2) + np.exp(4)), 1 / 3]
    )
    with pytest.raises(ValueError, match="output must be"):
        parse_output_spec("logits[0]")


# -- python plug-in -----------------------------------------------------------------------------------------------

PLUGIN_SOURCE = """
CALLS = []


def length(prompts, responses):
    return [float(len(r)) for r in responses]


def recording(prompts, responses):
    CALLS.append(len(responses))
    return [float(i) for i, _ in enumerate(responses)]


def echo_prompt_length(prompts, responses):
    assert isinstance(prompts, list) and isinstance(responses, list)
    return [len(p) for p in prompts]


def one_short(prompts, responses):
    return [0.0] * (len(responses) - 1)


def nan_score(prompts, responses):
    return [float("nan")] * len(responses)


def inf_score(prompts, responses):
    return [float("inf")] + [0.0] * (len(responses) - 1)


NOT_CALLABLE = 3
"""


@pytest.fixture
def plugin(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("plugin")
    (directory / "meal_test_plugin.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(directory))
    monkeypatch.delitem(sys.modules, "meal_test_plugin", raising=False)
    yield "meal_test_plugin"
    sys.modules.pop("meal_test_plugin", None)


def test_python_plugin_scores(plugin: str) -> None:
    scorer = PythonScorer("custom", f"{plugin}:length")
    assert scorer.score(PROMPTS, RESPONSES).tolist() == [float(len(r)) for r in RESPONSES]


def test_python_plugin_gets_lists_and_ints_become_floats(plugin: str) -> None:
    scorer = PythonScorer("custom", f"{plugin}:echo_prompt_length")
    scores = scorer.score(tuple(PROMPTS), tuple(RESPONSES))
    assert scores.dtype == np.float64
    assert scores.tolist() == [float(len(p)) for p in PROMPTS]


def test_python_plugin_batches(plugin: str) -> None:
    scorer = PythonScorer("custom", f"{plugin}:recording", batch_size=4)
    module = sys.modules[plugin]
    scores = scorer.score(["p"] * 10, [f"r{i}" for i in range(10)])
    assert module.CALLS == [4, 4, 2]
    # Each batch restarts the enumeration: batch boundaries are where the batch size says.
    assert scores.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    module.CALLS.clear()
    PythonScorer("custom", f"{plugin}:recording", batch_size=64).score(["p"] * 10, ["r"] * 10)
    assert module.CALLS == [10]


def test_python_plugin_wrong_length(plugin: str) -> None:
    scorer = PythonScorer("custom", f"{plugin}:one_short", batch_size=4)
    with pytest.raises(ObjectiveError, match="custom: returned 3 scores for 4 responses"):
        scorer.score(["p"] * 6, ["r"] * 6)
    # The last, partial batch is reported with its real size.
    with pytest.raises(ObjectiveError, match="custom: returned 1 scores for 2 responses"):
        PythonScorer("custom", f"{plugin}:one_short", batch_size=4).score(["p"] * 2, ["r"] * 2)


@pytest.mark.parametrize("function", ["nan_score", "inf_score"])
def test_python_plugin_non_finite(plugin: str, function: str) -> None:
    scorer = PythonScorer("custom", f"{plugin}:{function}")
    with pytest.raises(ObjectiveError, match="custom: returned a non-finite score"):
        scorer.score(["p", "q"], ["r", "s"])


def test_python_plugin_missing_module() -> None:
    with pytest.raises(ObjectiveError, match="cannot import module 'meal_no_such_module'"):
        PythonScorer("custom", "meal_no_such_module:score")


@pytest.mark.parametrize("attribute", ["no_such_function", "NOT_CALLABLE"])
def test_python_plugin_missing_function(plugin: str, attribute: str) -> None:
    with pytest.raises(ObjectiveError, match=f"has no function '{attribute}'"):
        import_function(f"{plugin}:{attribute}")


def test_python_plugin_from_installed_package() -> None:
    function = import_function("os.path:basename")
    assert function("/a/b.txt") == "b.txt"


# -- building from config --------------------------------------------------------------------------------------------


def test_build_objectives_from_config(plugin: str) -> None:
    config = parse_config(
        {
            "objectives": [
                {"name": "positivity", "type": "sentiment", "batch_size": 7},
                {"name": "readable", "type": "readability", "cap": 70, "floor": 10},
                {"name": "short", "type": "brevity", "unit": "characters", "direction": "minimize"},
                {"name": "custom", "type": "python", "function": f"{plugin}:length", "batch_size": 2},
            ]
        }
    )
    objectives = build_objectives(config.objectives)
    assert [type(o) for o in objectives] == [SentimentScorer, ReadabilityScorer, BrevityScorer, PythonScorer]
    assert [o.name for o in objectives] == ["positivity", "readable", "short", "custom"]
    assert [o.batch_size for o in objectives] == [7, 64, 64, 2]
    assert [o.sign for o in objectives] == [1.0, 1.0, -1.0, 1.0]
    readable, short, custom = objectives[1], objectives[2], objectives[3]
    assert isinstance(readable, ReadabilityScorer) and (readable.cap, readable.floor) == (70.0, 10.0)
    assert isinstance(short, BrevityScorer) and short.unit == "characters"
    assert short.score(["p"], ["abcd"]).tolist() == [-4.0]
    assert custom.score(["p", "p", "p"], ["a", "bb", "ccc"]).tolist() == [1.0, 2.0, 3.0]


def test_build_hf_classifier_from_config(classifier_dir: Path, reference_model: tuple[Any, Any]) -> None:
    config = parse_config(
        {
            "objectives": [
                {"name": "positivity", "type": "sentiment"},
                {
                    "name": "rm",
                    "type": "hf_classifier",
                    "model": str(classifier_dir),
                    "input_format": "response_only",
                    "output": "logit[0]-logit[1]",
                    "direction": "minimize",
                },
            ]
        }
    )
    rm = build_objectives(config.objectives)[1]
    assert isinstance(rm, HFClassifierScorer)
    assert rm.sign == -1.0
    expected = _expected(reference_model, "response_only")
    np.testing.assert_allclose(
        rm.score(PROMPTS, RESPONSES), (expected[:, 0] - expected[:, 1]).numpy(), rtol=1e-4, atol=1e-5
    )


# -- a multi-output reward model ---------------------------------------------------------------------------------


def three_objectives_of_one_model(classifier_dir: Path) -> list[dict[str, Any]]:
    return [
        {"name": f"rm{i}", "type": "hf_classifier", "model": str(classifier_dir), "output": f"logit[{i}]"}
        for i in range(3)
    ]


def test_objectives_reading_one_model_share_one_forward_pass(
    classifier_dir: Path, reference_model: tuple[Any, Any]
) -> None:
    config = parse_config({"objectives": three_objectives_of_one_model(classifier_dir)})
    scorers = build_objectives(config.objectives)
    shared = {s.shared for s in scorers if isinstance(s, HFClassifierScorer)}
    assert len(shared) == 1
    model = shared.pop()
    scores = np.stack([s.score(PROMPTS, RESPONSES) for s in scorers], axis=1)
    assert model.forward_passes == 1, "three objectives, one pass over the batch"
    np.testing.assert_allclose(scores, _expected(reference_model, "pair").numpy(), rtol=1e-4, atol=1e-5)
    scorers[0].score(PROMPTS[:1], RESPONSES[:1])
    assert model.forward_passes == 2, "new responses: the model runs again"


def test_a_shared_model_batches_by_length_with_results_in_input_order(
    classifier_dir: Path, reference_model: tuple[Any, Any]
) -> None:
    objective = {**three_objectives_of_one_model(classifier_dir)[1], "batch_size": 2}
    config = parse_config({"objectives": [objective, {"name": "positivity", "type": "sentiment"}]})
    scorer = build_objectives(config.objectives)[0]
    assert isinstance(scorer, HFClassifierScorer)
    prompts, responses = PROMPTS * 2, [r * (i + 1) for i, r in enumerate(RESPONSES * 2)]
    expected = _logits_one_by_one(reference_model, [(p + "\n\n" + r,) for p, r in zip(prompts, responses, strict=True)])
    np.testing.assert_allclose(scorer.score(prompts, responses), expected[:, 1].numpy(), rtol=1e-4, atol=1e-5)
    assert scorer.shared.forward_passes == -(-len(responses) // 2)


def test_the_chat_input_uses_the_reward_models_own_template(
    tmp_path: Path, classifier_dir: Path, reference_model: tuple[Any, Any]
) -> None:
    import shutil

    tokenizer, model = reference_model
    assert tokenizer.chat_template, "the tiny tokenizer has a chat template"
    scorer = HFClassifierScorer("rm", str(classifier_dir), input_format="auto", output="logit[0]")
    assert scorer.shared.input_format == "chat"
    written = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
        )
        for p, r in zip(PROMPTS, RESPONSES, strict=True)
    ]
    assert all(p in t and r in t and t != p + r for p, r, t in zip(PROMPTS, RESPONSES, written, strict=True))
    with torch.no_grad():
        rows = [model(**tokenizer(t, return_tensors="pt", add_special_tokens=False)).logits[0] for t in written]
    np.testing.assert_allclose(scorer.score(PROMPTS, RESPONSES), torch.stack(rows)[:, 0].numpy(), rtol=1e-4, atol=1e-5)

    plain = tmp_path / "no-template"
    shutil.copytree(classifier_dir, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    (plain / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "chat_template"}))
    assert HFClassifierScorer("rm", str(plain), input_format="auto").shared.input_format == "pair"
    with pytest.raises(ObjectiveError, match="input_format 'chat', but its tokenizer has no chat template"):
        HFClassifierScorer("rm", str(plain), input_format="chat")


def test_a_run_trains_on_three_objectives_from_one_reward_model(
    tmp_path: Path, classifier_dir: Path, tiny_model_dir: Path
) -> None:
    from meal_core.recorder import JsonlRecorder, read_jsonl
    from meal_core.trainer import Trainer

    config = tiny_run_config(
        tiny_model_dir,
        objectives=three_objectives_of_one_model(classifier_dir),
        iterations=1,
        eval__every=0,
        eval__grid_points=3,
        eval__lattice_divisions=1,
    )
    recorder = JsonlRecorder(tmp_path)
    trainer = Trainer(config, tmp_path, recorder)
    assert trainer.train() == "succeeded"
    recorder.close()
    rewards = {r["key"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["key"].startswith("reward/")}
    assert rewards == {"reward/rm0", "reward/rm1", "reward/rm2"}
    shared = trainer.objectives[0].shared  # type: ignore[attr-defined]
    assert all(o.shared is shared for o in trainer.objectives)  # type: ignore[attr-defined]


def test_hh_text_writes_one_human_turn_and_keeps_an_hh_prompts_own_turns() -> None:
    from meal_core.objectives.hf_classifier import hh_text

    assert hh_text("Hi there", "Hello!") == "\n\nHuman: Hi there\n\nAssistant: Hello!"
    multi = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: And you?\n\nAssistant:"
    assert hh_text(multi, "Fine.") == "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: And you?\n\nAssistant: Fine."
