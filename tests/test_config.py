"""meal_core.config: defaults, file loading, and error messages that name the offending field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from meal_core.config import (
    AlgorithmConfig,
    BrevityObjective,
    ConfigError,
    CoverageObjective,
    HFClassifierObjective,
    PythonObjective,
    ReadabilityObjective,
    RelevanceObjective,
    RunConfig,
    SentimentObjective,
    config_json_schema,
    dump_config,
    load_config,
    parse_config,
    parse_config_text,
)

TWO_OBJECTIVES = [{"name": "positivity", "type": "sentiment"}, {"name": "short", "type": "brevity"}]


def _error(data: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


# -- defaults --------------------------------------------------------------------------------------------------


def test_defaults_validate() -> None:
    config = parse_config({})
    assert isinstance(config, RunConfig)
    assert config.model.name_or_path == "smollm2-135m-instruct"
    assert config.algorithm.name == "meal"
    assert config.algorithm.samples_per_prompt == 4
    assert config.objective_names == ["brevity", "coverage"]
    assert isinstance(config.objectives[0], BrevityObjective)
    assert isinstance(config.objectives[1], CoverageObjective)
    assert (config.model.conditioning, config.algorithm.labels, config.algorithm.base_loss) == (
        "experts",
        "own",
        "sft+pairwise",
    )
    assert config.eval.reference_point is None
    assert config.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_none_means_all_defaults() -> None:
    assert parse_config(None) == parse_config({})


def test_default_model_round_trips_through_its_own_dump() -> None:
    config = parse_config({"objectives": TWO_OBJECTIVES, "seed": 3})
    again = parse_config(json.loads(dump_config(config)))
    assert again == config
    assert again.seed == 3


def test_objective_union_dispatches_on_type() -> None:
    config = parse_config(
        {
            "objectives": [
                {"name": "a", "type": "sentiment"},
                {"name": "b", "type": "readability", "cap": 80},
                {"name": "c", "type": "brevity", "unit": "characters"},
                {"name": "d", "type": "relevance"},
                {"name": "e", "type": "hf_classifier", "model": "some/model", "output": "softmax[1]"},
                {"name": "f", "type": "python", "function": "pkg.mod:score"},
            ]
        }
    )
    kinds = [type(o) for o in config.objectives]
    assert kinds == [
        SentimentObjective,
        ReadabilityObjective,
        BrevityObjective,
        RelevanceObjective,
        HFClassifierObjective,
        PythonObjective,
    ]
    assert config.objectives[1].cap == 80.0
    assert config.objectives[2].unit == "characters"


# -- loading files ---------------------------------------------------------------------------------------------


def test_load_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "objectives": TWO_OBJECTIVES,
                "algorithm": {"samples_per_prompt": 6, "selection": "top_q", "top_q": 0.5},
                "iterations": 12,
            }
        )
    )
    config = load_config(path)
    assert config.algorithm.samples_per_prompt == 6
    assert config.algorithm.selection == "top_q"
    assert config.iterations == 12
    assert config.objective_names == ["positivity", "short"]


def test_load_hand_written_yaml_with_comments(tmp_path: Path) -> None:
    path = tmp_path / "run.yml"
    path.write_text(
        "# a comment\n"
        "objectives:\n"
        "  - {name: positivity, type: sentiment}\n"
        "  - name: short\n"
        "    type: brevity\n"
        "    direction: minimize\n"
        "eval:\n"
        "  reference_point: [-2, -2.5]\n"
    )
    config = load_config(str(path))
    assert config.objectives[1].direction == "minimize"
    assert config.eval.reference_point == [-2.0, -2.5]


def test_load_json_file(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"objectives": TWO_OBJECTIVES, "seed": 11, "lora": {"r": 4}}))
    config = load_config(path)
    assert config.seed == 11
    assert config.lora.r == 4
    assert config.lora.alpha == 16


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == parse_config({})


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "run.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path)


@pytest.mark.parametrize(("text", "kind"), [("- 1\n- 2\n", "list"), ("42", "int"), ('"just a string"', "str")])
def test_non_mapping_top_level(tmp_path: Path, text: str, kind: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "mapping" in message
    assert kind in message


def test_invalid_yaml_names_the_source() -> None:
    with pytest.raises(ConfigError, match=r"^my\.yaml: not valid YAML/JSON"):
        parse_config_text("a: [1, 2\nb: {", source="my.yaml")


def test_parse_config_rejects_non_mapping_directly() -> None:
    assert _error([1, 2]).startswith("config: ")


# -- error messages --------------------------------------------------------------------------------------------


def test_unknown_top_level_key_rejected() -> None:
    assert _error({"iteratons": 5}) == "iteratons: Extra inputs are not permitted"


def test_unknown_nested_key_rejected() -> None:
    message = _error({"algorithm": {"sample_per_prompt": 3}})
    assert message == "algorithm.sample_per_prompt: Extra inputs are not permitted"


@pytest.mark.parametrize("key", ["python", "sentiment", "relevance"])
def test_unknown_key_named_like_an_objective_type_is_still_named(key: str) -> None:
    # Regression: the union-tag stripping used to drop any location part equal to an objective type.
    assert _error({"model": {key: 1}}) == f"model.{key}: Extra inputs are not permitted"
    assert _error({key: 1}) == f"{key}: Extra inputs are not permitted"
    message = _error({"objectives": [TWO_OBJECTIVES[0], {"name": "b", "type": "brevity", key: 1}]})
    assert message == f"objectives.1.{key}: Extra inputs are not permitted"


def test_samples_per_prompt_bound_names_the_field() -> None:
    message = _error({"algorithm": {"samples_per_prompt": 1}})
    assert "algorithm.samples_per_prompt" in message
    assert "greater than or equal to 2" in message


def test_every_offending_field_is_named() -> None:
    message = _error({"algorithm": {"samples_per_prompt": 1, "temperature": 0}, "lora": {"r": 0}})
    assert "algorithm.samples_per_prompt" in message
    assert "algorithm.temperature" in message
    assert "lora.r" in message
    assert message.count(";") == 2


def test_objective_error_path_strips_union_tag() -> None:
    message = _error({"objectives": [TWO_OBJECTIVES[0], {"name": "short", "type": "brevity", "batch_size": 0}]})
    assert message.startswith("objectives.1.batch_size: ")
    assert "greater than or equal to 1" in message
    assert "brevity" not in message


def test_objective_bad_enum_value_path() -> None:
    message = _error({"objectives": [TWO_OBJECTIVES[0], {"name": "short", "type": "brevity", "unit": "lines"}]})
    assert message.startswith("objectives.1.unit: ")


def test_unknown_objective_type() -> None:
    message = _error({"objectives": [TWO_OBJECTIVES[0], {"name": "x", "type": "toxicity"}]})
    assert message.startswith("objectives.1: ")
    assert "toxicity" in message


def test_objective_name_pattern() -> None:
    message = _error({"objectives": [{"name": "Bad Name", "type": "sentiment"}, TWO_OBJECTIVES[1]]})
    assert message.startswith("objectives.0.name: ")


def test_too_few_objectives() -> None:
    message = _error({"objectives": [TWO_OBJECTIVES[0]]})
    assert message.startswith("objectives: ")
    assert "at least 2" in message


def test_duplicate_objective_names() -> None:
    message = _error({"objectives": [{"name": "a", "type": "sentiment"}, {"name": "a", "type": "brevity"}]})
    assert "objectives" in message
    assert "unique" in message
    assert "got a, a" in message and "['" not in message  # names as a list a person reads, not Python's


def test_reference_point_length_mismatch() -> None:
    message = _error({"objectives": TWO_OBJECTIVES, "eval": {"reference_point": [0.0, 0.0, 0.0]}})
    assert "eval.reference_point" in message
    assert "needs 2 values" in message


def test_reference_point_of_right_length_is_accepted() -> None:
    config = parse_config({"objectives": TWO_OBJECTIVES, "eval": {"reference_point": [-1, -2]}})
    assert config.eval.reference_point == [-1.0, -2.0]


@pytest.mark.parametrize("output", ["logit[0]", "logit[2]-logit[0]", "logit[1] - logit[0]", "softmax[1]"])
def test_hf_classifier_good_output_specs(output: str) -> None:
    config = parse_config(
        {"objectives": [TWO_OBJECTIVES[0], {"name": "rm", "type": "hf_classifier", "model": "m", "output": output}]}
    )
    assert config.objectives[1].output == output


@pytest.mark.parametrize("output", ["prob[0]", "logit[a]", "logit[0]+logit[1]", "softmax[1]-softmax[0]", ""])
def test_hf_classifier_bad_output_spec(output: str) -> None:
    message = _error(
        {"objectives": [TWO_OBJECTIVES[0], {"name": "rm", "type": "hf_classifier", "model": "m", "output": output}]}
    )
    assert message.startswith("objectives.1.output: ")
    assert "logit[i]" in message


def test_hf_classifier_needs_a_model() -> None:
    message = _error({"objectives": [TWO_OBJECTIVES[0], {"name": "rm", "type": "hf_classifier"}]})
    assert message.startswith("objectives.1.model: ")


@pytest.mark.parametrize("function", ["pkg.mod:score", "mod:_private", "a_b.c9:f1"])
def test_python_function_pattern_accepts(function: str) -> None:
    config = parse_config({"objectives": [TWO_OBJECTIVES[0], {"name": "p", "type": "python", "function": function}]})
    assert config.objectives[1].function == function


@pytest.mark.parametrize("function", ["module", "mod:", ":func", "mod:f.g", "1mod:f", "mod:f:g", "mod func"])
def test_python_function_pattern_rejects(function: str) -> None:
    message = _error({"objectives": [TWO_OBJECTIVES[0], {"name": "p", "type": "python", "function": function}]})
    assert message.startswith("objectives.1.function: ")
    assert "pattern" in message


def test_top_q_must_keep_one_sample() -> None:
    message = _error({"algorithm": {"selection": "top_q", "top_q": 0.2, "samples_per_prompt": 4}})
    assert message.startswith("algorithm: ")
    assert "top_q" in message
    # The same share is fine with more candidates.
    assert AlgorithmConfig(selection="top_q", top_q=0.2, samples_per_prompt=5).top_q == 0.2


def test_load_config_reports_field_errors_from_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("algorithm:\n  samples_per_prompt: 1\n")
    with pytest.raises(ConfigError, match=r"algorithm\.samples_per_prompt: .*greater than or equal to 2"):
        load_config(path)


# -- schema ----------------------------------------------------------------------------------------------------


def test_json_schema_contains_the_sections() -> None:
    schema = config_json_schema()
    properties = schema["properties"]
    for section in ("model", "lora", "objectives", "data", "algorithm", "eval", "checkpoint", "seed", "iterations"):
        assert section in properties
    definitions = schema["$defs"]
    for name in ("AlgorithmConfig", "ModelConfig", "HFClassifierObjective", "PythonObjective", "SentimentObjective"):
        assert name in definitions
    assert definitions["AlgorithmConfig"]["properties"]["samples_per_prompt"]["minimum"] == 2
    assert definitions["AlgorithmConfig"]["additionalProperties"] is False
    assert "discriminator" in json.dumps(properties["objectives"])
    json.dumps(schema)  # serialisable as is


def test_demo_config_is_the_default_config() -> None:
    """The launch form starts from RunConfig defaults; they must be the documented demo."""
    demo = Path(__file__).resolve().parent.parent / "examples" / "demo.yaml"
    assert load_config(demo) == RunConfig()
