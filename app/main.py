"""The FastAPI application: JSON API under /api, pages at /, static assets, the stale-run sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from app import run_state
from app.auth import Keyring, LoginLimiter, load_secret
from app.db import session_scope
from app.deps import SAFE_METHODS, LoginRequired, PageForbidden, ReviewerPage, UserDep
from app.routers import (
    auth,
    config,
    evaluations,
    events,
    health,
    metrics,
    pages,
    playground,
    review,
    runs,
    samples,
)
from app.routers.pages import TEMPLATES, home_for
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

    # The API documentation is for logged-in users too (install_docs), not FastAPI's public default.
    app = FastAPI(
        title="Meal Studio", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.settings = settings
    app.state.keyring = Keyring(load_secret(settings))
    app.state.login_limiter = LoginLimiter()
    for module in (health, auth, config, runs, metrics, events, samples, evaluations, playground, review, pages):
        app.include_router(module.router)
    install_security(app)
    install_docs(app)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    if UPLOT_DIST.is_dir():
        app.mount("/vendor/uplot", StaticFiles(directory=UPLOT_DIST), name="uplot")
    else:
        log.warning("uPlot is not installed (npm ci): charts will not render")
    return app


def cross_origin(request: Request) -> str | None:
    """Why a request comes from another site, or None. Browsers say where a request comes from (Origin, and
    Sec-Fetch-Site); scripts send neither and are judged by their token alone."""
    site = request.headers.get("sec-fetch-site")
    if site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site: {site}"
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        return f"Origin {origin[:100]!r}"
    return None


def install_security(app: FastAPI) -> None:
    """Refuse state changes from other sites; send the logged-out to the login page and the wrong role to a 403."""

    @app.middleware("http")
    async def same_origin_changes(request: Request, call_next):  # type: ignore[no-untyped-def]
        if request.method not in SAFE_METHODS:
            reason = cross_origin(request)
            if reason is not None:
                return JSONResponse({"detail": f"cross-origin request refused ({reason})"}, status_code=403)
        return await call_next(request)

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, error: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={quote(error.next_url, safe='/')}", status_code=303)

    @app.exception_handler(PageForbidden)
    async def forbidden_page(request: Request, error: PageForbidden) -> Response:
        context = {"user": error.user, "needed": error.role.value, "home": home_for(error.user)}
        return TEMPLATES.TemplateResponse(request, "forbidden.html", context, status_code=403)


def install_docs(app: FastAPI) -> None:
    """The OpenAPI schema and its page, for any logged-in user."""

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(user: UserDep) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(user: ReviewerPage) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Meal Studio API")
