"""The `meal` command line, driven in-process through its real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import tiny_run_config

from meal_core.cli import main
from meal_core.recorder import read_jsonl


def write_config(path: Path, model_dir: Path, **overrides: object) -> Path:
    path.write_text(yaml.safe_dump(tiny_run_config(model_dir, **overrides).model_dump(mode="json")))
    return path


def test_train_eval_generate(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "tiny.yaml", tiny_model_dir, iterations=2)
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    stored = json.loads((run / "config.json").read_text())
    assert stored["iterations"] == 2 and stored["model"]["name_or_path"] == str(tiny_model_dir)
    rows = read_jsonl(run / "metrics.jsonl")
    assert {"step", "key", "value", "time"} == set(rows[0])
    err = capsys.readouterr().err
    assert "2/2 iterations" in err
    # Before the first iteration the console names each phase with its count (tiny config: 4 × 3 + 3 × 2 responses).
    assert "loading" in err and "calibrating 18/18" in err and "evaluating 12/12" in err

    recorded = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "samples.jsonl", "evaluations.jsonl")}
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "hypervolume" in out and "controllability" in out and "null p95" in out

    # Any prompt file, as JSON: one object with every figure; the run's records are left as they were.
    prompts = tmp_path / "mine.txt"
    prompts.write_text("Describe a quiet morning.\n\nWhy is the sea salty?\n")
    assert main(["eval", str(run), "--prompts", str(prompts), "--samples-per-weight", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    keys = {"hypervolume", "controllability", "controllability_grid", "controllability_null", "degenerate_share"}
    assert keys | {"points"} <= set(summary)
    assert summary["responses"] == 2 * 3 * 2  # prompts × grid points × samples
    assert set(summary["controllability_null"]) == {"positivity", "readability"}
    assert [p["weights"] for p in summary["points"]] == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    assert {name: (run / name).read_bytes() for name in recorded} == recorded
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text('{"prompt": "Name a fruit."}\n')
    assert main(["eval", str(run), "--prompts", str(jsonl), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["responses"] == 1 * 3 * 2  # eval.samples_per_weight: 2
    assert main(["eval", str(run), "--prompts", str(tmp_path / "missing.txt")]) == 2
    assert "prompt file not found" in capsys.readouterr().err
    assert main(["eval", str(run), "--samples-per-weight", "0"]) == 2
    assert "--samples-per-weight: must be at least 1" in capsys.readouterr().err

    assert main(["generate", str(run), "--prompt", "Describe a quiet morning.", "--weights", "0.3,0.7"]) == 0
    out = capsys.readouterr().out
    assert "weights: positivity=0.30, readability=0.70" in out
    assert main(["generate", str(run), "--prompt", "Describe rain.", "--weights", "auto", "--samples", "2"]) == 0
    assert capsys.readouterr().out.count("---") == 2
    seeded = ["generate", str(run), "--prompt", "Describe rain.", "--weights", "1,0", "--seed", "3", "--samples", "2"]
    assert main(seeded) == 0
    first = capsys.readouterr().out
    assert main(seeded) == 0
    assert capsys.readouterr().out == first


def test_resume_extends_a_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "tiny.yaml", tiny_model_dir, iterations=2)
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    assert main(["train", str(config), "--out", str(run), "--resume", "--iterations", "3"]) == 0
    steps = {row["step"] for row in read_jsonl(run / "metrics.jsonl")}
    assert max(steps) == 3
    assert (run / "checkpoints" / "iter-000003").is_dir()


def test_user_errors_are_one_line(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithm:\n  samples_per_prompt: 1\n")
    assert main(["train", str(bad)]) == 2
    assert "algorithm.samples_per_prompt: Input should be greater than or equal to 2" in capsys.readouterr().err

    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err

    no_model = write_config(tmp_path / "nomodel.yaml", tmp_path / "no-such-model")
    assert main(["train", str(no_model), "--out", str(tmp_path / "r0")]) == 2
    assert "model.name_or_path: no such directory" in capsys.readouterr().err

    config = write_config(tmp_path / "tiny.yaml", tiny_model_dir, iterations=1)
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    assert main(["train", str(config), "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err

    changed = write_config(tmp_path / "changed.yaml", tiny_model_dir, iterations=1, seed=3)
    assert main(["train", str(changed), "--out", str(run), "--resume"]) == 2
    assert "differs from the run's stored config in: seed" in capsys.readouterr().err

    assert main(["generate", str(run), "--prompt", "Hi", "--weights", "0.5"]) == 2
    assert "--weights: expected 2 weights" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "meal"), "--help"], capture_output=True, text=True, check=True
    )
    assert "train" in result.stdout and "generate" in result.stdout


def test_meal_up_stops_its_children_and_kills_those_that_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    """`meal up`'s shutdown: SIGTERM to each child, then SIGKILL for one still running when the wait is over."""
    import signal

    from app import cli

    monkeypatch.setattr(cli, "SHUTDOWN_WAIT_S", 2)
    ready = "import signal, sys, time; {}; print('ready', flush=True); time.sleep(120)"
    obliging = subprocess.Popen([sys.executable, "-c", ready.format("pass")], stdout=subprocess.PIPE)
    stubborn = subprocess.Popen(
        [sys.executable, "-c", ready.format("signal.signal(signal.SIGTERM, signal.SIG_IGN)")], stdout=subprocess.PIPE
    )
    for child in (obliging, stubborn):  # their signal handling is in place before the shutdown starts
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    try:
        cli._stop_children([obliging, stubborn])
        assert obliging.returncode == -signal.SIGTERM
        assert stubborn.returncode == -signal.SIGKILL
    finally:
        for child in (obliging, stubborn):
            child.kill()
            child.wait()
            assert child.stdout is not None
            child.stdout.close()
