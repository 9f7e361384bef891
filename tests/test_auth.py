"""Users, roles, sessions, tokens, CSRF: every route checks who is asking, on a real app and database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from helpers import bearer, ensure_user, session_cookie
from sqlalchemy import select

from app import auth
from app.cli import deployed_first_admin, embedded_first_admin
from app.main import create_app
from app.store.db import get_engine, session_scope
from app.store.migrate import upgrade
from app.store.models import ApiToken, User, UserSession
from app.store.settings import Settings
from meal_core.cli import CLIError
from meal_core.enums import Role

PUBLIC, ANY_USER = "public", "any user"
# Every route of the app and who may use it. A route missing here fails test_the_matrix_covers_every_route.
ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/login"): PUBLIC,
    ("GET", "/login/once/{token}"): PUBLIC,
    ("POST", "/api/auth/login"): PUBLIC,
    ("POST", "/api/auth/logout"): ANY_USER,
    ("GET", "/api/auth/me"): ANY_USER,
    ("POST", "/api/auth/password"): ANY_USER,
    ("GET", "/api/tokens"): ANY_USER,
    ("POST", "/api/tokens"): ANY_USER,
    ("DELETE", "/api/tokens/{token_id}"): ANY_USER,
    ("GET", "/openapi.json"): ANY_USER,
    ("GET", "/docs"): ANY_USER,
    ("GET", "/api/users"): Role.ADMIN,
    ("POST", "/api/users"): Role.ADMIN,
    ("PATCH", "/api/users/{name}"): Role.ADMIN,
    ("GET", "/admin/users"): Role.ADMIN,
    ("GET", "/api/config/schema"): Role.TRAINER,
    ("GET", "/api/config/defaults"): Role.TRAINER,
    ("POST", "/api/config/parse"): Role.TRAINER,
    ("POST", "/api/runs"): Role.TRAINER,
    ("GET", "/api/runs"): Role.TRAINER,
    ("GET", "/api/runs/{run_id}"): Role.TRAINER,
    ("POST", "/api/runs/{run_id}/stop"): Role.TRAINER,
    ("POST", "/api/runs/{run_id}/resume"): Role.TRAINER,
    # Also only the run's owner or an admin (tests/test_run_management.py): another trainer gets a 403 there.
    ("PATCH", "/api/runs/{run_id}"): Role.TRAINER,
    ("DELETE", "/api/runs/{run_id}"): Role.TRAINER,
    ("POST", "/api/runs/{run_id}/archive"): Role.TRAINER,
    ("POST", "/api/runs/{run_id}/unarchive"): Role.TRAINER,
    ("GET", "/api/runs/{run_id}/metrics"): Role.TRAINER,
    ("GET", "/api/runs/{run_id}/metric-keys"): Role.TRAINER,
    ("GET", "/api/runs/{run_id}/events"): Role.TRAINER,
    ("GET", "/api/runs/{run_id}/samples"): Role.TRAINER,
    ("GET", "/api/runs/{run_id}/sample-steps"): Role.TRAINER,
    ("GET", "/api/runs/{run_id}/evaluations"): Role.TRAINER,
    ("GET", "/api/runs/{run_id}/held-out-evaluation"): Role.TRAINER,
    ("GET", "/"): ANY_USER,  # the runs for a trainer; a reviewer is sent on to their queues
    ("GET", "/runs/new"): Role.TRAINER,
    ("GET", "/runs/{run_id}"): Role.TRAINER,
    ("GET", "/compare"): Role.TRAINER,
    ("POST", "/api/playground"): Role.TRAINER,
    ("GET", "/api/playground"): Role.TRAINER,
    ("GET", "/api/playground/{generation_id}"): Role.TRAINER,
    ("GET", "/api/runs/{run_id}/checkpoints"): Role.TRAINER,
    ("GET", "/api/runs/{run_id}/prompts"): Role.TRAINER,
    ("GET", "/playground"): Role.TRAINER,
    ("POST", "/api/runs/{run_id}/exports"): Role.TRAINER,
    ("GET", "/api/runs/{run_id}/exports"): Role.TRAINER,
    ("GET", "/api/exports/{export_id}"): Role.TRAINER,
    ("GET", "/api/exports/{export_id}/download"): Role.TRAINER,
    ("POST", "/api/experiments"): Role.TRAINER,
    ("GET", "/api/experiments"): Role.TRAINER,
    ("GET", "/api/experiments/{experiment_id}"): Role.TRAINER,
    ("DELETE", "/api/experiments/{experiment_id}"): Role.TRAINER,
    ("GET", "/experiments"): Role.TRAINER,
    ("GET", "/experiments/{experiment_id}"): Role.TRAINER,
    ("GET", "/account"): ANY_USER,
    ("POST", "/api/review/queues"): Role.TRAINER,
    ("GET", "/api/review/queues"): Role.REVIEWER,
    ("GET", "/api/review/queues/{queue_id}"): Role.REVIEWER,
    ("GET", "/api/review/queues/{queue_id}/items"): Role.REVIEWER,
    ("PUT", "/api/review/items/{item_id}/review"): Role.REVIEWER,
    ("POST", "/api/review/queues/{queue_id}/close"): Role.TRAINER,
    ("GET", "/api/review/queues/{queue_id}/summary"): Role.TRAINER,
    ("GET", "/api/review/queues/{queue_id}/export"): Role.TRAINER,
    ("GET", "/review"): Role.REVIEWER,
    ("GET", "/review/{queue_id}"): Role.REVIEWER,
    ("GET", "/review/{queue_id}/summary"): Role.TRAINER,
}
PATH_VALUES = {
    "{run_id}": "987654",
    "{token_id}": "987654",
    "{generation_id}": "987654",
    "{queue_id}": "987654",
    "{item_id}": "987654",
    "{name}": "nobody",
    "{token}": "not-a-link",
}
PAGES = {
    "/login",
    "/",
    "/runs/new",
    "/runs/{run_id}",
    "/compare",
    "/admin/users",
    "/docs",
    "/login/once/{token}",
    "/playground",
    "/experiments",
    "/experiments/{experiment_id}",
    "/account",
    "/review",
    "/review/{queue_id}",
    "/review/{queue_id}/summary",
}
WHO = [None, Role.REVIEWER, Role.TRAINER, Role.ADMIN]


@pytest.fixture()
def settings(embedded_settings: Settings) -> Settings:
    return embedded_settings


@pytest.fixture()
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


def concrete(path: str) -> str:
    for placeholder, value in PATH_VALUES.items():
        path = path.replace(placeholder, value)
    return path


def api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every API route, including those of included routers (FastAPI keeps them behind a wrapper)."""
    found = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += api_routes(route.original_router.routes)
    return found


