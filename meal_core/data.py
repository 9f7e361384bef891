"""Prompt sets: the shipped ones (`builtin:train`, `builtin:eval`), a user's .jsonl / .txt file, a parquet, arrow,
csv or jsonl file or folder, or a Hugging Face dataset id (loaded when the machine is online).

The common layouts need no settings. A row's prompt is found in, by order: a `prompt` column, a chat column
`messages` (or `conversations`: role/content turns), or HH-RLHF-style text (`chosen` or `text`: "\\n\\nHuman: …
\\n\\nAssistant: …"). From a conversation, the turns up to the last user turn become the prompt: one turn is plain
text; several are kept as turns (`Prompt.turns`), and the chat template is applied over all of them. Datasets are
read lazily (streamed), up to `max_rows` rows. When the evaluation prompts come from the same single split as the
training prompts, a deterministic share of rows (by a hash of the prompt) is held out for evaluation.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

Turn = tuple[str, str]  # (role, content), role one of "system", "user", "assistant"

#: Columns tried, in order, when none is named.
PROMPT_COLUMNS = ("prompt", "messages", "conversations", "chosen", "text")
#: Columns that hold a whole conversation as HH-style text: read only when they are in that form.
HH_COLUMNS = ("chosen", "text")
#: Files a folder may hold, by the `datasets` builder that reads them.
BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".jsonl": "json", ".json": "json"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant"}


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str  # what scorers, samples and pages show: the prompt, or a conversation written out turn by turn
    turns: tuple[Turn, ...] = ()  # a multi-turn conversation ending with the user's turn; () for a single turn


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class SourceOptions:
    """How to read a dataset (ignored by builtin sets and .txt files)."""

    split: str | None = None  # default: 'train' for training, 'test' (else validation, else a held-out share)
    column: str | None = None  # default: the first of PROMPT_COLUMNS the rows have
    max_rows: int | None = None  # rows read at most (before filtering)
    role: Literal["train", "eval"] = "train"
    heldout_share: float = 0.1  # with one split shared by train and eval: this share (by hash) is eval's
    heldout: Literal["exclude", "only"] | None = None  # set by load_prompt_sets when both read one split


# -- conversations ----------------------------------------------------------------------------------------------------


def written_out(turns: Iterable[Turn]) -> str:
    """A conversation as one text: 'User: …\\n\\nAssistant: …\\n\\nUser: …'."""
    return "\n\n".join(f"{role.capitalize()}: {content}" for role, content in turns)


def hh_turns(text: str) -> list[Turn]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' → [('user', 'a'), ('assistant', 'b')]; [] if it is not in that form."""
    marks = list(_HH_TURN.finditer(text))
    if not marks or text[: marks[0].start()].strip():
        return []
    turns = []
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        content = text[mark.end() : following.start() if following else len(text)].strip()
        turns.append(("user" if mark.group(1) == "Human" else "assistant", content))
    return turns


def chat_turns(messages: Any) -> list[Turn] | None:
    """[{'role': 'user', 'content': …}, …] (or ShareGPT's from/value) → turns; None if it is not such a list."""
    if not isinstance(messages, list) or not messages:
        return None
    turns = []
    for message in messages:
        if not isinstance(message, dict):
            return None
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        if not isinstance(role, str) or not isinstance(content, str):
            return None
        turns.append((_ROLES.get(role.lower(), role.lower()), content))
    return turns


def prompt_of(turns: list[Turn]) -> tuple[Turn, ...]:
    """The turns up to and including the last user turn (a trailing answer is what the policy will write)."""
    last_user = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=-1)
    return tuple((role, content.strip()) for role, content in turns[: last_user + 1])


def prompt_column_of(row: dict[str, Any]) -> str | None:
    """The first of PROMPT_COLUMNS the row has: where its prompt is when no column is named."""
    return next((c for c in PROMPT_COLUMNS if c in row), None)


def row_prompt(row: dict[str, Any], column: str) -> tuple[str, tuple[Turn, ...]] | None:
    """(text, turns) of one row's prompt from `column`; None where the row holds none (no user turn, empty)."""
    value = row.get(column)
    if isinstance(value, str) and (column in HH_COLUMNS or _HH_TURN.search(value)):
        turns = prompt_of(hh_turns(value))
    elif isinstance(value, str):
        turns = (("user", value.strip()),)
    else:
        parsed = chat_turns(value)
        turns = prompt_of(parsed) if parsed else ()
    if not turns or not turns[-1][1]:
        return None
    if len(turns) == 1 and turns[0][0] == "user":
        return turns[0][1], ()
    return written_out(turns), turns


