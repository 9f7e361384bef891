"""Request dependencies: settings, a database session, the current user and their role, a run by id."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from sqlalchemy.orm import Session

from app.auth import CSRF_HEADER, SESSION_COOKIE, Keyring, session_user, token_user
from app.store.db import session_scope
from app.store.models import MAX_ID, Run
from app.store.settings import Settings
from meal_core.enums import Role


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_db(settings: SettingsDep) -> Iterator[Session]:
    with session_scope(settings.database_url) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class CurrentUser:
    id: int
    name: str
    role: Role
    csrf_token: str | None  # browser sessions: the token their pages send back with every change; None for API tokens

    def can(self, role: Role) -> bool:
        return self.role.allows(role)


def _keyring(request: Request) -> Keyring:
    keyring: Keyring = request.app.state.keyring
    return keyring


def authenticate(request: Request) -> CurrentUser | None:
    """The user a request comes from: an API token (`Authorization: Bearer`), else the session cookie. A session's
    state-changing request must carry its CSRF token in the X-CSRF-Token header (403 otherwise)."""
    settings: Settings = request.app.state.settings
    keyring = _keyring(request)
    authorization = request.headers.get("authorization")
    # Its own short transaction: a long-lived response (an event stream) must not hold a database connection.
    with session_scope(settings.database_url) as session:
        if authorization:
            scheme, _, token = authorization.partition(" ")
            user = token_user(session, keyring, token.strip()) if scheme.lower() == "bearer" else None
            if user is None:
                raise HTTPException(401, "invalid or revoked API token", headers={"WWW-Authenticate": "Bearer"})
            return CurrentUser(user.id, user.name, Role(user.role), None)
        found = session_user(session, keyring, request.cookies.get(SESSION_COOKIE, ""))
        if found is None:
            return None
        user, login = found
        if request.method not in SAFE_METHODS and not hmac.compare_digest(
            request.headers.get(CSRF_HEADER, ""), login.csrf_token
        ):
            raise HTTPException(403, f"missing or wrong CSRF token (send the page's token in {CSRF_HEADER})")
        return CurrentUser(user.id, user.name, Role(user.role), login.csrf_token)


def get_current_user(request: Request) -> CurrentUser:
    user = authenticate(request)
    if user is None:
        raise HTTPException(
            401, "log in first (a session, or Authorization: Bearer <token>)", headers={"WWW-Authenticate": "Bearer"}
        )
    return user


UserDep = Annotated[CurrentUser, Depends(get_current_user)]


def require(role: Role) -> Callable[[CurrentUser], CurrentUser]:
    """A dependency that lets through users with `role` or a higher one (403 otherwise)."""

    def dependency(user: UserDep) -> CurrentUser:
        if not user.can(role):
            raise HTTPException(403, f"this needs the {role.value} role; {user.name} is a {user.role.value}")
        return user

    return dependency


# One dependency per role, created once: a router that requires a role and a route that reads the user share it,
# and FastAPI resolves it once per request.
REQUIRE = {role: require(role) for role in Role}
ReviewerDep = Annotated[CurrentUser, Depends(REQUIRE[Role.REVIEWER])]
TrainerDep = Annotated[CurrentUser, Depends(REQUIRE[Role.TRAINER])]
AdminDep = Annotated[CurrentUser, Depends(REQUIRE[Role.ADMIN])]


class LoginRequired(Exception):
    """A page asked for by someone not logged in: they are sent to the login page, and back afterwards."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


class PageForbidden(Exception):
    def __init__(self, user: CurrentUser, role: Role) -> None:
        self.user, self.role = user, role


def page_user(role: Role) -> Callable[[Request], CurrentUser]:
    """Pages: a redirect to the login page when logged out, a 403 page when the role is too low."""

    def dependency(request: Request) -> CurrentUser:
        user = authenticate(request)
        if user is None:
            query = f"?{request.url.query}" if request.url.query else ""
            raise LoginRequired(request.url.path + query)
        if not user.can(role):
            raise PageForbidden(user, role)
        return user

    return dependency


PAGE = {role: page_user(role) for role in Role}
ReviewerPage = Annotated[CurrentUser, Depends(PAGE[Role.REVIEWER])]
TrainerPage = Annotated[CurrentUser, Depends(PAGE[Role.TRAINER])]
AdminPage = Annotated[CurrentUser, Depends(PAGE[Role.ADMIN])]


IdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="A database id.")]


def get_run(run_id: IdPath, session: SessionDep) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise HTTPException(status_code=404, detail=f"run {run_id} not found")
    return run


RunDep = Annotated[Run, Depends(get_run)]
