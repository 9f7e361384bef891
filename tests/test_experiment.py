"""Experiments (meal_core/experiment.py): grid expansion, equal-compute accounting and the statistics, checked against
values computed by hand on fixed numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import tiny_run_config

from meal_core.cli import main
from meal_core.config import ConfigError
from meal_core.experiment import (
    compute,
    compute_report,
    curves,
    mean_absolute_successive_difference,
    mean_curve,
    paired,
    parse_experiment,
    report,
    run_figures,
    series_of,
    stability,
    summary,
)


def experiment(**fields: Any) -> Any:
    return parse_experiment({"base": {"iterations": 2}, **fields})


def test_seeds_times_algorithms_times_a_list_field() -> None:
    runs = experiment(
        seeds=3, algorithms=["meal", "static"], vary={"algorithm.base_loss": ["sft", "sft+pairwise"]}
    ).expand()
    assert len(runs) == 12
    variants = sorted({r.variant for r in runs})
    assert variants == [
        "meal-base_loss=sft",
        "meal-base_loss=sft+pairwise",
        "static-base_loss=sft",
        "static-base_loss=sft+pairwise",
    ]
    assert [r.seed for r in runs[:4]] == [0, 0, 0, 0]  # seed-major
    for run in runs:
        assert run.config.seed == run.seed and run.config.iterations == 2
        assert run.config.algorithm.name == run.key["algorithm.name"]
        assert run.config.algorithm.base_loss == run.key["algorithm.base_loss"]
        assert run.name == f"{run.variant}/seed-{run.seed}"
        assert run.config_dict()["seed"] == run.seed
    assert {r.seed for r in runs} == {0, 1, 2}


def test_seed_list_no_vary_and_list_index_paths() -> None:
    runs = experiment(seeds=[5, 9], algorithms=["meal"]).expand()
    assert [(r.variant, r.seed) for r in runs] == [("meal", 5), ("meal", 9)]
    runs = experiment(seeds=1, algorithms=["static"], vary={"objectives.0.unit": ["words", "characters"]}).expand()
    assert [r.config.objectives[0].unit for r in runs] == ["words", "characters"]  # type: ignore[union-attr]
    assert runs[1].variant == "static-unit=characters"
    # Two fields sharing a last segment are named in full.
    runs = experiment(
        seeds=1, algorithms=["meal"], vary={"eval.temperature": [0.5], "algorithm.temperature": [0.8]}
    ).expand()
    assert runs[0].variant == "meal-eval.temperature=0.5-algorithm.temperature=0.8"


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"vary": {"algorithm.nope": [1]}}, "vary.algorithm.nope"),
        ({"vary": {"algorithm": [1]}}, "vary.algorithm"),
        ({"vary": {"objectives.7.unit": ["words"]}}, "vary.objectives.7.unit"),
        ({"vary": {"algorithm.base_loss": []}}, "vary.algorithm.base_loss"),
        ({"vary": {"algorithm.base_loss": ["sft", "sft"]}}, "vary.algorithm.base_loss"),
        ({"vary": {"algorithm.base_loss": ["sft", "bogus"]}}, "vary.algorithm.base_loss"),
        ({"vary": {"algorithm.samples_per_prompt": [4, 1]}}, "vary.algorithm.samples_per_prompt"),
        ({"vary": {"seed": [1, 2]}}, "vary.seed"),
        ({"vary": {"algorithm.name": ["meal"]}}, "vary.algorithm.name"),
        # A rule across fields: top_q × samples_per_prompt must keep one sample.
        ({"vary": {"algorithm.selection": ["best", "top_q"]}, "base": {"algorithm": {"top_q": 0.1}}}, "vary"),
        ({"algorithms": ["meal", "ppo"]}, "algorithms"),
        ({"algorithms": []}, "algorithms"),
        ({"algorithms": ["meal", "meal"]}, "algorithms"),
        ({"seeds": 0}, "seeds"),
        ({"seeds": []}, "seeds"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"base": {"iterations": 0}}, "base.iterations"),
        ({"baseline": "nothing"}, "baseline"),
        ({"typo": 1}, "typo"),
    ],
)
def test_invalid_combinations_are_refused_with_the_field_named(fields: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_experiment({"base": {"iterations": 2}, **fields}).expand()
    named = [w for w, _ in caught.value.fields]
    assert any(w.startswith(where) for w in named), (named, str(caught.value))
    assert where in str(caught.value)


def test_a_refused_value_is_named_with_its_value() -> None:
    with pytest.raises(ConfigError) as caught:
        experiment(vary={"algorithm.selection": ["best", "top_q"]}, base={"algorithm": {"top_q": 0.1}}).expand()
    assert caught.value.fields[0][0] == "vary.algorithm.selection"
    assert "'top_q'" in str(caught.value)


def test_compute_is_implied_by_the_config() -> None:
    (run,) = experiment(seeds=1, algorithms=["meal"]).expand()
    # Defaults: 8 prompts × 4 samples × 2 iterations; 64 tokens each; 4 policy steps and 5 meta steps an iteration;
    # calibration 16 prompts × 4; evaluations at 0 and 2, each 8 prompts × 11 grid points × 2.
    assert compute(run.config).as_dict() == {
        "training_responses": 64,
        "max_training_tokens": 64 * 64,
        "max_policy_steps": 8,
        "meta_steps": 10,
        "calibration_responses": 64,
        "evaluations": 2,
        "evaluation_responses": 2 * 8 * 11 * 2,
    }
    # A prompt pool smaller than a batch caps the batch.
    (small,) = experiment(
        seeds=1, algorithms=["static"], base={"iterations": 2, "data": {"max_train_prompts": 4}}
    ).expand()
    assert compute(small.config).training_responses == 2 * 4 * 4 and compute(small.config).meta_steps == 0


def test_compute_report_names_what_differs_and_by_how_much() -> None:
    runs = experiment(seeds=2, algorithms=["meal"], vary={"algorithm.samples_per_prompt": [4, 6]}).expand()
    per_variant, differences = compute_report(runs)
    assert set(per_variant) == {"meal-samples_per_prompt=4", "meal-samples_per_prompt=6"}
    by_quantity = {d.quantity: d for d in differences}
    assert set(by_quantity) == {"training_responses", "max_training_tokens", "calibration_responses"}
    assert by_quantity["training_responses"].values == {
        "meal-samples_per_prompt=4": 64,
        "meal-samples_per_prompt=6": 96,
    }
    assert by_quantity["training_responses"].ratio == pytest.approx(1.5)
    # Same settings, different algorithms: equal in generation and policy steps; only meal takes meta steps.
    _, differences = compute_report(experiment(seeds=1, algorithms=["meal", "static"]).expand())
    assert [d.quantity for d in differences] == ["meta_steps"]


def test_summary_against_hand_computed_values() -> None:
    found = summary([2, 4, 4, 4, 5, 5, 7, 9])
    # mean 5, sd = √(32/7); t(0.975, 7) = 2.364624 → half width 2.364624 · 2.138090 / √8 = 1.787494
    assert found.n == 8 and found.mean == pytest.approx(5.0)
    assert found.sd == pytest.approx(math.sqrt(32 / 7))
    assert found.low == pytest.approx(5 - 1.787494, abs=1e-5) and found.high == pytest.approx(5 + 1.787494, abs=1e-5)
    one = summary([3.0])
    assert one.n == 1 and one.mean == 3.0 and math.isnan(one.sd) and math.isnan(one.low)
    assert summary([]).n == 0 and summary([float("nan"), 1.0]).n == 1


def test_paired_comparison_against_hand_computed_values() -> None:
    variant = {0: 1.0, 1: 2.0, 2: 4.0, 3: 9.0}  # seed 3 has no baseline: left out
    baseline = {0: 0.5, 1: 1.0, 2: 2.5}
    found = paired(variant, baseline)
    # differences 0.5, 1.0, 1.5: mean 1, sd 0.5; t = 1 / (0.5 / √3) = 2√3 on 2 degrees of freedom.
    # Student's t with 2 df has F(t) = 1/2 + t / (2 √(t² + 2)): p = 2 (1 − F(2√3)) = 1 − 2√3 / √14 = 0.074180.
    # Interval: 1 ± t(0.975, 2) · 0.5 / √3 = 1 ± 4.302653 · 0.288675 = 1 ± 1.242070.
    assert found.n == 3 and found.seeds == [0, 1, 2]
    assert found.mean_difference == pytest.approx(1.0) and found.sd == pytest.approx(0.5)
    assert found.p == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14), abs=1e-9)
    assert found.p == pytest.approx(0.074180, abs=1e-6)
    assert found.low == pytest.approx(1 - 1.242070, abs=1e-5) and found.high == pytest.approx(1 + 1.242070, abs=1e-5)
    # One pair, or differences all alike: no test (NaN), not a warning or a false certainty.
    assert math.isnan(paired({0: 1.0}, {0: 0.0}).p)
    same = paired({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0})
    assert same.mean_difference == pytest.approx(1.0) and math.isnan(same.p)


def test_stability_against_hand_computed_values() -> None:
    assert mean_absolute_successive_difference([1, 3, 2, 2, 5]) == pytest.approx(6 / 4)
    assert math.isnan(mean_absolute_successive_difference([1.0]))
    found = stability({0: [(0, 1.0), (1, 2.0), (2, 4.0)], 1: [(0, 1.0), (1, 3.0), (2, 2.0)]})
    # finals 4 and 2: sd √2; sd across seeds per step 0, √½, √2 → mean (√½ + √2) / 3; jumps (1 + 2) / 2 per seed.
    assert found.n == 2
    assert found.final_sd == pytest.approx(math.sqrt(2))
    assert found.band == pytest.approx((math.sqrt(0.5) + math.sqrt(2)) / 3)
    assert found.jumpiness == pytest.approx(1.5)


def test_curves_average_each_step_over_the_seeds_that_have_it() -> None:
    # Seed 1 is still training: step 2 is seed 0's alone (n 1, no sd); steps 0 and 1 average both.
    found = mean_curve({0: [(0, 1.0), (1, 2.0), (2, 4.0)], 1: [(0, 3.0), (1, 2.0)]})
    assert [(p.step, p.n) for p in found] == [(0, 2), (1, 2), (2, 1)]
    assert found[0].mean == 2.0 and found[0].sd == pytest.approx(math.sqrt(2))
    half = 12.706204736 * math.sqrt(2) / math.sqrt(2)  # t(0.975, 1) · sd / √n
    assert (found[0].low, found[0].high) == pytest.approx((2.0 - half, 2.0 + half))
    assert found[1].sd == 0.0 and found[2].mean == 4.0 and math.isnan(found[2].sd) and math.isnan(found[2].low)
    # Thinned to evenly spaced steps, the first and the last kept.
    long = mean_curve({0: [(s, float(s)) for s in range(101)]}, max_points=5)
    assert [p.step for p in long] == [0, 25, 50, 75, 100]


def test_series_and_curves_follow_rewards_learned_weights_and_hypervolume() -> None:
    rows = [(1, "reward/a", 0.5), (1, "pref_weight_learned/a", 0.7), (1, "loss/policy", 9.0), (2, "reward/a", 0.6)]
    found = series_of([evaluation(0, 1.0, 0.0), evaluation(2, 2.0, 0.5)], rows)
    assert found == {
        "hypervolume": [(0, 1.0), (2, 2.0)],
        "reward/a": [(1, 0.5), (2, 0.6)],
        "pref_weight_learned/a": [(1, 0.7)],
    }
    other = series_of([evaluation(0, 3.0, 0.0)], [(1, "reward/a", 1.5)])
    averaged = curves({"meal": {0: found, 1: other}})["meal"]
    assert [(p.step, p.n, p.mean) for p in averaged["hypervolume"]] == [(0, 2, 2.0), (2, 1, 2.0)]
    assert [(p.step, p.n, p.mean) for p in averaged["reward/a"]] == [(1, 2, 1.0), (2, 1, 0.6)]
    assert [p.n for p in averaged["pref_weight_learned/a"]] == [1]
    # The report carries them (for report.json and the page), NaN as null.
    exported = report({}, "meal", {"meal": {0: found, 1: other}}).to_json()
    assert exported["curves"]["meal"]["hypervolume"][1] == {
        "step": 2,
        "n": 1,
        "mean": 2.0,
        "sd": None,
        "low": None,
        "high": None,
    }


def evaluation(step: int, hv: float, control: float) -> dict[str, Any]:
    return {
        "step": step,
        "objectives": ["a", "b"],
        "hypervolume": hv,
        "controllability": {"a": control, "b": control},
        "controllability_grid": {"a": 1.0, "b": 1.0},
        "controllability_null": {"a": 0.1, "b": 0.1},
        "degenerate_share": 0.0,
        "points": [{"weights": [1.0, 0.0], "rewards": [0.5, -0.5]}, {"weights": [0.0, 1.0], "rewards": [-0.2, 0.7]}],
    }


def test_report_builds_the_table_the_comparison_and_stability() -> None:
    results: dict[str, dict[int, dict[str, float]]] = {}
    series: dict[str, Any] = {}
    for variant, shift in (("static", 0.0), ("meal", 1.0)):
        for seed, base in ((0, 1.0), (1, 2.0), (2, 4.0)):
            evaluations = [evaluation(0, 1.0, 0.0), evaluation(2, base + shift * seed, 0.5)]
            metrics = {"train/generated_responses": [24.0, 24.0], "train/policy_steps": [3.0, 3.0]}
            results.setdefault(variant, {})[seed] = run_figures(evaluations, metrics, evaluations[-1])
            series.setdefault(variant, {})[seed] = {"hypervolume": [(0, 1.0), (2, base)]}
    row = results["meal"][2]
    assert row["training_responses"] == 48 and row["policy_steps"] == 6
    assert row["hv_final"] == 6.0 and row["hv_gain"] == 5.0 and row["held_out_hv"] == 6.0
    assert row["held_out_control"] == 0.5 and row["held_out_corner/a"] == 0.5 and row["held_out_corner/b"] == 0.7
    found = report(results, "static", series)
    assert found.table["static"]["hv_final"].mean == pytest.approx(7 / 3)
    compared = found.comparison["meal"]["hv_final"]  # differences 0, 1, 2
    assert compared.mean_difference == pytest.approx(1.0) and compared.n == 3
    assert "static" not in found.comparison
    assert found.stability["meal"]["hypervolume"].n == 3
    exported = found.to_json()
    assert exported["comparison"]["meal"]["training_responses"]["p"] is None  # NaN → null in JSON
    from meal_core.experiment import format_report

    text = format_report(found, ["hv_final"])
    assert "| meal | hv_final | 3 |" in text and "p (paired t-test)" in text


def first_evaluation(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "evaluations.jsonl").read_text().splitlines()[0])


def stored_run_hv(directory: Path) -> float:
    return json.loads((directory / "heldout.json").read_text())["hypervolume"]


def test_meal_experiment_run_trains_skips_and_resumes(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2 seeds × 2 algorithms × 1 iteration through `meal experiment run`, a held-out evaluation per run; run again,
    every run is skipped; a run cut short (no finished marker) is picked up, the others left alone."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_run_config(tiny_model_dir, iterations=1).model_dump(mode="json")))
    prompts = tmp_path / "heldout.txt"
    prompts.write_text("Describe a quiet morning.\nWhy is the sea salty?\n")
    out = tmp_path / "exp"
    argv = ["experiment", "run", str(config), "--seeds", "2", "--algorithms", "meal,static", "--out", str(out)]
    argv += ["--prompts", str(prompts), "--samples-per-weight", "1", "--baseline", "static"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    for variant in ("meal", "static"):
        for seed in (0, 1):
            run = out / variant / f"seed-{seed}"
            assert (run / "finished.json").is_file() and (run / "heldout.json").is_file()
            assert json.loads((run / "config.json").read_text())["seed"] == seed
            assert json.loads((run / "heldout.json").read_text())["prompts"] == str(prompts)
    # Paired by seed: both variants' step-0 evaluation (the same untrained policy) draws the same samples, and so
    # scores the same; different seeds draw different ones.
    step_0 = {(v, s): first_evaluation(out / v / f"seed-{s}") for v in ("meal", "static") for s in (0, 1)}
    for seed in (0, 1):
        assert step_0[("meal", seed)]["points"] == step_0[("static", seed)]["points"]
    assert step_0[("meal", 0)]["points"] != step_0[("meal", 1)]["points"]
    assert "compute differs between variants:\n  meta_steps: meal 5, static 0" in captured.err
    assert "| meal | held_out_hv | 2 |" in captured.out
    assert "| meal − static (paired by seed)" in captured.out.replace("variant − static", "meal − static")
    assert "| meal | hv_final | 2 |" in captured.out
    stored = json.loads((out / "report.json").read_text())
    assert stored["baseline"] == "static" and stored["table"]["static"]["held_out_hv"]["n"] == 2
    assert stored["comparison"]["meal"]["held_out_hv"]["n"] == 2
    assert "hypervolume" in stored["stability"]["meal"]
    # The curves averaged over seeds (the experiment page's, from the same code): both seeds at every step.
    assert [p["n"] for p in stored["curves"]["meal"]["hypervolume"]] == [2, 2]
    assert [p["n"] for p in stored["curves"]["meal"]["pref_weight_learned/positivity"]] == [2]
    assert "pref_weight_learned/positivity" not in stored["curves"]["static"]  # static learns no weights
    assert (out / "report.csv").read_text().startswith("variant,figure,n,mean")
    header, *rows = (out / "runs.csv").read_text().splitlines()  # each run's own figures, a row per run
    columns = header.split(",")
    assert columns[:2] == ["variant", "seed"] and {"hv_final", "held_out_hv", "minutes"} <= set(columns)
    assert sorted(row.split(",")[:2] for row in rows) == [
        ["meal", "0"],
        ["meal", "1"],
        ["static", "0"],
        ["static", "1"],
    ]
    assert stored["runs"]["meal"]["1"]["held_out_hv"] == stored_run_hv(out / "meal" / "seed-1")

    # Again: nothing to train.
    before = (out / "meal" / "seed-1" / "metrics.jsonl").read_text()
    assert main(argv) == 0
    assert capsys.readouterr().err.count("finished before, skipped") == 4
    assert (out / "meal" / "seed-1" / "metrics.jsonl").read_text() == before

    # The records without checkpoints (what docs/results.md keeps in git): the same report, and nothing to train.
    kept = tmp_path / "kept"
    assert main(["experiment", "records", str(out), str(kept)]) == 0
    assert "4 finished runs' records (no checkpoints) copied" in capsys.readouterr().out
    for into_itself in (out, out / "meal"):
        assert main(["experiment", "records", str(out), str(into_itself)]) == 2
        assert "or inside it: copy the records to another folder" in capsys.readouterr().err
    assert not list(kept.rglob("checkpoints")) and (kept / "meal" / "seed-0" / "heldout.json").is_file()
    assert main(["experiment", "report", str(kept), "--baseline", "static"]) == 0
    assert "| meal | held_out_hv | 2 |" in capsys.readouterr().out
    assert main([str(kept) if arg == str(out) else arg for arg in argv]) == 0  # into the copy
    assert capsys.readouterr().err.count("finished before, skipped") == 4

    # Cut short: the run without its marker (and held-out evaluation) is picked up from its checkpoint, here by a
    # process that takes only the static runs (--only); the records copy leaves out a run still to finish.
    (out / "static" / "seed-1" / "finished.json").unlink()
    (out / "static" / "seed-1" / "heldout.json").unlink()
    partial = tmp_path / "partial"
    assert main(["experiment", "records", str(out), str(partial)]) == 0
    assert not (partial / "static" / "seed-1").exists() and (partial / "static" / "seed-0").is_dir()
    assert main([*argv, "--only", "static"]) == 0
    err = capsys.readouterr().err
    assert err.count("finished before, skipped") == 1 and "static/seed-1: resuming at iteration 1" in err
    assert "== meal" not in err and "== static/seed-1 (2/2)" in err
    assert (out / "static" / "seed-1" / "heldout.json").is_file()
    # Its minutes are both attempts' (the first one's kept in attempts.json), not only the one that finished.
    attempts = json.loads((out / "static" / "seed-1" / "attempts.json").read_text())
    finished = json.loads((out / "static" / "seed-1" / "finished.json").read_text())
    assert len(attempts) == 2 and finished["attempts"] == 2 and finished["minutes"] == pytest.approx(sum(attempts))
    assert json.loads((out / "static" / "seed-0" / "finished.json").read_text())["attempts"] == 1
    assert main([*argv, "--only", "static,ppo"]) == 2
    assert "no variant ppo; the variants are meal, static" in capsys.readouterr().err

    # The report of the folder as it stands, against another baseline; a changed experiment in the folder is refused.
    assert main(["experiment", "report", str(out), "--baseline", "meal"]) == 0
    assert "| static | held_out_hv | 2 |" in capsys.readouterr().out
    config.write_text(yaml.safe_dump(tiny_run_config(tiny_model_dir, iterations=2).model_dump(mode="json")))
    assert main(argv) == 2
    assert "holds a run with another config (differs in: iterations)" in capsys.readouterr().err


def test_an_experiment_file_names_its_held_out_prompts(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`held_out` in the experiment (what the panel's API takes) serves `meal experiment run` too, without
    --prompts: at most max_prompts of the file, samples_per_weight responses each."""
    prompts = tmp_path / "heldout.txt"
    prompts.write_text("Describe a quiet morning.\nWhy is the sea salty?\n")
    base = tiny_run_config(tiny_model_dir, iterations=1).model_dump(mode="json")
    held_out = {"prompts": str(prompts), "samples_per_weight": 1, "max_prompts": 1}
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump({"base": base, "seeds": 1, "algorithms": ["static"], "held_out": held_out}))
    out = tmp_path / "exp"
    assert main(["experiment", "run", str(config), "--out", str(out)]) == 0
    stored = json.loads((out / "static" / "seed-0" / "heldout.json").read_text())
    assert (stored["prompts"], stored["samples_per_weight"], stored["step"]) == (str(prompts), 1, 1)
    assert stored["responses"] == 1 * 3 * 1, "one prompt (max_prompts) × 3 grid points × 1 sample"
    assert json.loads((out / "report.json").read_text())["table"]["static"]["held_out_hv"]["n"] == 1


def test_meal_experiment_run_refuses_a_bad_grid_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "base.yaml"
    config.write_text("iterations: 1\n")
    assert main(["experiment", "run", str(config), "--vary", "algorithm.nope=1,2", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "vary.algorithm.nope: no such config field" in err and len(err.strip().splitlines()) == 1
    assert main(["experiment", "run", str(config), "--algorithms", "meal,ppo"]) == 2
    assert "algorithms" in capsys.readouterr().err
    assert main(["experiment", "run", str(config), "--seeds", "two"]) == 2
    assert "--seeds" in capsys.readouterr().err
