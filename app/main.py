"""The FastAPI application: JSON API under /api, pages at /, static assets, the stale-run sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from app.auth import Keyring, LoginLimiter, load_secret
from app.deps import SAFE_METHODS, LoginRequired, PageForbidden, ReviewerPage, UserDep, authenticate
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
from app.security import SecurityHeaders
from app.store import run_state
from app.store.db import session_scope
from app.store.settings import Settings, get_settings
from app.store.sql import refused_nul
from meal_core.config import MAX_ECHO, MAX_ERRORS, RunConfig

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
    app = MealApp(
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


class MealApp(FastAPI):
    """FastAPI, with the security headers added outside its whole middleware stack: Starlette puts user
    middleware inside its server-error handler, and the host check and body limit answered before an inner
    middleware saw the response, so 400, 413 and 500 answers carried none."""

    def build_middleware_stack(self) -> Any:
        return SecurityHeaders(super().build_middleware_stack())

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            with_run_config(super().openapi())
        return super().openapi()


def with_run_config(schema: dict[str, Any]) -> None:
    """`RunCreate.config` is validated by `parse_config` (its 422s name the config's fields), so its model field is
    a plain object; the schema says what the server takes: a RunConfig, no unknown keys at any level."""
    config = RunConfig.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in {**config.pop("$defs", {}), "RunConfig": config}.items():
        assert components.get(name, definition) == definition, f"two schemas named {name}"
        components[name] = definition
    field = components["RunCreate"]["properties"]["config"]
    components["RunCreate"]["properties"]["config"] = {
        "$ref": "#/components/schemas/RunConfig",
        "description": field.get("description", ""),
    }


def _routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # an included router
            yield from _routes(route.original_router.routes)


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route serves `path` with (API routes answer HEAD with a 405 too: not listed)."""
    methods: set[str] = set()
    for route in _routes(app.router.routes):
        if route.path_regex.match(path):
            methods |= route.methods or set()
    return sorted(methods)


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


def install_security(app: FastAPI, settings: Settings) -> None:
    """Only the configured host names; bodies within the limit; state changes only from this site; the logged-out
    sent to the login page and the wrong role to a 403 page; a 405 lists every method of its path. (Security
    headers: `MealApp` adds them outside all of this.)"""

    @app.middleware("http")
    async def same_origin_changes(request: Request, call_next):  # type: ignore[no-untyped-def]
        if request.method not in SAFE_METHODS:
            reason = cross_origin(request)
            if reason is not None:
                return JSONResponse({"detail": f"cross-origin request refused ({reason})"}, status_code=403)
        return await call_next(request)

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=[*settings.allowed_hosts, settings.host])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 405:
            # Starlette's Allow names the methods of the first route whose path matched; a path served by two
            # routes (GET and POST /api/runs) listed one of them.
            methods = allowed_methods(app, request.scope["path"])
            if methods:
                error.headers = {**(error.headers or {}), "Allow": ", ".join(methods)}
        if error.status_code == 404 and wants_a_page(request):
            return not_found_page(request)
        return await http_exception_handler(request, error)

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


def wants_a_page(request: Request) -> bool:
    """A browser navigating (GET, HTML first in Accept) to a path outside the API and the static files: it gets the
    not-found page rather than raw JSON."""
    path = request.url.path
    if request.method != "GET" or path.startswith(("/api/", "/static/", "/vendor/")):
        return False
    return "text/html" in request.headers.get("accept", "").split(",")[0]


def not_found_page(request: Request) -> Response:
    try:
        user = authenticate(request)
    except HTTPException:  # a bad API token: the page is shown as to a logged-out visitor
        user = None
    context = {"user": user, "message": f"There is no page at {request.url.path[:200]}.", "home": home_for(user)}
    return TEMPLATES.TemplateResponse(request, "not_found.html", context, status_code=404)


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
    otherwise come back in the response (or fail to encode there). The first MAX_ERRORS, then one that counts the
    rest; locations cut as the config's are (meal_core.config.field_errors)."""
    errors = error.errors()
    details = []
    for item in errors[:MAX_ERRORS]:
        details.append(
            {
                "loc": [str(part)[:MAX_ECHO] for part in list(item.get("loc", ()))[:16]],
                "msg": str(item.get("msg", ""))[:500].encode("utf-8", "replace").decode("utf-8"),
                "type": str(item.get("type", "")),
            }
        )
    if len(errors) > MAX_ERRORS:
        details.append({"loc": ["body"], "msg": f"{len(errors) - MAX_ERRORS} more errors not shown", "type": "more"})
    return details
