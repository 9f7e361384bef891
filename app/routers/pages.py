"""Server-rendered pages (Jinja2, autoescaped). Data arrives through the JSON API and the event stream.

Every page but the login page needs a logged-in user with the page's role: logged out, the browser is sent to the
login page (and back afterwards); with too low a role, it gets a 403 page.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from app.deps import MAX_ID, AdminPage, CurrentUser, IdPath, ReviewerPage, SessionDep, TrainerPage, authenticate
from app.store.models import Experiment, Run
from meal_core.enums import Role

TEMPLATES = Jinja2Templates(directory=Path(__file__).resolve().parent.parent.parent / "templates")
router = APIRouter(include_in_schema=False)


def home_for(user: CurrentUser | None) -> str:
    """Where a user starts: the runs for trainers and admins, the review queues for reviewers; logged out, the
    login page."""
    if user is None:
        return "/login"
    return "/" if user.can(Role.TRAINER) else "/review"


# Browsers drop tabs and newlines from URLs and read "\\" as "/": "/\t/evil.example" and "/\\evil.example" are
# "//evil.example", another site. Control characters, spaces and backslashes are refused wherever they are.
_UNSAFE_IN_NEXT = re.compile(r"[\x00-\x20\x7f\\]")


def safe_next(value: str | None) -> str:
    """Where to go after logging in: a path on this site ("/runs/3?x=1"), else "/". Never "//host", "/\\host",
    "https://host", "javascript:…", nor anything a browser would turn into one."""
    if not value or not value.startswith("/") or value.startswith("//") or _UNSAFE_IN_NEXT.search(value):
        return "/"
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else "/"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = Query("/", max_length=2000), expired: bool = False) -> Response:
    user = authenticate(request)
    if user is not None:
        return RedirectResponse(home_for(user), status_code=303)
    return TEMPLATES.TemplateResponse(
        request, "login.html", {"user": None, "next_url": safe_next(next), "expired": expired, "active": "login"}
    )


@router.get("/", response_class=HTMLResponse, response_model=None)
def runs_page(request: Request, user: ReviewerPage) -> Response:
    """The runs, for trainers and admins; a reviewer (whose login lands here by default) goes to their queues."""
    if not user.can(Role.TRAINER):
        return RedirectResponse(home_for(user), status_code=303)
    return TEMPLATES.TemplateResponse(request, "runs.html", {"user": user, "active": "runs"})


@router.get("/runs/new", response_class=HTMLResponse)
def new_run_page(request: Request, user: TrainerPage, clone: int | None = Query(None, ge=1, le=MAX_ID)) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "new_run.html", {"user": user, "clone": clone, "active": "new"})


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: IdPath, session: SessionDep, user: TrainerPage) -> HTMLResponse:
    run = session.get(Run, run_id)
    if run is None:
        context = {"user": user, "message": f"There is no run {run_id}.", "home": home_for(user)}
        return TEMPLATES.TemplateResponse(request, "not_found.html", context, status_code=404)
    return TEMPLATES.TemplateResponse(request, "run.html", {"user": user, "run": run, "active": "runs"})


@router.get("/experiments", response_class=HTMLResponse)
def experiments_page(request: Request, user: TrainerPage) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "experiments.html", {"user": user, "active": "experiments"})


@router.get("/experiments/{experiment_id}", response_class=HTMLResponse)
def experiment_page(request: Request, experiment_id: IdPath, session: SessionDep, user: TrainerPage) -> HTMLResponse:
    if session.get(Experiment, experiment_id) is None:
        return TEMPLATES.TemplateResponse(
            request,
            "not_found.html",
            {"user": user, "message": f"There is no experiment {experiment_id}."},
            status_code=404,
        )
    return TEMPLATES.TemplateResponse(
        request, "experiment.html", {"user": user, "experiment_id": experiment_id, "active": "experiments"}
    )


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, user: TrainerPage, ids: str = "") -> HTMLResponse:
    parts = [part.strip() for part in ids[:2000].split(",")]
    # ASCII digits only ("²".isdigit() is true, and int("²") fails), ids a database could hold, at most 20 runs.
    run_ids = list(dict.fromkeys(int(p) for p in parts if p.isascii() and p.isdecimal() and 0 < int(p) <= MAX_ID))[:20]
    return TEMPLATES.TemplateResponse(request, "compare.html", {"user": user, "run_ids": run_ids, "active": "compare"})


@router.get("/admin/users", response_class=HTMLResponse)
def users_page(request: Request, user: AdminPage) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "users.html", {"user": user, "roles": list(Role), "active": "users"})


@router.get("/playground", response_class=HTMLResponse)
def playground_page(
    request: Request, user: TrainerPage, run: int | None = Query(None, ge=1, le=MAX_ID)
) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "playground.html", {"user": user, "run_id": run, "active": "playground"})


@router.get("/account", response_class=HTMLResponse)
def account_page(request: Request, user: ReviewerPage) -> HTMLResponse:
    """One's own password (every role)."""
    return TEMPLATES.TemplateResponse(request, "account.html", {"user": user, "active": "account"})


@router.get("/review", response_class=HTMLResponse)
def review_page(request: Request, user: ReviewerPage) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "review.html", {"user": user, "active": "review"})


@router.get("/review/{queue_id}", response_class=HTMLResponse)
def review_queue_page(request: Request, queue_id: IdPath, user: ReviewerPage) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request, "review_queue.html", {"user": user, "queue_id": queue_id, "active": "review"}
    )


@router.get("/review/{queue_id}/summary", response_class=HTMLResponse)
def review_summary_page(request: Request, queue_id: IdPath, user: TrainerPage) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request, "review_summary.html", {"user": user, "queue_id": queue_id, "active": "review"}
    )