# -- reading sources --------------------------------------------------------------------------------------------------


def is_hub_id(spec: str) -> bool:
    """'org/name' that names no local file or folder: a Hugging Face dataset (or model) id."""
    # fullmatch: `$` alone lets a trailing newline through. No NUL reaches Path.exists (it raises on one).
    if "\x00" in spec or not HUB_ID.fullmatch(spec):
        return False
    return not Path(spec).expanduser().exists()


@dataclass
class Source:
    """A prompt source, opened but not read: its rows (a lazy iterable) and the split they come from."""

    spec: str
    rows: Iterable[dict[str, Any]]
    split: str


def open_source(spec: str, options: SourceOptions) -> Source | None:
    """A dataset source (hub id, parquet/arrow/csv/json file or folder); None for builtin sets and .txt/.jsonl
    files, which load_prompts reads itself."""
    if spec.startswith("builtin:"):
        return None
    if is_hub_id(spec):
        return Source(spec, *_open_hub(spec, options))
    path = Path(spec).expanduser()
    if path.is_file() and (path.suffix == ".txt" or path.suffix == ".jsonl" and options.column is None):
        return None
    if path.is_file() and path.suffix in BUILDERS or path.is_dir() and _folder_builder(path):
        return Source(spec, *_open_local(path, options))
    kinds = ", ".join(sorted({*BUILDERS, ".txt"}))
    raise DataError(f"prompt file not found: {spec} (a file or folder of {kinds}, or a dataset id)")


def load_prompts(
    spec: str, limit: int | None = None, options: SourceOptions | None = None, opened: Source | None = None
) -> list[Prompt]:
    """`opened`: the source, where the caller has opened it already (load_prompt_sets)."""
    options = options or SourceOptions()
    source = opened or open_source(spec, options)
    if source is not None:
        prompts = _from_dataset(source, options)
    elif spec.startswith("builtin:"):
        split = spec.removeprefix("builtin:")
        resource = resources.files("meal_core") / "data" / f"prompts_{split}.jsonl"
        if not resource.is_file():
            raise DataError(f"unknown built-in prompt set {spec!r}; use builtin:train or builtin:eval")
        prompts = _parse_jsonl(resource.read_text().splitlines(), spec)
    else:
        path = Path(spec).expanduser()
        if path.suffix == ".txt":
            lines = _text_lines(path, errors="replace")
            prompts = [Prompt(f"{path.stem}-{i}", t.strip()) for i, t in enumerate(lines, start=1) if t.strip()]
        else:
            prompts = _parse_jsonl(_text_lines(path), spec)
    if not prompts:
        raise DataError(f"{spec}: no prompts")
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise DataError(f"{spec}: prompt ids must be unique")
    return prompts[:limit] if limit else prompts


def load_prompt_sets(
    train_spec: str, eval_spec: str, train: SourceOptions, evaluation: SourceOptions, train_limit: int | None = None
) -> tuple[list[Prompt], list[Prompt]]:
    """Training and evaluation prompts. Where both read the same split of the same dataset (one that has no test
    split), `heldout_share` of its prompts, chosen by hash, are evaluation's alone and never trained on."""
    first = second = None
    if train_spec == eval_spec:  # opened here to compare their splits, and read from what was opened
        first, second = open_source(train_spec, train), open_source(eval_spec, evaluation)
        if first is not None and second is not None and first.split == second.split:
            train = replace(train, heldout="exclude")
            evaluation = replace(evaluation, heldout="only")
    return load_prompts(train_spec, train_limit, train, first), load_prompts(eval_spec, None, evaluation, second)


def filter_by_length(prompts: list[Prompt], count_tokens: Callable[[str], int], max_tokens: int | None) -> list[Prompt]:
    """The prompts of at most `max_tokens` tokens (None: all of them)."""
    if max_tokens is None:
        return prompts
    kept = [p for p in prompts if count_tokens(p.text) <= max_tokens]
    if not kept:
        raise DataError(f"data.max_prompt_length: no prompt has {max_tokens} tokens or fewer")
    return kept


def _text_lines(path: Path, errors: str = "strict") -> list[str]:
    """A text file's lines; a binary file (one with a NUL byte: a database, an archive) or, with errors="strict",
    one that is not UTF-8 is a DataError, not a page of garbage or a UnicodeDecodeError."""
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise DataError(f"{path}: a binary file, not text")
    try:
        return raw.decode("utf-8", errors=errors).splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None


