"""The run page's event stream: app.events on both databases, and the SSE endpoint over a real HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from db_fixtures import migrated_database
from helpers import TcpProxy, bearer, tiny_run_config
from live_server import Event, EventStream, live_server
from sqlalchemy import delete, make_url, select
from sqlalchemy import event as sqlalchemy_event

from app import event_hub
from app.events import MAX_POINTS_PER_EVENT, Cursor, StreamEvent, current_cursor, new_events
from app.store import run_state
from app.store.db import get_engine, session_scope
from app.store.metric_store import Point, ingest
from app.store.models import Evaluation, Run, Sample
from app.store.settings import Settings
from app.store.sql import insert_ignoring_duplicates


def new_run(url: str) -> int:
    with session_scope(url) as session:
        return run_state.create_run(session, "events", {}, 10, "tester").id


def add_points(url: str, run_id: int, key: str, steps: range | list[int], offset: float = 0.0) -> dict[str, Any]:
    """Ingest one batch; returns it the way a metrics event carries it: {key: [[step, value], …]}."""
    points = [Point(key, step, step * 0.5 + offset, 0.0) for step in steps]
    with session_scope(url) as session:
        assert ingest(session, run_id, points) == len(points)
    return {key: [[p.step, p.value] for p in points]}


def add_samples(url: str, run_id: int, step: int, count: int) -> list[int]:
    rows = [
        {
            "run_id": run_id,
            "step": step,
            "position": position,
            "prompt_id": "p",
            "prompt": "Say hi",
            "weights": [0.5, 0.5],
            "response": f"hi {step}.{position}",
            "raw_rewards": {"a": 1.0},
            "normalized_rewards": {"a": 0.0},
            "accepted": position == 0,
        }
        for position in range(count)
    ]
    with session_scope(url) as session:
        insert_ignoring_duplicates(session, Sample, rows, ["run_id", "step", "position"])
        return list(
            session.scalars(select(Sample.id).where(Sample.run_id == run_id, Sample.step == step).order_by(Sample.id))
        )


def add_evaluation(url: str, run_id: int, step: int) -> int:
    row = {
        "run_id": run_id,
        "step": step,
        "objectives": ["a", "b"],
        "points": [],
        "hypervolume": float(step),
        "reference_point": [0.0, 0.0],
        "controllability": {},
        "probe": {},
    }
    with session_scope(url) as session:
        insert_ignoring_duplicates(session, Evaluation, [row], ["run_id", "step"])
        evaluation_id = session.scalar(
            select(Evaluation.id).where(Evaluation.run_id == run_id, Evaluation.step == step)
        )
        assert evaluation_id is not None
        return evaluation_id


def poll(url: str, run_id: int, cursor: Cursor) -> tuple[list[tuple[str, Any, Cursor]], Cursor]:
    with session_scope(url) as session:
        events, after = new_events(session, run_id, cursor)
    return [tuple(event) for event in events], after  # type: ignore[misc]


# -- app.events ----------------------------------------------------------------------------------------------------


def test_cursor_encodes_and_decodes() -> None:
    cursor = Cursor(12, 345, 6, 78)
    assert cursor.encode() == "12.345.6.78"
    assert Cursor.decode(cursor.encode()) == cursor
    for malformed in (None, "", "1.2.3", "1.2.3.4.5", "a.b.c.d", "1.2.x.4"):
        assert Cursor.decode(malformed) == Cursor(), malformed
    assert Cursor().version == -1, "a fresh cursor always receives the run's status first"


def test_new_events_sends_only_what_is_new(database_url: str) -> None:
    url = database_url
    run_id = new_run(url)
    events, cursor = poll(url, run_id, Cursor())
    assert [name for name, _, _ in events] == ["status"]
    assert events[0][1]["status"] == "queued" and events[0][1]["id"] == run_id
    assert events[0][2] == cursor == current_cursor_of(url, run_id)
    assert poll(url, run_id, cursor) == ([], cursor)

    first = add_points(url, run_id, "loss", range(3))
    events, cursor = poll(url, run_id, cursor)
    assert [(name, data) for name, data, _ in events] == [("metrics", first)]
    assert cursor.seq == 1
    second = {**add_points(url, run_id, "loss", range(3, 5)), **add_points(url, run_id, "reward/a", [4])}
    events, cursor = poll(url, run_id, cursor)
    assert [(name, data) for name, data, _ in events] == [("metrics", second)]
    assert cursor.seq == 3

    sample_ids = add_samples(url, run_id, 4, 3)
    events, cursor = poll(url, run_id, cursor)
    assert [name for name, _, _ in events] == ["samples"]
    assert [s["id"] for s in events[0][1]] == sample_ids and cursor.sample == sample_ids[-1]

    evaluation_id = add_evaluation(url, run_id, 4)
    events, cursor = poll(url, run_id, cursor)
    assert [(name, [e["id"] for e in data]) for name, data, _ in events] == [("evaluations", [evaluation_id])]
    assert poll(url, run_id, cursor) == ([], cursor)

    # Everything at once comes in a fixed order, each event with the cursor just after itself.
    with session_scope(url) as session:
        run_state.request_stop(session, run_id)
    third = add_points(url, run_id, "loss", [5])
    more_samples = add_samples(url, run_id, 5, 2)
    evaluation_id = add_evaluation(url, run_id, 5)
    before = cursor
    events, cursor = poll(url, run_id, cursor)
    assert [name for name, _, _ in events] == ["status", "metrics", "samples", "evaluations"]
    assert events[0][1]["status"] == "stopped" and events[0][1]["finished_at"]
    assert events[1][1] == third
    assert [s["id"] for s in events[2][1]] == more_samples
    assert events[3][1][0]["id"] == evaluation_id
    assert cursor == events[-1][2] == current_cursor_of(url, run_id)
    for i, (_, _, after) in enumerate(events):
        # Resuming from an event's own id sends exactly the events that followed it.
        rest, _ = poll(url, run_id, Cursor.decode(after.encode()))
        assert [name for name, _, _ in rest] == [name for name, _, _ in events[i + 1 :]]
    assert poll(url, run_id, before)[0] == events


def current_cursor_of(url: str, run_id: int) -> Cursor:
    with session_scope(url) as session:
        return current_cursor(session, run_id)


def test_a_large_backlog_comes_in_whole_batches(database_url: str) -> None:
    url = database_url
    run_id = new_run(url)
    _, start = poll(url, run_id, Cursor())
    size = MAX_POINTS_PER_EVENT * 3 // 5
    batches = [add_points(url, run_id, "x", range(i * size, (i + 1) * size)) for i in range(3)]
    cursor = start
    for expected_seq, batch in enumerate(batches, start=1):
        events, cursor = poll(url, run_id, cursor)
        assert [(name, data) for name, data, _ in events] == [("metrics", batch)]
        assert cursor.seq == expected_seq
    huge = add_points(url, run_id, "y", range(MAX_POINTS_PER_EVENT + 10))
    events, cursor = poll(url, run_id, cursor)
    assert [(name, data) for name, data, _ in events] == [("metrics", huge)], "a batch is never split"
    assert poll(url, run_id, cursor) == ([], cursor)


def test_a_vanished_run_is_gone(database_url: str) -> None:
    run_id = new_run(database_url)
    with session_scope(database_url) as session:
        session.execute(delete(Run).where(Run.id == run_id))
    events, cursor = poll(database_url, run_id, Cursor(1, 2, 3, 4))
    assert [(name, data) for name, data, _ in events] == [("gone", {"run_id": run_id})]
    assert cursor == Cursor(1, 2, 3, 4)


# -- app.event_hub: one poller per run, fanned out -----------------------------------------------------------------


def metrics_of(events: Sequence[Event | StreamEvent]) -> dict[str, list[list[float]]]:
    """All metric points in these events, per key."""
    merged: dict[str, list[list[float]]] = {}
    for event in events:
        if event.name == "metrics":
            for key, points in event.data.items():
                merged.setdefault(key, []).extend(points)
    return merged


async def take(stream: AsyncGenerator[StreamEvent | None, None]) -> StreamEvent:
    """The next event of a hub stream (keep-alives skipped)."""
    while (event := await anext(stream)) is None:
        pass
    return event


def test_a_lagging_viewer_catches_up_without_loss_or_duplicates(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A viewer that stops reading while the feed runs on overflows its queue, then reads what it missed itself."""
    monkeypatch.setattr(event_hub, "QUEUE_LIMIT", 2)
    url = database_url
    run_id = new_run(url)
    expected = add_points(url, run_id, "loss", range(3))

    async def scenario() -> tuple[list[StreamEvent], list[StreamEvent]]:
        hub = event_hub.EventHub(url, poll_s=0.01)
        slow, steady = hub.watch(run_id, Cursor(), 5.0), hub.watch(run_id, Cursor(), 5.0)
        slow_events = [await take(slow), await take(slow)]  # status, the first batch; then it stops reading
        steady_events = [await take(steady), await take(steady)]
        for batch in range(1, 8):  # each batch lands in its own poll of the feed
            expected["loss"] += add_points(url, run_id, "loss", range(batch * 3, batch * 3 + 3))["loss"]
            steady_events.append(await take(steady))
        assert hub.feeds[run_id].viewers and any(v.lagging for v in hub.feeds[run_id].viewers)
        while metrics_of(slow_events) != expected:
            slow_events.append(await take(slow))
        await slow.aclose()
        await steady.aclose()
        assert not hub.feeds, "a feed nobody watches is dropped"
        return slow_events, steady_events

    slow_events, steady_events = asyncio.run(scenario())
    for events in (slow_events, steady_events):
        assert metrics_of(events) == expected, "every point once, in order"
        seqs = [e.cursor.seq for e in events]
        assert seqs == sorted(seqs) and [e.name for e in events].count("status") == 1
        assert events[-1].cursor == current_cursor_of(url, run_id)


