"""Server-sent events: one stream per run page, pushing only what is new since the client's cursor."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.db import session_scope
from app.deps import REQUIRE, RunDep, SettingsDep
from app.events import Cursor, StreamEvent, new_events
from app.models import Role

router = APIRouter(prefix="/api/runs", tags=["events"], dependencies=[Depends(REQUIRE[Role.TRAINER])])

KEEPALIVE_S = 15.0


def _format(name: str, data: object, event_id: str) -> str:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@router.get("/{run_id}/events", response_class=StreamingResponse)
async def run_events(
    run: RunDep,
    request: Request,
    settings: SettingsDep,
    cursor: str | None = Query(None, description="Start after this cursor (from GET /api/runs/{id})."),
    last_event_id: str | None = Header(None, alias="Last-Event-ID"),
) -> StreamingResponse:
    """`text/event-stream` of `status`, `metrics`, `samples` and `evaluations` events. Each event's id is a cursor;
    a reconnecting client sends it back as Last-Event-ID and receives only what came after."""
    run_id, url, poll = run.id, settings.database_url, settings.events_poll_s
    start = Cursor.decode(last_event_id or cursor)

    def poll_once(position: Cursor) -> tuple[list[StreamEvent], Cursor]:
        with session_scope(url) as session:
            return new_events(session, run_id, position)

    async def stream() -> AsyncIterator[str]:
        position, quiet_since = start, time.monotonic()
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            events, position = await run_in_threadpool(poll_once, position)
            for event in events:
                yield _format(event.name, event.data, event.cursor.encode())
            if events:
                quiet_since = time.monotonic()
                if events[0].name == "gone":
                    return
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
            await asyncio.sleep(poll)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
