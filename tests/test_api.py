"""The JSON API against real databases (SQLite and PostgreSQL) and a real broker (Redis).

Nothing consumes the broker here: the tests read the messages the API leaves in Redis.
"""

from __future__ import annotations

import base64
import json
import math
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from helpers import bearer, tiny_run_config
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.main import create_app
from app.store import run_state
from app.store.db import session_scope
from app.store.metric_store import ROLLUP_BASE, ROLLUP_LEVELS, Point, ingest
from app.store.models import Evaluation, MetricLatest, MetricPoint, MetricRollup, Run, Sample
from app.store.queue import QUEUE
from app.store.settings import Settings
from app.store.sql import insert_ignoring_duplicates
from meal_core.config import RunConfig, parse_config
from meal_core.enums import RunStatus

UNREACHABLE_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def run_config(**overrides: Any) -> dict[str, Any]:
    """A valid API `config`. No worker runs here, so the model folder need not exist."""
    # A model folder that does not exist, inside the folders runs may name (never trained here: the API only).
    return tiny_run_config(Path(tempfile.gettempdir()) / "no-tiny-model", **overrides).model_dump(mode="json")


def invalid_config(**overrides: Any) -> dict[str, Any]:
    """run_config() with values set at dotted__paths, unvalidated."""
    config = run_config()
    for dotted, value in overrides.items():
        *path, leaf = dotted.split("__")
        node = config
        for part in path:
            node = node[part]
        node[leaf] = value
    return config