def test_the_matrix_covers_every_route(app: FastAPI) -> None:
    served = {(method, route.path) for route in api_routes(app.routes) for method in route.methods - {"HEAD"}}
    assert served == set(ROUTES), f"not in ROUTES: {served - set(ROUTES)}; gone: {set(ROUTES) - served}"


@pytest.mark.parametrize("who", WHO, ids=lambda r: r.value if r else "logged-out")
def test_route_by_role_matrix(app: FastAPI, settings: Settings, who: Role | None) -> None:
    """APIs: logged out → 401, too low a role → 403, else through (any other status). Pages: logged out → a
    redirect to the login page, too low a role → a 403 page."""
    headers: dict[str, str] = {}
    cookies: dict[str, str] = {}
    if who is not None:
        headers = bearer(settings, who.value)
        cookie, csrf = session_cookie(settings, who.value)
        cookies = {auth.SESSION_COOKIE: cookie}
    # Pages are a browser's (a session cookie); the API is tested with an API token.
    with (
        TestClient(app, cookies=cookies, follow_redirects=False) as browser,
        TestClient(app, headers=headers, follow_redirects=False) as script,
    ):
        for (method, path), needed in ROUTES.items():
            page = path in PAGES
            response = (browser if page else script).request(method, concrete(path))
            where = f"{method} {path} as {who.value if who else 'logged out'}: {response.status_code}"
            if needed == PUBLIC:
                assert response.status_code not in (401, 403), where
            elif who is None:
                if page:
                    assert response.status_code == 303, where
                    assert response.headers["location"].startswith("/login?next="), where
                else:
                    assert response.status_code == 401, where
            elif needed != ANY_USER and not who.allows(needed):
                assert response.status_code == 403, where
            else:
                assert response.status_code not in (401, 403), where