def _parse_jsonl(lines: list[str], source: str) -> list[Prompt]:
    """One JSON object a line with a `prompt` (or `messages`, or HH text): errors name the file and line."""
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{source}:{number}: not valid JSON: {error.msg}") from None
        found = None
        if isinstance(row, dict):
            column = prompt_column_of(row)
            found = row_prompt(row, column) if column else None
        if found is None:
            raise DataError(f"{source}:{number}: each line needs a non-empty string field 'prompt' (or 'messages')")
        prompts.append(Prompt(str(row.get("id", f"{Path(source).stem}-{number}")), *found))
    return prompts


def _folder_builder(path: Path) -> str | None:
    """The `datasets` builder of a folder's data files (one kind per folder), or 'disk' for save_to_disk output."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return "disk"
    found = {BUILDERS[f.suffix] for f in path.rglob("*") if f.suffix in BUILDERS and f.is_file()}
    if len(found) > 1:
        raise DataError(f"{path}: holds {' and '.join(sorted(found))} files; give one file, or a folder of one kind")
    return found.pop() if found else None


def _open_local(path: Path, options: SourceOptions) -> tuple[Iterable[dict[str, Any]], str]:
    import datasets

    try:
        if path.is_dir() and _folder_builder(path) == "disk":
            loaded = datasets.load_from_disk(str(path))  # memory-mapped arrow: read lazily
            return _pick_split(loaded, str(path), options)
        builder = BUILDERS[path.suffix] if path.is_file() else _folder_builder(path)
        where = {"data_files": str(path)} if path.is_file() else {"data_dir": str(path)}
        return _pick_split(datasets.load_dataset(builder, streaming=True, **where), str(path), options)
    except DataError:
        raise
    except Exception as error:  # a corrupt file or an unreadable layout, named, never a traceback
        raise DataError(f"{path}: cannot be read as a dataset: {type(error).__name__}: {error}") from None


def _open_hub(spec: str, options: SourceOptions) -> tuple[Iterable[dict[str, Any]], str]:
    import datasets

    try:
        return _pick_split(datasets.load_dataset(spec, streaming=True), spec, options)
    except DataError:
        raise
    except Exception as error:  # offline, unknown, gated: say which, in one line
        raise DataError(f"{spec}: cannot load the dataset from the hub: {type(error).__name__}: {error}") from None


def _pick_split(loaded: Any, source: str, options: SourceOptions) -> tuple[Iterable[dict[str, Any]], str]:
    """(rows, split name) of a dataset (dict): the split asked for, else train for training and test / validation
    for evaluation, which falls back to the training split (load_prompt_sets then holds a share out)."""
    if not hasattr(loaded, "keys"):
        return loaded, "train"  # already one split (a save_to_disk Dataset)
    splits = list(loaded.keys())
    if options.split is not None:
        if options.split not in splits:
            raise DataError(f"{source}: no split {options.split!r}; it has {', '.join(splits)}")
        return loaded[options.split], options.split
    wanted = ("train",) if options.role == "train" else ("test", "validation", "valid", "eval")
    for name in (*wanted, *splits):
        if name in splits:
            return loaded[name], name
    raise DataError(f"{source}: the dataset has no splits")


def _from_dataset(source: Source, options: SourceOptions) -> list[Prompt]:
    spec = source.spec
    stem = Path(spec).stem if not is_hub_id(spec) else spec.rsplit("/", 1)[-1]
    prompts, read, column = [], 0, options.column
    for index, row in enumerate(_limited(source.rows, options.max_rows)):
        read += 1
        if column is None:
            column = prompt_column_of(row)
            if column is None:
                raise DataError(
                    f"{spec}: no prompt column found (tried {', '.join(PROMPT_COLUMNS)}); it has {', '.join(row)}; "
                    "name one with data.prompt_column"
                )
        elif column not in row:
            raise DataError(f"data.prompt_column: {spec} has no column {column!r}; it has {', '.join(row)}")
        found = row_prompt(row, column)
        if found is None:
            continue
        text, turns = found
        if options.heldout is not None and is_heldout(text, options.heldout_share) != (options.heldout == "only"):
            continue
        prompts.append(Prompt(str(row.get("id") or f"{stem}-{index}"), text, turns))
    if not prompts:
        raise DataError(f"{spec}: no prompts ({read} rows read from column {column!r}; none held a user turn)")
    return prompts


def _limited(rows: Iterable[dict[str, Any]], max_rows: int | None) -> Iterator[dict[str, Any]]:
    for index, row in enumerate(rows):
        if max_rows is not None and index >= max_rows:
            return
        yield row


def is_heldout(text: str, share: float) -> bool:
    """Deterministic: the same prompt is held out on every machine and in every run."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64 < share
