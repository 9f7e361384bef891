"""The reproducibility record: written for every run, with versions, fingerprints, seeds and calibration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import tiny_run_config

from meal_core import provenance
from meal_core.recorder import REPRODUCIBILITY_FILE, JsonlRecorder
from meal_core.trainer import Trainer


def test_a_run_writes_its_record_once_calibrated(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = tiny_run_config(tiny_model_dir, iterations=1, eval__every=0, eval__probe_pairs=0)
    recorder = JsonlRecorder(tmp_path / "run")
    Trainer(config, tmp_path / "run", recorder).train()
    recorder.close()
    record = json.loads((tmp_path / "run" / REPRODUCIBILITY_FILE).read_text())
    assert {"torch", "transformers", "peft", "datasets", "meal-studio"} <= set(record["packages"])
    assert record["seed"] == 7 and record["calibration"]["names"] == ["positivity", "readability"]
    assert len(record["calibration"]["mean"]) == 2
    assert record["base_model"]["path"] == str(tiny_model_dir.resolve()) and len(record["base_model"]["sha256"]) == 64
    assert record["data"]["train_prompts"]["name"] == "builtin:train" and record["data"]["train_prompts"]["sha256"]
    assert record["git"] is None or len(record["git"]["commit"]) == 40


def test_fingerprints_follow_the_contents(tmp_path: Path, tiny_model_dir: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    before = provenance.fingerprint(copy)
    assert before == provenance.fingerprint(copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert provenance.fingerprint(copy)["sha256"] != before["sha256"]


def test_a_large_file_is_sampled_and_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(provenance, "WHOLE_FILE_LIMIT", 1000)
    monkeypatch.setattr(provenance, "SAMPLE", 100)
    big = tmp_path / "weights.bin"
    big.write_bytes(bytes(range(256)) * 10)
    record = provenance.fingerprint(big)
    assert record["sampled"] is True
    middle_changed = bytearray(big.read_bytes())
    middle_changed[1200] ^= 1
    big.write_bytes(bytes(middle_changed))
    assert provenance.fingerprint(big)["sha256"] == record["sha256"], "only the ends are read"


def test_two_records_diff_by_dotted_key() -> None:
    a = {"packages": {"torch": "2.13.0", "peft": "0.21"}, "seed": 1, "base_model": {"sha256": "x"}}
    b = {
        "packages": {"torch": "2.13.0", "peft": "0.22"},
        "seed": 2,
        "base_model": {"sha256": "x"},
        "git": {"commit": "abc"},
    }
    assert provenance.dict_differences(a, b) == ["git", "packages.peft", "seed"]
