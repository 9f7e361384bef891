"""meal_core.data: the shipped prompt sets and a user's .jsonl / .txt prompt files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meal_core.data import DataError, Prompt, load_prompts


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# -- built-in sets ---------------------------------------------------------------------------------------------


def test_builtin_sets_load() -> None:
    train = load_prompts("builtin:train")
    evaluation = load_prompts("builtin:eval")
    assert len(train) >= 200
    assert len(evaluation) >= 50
    for prompts in (train, evaluation):
        assert all(isinstance(p, Prompt) for p in prompts)
        assert all(p.text and p.text == p.text.strip() for p in prompts)
        assert len({p.id for p in prompts}) == len(prompts)
        assert len({p.text for p in prompts}) == len(prompts)


def test_builtin_sets_do_not_overlap() -> None:
    train = load_prompts("builtin:train")
    evaluation = load_prompts("builtin:eval")
    assert not {p.id for p in train} & {p.id for p in evaluation}
    assert not {p.text.lower() for p in train} & {p.text.lower() for p in evaluation}


def test_builtin_limit_takes_the_first() -> None:
    full = load_prompts("builtin:train")
    assert load_prompts("builtin:train", limit=5) == full[:5]
    assert load_prompts("builtin:train", limit=None) == full


def test_unknown_builtin_set() -> None:
    with pytest.raises(DataError, match="unknown built-in prompt set 'builtin:test'"):
        load_prompts("builtin:test")


# -- user files ------------------------------------------------------------------------------------------------


def test_jsonl_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"id": "q1", "prompt": "  First question?  ", "topic": "x"}\n'
        "\n"
        '{"prompt": "Second question?"}\n'
        '{"id": 7, "prompt": "Third question?"}\n'
    )
    prompts = load_prompts(str(path))
    assert prompts == [
        Prompt("q1", "First question?"),
        Prompt("mine-3", "Second question?"),  # default id: file stem and line number
        Prompt("7", "Third question?"),
    ]
    assert load_prompts(str(path), limit=2) == prompts[:2]


def test_txt_file(tmp_path: Path) -> None:
    path = tmp_path / "questions.txt"
    path.write_text("What is rain?\n\n  Why do cats purr?  \nHow do bees fly?\n")
    prompts = load_prompts(str(path))
    assert prompts == [
        Prompt("questions-1", "What is rain?"),
        Prompt("questions-3", "Why do cats purr?"),
        Prompt("questions-4", "How do bees fly?"),
    ]


def test_txt_lines_are_not_parsed_as_json(tmp_path: Path) -> None:
    path = tmp_path / "raw.txt"
    path.write_text('{"prompt": "looks like json"}\n')
    assert load_prompts(str(path))[0].text == '{"prompt": "looks like json"}'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "non-empty string field 'prompt'"),
        ('{"text": "wrong field"}', "non-empty string field 'prompt'"),
        ('{"prompt": 42}', "non-empty string field 'prompt'"),
        ('{"prompt": "   "}', "non-empty string field 'prompt'"),
    ],
)
def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "prompt": "Fine."}\n\n' + line + "\n" + '{"id": "b", "prompt": "Also fine."}\n')
    with pytest.raises(DataError) as info:
        load_prompts(str(path))
    text = str(info.value)
    assert text.startswith(f"{path}:3: ")
    assert message in text


def test_duplicate_ids_rejected(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "dup.jsonl", [{"id": "same", "prompt": "One?"}, {"id": "same", "prompt": "Two?"}])
    with pytest.raises(DataError, match="ids must be unique") as info:
        load_prompts(str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("name", "content"), [("empty.jsonl", ""), ("blank.txt", "\n  \n\n")])
def test_file_without_prompts(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match="no prompts"):
        load_prompts(str(path))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.jsonl"
    with pytest.raises(DataError, match="prompt file not found") as info:
        load_prompts(str(path))
    assert str(path) in str(info.value)


def test_directory_is_not_a_prompt_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="prompt file not found"):
        load_prompts(str(tmp_path))


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)