def test_viewers_at_different_cursors_each_get_their_own_stream(database_url: str) -> None:
    """One viewer follows the feed live; another joins with an old cursor and one ahead of the feed: each receives
    exactly what it lacks, and each event id is a cursor of its own stream."""
    url = database_url
    run_id = new_run(url)
    first = add_points(url, run_id, "loss", range(2))
    start = current_cursor_of(url, run_id)
    second = add_points(url, run_id, "loss", range(2, 4))

    async def scenario() -> dict[str, list[StreamEvent]]:
        hub = event_hub.EventHub(url, poll_s=0.01)
        live = hub.watch(run_id, Cursor(), 5.0)
        received = {"live": [await take(live), await take(live)]}
        late = hub.watch(run_id, start, 5.0)
        received["late"] = [await take(late)]
        third = add_points(url, run_id, "loss", [4])
        received["live"].append(await take(live))
        received["late"].append(await take(late))
        assert received["late"][-1].data == third == received["live"][-1].data
        await live.aclose()
        await late.aclose()
        return received

    received = asyncio.run(scenario())
    assert metrics_of(received["live"])["loss"] == first["loss"] + second["loss"] + [[4, 2.0]]
    assert metrics_of(received["late"])["loss"] == second["loss"] + [[4, 2.0]]
    assert received["late"][-1].cursor == received["live"][-1].cursor == current_cursor_of(url, run_id)


