"""One poller per watched run, fanned out to every client that watches it.

A run page streams what is new (app/events.py). Polling the database once per client would cost each viewer
several queries per poll; here a `RunFeed` polls once per interval for all of a run's viewers, and no stream holds a
database connection between polls. A client that joins, reconnects with an older cursor, or falls behind catches up
on its own with short queries bounded by where the feed stands, then follows the feed.

Each client keeps its own cursor: the feed's events say which cursor part they move and from where, and a client
takes an event only when it starts exactly where the client stands (otherwise it fetches the missing stretch
itself), so every event id a client receives is a cursor of that client's own stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace

from starlette.concurrency import run_in_threadpool

from app.events import PART_OF_EVENT, Cursor, StreamEvent, current_cursor, new_events
from app.store.db import session_scope

log = logging.getLogger(__name__)

#: Events a client may have waiting before it counts as lagging and catches up from the database instead (an event
#: can hold thousands of points: a stalled tab must not pin much memory).
QUEUE_LIMIT = 64
#: Longest wait between polls while the database fails.
MAX_BACKOFF_S = 10.0


@dataclass(eq=False)
class Viewer:
    """One client of a feed: the events offered to it since it joined, each with the feed cursor before it."""

    queue: asyncio.Queue[tuple[Cursor, StreamEvent]] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    lagging: bool = False

    def offer(self, before: Cursor, event: StreamEvent) -> None:
        if self.lagging:
            return
        try:
            self.queue.put_nowait((before, event))
        except asyncio.QueueFull:
            self.lagging = True  # it reads the database itself once it wakes up

    def discard_waiting(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.lagging = False


class RunFeed:
    """Polls one run every `poll_s` while anyone watches it and offers each new event to every viewer."""

    def __init__(self, database_url: str, run_id: int, poll_s: float) -> None:
        self.database_url, self.run_id, self.poll_s = database_url, run_id, poll_s
        self.viewers: set[Viewer] = set()
        self.head: Cursor | None = None  # where the feed stands: every event after it reaches every viewer
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()

    async def join(self, viewer: Viewer) -> Cursor:
        """Adds `viewer` and returns the feed's cursor at that moment: the viewer gets every event after it."""
        async with self._starting:
            if self.head is None:
                self.head = await run_in_threadpool(self._current)
            self.viewers.add(viewer)
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._follow())
            return self.head

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)

    @property
    def idle(self) -> bool:
        """Nobody watches and nobody is joining."""
        return not self.viewers and not self._starting.locked()

    async def resync(self, viewer: Viewer) -> Cursor:
        """A lagging viewer drops what waits for it and restarts from where the feed stands now (the feed may have
        ended meanwhile, e.g. after reporting a deleted run while the viewer lagged: joining starts it again)."""
        viewer.discard_waiting()
        if self.head is None or self._task is None or self._task.done():
            return await self.join(viewer)
        return self.head

    def _current(self) -> Cursor:
        with session_scope(self.database_url) as session:
            return current_cursor(session, self.run_id)

    def _poll(self, head: Cursor) -> tuple[list[StreamEvent], Cursor]:
        with session_scope(self.database_url) as session:
            return new_events(session, self.run_id, head)

    async def _follow(self) -> None:
        failures = 0
        try:
            while self.viewers:
                assert self.head is not None
                try:
                    events, after = await run_in_threadpool(self._poll, self.head)
                except Exception:  # the database is away: keep the viewers and the cursor, try again later
                    failures += 1
                    log.warning("run %s: event feed poll failed (%d in a row)", self.run_id, failures, exc_info=True)
                    await asyncio.sleep(min(MAX_BACKOFF_S, self.poll_s * 2**failures))
                    continue
                failures = 0
                before = self.head
                for event in events:
                    for viewer in list(self.viewers):
                        viewer.offer(before, event)
                    before = event.cursor
                self.head = after
                if events and events[0].name == "gone":
                    return
                await asyncio.sleep(self.poll_s)
        finally:
            self.head = None  # a feed that starts again reads the run's cursor afresh


class EventHub:
    """The feeds of one web process, one per watched run."""

    def __init__(self, database_url: str, poll_s: float) -> None:
        self.database_url, self.poll_s = database_url, poll_s
        self.feeds: dict[int, RunFeed] = {}

    def feed(self, run_id: int) -> RunFeed:
        if run_id not in self.feeds:
            self.feeds[run_id] = RunFeed(self.database_url, run_id, self.poll_s)
        return self.feeds[run_id]

    async def watch(self, run_id: int, start: Cursor, keepalive_s: float) -> AsyncGenerator[StreamEvent | None, None]:
        """The events of one client's stream from `start` on; None when nothing came for `keepalive_s`."""
        feed, viewer = self.feed(run_id), Viewer()
        position = start
        try:
            head = await feed.join(viewer)
            while True:
                async for event in self._catch_up(run_id, position, head):
                    yield event
                    if event.name == "gone":
                        return
                    position = event.cursor
                if viewer.lagging:
                    head = await feed.resync(viewer)
                    continue
                try:
                    before, event = await asyncio.wait_for(viewer.queue.get(), keepalive_s)
                except TimeoutError:
                    yield None
                    head = position  # nothing to catch up
                    continue
                if event.name == "gone":
                    yield StreamEvent(event.name, event.data, position)
                    return
                part = PART_OF_EVENT[event.name]
                mine, theirs_before, theirs_after = (getattr(c, part) for c in (position, before, event.cursor))
                if theirs_after <= mine:
                    head = position  # already has it (it caught up past the feed)
                elif part == "version" or theirs_before == mine:
                    position = replace(position, **{part: theirs_after})
                    yield StreamEvent(event.name, event.data, position)
                    head = position
                else:  # the event starts after or inside what this client has: fetch the stretch itself
                    head = replace(position, **{part: theirs_after})
        finally:
            feed.leave(viewer)
            if feed.idle and self.feeds.get(run_id) is feed:
                del self.feeds[run_id]  # its poller stops at its next turn

    async def _catch_up(self, run_id: int, position: Cursor, upto: Cursor) -> AsyncIterator[StreamEvent]:
        """What lies between `position` and `upto`, read by this client alone in short transactions."""
        while not position.covers(upto):
            events, after = await run_in_threadpool(self._read, run_id, position, upto)
            if not events:  # rows the feed saw are gone (a deleted run's): nothing left to fetch
                return
            for event in events:
                yield event
            position = after

    def _read(self, run_id: int, position: Cursor, upto: Cursor) -> tuple[list[StreamEvent], Cursor]:
        with session_scope(self.database_url) as session:
            return new_events(session, run_id, position, upto)