def test_a_change_from_a_page_needs_its_csrf_token(app: FastAPI, settings: Settings) -> None:
    cookie, csrf = session_cookie(settings, "trainer")
    with TestClient(app, cookies={auth.SESSION_COOKIE: cookie}) as client:
        assert client.get("/api/runs").status_code == 200  # reading needs no token
        missing = client.post("/api/config/parse", json={"text": "seed: 1"})
        assert missing.status_code == 403 and "CSRF" in missing.json()["detail"]
        wrong = client.post("/api/config/parse", json={"text": "seed: 1"}, headers={auth.CSRF_HEADER: "x" * 43})
        assert wrong.status_code == 403
        right = client.post("/api/config/parse", json={"text": "seed: 1"}, headers={auth.CSRF_HEADER: csrf})
        assert right.status_code == 200
        assert client.get("/api/auth/me").json() == {"name": "trainer", "role": "trainer", "csrf_token": csrf}


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}],
    ids=["origin", "null-origin", "sec-fetch-site"],
)
def test_a_change_from_another_origin_is_refused(app: FastAPI, settings: Settings, headers: dict[str, str]) -> None:
    """As an auto-submitted form on another site would send it: with the victim's cookie and even a valid token."""
    cookie, csrf = session_cookie(settings, "trainer")
    with TestClient(app, cookies={auth.SESSION_COOKIE: cookie}) as client:
        response = client.post("/api/runs/1/stop", headers={auth.CSRF_HEADER: csrf, **headers})
        assert response.status_code == 403 and "cross-origin" in response.json()["detail"]
        token = bearer(settings, "trainer")
        assert client.post("/api/runs/1/stop", headers={**token, **headers}).status_code == 403
        # The same request from the panel's own origin goes through (to a 404: there is no run 1).
        same = {auth.CSRF_HEADER: csrf, "Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
        assert client.post("/api/runs/1/stop", headers=same).status_code == 404


def test_login_sets_a_safe_cookie_and_logout_ends_the_session(app: FastAPI, settings: Settings) -> None:
    ensure_user(settings, "ana", "trainer", password="correct horse battery")
    with TestClient(app) as client:
        response = client.post("/api/auth/login", json={"name": "ana", "password": "correct horse battery"})
        assert response.status_code == 200 and response.json()["role"] == "trainer"
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
        csrf = response.json()["csrf_token"]
        assert client.get("/api/auth/me").json()["name"] == "ana"
        assert client.post("/api/auth/logout", headers={auth.CSRF_HEADER: csrf}).status_code == 204
        assert client.get("/api/auth/me").status_code == 401
    with TestClient(app, base_url="https://testserver") as client:
        response = client.post("/api/auth/login", json={"name": "ana", "password": "correct horse battery"})
        assert "Secure" in response.headers["set-cookie"]


def patient_limiter(app: FastAPI) -> None:
    """A window of an hour: the rate-limit tests count failures, and on a busy machine 60 argon2 checks can take
    longer than the default minute, so the first failures would age out before the test looks (seen under load)."""
    app.state.login_limiter = auth.LoginLimiter(window_s=3600.0)


def test_login_is_rate_limited(app: FastAPI, settings: Settings) -> None:
    ensure_user(settings, "bo", "reviewer", password="the real password")
    patient_limiter(app)
    with TestClient(app) as client:
        for _ in range(5):
            assert client.post("/api/auth/login", json={"name": "bo", "password": "guess guess"}).status_code == 401
        blocked = client.post("/api/auth/login", json={"name": "bo", "password": "the real password"})
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
        # Another user from the same client is still allowed a try.
        ensure_user(settings, "cy", "reviewer", password="another password")
        assert client.post("/api/auth/login", json={"name": "cy", "password": "another password"}).status_code == 200


def test_failures_on_other_names_never_lock_out_a_right_password(app: FastAPI, settings: Settings) -> None:
    """Before: 21 failures with made-up names from one address gave the admin, with the right password, a 429 (in
    embedded mode every user comes from 127.0.0.1)."""
    ensure_user(settings, "admin", "admin", password="the admin's password")
    patient_limiter(app)
    with TestClient(app) as client:
        for i in range(60):
            response = client.post("/api/auth/login", json={"name": f"made-up-{i}", "password": "guess guess"})
            assert response.status_code == 401, (i, response.text)
        # Over the per-address count, a name that already failed from here waits …
        assert client.post("/api/auth/login", json={"name": "made-up-0", "password": "guess guess"}).status_code == 429
        # … and one with no failures gets its try: the right password passes.
        right = client.post("/api/auth/login", json={"name": "admin", "password": "the admin's password"})
        assert right.status_code == 200, right.text


def test_one_name_is_limited_from_every_address(settings: Settings) -> None:
    limiter = auth.LoginLimiter()
    for i in range(limiter.per_name):
        assert limiter.retry_after(f"10.0.0.{i}", "Admin") is None
        limiter.failed(f"10.0.0.{i}", "Admin")
    assert limiter.retry_after("10.9.9.9", "admin") is not None  # a new address, the same name: waits
    assert limiter.retry_after("10.9.9.9", "someone-else") is None


def test_secrets_are_stored_hashed(app: FastAPI, settings: Settings) -> None:
    ensure_user(settings, "dee", "admin", password="a long password")
    token = bearer(settings, "admin", "dee")["Authorization"].split()[1]
    cookie, _ = session_cookie(settings, "admin", "dee")
    with session_scope(settings.database_url) as session:
        user = session.scalar(select(User).where(User.name == "dee"))
        assert user is not None and user.password_hash and user.password_hash.startswith("$argon2id$")
        assert "a long password" not in user.password_hash
        stored = [row.token_hash for row in session.scalars(select(ApiToken))]
        assert token not in stored and len(stored) == 1 and len(stored[0]) == 64
        assert cookie not in [row.token_hash for row in session.scalars(select(UserSession))]


def test_a_token_works_until_it_is_revoked(app: FastAPI, settings: Settings) -> None:
    cookie, csrf = session_cookie(settings, "reviewer", "eve")
    with TestClient(app, cookies={auth.SESSION_COOKIE: cookie}, headers={auth.CSRF_HEADER: csrf}) as browser:
        created = browser.post("/api/tokens", json={"label": "my script"})
        assert created.status_code == 201
        token, token_id = created.json()["token"], created.json()["id"]
        assert token.startswith(auth.TOKEN_PREFIX)
    with TestClient(app) as script:
        headers = {"Authorization": f"Bearer {token}"}
        assert script.get("/api/auth/me", headers=headers).json()["name"] == "eve"
        assert script.get("/api/runs", headers=headers).status_code == 403  # a reviewer's token is a reviewer's
        listed = script.get("/api/tokens", headers=headers).json()
        assert [t["label"] for t in listed] == ["my script"] and listed[0]["last_used_at"] is not None
        assert script.delete(f"/api/tokens/{token_id}", headers=headers).status_code == 204
        assert script.get("/api/auth/me", headers=headers).status_code == 401
        assert script.get("/api/auth/me", headers={"Authorization": "Bearer meal_forged"}).status_code == 401
        assert script.get("/api/auth/me", headers={"Authorization": "Basic ZXZlOmV2ZQ=="}).status_code == 401


def test_admins_manage_users(app: FastAPI, settings: Settings) -> None:
    with TestClient(app, headers=bearer(settings, "admin")) as client:
        created = client.post("/api/users", json={"name": "fay", "role": "reviewer"})
        assert created.status_code == 201 and len(created.json()["password"]) >= auth.MIN_PASSWORD_LENGTH
        password = created.json()["password"]
        assert client.post("/api/users", json={"name": "fay", "role": "reviewer"}).status_code == 409
        bad = client.post("/api/users", json={"name": "Fay!", "role": "reviewer"})
        assert bad.status_code == 422
        promoted = client.patch("/api/users/fay", json={"role": "trainer"})
        assert promoted.json()["role"] == "trainer"
        assert client.patch("/api/users/admin", json={"disabled": True}).status_code == 409  # not oneself
        with TestClient(app) as fay:
            assert fay.post("/api/auth/login", json={"name": "fay", "password": password}).status_code == 200
            client.patch("/api/users/fay", json={"disabled": True})
            assert fay.get("/api/auth/me").status_code == 401  # disabled: the session stops working at once


def test_a_re_enabled_user_s_old_sessions_stay_ended(app: FastAPI, settings: Settings) -> None:
    """Before: disabling only hid the sessions, and re-enabling the user brought every one of them back."""
    ensure_user(settings, "hal", "trainer", password="hal's password")
    with TestClient(app, headers=bearer(settings, "admin")) as admin, TestClient(app) as hal:
        assert hal.post("/api/auth/login", json={"name": "hal", "password": "hal's password"}).status_code == 200
        assert admin.patch("/api/users/hal", json={"disabled": True}).json()["disabled"] is True
        assert hal.get("/api/auth/me").status_code == 401
        assert admin.patch("/api/users/hal", json={"disabled": False}).json()["disabled"] is False
        assert hal.get("/api/auth/me").status_code == 401  # the old session stays ended
        assert hal.post("/api/auth/login", json={"name": "hal", "password": "hal's password"}).status_code == 200
        assert hal.get("/api/auth/me").json()["name"] == "hal"


def test_booleans_are_booleans(app: FastAPI, settings: Settings) -> None:
    """Before: `{"disabled": 0}` (or 1, "yes", "false") was taken as a boolean."""
    ensure_user(settings, "ivy", "trainer", password="ivy's password")
    with TestClient(app, headers=bearer(settings, "admin")) as admin:
        for value in (0, 1, "true", "no", 0.0):
            response = admin.patch("/api/users/ivy", json={"disabled": value})
            assert response.status_code == 422, (value, response.text)
            assert response.json()["detail"][0]["loc"] == ["body", "disabled"]
        assert admin.get("/api/users").json()[-1]["disabled"] is False
        for field in ("trust_remote_code", "use_chat_template"):
            response = admin.post("/api/runs", json={"name": "x", "config": {"model": {field: 1}}})
            assert response.status_code == 422, response.text
            assert response.json()["detail"][0]["loc"] == ["body", "config", "model", field]


def test_a_new_password_ends_other_sessions(app: FastAPI, settings: Settings) -> None:
    ensure_user(settings, "gus", "trainer", password="first password")
    with TestClient(app) as one, TestClient(app) as two:
        csrf = one.post("/api/auth/login", json={"name": "gus", "password": "first password"}).json()["csrf_token"]
        two.post("/api/auth/login", json={"name": "gus", "password": "first password"})
        changed = one.post(
            "/api/auth/password",
            json={"current": "first password", "new": "second password"},
            headers={auth.CSRF_HEADER: csrf},
        )
        assert changed.status_code == 204
        assert one.get("/api/auth/me").status_code == 200  # the session that changed it starts afresh
        assert two.get("/api/auth/me").status_code == 401
        wrong = one.post("/api/auth/password", json={"current": "nope nope", "new": "third password"})
        assert wrong.status_code == 403  # no CSRF token either way


def test_first_start_link_logs_the_admin_in_once(app: FastAPI, settings: Settings) -> None:
    token = embedded_first_admin(settings)
    assert token is not None
    assert embedded_first_admin(settings) is None  # users exist now: no second admin, no second link
    with TestClient(app, follow_redirects=False) as client:
        first = client.get(f"/login/once/{token}")
        assert first.status_code == 303 and first.headers["location"] == "/"
        assert client.get("/api/auth/me").json()["role"] == "admin"
    with TestClient(app, follow_redirects=False) as client:
        again = client.get(f"/login/once/{token}")
        assert again.headers["location"] == "/login?expired=1"
        assert client.get("/api/auth/me").status_code == 401


def test_deployed_mode_refuses_an_example_secret_and_takes_the_admin_from_the_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'deployed.sqlite'}"
    upgrade(url)
    for secret in ("", "change-me", "short"):
        settings = Settings(mode="deployed", database_url=url, secret_key=secret, data_dir=tmp_path)
        with pytest.raises(CLIError, match="MEAL_SECRET_KEY"):
            deployed_first_admin(settings)
        with pytest.raises(auth.SecretError):
            create_app(settings)
    settings = Settings(
        mode="deployed",
        database_url=url,
        data_dir=tmp_path,
        secret_key="s" * 40,
        admin_name="root",
        admin_password="a strong password",
    )
    deployed_first_admin(settings)
    with session_scope(url) as session:
        admin = auth.find_user(session, "root")
        assert admin is not None and admin.role == "admin" and auth.password_matches(admin, "a strong password")
    assert not (tmp_path / auth.SECRET_FILE).exists()  # deployed mode never writes a secret of its own
    get_engine(url).dispose()


