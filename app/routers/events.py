"""Server-sent events: one stream per run page, pushing only what is new since the client's cursor.

The stream holds no database connection: the run is looked up in a short transaction, and the events come from the
run's shared feed (app/event_hub.py), so a hundred viewers of a run cost the database what one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from app.deps import REQUIRE, IdPath, SettingsDep
from app.event_hub import EventHub
from app.events import Cursor, StreamEvent, new_events
from app.schemas import API_ERRORS, error_responses
from app.store.db import session_scope
from app.store.models import Run
from meal_core.enums import Role

router = APIRouter(prefix="/api/runs", tags=["events"], dependencies=[Depends(REQUIRE[Role.TRAINER])])

KEEPALIVE_S = 15.0


def _format(name: str, data: object, event_id: str) -> str:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@router.get(
    "/{run_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **API_ERRORS, **error_responses(404)},
)
async def run_events(
    run_id: IdPath,
    request: Request,
    settings: SettingsDep,
    cursor: str | None = Query(None, max_length=100, description="Start after this cursor (from GET /api/runs/{id})."),
    last_event_id: str | None = Header(None, alias="Last-Event-ID"),
) -> StreamingResponse:
    """`text/event-stream` of `status`, `metrics`, `samples` and `evaluations` events. Each event's id is a cursor;
    a reconnecting client sends it back as Last-Event-ID and receives only what came after."""
    if not await run_in_threadpool(_exists, settings.database_url, run_id):
        raise HTTPException(status_code=404, detail=f"run {run_id} not found")
    start = Cursor.decode(last_event_id or cursor)
    events: AsyncGenerator[StreamEvent | None, None]
    if settings.events_shared:
        hub: EventHub = request.app.state.event_hub
        events = hub.watch(run_id, start, KEEPALIVE_S)
    else:
        events = _poll_per_client(settings.database_url, run_id, start, settings.events_poll_s)
    return StreamingResponse(
        _sse(events), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def _exists(database_url: str, run_id: int) -> bool:
    with session_scope(database_url) as session:
        return session.scalar(select(Run.id).where(Run.id == run_id)) is not None


async def _sse(events: AsyncGenerator[StreamEvent | None, None]) -> AsyncIterator[str]:
    """The wire format; None (nothing new for a while) becomes a comment that keeps proxies from closing."""
    yield "retry: 2000\n\n"
    # Closed as soon as the client goes, even if the cancellation lands elsewhere: the viewer leaves its feed now.
    async with contextlib.aclosing(events):
        async for event in events:
            yield ": keep-alive\n\n" if event is None else _format(event.name, event.data, event.cursor.encode())


async def _poll_per_client(
    database_url: str, run_id: int, position: Cursor, poll_s: float
) -> AsyncGenerator[StreamEvent | None, None]:
    """Each client polls the database itself (events_shared off): simple, and the reference of the load bench."""

    def poll_once(position: Cursor) -> tuple[list[StreamEvent], Cursor]:
        with session_scope(database_url) as session:
            return new_events(session, run_id, position)

    quiet_since = time.monotonic()
    while True:
        events, position = await run_in_threadpool(poll_once, position)
        for event in events:
            yield event
            if event.name == "gone":
                return
        if events:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > KEEPALIVE_S:
            yield None
            quiet_since = time.monotonic()
        await asyncio.sleep(poll_s)
