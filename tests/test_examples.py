"""The paper-scale example configs (examples/hh_rlhf.yaml, examples/summary.yaml) are for a GPU host with hub
access. Here each trains one iteration as written, except that every hub name is swapped for a tiny local stand-in
with the same interface: a dataset folder of the same columns and splits, reward models of the same output shape
(one logit for the GPT-2 reward models, two labels for the faithfulness detector), a tiny causal LM on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from helpers import build_tiny_tokenizer, tiny_llama_config

from meal_core.config import load_config, parse_config
from meal_core.recorder import JsonlRecorder, read_jsonl
from meal_core.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent

HH_TEXT = "\n\nHuman: {q}\n\nAssistant: Let me think.\n\nHuman: Please answer briefly.\n\nAssistant: {a}"


def reward_model(directory: Path, labels: int) -> Path:
    from transformers import LlamaForSequenceClassification

    tokenizer = build_tiny_tokenizer(directory)
    torch.manual_seed(labels)
    LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=labels)).save_pretrained(directory)
    return directory


def dataset_folder(directory: Path, rows: Any) -> Path:
    directory.mkdir()
    for split, n in (("train", 12), ("test", 4)):
        datasets.Dataset.from_list([rows(split, i) for i in range(n)]).to_parquet(str(directory / f"{split}.parquet"))
    return directory


def hh_rows(split: str, i: int) -> dict[str, str]:
    return {
        "chosen": HH_TEXT.format(q=f"{split} question {i}?", a="Yes."),
        "rejected": HH_TEXT.format(q=f"{split} question {i}?", a="No!"),
    }


def tldr_rows(split: str, i: int) -> dict[str, str]:
    post = f"SUBREDDIT: r/test\nTITLE: post {i} of {split}\nPOST: Something long happened to me today.\nTL;DR:"
    return {"prompt": post, "completion": " something happened."}


@pytest.mark.parametrize(
    ("example", "rows", "labels"),
    [
        ("hh_rlhf.yaml", hh_rows, {"harmless": 1, "helpful": 1}),
        ("summary.yaml", tldr_rows, {"summary": 1, "faithful": 2}),
    ],
)
def test_the_example_trains_an_iteration_with_local_stand_ins(
    tmp_path: Path, tiny_model_dir: Path, example: str, rows: Any, labels: dict[str, int]
) -> None:
    written = load_config(ROOT / "examples" / example).model_dump(mode="json")
    data = dataset_folder(tmp_path / "data", rows)
    for objective in written["objectives"]:
        objective.update(
            model=str(reward_model(tmp_path / objective["name"], labels[objective["name"]])), dtype="float32"
        )
    written["model"].update(name_or_path=str(tiny_model_dir), dtype="float32", device="cpu")
    written["lora"]["target_modules"] = ["q_proj", "v_proj"]
    written["data"].update(
        train_prompts=str(data), eval_prompts=str(data), max_train_prompts=8, prompts_per_iteration=4
    )
    written["algorithm"].update(
        samples_per_prompt=2,
        max_new_tokens=8,
        calibration_prompts=4,
        micro_batch_size=4,
        max_policy_steps=1,
        max_repeated_ngram_share=1.0,
        max_unknown_word_share=1.0,
    )
    written["eval"].update(every=0, prompts=2, samples_per_weight=1, probe_pairs=2, grid_points=3)
    written.update(iterations=1)
    config = parse_config(written)

    recorder = JsonlRecorder(tmp_path / "run")
    trainer = Trainer(config, tmp_path / "run", recorder)
    assert all("test" in p.text for p in trainer.eval_prompts), "the dataset's test split is evaluation's"
    assert all("train" in p.text for p in trainer.train_prompts)
    assert trainer.train() == "succeeded"
    recorder.close()
    if example == "hh_rlhf.yaml":
        assert all(
            len(p.turns) == 3 and p.turns[-1] == ("user", "Please answer briefly.") for p in trainer.train_prompts
        )
    keys = {r["key"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")}
    assert {f"reward/{name}" for name in labels} <= keys
    assert [e["step"] for e in read_jsonl(tmp_path / "run" / "evaluations.jsonl")] == [0, 1]