def test_embedded_secret_is_made_once_and_kept(settings: Settings) -> None:
    first = auth.load_secret(settings)
    assert len(first) >= auth.MIN_SECRET_LENGTH and auth.load_secret(settings) == first
    assert (Path(settings.data_dir) / auth.SECRET_FILE).stat().st_mode & 0o077 == 0


def meal(*args: str, data_dir: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `meal` command against the embedded database in data_dir (as MEAL_DATA_DIR names it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEAL_")} | {"MEAL_DATA_DIR": str(data_dir)}
    command = [str(Path(sys.executable).with_name("meal")), *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, env=env, timeout=120)


def test_users_and_tokens_from_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    added = meal("users", "add", "hal", "--role", "trainer", data_dir=data)
    assert added.returncode == 0, added.stderr
    password = added.stdout.strip().splitlines()[-1].removeprefix("password: ")
    quiet = meal(
        "users", "add", "ivy", "--role", "reviewer", "--password-stdin", data_dir=data, stdin="ivy's long password\n"
    )
    assert quiet.returncode == 0 and quiet.stdout == ""
    assert meal("users", "add", "hal", "--role", "admin", data_dir=data).returncode == 2  # exists
    assert "exists already" in meal("users", "add", "hal", "--role", "admin", data_dir=data).stderr
    assert meal("users", "add", "Bad Name", "--role", "admin", data_dir=data).returncode == 2
    listed = meal("users", "list", data_dir=data).stdout.splitlines()
    assert listed == ["hal\ttrainer", "ivy\treviewer"]

    created = meal("tokens", "create", "hal", "--label", "ci", data_dir=data)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith(auth.TOKEN_PREFIX) and created.stdout.count("\n") == 1  # alone on its line, once
    settings = Settings(data_dir=data)
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}).json()["name"] == "hal"
        login = client.post("/api/auth/login", json={"name": "hal", "password": password})
        assert login.status_code == 200
        assert (
            client.post("/api/auth/login", json={"name": "ivy", "password": "ivy's long password"}).status_code == 200
        )
        token_id = meal("tokens", "list", "hal", data_dir=data).stdout.split("\t")[0]
        revoked = meal("tokens", "revoke", "hal", "--id", token_id, data_dir=data)
        assert revoked.returncode == 0 and "revoked 1 token" in revoked.stderr
        assert client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert meal("tokens", "revoke", "hal", "--id", token_id, data_dir=data).returncode == 2  # not live any more
    assert meal("tokens", "create", "nobody", data_dir=data).returncode == 2
    get_engine(settings.database_url).dispose()