@pytest.fixture(scope="module")
def settings(database_url: str, api_broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(database_url=database_url, broker_url=api_broker_url, data_dir=tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    """A trainer's API client (a bearer token): runs are a trainer's to launch, stop and resume."""
    with TestClient(create_app(settings), headers=bearer(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def broken_broker_client(settings: Settings) -> Iterator[TestClient]:
    """The same database, but a broker that refuses connections."""
    app = create_app(settings.model_copy(update={"broker_url": UNREACHABLE_BROKER}))
    with TestClient(app, headers=bearer(settings)) as test_client:
        yield test_client


# -- helpers -------------------------------------------------------------------------------------------------------


def queued_messages(broker_url: str) -> list[dict[str, Any]]:
    """The task messages waiting in the broker's queue: task name, id and arguments."""
    client = redis.Redis.from_url(broker_url)
    try:
        raw = client.lrange(QUEUE, 0, -1)
    finally:
        client.close()
    messages = []
    for item in raw:
        envelope = json.loads(item)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        messages.append({"task": envelope["headers"]["task"], "id": envelope["headers"]["id"], "args": args})
    return messages


def count_runs(url: str) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(Run)) or 0


def create(client: TestClient, name: str = "run", **overrides: Any) -> dict[str, Any]:
    response = client.post("/api/runs", json={"name": name, "config": run_config(**overrides)})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def new_run_id(url: str) -> int:
    """A run stored directly (not enqueued), for the metric, sample and evaluation tests."""
    with session_scope(url) as session:
        run = run_state.create_run(session, "data", run_config(), 4, "tester")
        run_state.request_stop(session, run.id)  # out of the queue
        return run.id


def ingest_points(url: str, run_id: int, points: list[Point]) -> int:
    with session_scope(url) as session:
        return ingest(session, run_id, points)


def series_of(client: TestClient, run_id: int, key: str, **params: Any) -> dict[str, Any]:
    response = client.get(f"/api/runs/{run_id}/metrics", params={"keys": key, **params})
    assert response.status_code == 200, response.text
    (series,) = response.json()["series"]
    assert series["key"] == key
    return dict(series)


def assert_exact_buckets(series: dict[str, Any], raw: list[tuple[int, float]], start: int | None, end: int | None):
    """Every bucket's min, max and last equal a brute-force computation over the raw points.

    Buckets are consecutive step ranges and each returned step is its bucket's last step, so bucket i holds
    exactly the raw points with steps in (steps[i-1], steps[i]] (within [start, end]). Recompute each from the
    raw points; the buckets must also cover every point in range, and each returned step must be a real point.
    """
    points = [(s, v) for s, v in raw if (start is None or s >= start) and (end is None or s <= end)]
    steps = series["steps"]
    assert len(steps) == len(series["values"]) == len(series["min"]) == len(series["max"])
    assert all(a < b for a, b in zip(steps, steps[1:], strict=False)), "steps must increase strictly"
    i = 0
    for b, last_step in enumerate(steps):
        bucket = []
        while i < len(points) and points[i][0] <= last_step:
            bucket.append(points[i])
            i += 1
        assert bucket, f"bucket {b} (last step {last_step}) holds no raw point"
        assert bucket[-1][0] == last_step, f"bucket {b}: {last_step} is not a stored step"
        values = [v for _, v in bucket]
        assert series["min"][b] == min(values), f"bucket {b} ending at {last_step}: min"
        assert series["max"][b] == max(values), f"bucket {b} ending at {last_step}: max"
        assert series["values"][b] == bucket[-1][1], f"bucket {b} ending at {last_step}: last value"
    assert i == len(points), f"{len(points) - i} raw points after the last bucket"


# -- health and config ---------------------------------------------------------------------------------------------


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_config_schema_and_defaults(client: TestClient) -> None:
    schema = client.get("/api/config/schema")
    assert schema.status_code == 200
    body = schema.json()
    assert {"model", "algorithm", "objectives", "iterations"} <= set(body["properties"])
    samples = body["$defs"]["AlgorithmConfig"]["properties"]["samples_per_prompt"]
    assert samples["minimum"] == 2

    defaults = client.get("/api/config/defaults")
    assert defaults.status_code == 200
    assert defaults.json() == RunConfig().model_dump(mode="json")
    assert parse_config(defaults.json()) == RunConfig()


# -- creating runs -------------------------------------------------------------------------------------------------


def test_create_run_is_stored_queued_and_enqueued(client: TestClient, settings: Settings) -> None:
    config = run_config(iterations=7)
    first = create(client, "first", iterations=7)
    second = create(client, "second")
    assert first["status"] == RunStatus.QUEUED and first["name"] == "first"
    assert first["config"] == parse_config(config).model_dump(mode="json")
    assert first["total_iterations"] == 7 and first["iteration"] == 0
    assert first["created_by"] == "trainer" and first["attempts"] == 0  # the API token's user
    assert isinstance(first["queue_position"], int) and first["queue_position"] >= 1
    assert second["queue_position"] == first["queue_position"] + 1
    assert first["created_at"].endswith(("Z", "+00:00")), "times carry their UTC offset"

    messages = {m["id"]: m for m in queued_messages(settings.broker_url)}
    for run in (first, second):
        assert run["task_id"] in messages
        assert messages[run["task_id"]]["task"] == "meal.train_run"
        assert messages[run["task_id"]]["args"] == [run["id"]]


def test_create_with_omitted_config_takes_defaults(client: TestClient) -> None:
    response = client.post("/api/runs", json={"name": "defaults"})
    assert response.status_code == 201, response.text
    assert response.json()["config"] == RunConfig().model_dump(mode="json")


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (
            {"name": "bad", "config": invalid_config(algorithm__samples_per_prompt=1)},
            ["body", "config", "algorithm", "samples_per_prompt"],
        ),
        ({"name": "bad", "config": invalid_config(iterations="many")}, ["body", "config", "iterations"]),
        ({"name": "bad", "config": invalid_config(algorithm__bogus=1)}, ["body", "config", "algorithm", "bogus"]),
        ({"name": "bad", "config": invalid_config(bogus=True)}, ["body", "config", "bogus"]),
        ({"name": "bad", "config": run_config(), "priority": 3}, ["body", "priority"]),
        ({"config": run_config()}, ["body", "name"]),
        ({"name": "", "config": run_config()}, ["body", "name"]),
    ],
    ids=["out-of-range", "wrong-type", "unknown-nested-key", "unknown-key", "unknown-body-key", "no-name", "empty"],
)
def test_invalid_create_is_422_naming_the_field_and_stores_nothing(
    client: TestClient, settings: Settings, body: dict[str, Any], loc: list[str]
) -> None:
    runs, messages = count_runs(settings.database_url), len(queued_messages(settings.broker_url))
    response = client.post("/api/runs", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert loc in [error["loc"] for error in detail], detail
    assert all(error["msg"] for error in detail)
    assert count_runs(settings.database_url) == runs
    assert len(queued_messages(settings.broker_url)) == messages


def test_non_object_body_is_422(client: TestClient, settings: Settings) -> None:
    runs = count_runs(settings.database_url)
    response = client.post("/api/runs", content=b"not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert client.post("/api/runs", json=["a"]).status_code == 422
    assert client.post("/api/runs", json={"name": "x", "config": [1, 2]}).status_code == 422
    assert count_runs(settings.database_url) == runs


# -- reading runs --------------------------------------------------------------------------------------------------


def test_get_and_list(client: TestClient) -> None:
    created = create(client, "listed")
    one = client.get(f"/api/runs/{created['id']}")
    assert one.status_code == 200
    body = one.json()
    assert {k: body[k] for k in ("id", "name", "status", "task_id")} == {
        k: created[k] for k in ("id", "name", "status", "task_id")
    }
    assert body["queue_position"] == created["queue_position"]
    assert body["event_cursor"] and body["latest"] == {}

    listed = client.get("/api/runs")
    assert listed.status_code == 200
    ids = [run["id"] for run in listed.json()]
    assert created["id"] in ids
    assert ids == sorted(ids, reverse=True), "newest first"

    queued = client.get("/api/runs", params={"status": "queued"}).json()
    assert created["id"] in [run["id"] for run in queued]
    assert {run["status"] for run in queued} == {"queued"}
    positions = sorted(run["queue_position"] for run in queued)
    assert positions == list(range(1, len(queued) + 1))
    assert client.get("/api/runs", params={"status": "succeeded"}).json() == []


def test_unknown_run_is_404_on_every_run_endpoint(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    routes = [
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith("/api/runs/{run_id}")
        for method in operations
    ]
    expected = {"", "/stop", "/resume", "/metrics", "/events", "/samples", "/evaluations"}
    assert expected <= {path.removeprefix("/api/runs/{run_id}") for _, path in routes}
    for method, path in routes:
        response = client.request(method, path.replace("{run_id}", "987654"))
        assert response.status_code == 404, (method, path, response.text)
        assert "987654" in response.json()["detail"]


# -- stop and resume -----------------------------------------------------------------------------------------------


def test_stop_and_resume_a_queued_run(client: TestClient, settings: Settings) -> None:
    run = create(client, "to-stop")
    stopped = client.post(f"/api/runs/{run['id']}/stop")
    assert stopped.status_code == 200
    body = stopped.json()
    assert body["status"] == "stopped" and body["finished_at"] and body["queue_position"] is None
    assert body["stopped_by"] == "trainer"  # who, kept with the run

    again = client.post(f"/api/runs/{run['id']}/stop")
    assert again.status_code == 409
    assert "stopped" in again.json()["detail"]
    assert client.get(f"/api/runs/{run['id']}").json()["status"] == "stopped"

    resumed = client.post(f"/api/runs/{run['id']}/resume")
    assert resumed.status_code == 200, resumed.text
    body = resumed.json()
    assert body["resumed_by"] == "trainer"
    assert body["status"] == "queued" and body["finished_at"] is None and body["error"] is None
    assert body["task_id"] and body["task_id"] != run["task_id"]
    assert isinstance(body["queue_position"], int)
    message = [m for m in queued_messages(settings.broker_url) if m["id"] == body["task_id"]]
    assert message and message[0]["args"] == [run["id"]]

    conflict = client.post(f"/api/runs/{run['id']}/resume")
    assert conflict.status_code == 409
    assert "queued" in conflict.json()["detail"]
    assert client.get(f"/api/runs/{run['id']}").json()["task_id"] == body["task_id"]


def test_stop_a_running_run_asks_the_worker(client: TestClient, settings: Settings) -> None:
    run = create(client, "running")
    with session_scope(settings.database_url) as session:
        assert run_state.claim(session, run["id"], "a-worker")
    stopping = client.post(f"/api/runs/{run['id']}/stop")
    assert stopping.status_code == 200
    assert (stopping.json()["status"], stopping.json()["stop_requested"]) == ("stopping", True)
    assert client.post(f"/api/runs/{run['id']}/stop").json()["status"] == "stopping"
    assert client.post(f"/api/runs/{run['id']}/resume").status_code == 409


def test_unreachable_broker_is_503_and_the_run_is_kept_failed(
    client: TestClient, broken_broker_client: TestClient, settings: Settings
) -> None:
    runs = count_runs(settings.database_url)
    response = broken_broker_client.post("/api/runs", json={"name": "no-broker", "config": run_config()})
    assert response.status_code == 503
    assert "broker" in response.json()["detail"]
    assert count_runs(settings.database_url) == runs + 1

    listed = client.get("/api/runs", params={"status": "failed"}).json()
    kept = next(run for run in listed if run["name"] == "no-broker")
    assert "broker" in kept["error"] and kept["finished_at"] and kept["task_id"] is None
    stored = client.get(f"/api/runs/{kept['id']}").json()["config"]  # the list leaves configs out
    assert stored == parse_config(run_config()).model_dump(mode="json")

    # Once the broker is back, the failed run can be resumed.
    resumed = client.post(f"/api/runs/{kept['id']}/resume")
    assert resumed.status_code == 200
    assert resumed.json()["status"] == "queued" and resumed.json()["task_id"]
    assert [m["args"] for m in queued_messages(settings.broker_url) if m["id"] == resumed.json()["task_id"]] == [
        [kept["id"]]
    ]


# -- metrics -------------------------------------------------------------------------------------------------------


def test_small_series_are_returned_exactly(client: TestClient, settings: Settings) -> None:
    run_id = new_run_id(settings.database_url)
    loss = [Point("loss/policy", step, 1.0 / (step + 1), 1000.0 + step) for step in range(10)]
    reward = [Point("reward/positivity", step, (-1) ** step * step * 0.25, 1000.0 + step) for step in range(1, 8)]
    assert ingest_points(settings.database_url, run_id, loss + reward) == 17

    everything = client.get(f"/api/runs/{run_id}/metrics")
    assert everything.status_code == 200
    assert [s["key"] for s in everything.json()["series"]] == ["loss/policy", "reward/positivity"]
    series = series_of(client, run_id, "loss/policy")
    assert series == {
        "key": "loss/policy",
        "steps": list(range(10)),
        "values": [p.value for p in loss],
        "min": [p.value for p in loss],
        "max": [p.value for p in loss],
        "downsampled": False,
    }
    cut = series_of(client, run_id, "reward/positivity", start_step=3, end_step=5)
    assert cut["steps"] == [3, 4, 5] and cut["values"] == [-0.75, 1.0, -1.25]
    assert series_of(client, run_id, "no/such/key")["steps"] == []
    assert series_of(client, run_id, "loss/policy", start_step=50)["steps"] == []

    run = client.get(f"/api/runs/{run_id}").json()
    assert run["latest"] == {"reward/positivity": -1.75}, "latest reward of each objective"
    keys = client.get(f"/api/runs/{run_id}/metric-keys").json()
    assert keys == [
        {"key": "loss/policy", "step": 9, "value": 0.1},
        {"key": "reward/positivity", "step": 7, "value": -1.75},
    ]


def test_non_finite_values_are_dropped(client: TestClient, settings: Settings) -> None:
    run_id = new_run_id(settings.database_url)
    points = [Point("x", 1, 1.0, 0.0), Point("x", 2, math.nan, 0.0), Point("x", 3, math.inf, 0.0)]
    assert ingest_points(settings.database_url, run_id, points) == 1
    assert series_of(client, run_id, "x")["steps"] == [1]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start_step": 10, "end_step": 5}, "start_step"),
        ({"max_points": 1}, "max_points"),
        ({"start_step": -1}, "start_step"),
        ({"max_points": "lots"}, "max_points"),
    ],
)
def test_bad_metric_queries_are_422(client: TestClient, settings: Settings, params: dict[str, Any], field: str):
    run_id = new_run_id(settings.database_url)
    response = client.get(f"/api/runs/{run_id}/metrics", params=params)
    assert response.status_code == 422
    assert field in json.dumps(response.json()["detail"])


BIG_KEY = "loss/big"
BIG_POINTS = 100_000


@pytest.fixture(scope="module")
def big_series(settings: Settings) -> tuple[int, list[tuple[int, float]]]:
    """100,000 points with irregular gaps between steps, ingested out of order in three interleaved batches."""
    rng = random.Random(1234)
    steps = sorted(rng.sample(range(150_000), BIG_POINTS))
    raw = [(step, round(rng.gauss(0.0, 10.0), 6)) for step in steps]
    run_id = new_run_id(settings.database_url)
    for part in (2, 0, 1):
        batch = [Point(BIG_KEY, s, v, float(s)) for i, (s, v) in enumerate(raw) if i % 3 == part]
        assert ingest_points(settings.database_url, run_id, batch) == len(batch)
    return run_id, raw


def test_long_series_is_downsampled_exactly(client: TestClient, big_series: tuple[int, list[tuple[int, float]]]):
    run_id, raw = big_series
    series = series_of(client, run_id, BIG_KEY, max_points=1000)
    assert series["downsampled"] is True
    assert 250 <= len(series["steps"]) <= 1000, len(series["steps"])
    assert series["steps"][0] >= raw[0][0]
    assert_exact_buckets(series, raw, None, None)


def stored_rollups(url: str, run_id: int, key: str) -> dict[tuple[int, int], tuple[float, float, int, float]]:
    """(level, bucket) → (min, max, last step, last value), as stored."""
    with session_scope(url) as session:
        rows = session.execute(
            select(
                MetricRollup.level,
                MetricRollup.bucket,
                MetricRollup.min_value,
                MetricRollup.max_value,
                MetricRollup.last_step,
                MetricRollup.last_value,
            ).where(MetricRollup.run_id == run_id, MetricRollup.key == key)
        ).all()
    return {(level, bucket): (lo, hi, last_step, last) for level, bucket, lo, hi, last_step, last in rows}


def brute_force_rollups(raw: list[tuple[int, float]]) -> dict[tuple[int, int], tuple[float, float, int, float]]:
    """The rollups of `raw` (points in step order), computed from scratch."""
    expected: dict[tuple[int, int], tuple[float, float, int, float]] = {}
    for level in range(1, ROLLUP_LEVELS + 1):
        width = ROLLUP_BASE**level
        for step, value in raw:  # raw is in step order: the last point seen is the bucket's last
            lo, hi, _, _ = expected.get((level, step // width), (value, value, step, value))
            expected[(level, step // width)] = (min(lo, value), max(hi, value), step, value)
    return expected


def test_rollups_match_a_brute_force_aggregation(
    settings: Settings, big_series: tuple[int, list[tuple[int, float]]]
) -> None:
    run_id, raw = big_series
    assert stored_rollups(settings.database_url, run_id, BIG_KEY) == brute_force_rollups(raw)


def test_rollups_stay_exact_when_batches_split_buckets(client: TestClient, settings: Settings) -> None:
    """The recorder's pattern: batches of consecutive steps, of any size, so a batch often starts inside a bucket
    that already holds stored points (and a bucket of every level is split somewhere)."""
    url, rng = settings.database_url, random.Random(7)
    run_id = new_run_id(url)
    raw = [(step, rng.uniform(-5.0, 5.0)) for step in range(0, 30_000, 3)]
    start = 0
    while start < len(raw):
        size = rng.choice([1, 2, 5, 37, 400, 2_500])
        batch = raw[start : start + size]
        assert ingest_points(url, run_id, [Point("seam", s, v, 0.0) for s, v in batch]) == len(batch)
        start += size
    assert stored_rollups(url, run_id, "seam") == brute_force_rollups(raw)
    assert_exact_buckets(series_of(client, run_id, "seam", max_points=300), raw, None, None)


def test_batches_in_one_transaction_are_all_stored(client: TestClient, settings: Settings) -> None:
    """On PostgreSQL each batch passes through the same staging table: the second must not see the first's rows."""
    url = settings.database_url
    run_id = new_run_id(url)
    raw = [(step, float(step % 7)) for step in range(300)]
    with session_scope(url) as session:
        for start in (0, 100, 50, 200):  # ahead, ahead, behind (duplicates and new), ahead
            batch = raw[start : start + 100] if start != 50 else raw[50:100] + raw[250:260]
            ingest(session, run_id, [Point("t", s, v, 0.0) for s, v in batch])
    assert stored_rollups(url, run_id, "t") == brute_force_rollups(raw[:300])
    assert_exact_buckets(series_of(client, run_id, "t", max_points=40), raw, None, None)


def test_points_for_a_missing_run_are_refused_whole(settings: Settings) -> None:
    """The point and rollup tables have no foreign key (for speed); ingest's metric_latest upsert guards them."""
    url = settings.database_url
    with pytest.raises(IntegrityError), session_scope(url) as session:
        ingest(session, 987_654, [Point("x", step, 1.0, 0.0) for step in range(50)])
    with session_scope(url) as session:
        for model in (MetricPoint, MetricRollup, MetricLatest):
            assert session.scalar(select(func.count()).where(model.run_id == 987_654)) == 0, model.__name__


@pytest.mark.parametrize(
    ("start", "end", "max_points"),
    [
        (12_345, 98_765, 1000),  # both edges inside rollup buckets of every level
        (1, 149_998, 500),
        (70_001, 70_001 + 2_999, 100),  # a few thousand steps: low rollup levels
        (33, 33 + 600, 200),  # level-1 buckets, partial at both ends
        (None, 40_000, 2),  # the fewest buckets allowed
        (149_000, None, 999),  # a span that fits max_points: raw points
        (5, 5 + 63, 64),  # exactly max_points steps: raw points
    ],
)
def test_step_ranges_cutting_through_rollup_buckets_stay_exact(
    client: TestClient,
    big_series: tuple[int, list[tuple[int, float]]],
    start: int | None,
    end: int | None,
    max_points: int,
) -> None:
    run_id, raw = big_series
    params: dict[str, Any] = {"max_points": max_points}
    if start is not None:
        params["start_step"] = start
    if end is not None:
        params["end_step"] = end
    series = series_of(client, run_id, BIG_KEY, **params)
    assert len(series["steps"]) <= max_points
    assert_exact_buckets(series, raw, start, end)
    in_range = [s for s, _ in raw if (start is None or s >= start) and (end is None or s <= end)]
    if series["downsampled"]:
        assert len(series["steps"]) >= min(max_points // 4, len(in_range)) or max_points < 4
    else:
        assert series["steps"] == in_range


def test_random_ranges_stay_exact(client: TestClient, big_series: tuple[int, list[tuple[int, float]]]) -> None:
    run_id, raw = big_series
    rng = random.Random(99)
    for _ in range(12):
        start = rng.randrange(0, 150_000)
        end = rng.randrange(start, 150_000)
        max_points = rng.choice([2, 3, 10, 77, 256, 1000, 4999])
        series = series_of(client, run_id, BIG_KEY, start_step=start, end_step=end, max_points=max_points)
        assert len(series["steps"]) <= max_points, (start, end, max_points)
        assert_exact_buckets(series, raw, start, end)


def test_max_points_above_the_cap_is_clamped(
    client: TestClient, settings: Settings, big_series: tuple[int, list[tuple[int, float]]]
) -> None:
    run_id, raw = big_series
    response = client.get(f"/api/runs/{run_id}/metrics", params={"keys": BIG_KEY, "max_points": 10**9})
    assert response.status_code == 200
    body = response.json()
    assert body["max_points"] == settings.max_chart_points
    (series,) = body["series"]
    assert series["downsampled"] and len(series["steps"]) <= settings.max_chart_points
    assert_exact_buckets(series, raw, None, None)


def _metric_state(url: str, run_id: int) -> dict[str, Any]:
    with session_scope(url) as session:
        return {
            "points": session.execute(
                select(MetricPoint.key, MetricPoint.step, MetricPoint.value, MetricPoint.wall_time, MetricPoint.seq)
                .where(MetricPoint.run_id == run_id)
                .order_by(MetricPoint.key, MetricPoint.step)
            ).all(),
            "latest": session.execute(
                select(MetricLatest.key, MetricLatest.step, MetricLatest.value, MetricLatest.wall_time)
                .where(MetricLatest.run_id == run_id)
                .order_by(MetricLatest.key)
            ).all(),
            "rollups": session.execute(
                select(MetricRollup)
                .with_only_columns(*MetricRollup.__table__.columns)
                .where(MetricRollup.run_id == run_id)
                .order_by(MetricRollup.key, MetricRollup.level, MetricRollup.bucket)
            ).all(),
            "seq": session.scalar(select(func.max(MetricPoint.seq)).where(MetricPoint.run_id == run_id)),
        }


def test_resent_batches_change_nothing(client: TestClient, settings: Settings) -> None:
    url = settings.database_url
    run_id = new_run_id(url)
    batch = [Point(key, step, float(step * 3 + len(key)), 100.0 + step) for key in ("a", "bb") for step in range(40)]
    assert ingest_points(url, run_id, batch) == 80
    before = _metric_state(url, run_id)
    cursor = client.get(f"/api/runs/{run_id}").json()["event_cursor"]
    series = series_of(client, run_id, "a", max_points=5)

    # The same keys and steps again, even with other values and times: nothing changes.
    resent = [Point(p.key, p.step, -p.value - 1000.0, p.wall_time + 5.0) for p in batch]
    assert ingest_points(url, run_id, resent) == 0
    assert ingest_points(url, run_id, batch) == 0
    assert _metric_state(url, run_id) == before
    assert client.get(f"/api/runs/{run_id}").json()["event_cursor"] == cursor
    assert series_of(client, run_id, "a", max_points=5) == series

    # A batch that is half old, half new stores the new half only, as one new ingest batch.
    mixed = [Point("a", step, -float(step), 0.0) for step in range(30, 50)]
    assert ingest_points(url, run_id, mixed) == 10
    after = _metric_state(url, run_id)
    assert after["seq"] == before["seq"] + 1
    old_points = [p for p in after["points"] if p.key == "bb" or p.step < 40]
    assert old_points == before["points"]
    assert ("a", 49, -49.0) in [(k, s, v) for k, s, v, _ in after["latest"]]
    raw = [(s, v) for k, s, v, _, _ in after["points"] if k == "a"]
    assert_exact_buckets(series_of(client, run_id, "a", max_points=7), raw, None, None)


# -- samples and evaluations ---------------------------------------------------------------------------------------


def _sample(run_id: int, step: int, position: int, accepted: bool) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "step": step,
        "position": position,
        "prompt_id": f"p{position // 2}",
        "prompt": "<script>alert('prompt')</script>",
        "weights": [0.25, 0.75],
        "response": f"response {step}.{position} <b>untrusted</b>",
        "raw_rewards": {"positivity": 0.5 * position, "readability": 60.0 + step},
        "normalized_rewards": {"positivity": 0.1, "readability": -0.2},
        "accepted": accepted,
    }


def test_samples(client: TestClient, settings: Settings) -> None:
    run_id = new_run_id(settings.database_url)
    assert client.get(f"/api/runs/{run_id}/samples").json() == []
    rows = [_sample(run_id, 1, i, i % 2 == 0) for i in range(4)] + [_sample(run_id, 2, i, i == 1) for i in range(3)]
    with session_scope(settings.database_url) as session:
        insert_ignoring_duplicates(session, Sample, rows, ["run_id", "step", "position"])
        insert_ignoring_duplicates(session, Sample, rows[:2], ["run_id", "step", "position"])  # re-sent: no-op

    latest = client.get(f"/api/runs/{run_id}/samples")
    assert latest.status_code == 200
    body = latest.json()
    assert [(s["step"], s["position"]) for s in body] == [(2, 0), (2, 1), (2, 2)]
    assert body[0]["prompt"] == "<script>alert('prompt')</script>", "stored and returned verbatim"
    assert body[1]["raw_rewards"] == {"positivity": 0.5, "readability": 62.0}
    assert body[1]["weights"] == [0.25, 0.75] and body[1]["accepted"] is True

    first = client.get(f"/api/runs/{run_id}/samples", params={"step": 1}).json()
    assert [s["position"] for s in first] == [0, 1, 2, 3]
    accepted = client.get(f"/api/runs/{run_id}/samples", params={"step": 1, "accepted": True}).json()
    assert [s["position"] for s in accepted] == [0, 2]
    assert len(client.get(f"/api/runs/{run_id}/samples", params={"step": 1, "limit": 1}).json()) == 1
    assert client.get(f"/api/runs/{run_id}/samples", params={"step": 9}).json() == []
    assert client.get(f"/api/runs/{run_id}/samples", params={"limit": 0}).status_code == 422
    assert client.get(f"/api/runs/{run_id}/sample-steps").json() == [1, 2]


def test_evaluations(client: TestClient, settings: Settings) -> None:
    run_id = new_run_id(settings.database_url)
    assert client.get(f"/api/runs/{run_id}/evaluations").json() == []
    rows = [
        {
            "run_id": run_id,
            "step": step,
            "objectives": ["positivity", "readability"],
            "points": [{"weights": [1.0, 0.0], "mean": [0.1 * step, 50.0]}],
            "hypervolume": 1.5 * step,
            "reference_point": [-3.0, -3.0],
            "controllability": {"positivity": 0.2, "readability": -0.1},
            "probe": {"positivity": 0.3},
        }
        for step in (4, 2)
    ]
    with session_scope(settings.database_url) as session:
        insert_ignoring_duplicates(session, Evaluation, rows, ["run_id", "step"])
        insert_ignoring_duplicates(session, Evaluation, rows, ["run_id", "step"])
    body = client.get(f"/api/runs/{run_id}/evaluations").json()
    assert [e["step"] for e in body] == [2, 4]
    assert body[1]["hypervolume"] == 6.0
    assert body[1]["points"] == rows[0]["points"]
    assert body[0]["controllability"] == {"positivity": 0.2, "readability": -0.1}
    # Figures an evaluation did not report come back empty, not missing.
    assert body[0]["controllability_grid"] == {} and body[0]["controllability_null"] == {}
    assert body[0]["degenerate_share"] is None and body[0]["auto_weights"] == {}
    assert body[0]["created_at"].endswith(("Z", "+00:00"))
