"""Request dependencies: settings, a database session, the current user, a run by id."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from app.db import session_scope
from app.models import Run
from app.settings import Settings


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_db(settings: SettingsDep) -> Iterator[Session]:
    with session_scope(settings.database_url) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


@dataclass(frozen=True)
class CurrentUser:
    name: str


def get_current_user(request: Request) -> CurrentUser:
    """Every request passes through here. Users and roles arrive in a later issue; until then, one local user."""
    return CurrentUser(name="local")


UserDep = Annotated[CurrentUser, Depends(get_current_user)]


def get_run(run_id: int, session: SessionDep) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise HTTPException(status_code=404, detail=f"run {run_id} not found")
    return run


RunDep = Annotated[Run, Depends(get_run)]
