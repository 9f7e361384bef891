"""Logging in and out, one's own password and API tokens, and (admins) the users of the team."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response, status
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy import select

from app import auth
from app.deps import AdminDep, IdPath, SessionDep, UserDep
from app.schemas import API_ERRORS, BODY_ERRORS, error_responses
from app.store.models import USER_NAME_PATTERN, User
from meal_core.enums import Role

router = APIRouter(tags=["auth"], responses=API_ERRORS)

Name = Annotated[str, Field(min_length=2, max_length=32, pattern=USER_NAME_PATTERN)]
Password = Annotated[str, Field(min_length=1, max_length=auth.MAX_PASSWORD_LENGTH)]
#: A password being set: the server's own bounds (auth.check_password), so that the schema refuses what it refuses.
NewPassword = Annotated[str, Field(min_length=auth.MIN_PASSWORD_LENGTH, max_length=auth.MAX_PASSWORD_LENGTH)]


class LoginIn(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    password: Password


class MeOut(BaseModel):
    name: str
    role: Role
    csrf_token: str | None = Field(None, description="Browser sessions: send it as X-CSRF-Token with every change.")


class PasswordIn(BaseModel):
    current: Password | None = Field(None, description="Needed once the user has one (the first admin has none).")
    new: NewPassword


class TokenIn(BaseModel):
    label: Annotated[str, Field(min_length=1, max_length=100)]


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    label: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewToken(TokenOut):
    token: str = Field(..., description="Shown once: only a keyed hash of it is stored.")


class UserIn(BaseModel):
    name: Name
    role: Role
    password: NewPassword | None = Field(None, description="Omitted: a password is generated and returned once.")


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: Role
    disabled: bool
    created_at: datetime


class NewUser(UserOut):
    password: str | None = None


class UserChange(BaseModel):
    role: Role | None = None
    disabled: StrictBool | None = Field(None, description="true or false (not 0 or 1): a disabled user's sessions end.")


def _keyring(request: Request) -> auth.Keyring:
    keyring: auth.Keyring = request.app.state.keyring
    return keyring


def _set_session_cookie(request: Request, response: Response, cookie: str) -> None:
    settings = request.app.state.settings
    secure = settings.cookie_secure if settings.cookie_secure is not None else request.url.scheme == "https"
    response.set_cookie(
        auth.SESSION_COOKIE,
        cookie,
        max_age=int(auth.SESSION_LIFETIME.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=secure,
        path="/",
    )


# -- sessions ---------------------------------------------------------------------------------------------------------


@router.post(
    "/api/auth/login",
    response_model=MeOut,
    responses={
        **BODY_ERRORS,
        **error_responses(401, 429, descriptions={401: "Wrong name or password.", 429: "Too many failed attempts."}),
    },
)
def login(body: LoginIn, request: Request, response: Response, session: SessionDep) -> MeOut:
    limiter: auth.LoginLimiter = request.app.state.login_limiter
    client = request.client.host if request.client else "?"
    wait = limiter.retry_after(client, body.name)
    if wait is not None:
        raise HTTPException(
            429, f"too many failed logins; try again in {int(wait) + 1} s", {"Retry-After": str(int(wait) + 1)}
        )
    user = auth.find_user(session, body.name)
    if not auth.password_matches(user, body.password) or user is None or user.disabled:
        limiter.failed(client, body.name)
        raise HTTPException(401, "wrong user name or password")
    limiter.succeeded(client, body.name)
    cookie, login_session = auth.start_session(session, _keyring(request), user)
    # Now, not when SessionDep closes: FastAPI runs that after the response is sent, and a client's next request
    # (with the cookie) could come before the session is stored and get a 401 (seen by scripts/compose_check.sh).
    session.commit()
    _set_session_cookie(request, response, cookie)
    return MeOut(name=user.name, role=Role(user.role), csrf_token=login_session.csrf_token)


@router.post("/api/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(request: Request, response: Response, session: SessionDep, user: UserDep) -> None:
    cookie = request.cookies.get(auth.SESSION_COOKIE)
    if cookie:
        auth.end_session(session, _keyring(request), cookie)
    response.delete_cookie(auth.SESSION_COOKIE, path="/")


@router.get("/api/auth/me", response_model=MeOut)
def me(user: UserDep) -> MeOut:
    return MeOut(name=user.name, role=user.role, csrf_token=user.csrf_token)


@router.post(
    "/api/auth/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **BODY_ERRORS,
        **error_responses(
            400,
            403,
            descriptions={
                400: "The body could not be read, or the new password is not allowed.",
                403: "The current password is wrong.",
            },
        ),
    },
)
def change_password(body: PasswordIn, request: Request, response: Response, session: SessionDep, user: UserDep) -> None:
    """Change one's own password; every session ends, this one starts afresh."""
    row = session.get(User, user.id)
    assert row is not None
    if row.password_hash and not auth.password_matches(row, body.current or ""):
        raise HTTPException(403, "the current password is wrong")
    try:
        auth.set_password(session, row, body.new)
    except auth.AuthError as error:
        raise HTTPException(400, str(error)) from None
    cookie, _ = auth.start_session(session, _keyring(request), row)
    _set_session_cookie(request, response, cookie)


