"""`meal export`: a trained run as a standard Hugging Face model folder (the policy at one weight, merged) or as its
adapters; both round-trip to the engine's own outputs."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import build_vllm_tiny_lm, randomize_lora, tiny_run_config

from meal_core import export
from meal_core.cli import main
from meal_core.config import RunConfig, dump_config
from meal_core.export import ExportError, export_run
from meal_core.policy import Policy, Sampling
from meal_core.trainer import Trainer

PROMPT = "Name three colours."
RESPONSE_IDS = [40, 41, 42, 43, 44, 45]


def trained_run(run_dir: Path, model_dir: Path, conditioning: str = "experts", shared: bool = True) -> Trainer:
    """A run folder with one checkpoint whose adapters are random (so that every expert changes the output)."""
    config = tiny_run_config(model_dir, model__conditioning=conditioning, lora__shared=shared)
    trainer = Trainer(config, run_dir)
    randomize_lora(trainer.policy, seed=3)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(dump_config(config))
    trainer.save_checkpoint()
    (run_dir / "evaluations.jsonl").write_text(
        json.dumps({"step": 0, "objectives": config.objective_names, "hypervolume": 1.5, "controllability": {}}) + "\n"
    )
    return trainer


@pytest.fixture
def model_with_licence(tmp_path: Path, tiny_model_dir: Path) -> Path:
    folder = tmp_path / "base"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "LICENSE").write_text("Apache License 2.0 (test)\n")
    return folder


def engine_logits(policy: Policy, weights: np.ndarray) -> torch.Tensor:
    prompt_ids = policy.encode_prompt(policy.prompt_text(PROMPT, weights))
    ids = torch.tensor([prompt_ids + RESPONSE_IDS])
    with torch.no_grad(), policy.conditioned_on(weights[None, :]):
        return policy.model(input_ids=ids).logits[0]


def exported_logits(folder: Path, policy: Policy, weights: np.ndarray) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False
    )
    assert text == policy.prompt_text(PROMPT, weights), "the exported chat template conditions as the engine does"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([policy.encode_prompt(text) + RESPONSE_IDS])
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


@pytest.mark.parametrize(("conditioning", "shared"), [("experts", True), ("experts", False), ("tag", False)])
def test_the_merged_folder_is_the_engines_policy_at_that_weight(
    tmp_path: Path, model_with_licence: Path, conditioning: str, shared: bool
) -> None:
    trainer = trained_run(tmp_path / "run", model_with_licence, conditioning, shared)
    out = export_run(tmp_path / "run", tmp_path / "export", "0.3,0.7")
    weights = np.array([0.3, 0.7])
    expected, got = engine_logits(trainer.policy, weights), exported_logits(out, trainer.policy, weights)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    corner = engine_logits(trainer.policy, np.array([1.0, 0.0]))
    assert (corner - expected).abs().max() > 1e-2, "the weight matters, so the check above means something"
    assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()
    assert (out / "LICENSE").read_text() == "Apache License 2.0 (test)\n"
    card = (out / "README.md").read_text()
    assert "positivity = 0.300, readability = 0.700" in card and "hypervolume 1.5000" in card
    assert f"name_or_path: {model_with_licence}" in card
    note = json.loads((out / export.EXPORT_NOTE).read_text())
    assert note["kind"] == "merged" and note["weights"] == {"positivity": 0.3, "readability": 0.7}
    assert list(tmp_path.glob(".export.partial-*")) == []


def test_the_adapters_export_reloads_into_the_engines_outputs_at_any_weight(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    trainer = trained_run(tmp_path / "run", tiny_model_dir)
    out = export_run(tmp_path / "run", tmp_path / "adapters", None, adapters=True)
    assert (out / "mixing.json").is_file()
    assert {p.name for p in out.iterdir() if p.is_dir()} == {"shared", "expert_positivity", "expert_readability"}
    config = RunConfig.model_validate(json.loads((tmp_path / "run" / "config.json").read_text()))
    reloaded = Policy(config.model, config.lora, config.objective_names)
    reloaded.load_adapter(out)
    greedy = Sampling(max_new_tokens=8, do_sample=False)
    for weights in ([1.0, 0.0], [0.2, 0.8]):
        rows = np.array([weights])
        assert (
            reloaded.generate([PROMPT], rows, 1, greedy).token_ids
            == trainer.policy.generate([PROMPT], rows, 1, greedy).token_ids
        )
    assert json.loads((out / export.EXPORT_NOTE).read_text())["kind"] == "adapters"


def test_bad_exports_are_clear_errors_and_leave_nothing(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "config.json").write_text(dump_config(tiny_run_config(tiny_model_dir)))
    with pytest.raises(ExportError, match="has no checkpoint yet"):
        export_run(empty, tmp_path / "x", "0.5,0.5")
    with pytest.raises(ExportError, match="not a run directory"):
        export_run(tmp_path, tmp_path / "x", "0.5,0.5")
    trained_run(tmp_path / "run", tiny_model_dir)
    for weights, message in (
        ("0.5", "expected 2 weights"),
        ("-1,2", "non-negative"),
        ("0,0", "positive sum"),
        ("a,b", "numbers"),
    ):
        with pytest.raises(ExportError, match=f"--weights: .*{message}"):
            export_run(tmp_path / "run", tmp_path / "x", weights)
    with pytest.raises(ExportError, match="--weights: needed"):
        export_run(tmp_path / "run", tmp_path / "x", None)
    (tmp_path / "taken").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export_run(tmp_path / "run", tmp_path / "taken", "0.5,0.5")
    with pytest.raises(ExportError, match="--checkpoint 'iter-000009': the run has iter-000000"):
        export_run(tmp_path / "run", tmp_path / "x", "0.5,0.5", checkpoint="iter-000009")
    assert not (tmp_path / "x").exists()

    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "taken"), "--weights", "1,0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("meal export: error: ") and "already exists" in err and "\n" not in err


def test_a_crash_mid_export_leaves_no_half_folder(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained_run(tmp_path / "run", tiny_model_dir)

    def crash(*args: object) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "model_card", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(tmp_path / "run", tmp_path / "out", "0.5,0.5")
    assert not (tmp_path / "out").exists() and list(tmp_path.glob(".out.partial-*")) == []


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed here")
def test_the_merged_folder_loads_in_vllm_and_generates(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    # Not tiny_model_dir: its head size (8) has no vLLM CPU attention kernel, and the engine dies on the first step.
    trained_run(tmp_path / "run", build_vllm_tiny_lm(tmp_path / "model"))
    out = export_run(tmp_path / "run", tmp_path / "export", "0.5,0.5")
    code = (
        "import sys\nfrom vllm import LLM, SamplingParams\n"
        "if __name__ == '__main__':\n"
        f"    llm = LLM({str(out)!r}, max_model_len=256, dtype='float32')\n"
        "    out = llm.generate(['Hello'], SamplingParams(max_tokens=5, temperature=0))\n"
        "    print('TOKENS', len(out[0].outputs[0].token_ids))\n"
    )
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert "TOKENS 5" in result.stdout, result.stderr[-3000:]
