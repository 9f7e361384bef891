"""Prompts from a team's own data: parquet, arrow, csv and jsonl files and folders made here, in the layouts the
multi-objective data sets use (HH-RLHF's conversation text, `messages` chat turns, a `prompt` column)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from meal_core.conditioning import build_prompt
from meal_core.config import DataConfig
from meal_core.data import DataError, SourceOptions, is_heldout, load_prompt_sets, load_prompts

HH = [
    "\n\nHuman: What is a good name for a cat?\n\nAssistant: Whiskers is popular.",
    "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water.\n\nHuman: For how long?"
    "\n\nAssistant: About nine minutes.",
]
CHAT = [
    [{"role": "user", "content": "Name a planet."}, {"role": "assistant", "content": "Mars."}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Tell me a fact."},
    ],
]


def hh_rows(n: int = 2) -> list[dict[str, str]]:
    return [{"chosen": HH[i % 2], "rejected": HH[i % 2] + " (worse)"} for i in range(n)]


def test_hh_conversations_become_prompts_up_to_the_last_human_turn(tmp_path: Path) -> None:
    path = tmp_path / "hh.parquet"
    datasets.Dataset.from_list(hh_rows()).to_parquet(str(path))
    single, multi = load_prompts(str(path))
    assert single.text == "What is a good name for a cat?" and single.turns == ()
    assert multi.turns == (
        ("user", "How do I boil an egg?"),
        ("assistant", "Put it in boiling water."),
        ("user", "For how long?"),
    )
    assert multi.text == "User: How do I boil an egg?\n\nAssistant: Put it in boiling water.\n\nUser: For how long?"


def test_messages_columns_keep_every_turn_and_the_chat_template_sees_them(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CHAT))
    first, second = load_prompts(str(path))
    assert first.text == "Name a planet." and first.turns == ()
    assert [role for role, _ in second.turns] == ["system", "user", "assistant", "user"]

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    text = build_prompt(tokenizer, second.text, None, True, second.turns)
    assert text == "<system>Be brief.<user>Hi!<assistant>Hello.<user>Tell me a fact.<assistant>"
    tagged = build_prompt(tokenizer, second.text, "<pref a=1>", True, second.turns)
    assert tagged.startswith("<system><pref a=1><system>Be brief.") and tagged.endswith("Tell me a fact.<assistant>")


@pytest.mark.parametrize("kind", ["parquet", "arrow", "csv", "jsonl", "folder", "saved"])
def test_every_file_kind_reads_the_prompt_column(tmp_path: Path, kind: str) -> None:
    rows = [{"prompt": f"Question {i}?", "id": f"q{i}"} for i in range(5)]
    table = datasets.Dataset.from_list(rows)
    if kind == "parquet":
        spec = tmp_path / "p.parquet"
        table.to_parquet(str(spec))
    elif kind == "csv":
        spec = tmp_path / "p.csv"
        table.to_csv(str(spec), index=False)
    elif kind == "jsonl":
        spec = tmp_path / "p.jsonl"
        table.to_json(str(spec))
    elif kind == "arrow":
        table.save_to_disk(str(tmp_path / "saved"))
        spec = next((tmp_path / "saved").glob("*.arrow"))
    elif kind == "folder":
        spec = tmp_path / "folder"
        spec.mkdir()
        table.select(range(3)).to_parquet(str(spec / "train-0.parquet"))
        table.select(range(3, 5)).to_parquet(str(spec / "train-1.parquet"))
    else:
        spec = tmp_path / "saved"
        datasets.DatasetDict({"train": table}).save_to_disk(str(spec))
    prompts = load_prompts(str(spec))
    assert sorted(p.text for p in prompts) == [f"Question {i}?" for i in range(5)]
    assert {p.id for p in prompts} == {f"q{i}" for i in range(5)}


def test_a_single_split_is_held_out_by_hash_stably_and_never_trained_on(tmp_path: Path) -> None:
    path = tmp_path / "one-split.parquet"
    datasets.Dataset.from_list([{"prompt": f"Prompt number {i}."} for i in range(400)]).to_parquet(str(path))
    data = DataConfig(train_prompts=str(path), eval_prompts=str(path), heldout_share=0.2, max_train_prompts=None)

    def sets() -> tuple[list[str], list[str]]:
        train, held = load_prompt_sets(str(path), str(path), data.source_options("train"), data.source_options("eval"))
        return [p.text for p in train], [p.text for p in held]

    train, held = sets()
    assert not set(train) & set(held) and len(train) + len(held) == 400
    assert 50 <= len(held) <= 110, len(held)  # ~20 %
    assert all(is_heldout(text, 0.2) for text in held)
    assert sets() == (train, held), "the same split on every run"


def test_a_test_split_is_evaluation_and_train_is_training(tmp_path: Path) -> None:
    folder = tmp_path / "splits"
    folder.mkdir()
    datasets.Dataset.from_list([{"prompt": "train a"}, {"prompt": "train b"}]).to_parquet(str(folder / "train.parquet"))
    datasets.Dataset.from_list([{"prompt": "test a"}]).to_parquet(str(folder / "test.parquet"))
    train, held = load_prompt_sets(str(folder), str(folder), SourceOptions(role="train"), SourceOptions(role="eval"))
    assert [p.text for p in train] == ["train a", "train b"] and [p.text for p in held] == ["test a"]
    named = load_prompts(str(folder), options=SourceOptions(split="test"))
    assert [p.text for p in named] == ["test a"]
    with pytest.raises(DataError, match="no split 'dev'; it has train, test"):
        load_prompts(str(folder), options=SourceOptions(split="dev"))


def test_max_rows_caps_what_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    datasets.Dataset.from_list([{"prompt": f"p{i}"} for i in range(1000)]).to_parquet(str(path))
    assert len(load_prompts(str(path), options=SourceOptions(max_rows=7))) == 7


def test_bad_columns_and_empty_results_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "odd.parquet"
    datasets.Dataset.from_list([{"question": "Why?", "answer": "Because."}]).to_parquet(str(path))
    with pytest.raises(DataError, match="no prompt column found .*it has question, answer.*data.prompt_column"):
        load_prompts(str(path))
    with pytest.raises(DataError, match="data.prompt_column: .* has no column 'query'; it has question, answer"):
        load_prompts(str(path), options=SourceOptions(column="query"))
    assert [p.text for p in load_prompts(str(path), options=SourceOptions(column="question"))] == ["Why?"]

    answers_only = tmp_path / "answers.parquet"
    datasets.Dataset.from_list([{"text": "just prose, no turns"}]).to_parquet(str(answers_only))
    with pytest.raises(DataError, match="no prompts .*1 rows read from column 'text'; none held a user turn"):
        load_prompts(str(answers_only))

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.csv").write_text("prompt\nhi\n")
    (mixed / "b.jsonl").write_text('{"prompt": "hey"}\n')
    with pytest.raises(DataError, match="holds csv and json files"):
        load_prompts(str(mixed))
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="cannot be read as a dataset"):
        load_prompts(str(corrupt))


def test_a_hub_id_offline_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="Anthropic/hh-rlhf: cannot load the dataset from the hub"):
        load_prompts("Anthropic/hh-rlhf")