def test_a_feed_outlives_a_database_outage(tmp_path: Path) -> None:
    """PostgreSQL refuses every connection for a while (a TCP proxy cut): the feed's polls fail, its viewer stays,
    and once the database is back the viewer gets what was written meanwhile, as if nothing happened."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(contextlib.contextmanager(migrated_database)("postgresql", tmp_path))
        target = make_url(url)
        proxy = TcpProxy((target.host or "127.0.0.1", target.port or 5432))
        stack.callback(proxy.close)
        through_proxy = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        run_id = new_run(url)
        first = add_points(url, run_id, "loss", range(3))

        async def scenario() -> list[StreamEvent]:
            hub = event_hub.EventHub(through_proxy, poll_s=0.05)
            stream = hub.watch(run_id, Cursor(), 30.0)
            received = [await take(stream), await take(stream)]
            proxy.cut()
            during = add_points(url, run_id, "loss", range(3, 6))  # written directly, while the feed is cut off
            await asyncio.sleep(1.0)  # several polls fail meanwhile
            proxy.restore()
            received.append(await asyncio.wait_for(take(stream), 60))
            assert received[-1].data == during
            await stream.aclose()
            return received

        received = asyncio.run(scenario())
        get_engine(through_proxy).dispose()
    assert [e.name for e in received] == ["status", "metrics", "metrics"]
    assert metrics_of(received) == {"loss": first["loss"] + [[s, s * 0.5] for s in range(3, 6)]}


# -- the SSE endpoint over HTTP ------------------------------------------------------------------------------------


@dataclass
class Served:
    url: str
    headers: dict[str, str]  # a trainer's API token


@pytest.fixture(scope="module")
def server(database_url: str, api_broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    settings = Settings(
        database_url=database_url,
        broker_url=api_broker_url,
        data_dir=tmp_path_factory.mktemp("data"),
        events_poll_s=0.1,
    )
    with live_server(settings) as base_url:
        yield Served(base_url, bearer(settings))


def create_run(server: Served) -> dict[str, Any]:
    config = tiny_run_config(Path(tempfile.gettempdir()) / "no-model-here").model_dump(mode="json")
    response = httpx.post(f"{server.url}/api/runs", json={"name": "streamed", "config": config}, headers=server.headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def events_url(server: Served, run_id: int) -> str:
    return f"{server.url}/api/runs/{run_id}/events"


def is_metrics(event: Event) -> bool:
    return event.name == "metrics"


def test_stream_sends_new_data_and_resumes_from_last_event_id(server: Served, database_url: str) -> None:
    url = database_url
    run = create_run(server)
    run_id = run["id"]
    before = add_points(url, run_id, "loss", range(1, 4))

    with EventStream(events_url(server, run_id), headers=server.headers) as stream:
        assert stream.status_code == 200
        opening = stream.until(is_metrics)
        assert [e.name for e in opening] == ["status", "metrics"]
        assert opening[0].data["status"] == "queued"
        assert opening[1].data == before, "without a cursor the stream starts at the beginning"

        new = add_points(url, run_id, "loss", range(4, 6))
        assert [(e.name, e.data) for e in stream.until(is_metrics)] == [("metrics", new)]
        sample_ids = add_samples(url, run_id, 5, 2)
        event = stream.next()
        assert event.name == "samples" and [s["id"] for s in event.data] == sample_ids
        evaluation_id = add_evaluation(url, run_id, 5)
        event = stream.next()
        assert event.name == "evaluations" and [e["id"] for e in event.data] == [evaluation_id]

        stopped = httpx.post(f"{server.url}/api/runs/{run_id}/stop", headers=server.headers)
        assert stopped.status_code == 200
        event = stream.next()
        assert event.name == "status" and event.data["status"] == "stopped"
        last_id = event.id
        assert stream.drain(quiet=0.5) == []
    assert last_id is not None

    # While nobody listens, more arrives; a reconnect with Last-Event-ID gets that and nothing older.
    missed = add_points(url, run_id, "loss", range(6, 8))
    missed_samples = add_samples(url, run_id, 7, 1)
    with EventStream(events_url(server, run_id), headers={**server.headers, "Last-Event-ID": last_id}) as stream:
        first = stream.next()
        assert (first.name, first.data) == ("metrics", missed)
        second = stream.next()
        assert second.name == "samples" and [s["id"] for s in second.data] == missed_samples
        live = add_points(url, run_id, "reward/a", [8])
        assert [(e.name, e.data) for e in stream.until(is_metrics)] == [("metrics", live)]
        assert stream.drain(quiet=0.5) == []
        assert all(e.name != "status" for e in stream.received)


def test_cursor_from_the_run_gives_only_what_comes_after(server: Served, database_url: str) -> None:
    run = create_run(server)
    run_id = run["id"]
    add_points(database_url, run_id, "loss", range(10))
    add_samples(database_url, run_id, 9, 2)
    cursor = httpx.get(f"{server.url}/api/runs/{run_id}", headers=server.headers).json()["event_cursor"]
    after = add_points(database_url, run_id, "loss", range(10, 12))
    with EventStream(events_url(server, run_id), params={"cursor": cursor}, headers=server.headers) as stream:
        event = stream.next()
        assert (event.name, event.data) == ("metrics", after)
        assert stream.drain(quiet=0.5) == []

    # Last-Event-ID (a reconnecting browser) wins over the cursor the page was opened with.
    newest = add_points(database_url, run_id, "loss", [12])
    with EventStream(
        events_url(server, run_id),
        params={"cursor": Cursor().encode()},
        headers={**server.headers, "Last-Event-ID": event.id or ""},
    ) as stream:
        event = stream.next()
        assert (event.name, event.data) == ("metrics", newest)


def test_each_event_id_covers_only_itself_and_what_came_before(server: Served, database_url: str) -> None:
    """A connection that drops between two events of one poll must lose neither on reconnect."""
    run = create_run(server)
    run_id = run["id"]
    points = add_points(database_url, run_id, "loss", range(3))
    sample_ids = add_samples(database_url, run_id, 2, 2)
    with EventStream(events_url(server, run_id), headers=server.headers) as stream:
        opening = [stream.next() for _ in range(3)]
    assert [e.name for e in opening] == ["status", "metrics", "samples"]
    # Reconnect as if only the status event had arrived.
    with EventStream(
        events_url(server, run_id), headers={**server.headers, "Last-Event-ID": opening[0].id or ""}
    ) as stream:
        again = [stream.next(), stream.next()]
        assert [(e.name, e.data if e.name == "metrics" else [s["id"] for s in e.data]) for e in again] == [
            ("metrics", points),
            ("samples", sample_ids),
        ]


def test_unknown_run_stream_is_404(server: Served) -> None:
    response = httpx.get(events_url(server, 987654), headers=server.headers)
    assert response.status_code == 404


def count_queries(url: str, seconds: float) -> int:
    """Statements the database receives from this process in `seconds` (the server runs in this process)."""
    count = 0

    def counted(*_: object) -> None:
        nonlocal count
        count += 1

    engine = get_engine(url)
    sqlalchemy_event.listen(engine, "before_cursor_execute", counted)
    try:
        time.sleep(seconds)
    finally:
        sqlalchemy_event.remove(engine, "before_cursor_execute", counted)
    return count


def test_many_viewers_cost_the_database_what_one_does(server: Served, database_url: str) -> None:
    """Twenty open run pages: no stream holds a connection between polls, one poller serves them all, and each
    gets every new point."""
    run_id = create_run(server)["id"]
    add_points(database_url, run_id, "loss", range(3))
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(EventStream(events_url(server, run_id), headers=server.headers))
        first.until(is_metrics)
        alone = count_queries(database_url, 1.0)
        viewers = [first] + [
            stack.enter_context(EventStream(events_url(server, run_id), headers=server.headers)) for _ in range(19)
        ]
        for viewer in viewers[1:]:
            viewer.until(is_metrics)
        crowded = count_queries(database_url, 1.0)
        assert crowded <= 2 * alone + 5, f"{crowded} statements/s with 20 viewers, {alone} with one"

        pool = get_engine(database_url).pool
        held = []
        for _ in range(20):
            held.append(pool.checkedout())  # type: ignore[attr-defined]
            time.sleep(0.03)
        assert statistics.median(held) == 0, f"connections checked out while 20 streams wait: {held}"

        new = add_points(database_url, run_id, "loss", range(3, 6))
        for viewer in viewers:
            assert [(e.name, e.data) for e in viewer.until(is_metrics)] == [("metrics", new)]
        health = httpx.get(f"{server.url}/healthz")
        assert health.status_code == 200
