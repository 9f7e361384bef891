"""The contracts between engine, store, server and browser are named once (meal_core/enums.py, metric_keys.py) and
every other side derives them: the OpenAPI schema lists each status set, the browser's contracts.js is written
from the same modules, and the trainer's record is a pure function that builds its keys there."""

from __future__ import annotations

from typing import Any

import numpy as np

from app import contracts
from app.main import create_app
from app.store.settings import Settings
from meal_core import enums
from meal_core import metric_keys as keys
from meal_core.data import Prompt
from meal_core.trainer import (
    CORNER,
    DRAW,
    Acceptance,
    Candidates,
    FitResult,
    IterationOutcome,
    PreferenceState,
    ProposedBatch,
    Scores,
    iteration_metrics,
    sample_records,
)


def test_contracts_js_is_written_from_the_enums_and_metric_keys() -> None:
    """Fails while app/static/js/contracts.js is stale: run `.venv/bin/python -m app.contracts`."""
    assert contracts.PATH.read_text() == contracts.render()
    text = contracts.render()
    for enum in contracts.ENUMS.values():
        assert all(f'"{member.name}": "{member.value}"' in text for member in enum)
    assert '"REWARD": "reward/{objective}"' in text


def test_openapi_lists_every_status_role_and_review_state(embedded_settings: Settings) -> None:
    schemas: dict[str, Any] = create_app(embedded_settings).openapi()["components"]["schemas"]

    def enum_of(model: str, field: str) -> list[str]:
        prop = schemas[model]["properties"][field]
        ref = prop.get("$ref") or next(p["$ref"] for p in prop.get("anyOf", []) if "$ref" in p)
        return schemas[ref.rsplit("/", 1)[1]]["enum"]

    assert enum_of("RunSummary", "status") == [s.value for s in enums.RunStatus]
    assert enum_of("RunOut", "status") == [s.value for s in enums.RunStatus]
    assert enum_of("RunSummary", "phase") == [p.value for p in enums.RunPhase]
    assert enum_of("PlaygroundOut", "status") == [s.value for s in enums.JobStatus]
    assert enum_of("UserOut", "role") == [r.value for r in enums.Role]
    assert enum_of("QueueOut", "status") == [s.value for s in enums.QueueStatus]
    assert enum_of("QueueOut", "kind") == [k.value for k in enums.QueueKind]


def test_status_sets_partition_the_statuses() -> None:
    assert set(enums.RunStatus) == enums.ACTIVE_RUN_STATUSES | enums.FINISHED_RUN_STATUSES
    assert not enums.ACTIVE_RUN_STATUSES & enums.FINISHED_RUN_STATUSES
    assert enums.RESUMABLE_RUN_STATUSES <= enums.FINISHED_RUN_STATUSES
    assert enums.HELD_RUN_STATUSES | enums.STOPPABLE_RUN_STATUSES <= enums.ACTIVE_RUN_STATUSES


def test_metric_key_builders() -> None:
    assert keys.REWARD("brevity") == "reward/brevity"
    assert keys.REWARD.prefix == "reward/"
    assert keys.EVAL_PROBE("coverage") == "eval/probe/coverage"
    assert keys.calibration_correlation("a", "b") == "calibration/correlation/a/b"


def outcome() -> IterationOutcome:
    """Two prompts × two candidates; candidates 0 and 3 kept, candidate 1 degenerate."""
    batch = ProposedBatch(
        prompts=[Prompt("p1", "one"), Prompt("p2", "two")],
        weights=np.array([[1.0, 0.0], [0.25, 0.75]]),
        kinds=[CORNER, DRAW],
        net_weights=None,
    )
    raw = np.array([[1.0, -10.0], [2.0, -20.0], [3.0, -30.0], [4.0, -40.0]])
    scores = Scores(raw=raw, calibrated=raw / 10, relative=raw / 10, valid=np.array([True, False, True, True]))
    accepted = [
        Acceptance(0, 0, np.array([1.0, 0.0]), CORNER, refined=np.array([1.0, 0.0])),
        Acceptance(1, 3, np.array([0.25, 0.75]), DRAW, refined=np.array([0.3, 0.7])),
    ]
    candidates = Candidates(texts=["a", "b", "c", "d"], token_ids=[[1], [2], [3], [4]], new_tokens=40)
    fitted = FitResult(loss=0.5, sft=0.5, pairwise=float("nan"), margin=float("nan"), steps=3)
    timings = {keys.TIME_GENERATE: 2.0, keys.TIME_SCORE: 0.5, keys.TIME_UPDATE: 1.0}
    return IterationOutcome(5, batch, candidates, scores, accepted, 0.1, None, fitted, timings)


def test_iteration_metrics_is_a_pure_function_of_the_outcome() -> None:
    learned = np.array([[0.6, 0.4], [0.2, 0.8]])
    values = iteration_metrics(["a", "b"], outcome(), PreferenceState(learned, None, 0.05, 2.0), replay_size=9)
    assert values[keys.ACCEPT_RATE] == 0.5
    assert values[keys.DEGENERATE_RATE] == 0.25
    assert values[keys.TOKENS_PER_S] == 20.0
    assert values[keys.REPLAY_SIZE] == 9.0
    assert values[keys.REWARD("a")] == 2.5 and values[keys.REWARD_ACCEPTED("b")] == -25.0
    assert values[keys.PREF_WEIGHT("b")] == 0.375 and values[keys.PREF_WEIGHT_LEARNED("a")] == 0.4
    assert values[keys.PREF_WEIGHT_MOVED] == 0.05
    assert keys.LOSS_PAIRWISE not in values, "a loss the recipe does not use (nan) is left out"
    assert keys.LOSS_META not in values and keys.PREF_WEIGHT_NET("a") not in values
    assert values == iteration_metrics(["a", "b"], outcome(), PreferenceState(learned, None, 0.05, 2.0), 9)


def test_sample_records_keep_each_candidates_weight_and_acceptance() -> None:
    records = sample_records(["a", "b"], outcome(), samples_per_prompt=2)
    assert [r.accepted for r in records] == [True, False, False, True]
    assert [r.prompt_id for r in records] == ["p1", "p1", "p2", "p2"]
    assert records[3].weights == [0.25, 0.75] and records[3].raw_rewards == {"a": 4.0, "b": -40.0}
