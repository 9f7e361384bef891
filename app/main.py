"""The FastAPI application: JSON API under /api, pages at /, static assets, the stale-run sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from app.auth import Keyring, LoginLimiter, load_secret
from app.deps import SAFE_METHODS, LoginRequired, PageForbidden, ReviewerPage, UserDep
from app.event_hub import EventHub
from app.routers import (
    auth,
    config,
    evaluations,
    events,
    experiments,
    exports,
    health,
    metrics,
    pages,
    playground,
    review,
    runs,
    samples,
)
from app.routers.pages import TEMPLATES, home_for
from app.store import run_state
from app.store.db import session_scope
from app.store.settings import Settings, get_settings
from app.store.sql import refused_nul

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
UPLOT_DIST = ROOT / "node_modules" / "uplot" / "dist"
SWAGGER_DIST = ROOT / "node_modules" / "swagger-ui-dist"


def sweep_stale_runs(settings: Settings) -> list[int]:
    with session_scope(settings.database_url) as session:
        run_state.fail_stale_generations(session, timedelta(seconds=settings.playground_timeout_s))
        run_state.fail_stale_exports(session, timedelta(seconds=settings.export_timeout_s))
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
    app.state.event_hub = EventHub(settings.database_url, settings.events_poll_s)
    for module in (
        health,
        auth,
        config,
        runs,
        metrics,
        events,
        samples,
        evaluations,
        playground,
        exports,
        experiments,
        review,
        pages,
    ):
        app.include_router(module.router)
    install_security(app, settings)
    install_docs(app)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    if UPLOT_DIST.is_dir():
        app.mount("/vendor/uplot", StaticFiles(directory=UPLOT_DIST), name="uplot")
    else:
        log.warning("uPlot is not installed (npm ci): charts will not render")
    if SWAGGER_DIST.is_dir():
        app.mount("/vendor/swagger-ui", StaticFiles(directory=SWAGGER_DIST), name="swagger-ui")
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


SECURITY_HEADERS = {
    # Scripts only from this server (every page script is a file; no inline script anywhere); inline style
    # attributes are used by the templates. No framing, no MIME sniffing, no full URLs in Referer.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def install_security(app: FastAPI, settings: Settings) -> None:
    """Only the configured host names; bodies within the limit; state changes only from this site; security
    headers on every response; the logged-out sent to the login page and the wrong role to a 403 page."""

    @app.middleware("http")
    async def same_origin_changes(request: Request, call_next):  # type: ignore[no-untyped-def]
        if request.method not in SAFE_METHODS:
            reason = cross_origin(request)
            if reason is not None:
                return JSONResponse({"detail": f"cross-origin request refused ({reason})"}, status_code=403)
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=[*settings.allowed_hosts, settings.host])

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> Response:
        return JSONResponse({"detail": validation_details(error)}, status_code=422)

    @app.exception_handler(UnicodeEncodeError)
    async def unencodable_text(request: Request, error: UnicodeEncodeError) -> Response:
        # Valid JSON can carry a lone UTF-16 surrogate ("\ud800"), which no database stores.
        return JSONResponse({"detail": "text contains an unpaired surrogate character"}, status_code=422)

    @app.exception_handler(DataError)
    async def unstorable_text(request: Request, error: DataError) -> Response:
        # Valid JSON and URLs can carry NUL ("\u0000", %00), which PostgreSQL stores in no text or JSONB column (SQLite
        # does). Any other DataError is the server's own: a 500, as before.
        if not refused_nul(error):
            raise error
        return JSONResponse({"detail": "text contains a NUL character (\\u0000)"}, status_code=422)

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
    def docs(request: Request, user: ReviewerPage) -> HTMLResponse:
        # Swagger UI from the swagger-ui-dist npm package, not a CDN: the page works offline and under the CSP.
        return TEMPLATES.TemplateResponse(request, "api_docs.html", {"user": user, "active": "docs"})


class BodyLimit:
    """413 for a request body over `max_bytes`, whether it declares its length or streams it (pure ASGI, so the
    body is counted as it arrives and never buffered past the limit)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self.refuse(send)
            return
        seen, refused = 0, False

        async def counted() -> Any:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if not refused:
                        refused = True
                        await self.refuse(send)
                    return {"type": "http.disconnect"}  # the app stops reading; its own answer is dropped
            return message

        async def guarded(message: Any) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, guarded)

    async def refuse(self, send: Any) -> None:
        body = json.dumps({"detail": f"request body over {self.max_bytes} bytes"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def validation_details(error: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's 422 details without echoing the input back: a 50 MB string or a lone surrogate sent in would
    otherwise come back in the response (or fail to encode there)."""
    details = []
    for item in error.errors():
        details.append(
            {
                "loc": [str(part)[:100] for part in item.get("loc", ())],
                "msg": str(item.get("msg", ""))[:500].encode("utf-8", "replace").decode("utf-8"),
                "type": str(item.get("type", "")),
            }
        )
    return details
