"""Server-rendered pages (Jinja2, autoescaped). Data arrives through the JSON API and the event stream."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app.deps import SessionDep, UserDep
from app.models import Run

TEMPLATES = Jinja2Templates(directory=Path(__file__).resolve().parent.parent.parent / "templates")
router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request, user: UserDep) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "runs.html", {"user": user, "active": "runs"})


@router.get("/runs/new", response_class=HTMLResponse)
def new_run_page(request: Request, user: UserDep, clone: int | None = None) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "new_run.html", {"user": user, "clone": clone, "active": "new"})


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: int, session: SessionDep, user: UserDep) -> HTMLResponse:
    run = session.get(Run, run_id)
    if run is None:
        return TEMPLATES.TemplateResponse(
            request, "not_found.html", {"user": user, "message": f"There is no run {run_id}."}, status_code=404
        )
    return TEMPLATES.TemplateResponse(request, "run.html", {"user": user, "run": run, "active": "runs"})


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, user: UserDep, ids: str = "") -> HTMLResponse:
    run_ids = list(dict.fromkeys(int(part) for part in ids.split(",") if part.strip().isdigit()))
    return TEMPLATES.TemplateResponse(request, "compare.html", {"user": user, "run_ids": run_ids, "active": "compare"})