def test_operators_change_passwords_roles_and_access_from_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert meal("users", "add", "ada", "--role", "admin", data_dir=data).returncode == 0
    assert meal("users", "add", "hal", "--role", "trainer", data_dir=data).returncode == 0
    settings = Settings(data_dir=data)
    with TestClient(create_app(settings)) as client:
        changed = meal("users", "set-password", "hal", "--password-stdin", data_dir=data, stdin="hal's new password\n")
        assert changed.returncode == 0 and changed.stdout == "", changed.stderr
        assert client.post("/api/auth/login", json={"name": "hal", "password": "hal's new password"}).status_code == 200
        assert client.get("/api/auth/me").json()["name"] == "hal"  # a session …
        assert meal("users", "disable", "hal", data_dir=data).returncode == 0
        assert client.get("/api/auth/me").status_code == 401  # … that disabling ended
        refused = client.post("/api/auth/login", json={"name": "hal", "password": "hal's new password"})
        assert refused.status_code == 401
        assert meal("users", "enable", "hal", data_dir=data).returncode == 0
        assert client.get("/api/auth/me").status_code == 401  # the old session stays ended
        assert client.post("/api/auth/login", json={"name": "hal", "password": "hal's new password"}).status_code == 200
    assert meal("users", "set-role", "hal", "reviewer", data_dir=data).returncode == 0
    assert meal("users", "list", data_dir=data).stdout.splitlines() == ["ada\tadmin", "hal\treviewer"]
    generated = meal("users", "set-password", "hal", data_dir=data)
    assert generated.stdout.startswith("password: ") and len(generated.stdout.strip()) > 20
    # The last enabled admin stays one; names that do not exist and short passwords are refused.
    for args in (("disable", "ada"), ("set-role", "ada", "trainer")):
        last = meal("users", *args, data_dir=data)
        assert last.returncode == 2 and "last enabled admin" in last.stderr, last.stderr
    assert meal("users", "list", data_dir=data).stdout.splitlines() == ["ada\tadmin", "hal\treviewer"]
    assert "no user 'nobody'" in meal("users", "disable", "nobody", data_dir=data).stderr
    short = meal("users", "set-password", "hal", "--password-stdin", data_dir=data, stdin="short\n")
    assert short.returncode == 2 and "10" in short.stderr
    get_engine(settings.database_url).dispose()
