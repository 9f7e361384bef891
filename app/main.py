"""The FastAPI application: JSON API under /api, pages at /, static assets, the stale-run sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from app import run_state
from app.db import session_scope
from app.routers import config, evaluations, events, health, metrics, pages, runs, samples
from app.settings import Settings, get_settings

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
UPLOT_DIST = ROOT / "node_modules" / "uplot" / "dist"


def sweep_stale_runs(settings: Settings) -> list[int]:
    with session_scope(settings.database_url) as session:
        return run_state.fail_stale_runs(session, timedelta(seconds=settings.heartbeat_timeout_s))


async def _sweeper(settings: Settings) -> None:
    interval = min(30.0, settings.heartbeat_timeout_s / 4)
    while True:
        try:
            failed = await run_in_threadpool(sweep_stale_runs, settings)
            if failed:
                log.warning("marked runs %s failed: their worker stopped sending heartbeats", failed)
        except Exception:
            log.exception("stale-run sweep failed")
        await asyncio.sleep(interval)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_sweeper(settings))
        yield
        task.cancel()

    app = FastAPI(title="Meal Studio", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    for module in (health, config, runs, metrics, events, samples, evaluations, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    if UPLOT_DIST.is_dir():
        app.mount("/vendor/uplot", StaticFiles(directory=UPLOT_DIST), name="uplot")
    else:
        log.warning("uPlot is not installed (npm ci): charts will not render")
    return app