@router.get("/login/once/{token}", include_in_schema=False)
def login_once(token: str, request: Request, session: SessionDep) -> RedirectResponse:
    """The one-time link `meal up` prints for the first admin: a session, then the runs page. Used once."""
    user = auth.use_login_link(session, _keyring(request), token)
    if user is None:
        return RedirectResponse("/login?expired=1", status_code=status.HTTP_303_SEE_OTHER)
    cookie, _ = auth.start_session(session, _keyring(request), user)
    response = RedirectResponse("/", status_code=status.HTTP_303_SEE_OTHER)
    _set_session_cookie(request, response, cookie)
    return response


# -- API tokens -------------------------------------------------------------------------------------------------------


@router.get("/api/tokens", response_model=list[TokenOut])
def my_tokens(session: SessionDep, user: UserDep) -> list[TokenOut]:
    row = session.get(User, user.id)
    assert row is not None
    return [TokenOut.model_validate(t) for t in auth.user_tokens(session, row)]


@router.post("/api/tokens", response_model=NewToken, status_code=status.HTTP_201_CREATED, responses=BODY_ERRORS)
def create_token(body: TokenIn, request: Request, session: SessionDep, user: UserDep) -> NewToken:
    row = session.get(User, user.id)
    assert row is not None
    try:
        token, stored = auth.create_token(session, _keyring(request), row, body.label)
    except auth.AuthError as error:
        raise HTTPException(422, str(error)) from None
    return NewToken(token=token, **TokenOut.model_validate(stored).model_dump())


@router.delete("/api/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404))
def revoke_token(token_id: IdPath, session: SessionDep, user: UserDep) -> None:
    row = session.get(User, user.id)
    assert row is not None
    if not auth.revoke_tokens(session, row, token_id):
        raise HTTPException(404, f"you have no live token {token_id}")


# -- users (admins) ---------------------------------------------------------------------------------------------------


@router.get("/api/users", response_model=list[UserOut])
def list_users(session: SessionDep, admin: AdminDep) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))


@router.post(
    "/api/users",
    response_model=NewUser,
    status_code=status.HTTP_201_CREATED,
    responses={**BODY_ERRORS, **error_responses(409)},
)
def add_user(body: UserIn, session: SessionDep, admin: AdminDep) -> NewUser:
    password = body.password or auth.generate_password()
    try:
        user = auth.create_user(session, body.name, body.role, password)
    except auth.AuthError as error:
        code = 409 if "exists" in str(error) else 422
        raise HTTPException(code, str(error)) from None
    return NewUser(password=None if body.password else password, **UserOut.model_validate(user).model_dump())


@router.patch("/api/users/{name}", response_model=UserOut, responses={**BODY_ERRORS, **error_responses(404, 409)})
def change_user(
    name: Annotated[str, Path(max_length=32)], body: UserChange, session: SessionDep, admin: AdminDep
) -> User:
    user = auth.find_user(session, name)
    if user is None:
        raise HTTPException(404, f"no user {name!r}")
    if user.id == admin.id and (body.disabled or (body.role and body.role != Role.ADMIN)):
        raise HTTPException(409, "an admin cannot demote or disable themselves (another admin can)")
    if body.role is not None:
        user.role = body.role.value
    if body.disabled is not None:
        auth.set_disabled(session, user, body.disabled)
    return user
