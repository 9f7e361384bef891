"""Who is asking: users and their roles, passwords, browser sessions, API tokens, one-time login links, the
server secret, and the login rate limit.

Secrets that identify a user (session cookies, API tokens, login links) are random, shown once, and stored only as
an HMAC-SHA256 keyed with the server secret: a copy of the database alone logs nobody in. Passwords are hashed
with Argon2id (argon2-cffi). Nothing here knows about HTTP; `app.deps` turns it into request dependencies.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import deque
from datetime import timedelta
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.store.models import USER_NAME_PATTERN, ApiToken, LoginLink, User, UserSession, utcnow
from app.store.settings import Settings
from meal_core.enums import Role

SESSION_COOKIE = "meal_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_LIFETIME = timedelta(days=14)
LOGIN_LINK_LIFETIME = timedelta(hours=24)
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
MIN_SECRET_LENGTH = 32
# Values that come from examples and must never guard a real deployment.
KNOWN_SECRETS = frozenset({"", "change-me", "changeme", "secret", "please-change-me"})
SECRET_FILE = "secret.key"
TOKEN_PREFIX = "meal_"  # API tokens start with this, so that a leaked one is easy to recognise

_hasher = PasswordHasher()


class AuthError(ValueError):
    """A user, password or token that cannot be used; the message says why and may be shown."""


class SecretError(RuntimeError):
    """The server has no usable secret; the message says how to give it one."""


# -- the server secret ------------------------------------------------------------------------------------------------


def load_secret(settings: Settings) -> str:
    """Deployed mode needs MEAL_SECRET_KEY (and refuses a known example value); embedded mode keeps a random one in
    the data folder, made on first start."""
    configured = settings.secret_key.get_secret_value()
    if settings.mode == "deployed":
        if configured in KNOWN_SECRETS or len(configured) < MIN_SECRET_LENGTH:
            raise SecretError(
                f"MEAL_SECRET_KEY must be set to a random value of at least {MIN_SECRET_LENGTH} characters in "
                "deployed mode (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
            )
        return configured
    if configured:
        return configured
    path = Path(settings.data_dir) / SECRET_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".partial")
        staging.write_text(secrets.token_urlsafe(48))
        staging.chmod(0o600)
        staging.replace(path)  # atomic: concurrent first starts end with one secret
    return path.read_text().strip()


class Keyring:
    """Keyed hashes of the random secrets users hold, and new such secrets."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def digest(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()

    def new(self, prefix: str = "") -> tuple[str, str]:
        """A fresh random token and its digest."""
        token = prefix + secrets.token_urlsafe(32)
        return token, self.digest(token)


# -- users and passwords ----------------------------------------------------------------------------------------------


def check_name(name: str) -> str:
    if not re.fullmatch(USER_NAME_PATTERN, name):
        raise AuthError(f"user name {name[:40]!r}: 2–32 characters: a lowercase letter, then letters, digits, _ . -")
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise AuthError(f"password: between {MIN_PASSWORD_LENGTH} and {MAX_PASSWORD_LENGTH} characters")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(check_password(password))


def password_matches(user: User | None, password: str) -> bool:
    """Whether `password` is `user`'s. Without a user (an unknown name) or a password hash, a hash is still
    verified, so that the answer takes as long and does not tell which names exist."""
    if user is None or not user.password_hash or len(password) > MAX_PASSWORD_LENGTH:
        with contextlib.suppress(VerificationError, InvalidHashError):
            _hasher.verify(_decoy_hash(), password[:MAX_PASSWORD_LENGTH])
        return False
    try:
        return _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@functools.cache
def _decoy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(15))


def generate_password() -> str:
    return secrets.token_urlsafe(15)  # 20 characters, 120 bits


def create_user(session: Session, name: str, role: Role, password: str | None) -> User:
    check_name(name)
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise AuthError(f"user {name!r} exists already")
    user = User(name=name, role=Role(role).value, password_hash=hash_password(password) if password else None)
    session.add(user)
    session.flush()
    return user


def find_user(session: Session, name: str) -> User | None:
    return session.scalar(select(User).where(User.name == name))


def set_password(session: Session, user: User, password: str) -> None:
    user.password_hash = hash_password(password)
    # A new password ends every other way in that the old one opened: all sessions go.
    end_sessions(session, user)


def set_disabled(session: Session, user: User, disabled: bool) -> None:
    """Disabling ends the user's sessions and unused login links, so that re-enabling them later brings none of
    the old ones back (before, the rows only waited for `disabled` to turn false again). API tokens are kept:
    refused while the user is disabled, working again once re-enabled (`meal tokens revoke NAME --all` ends them)."""
    if disabled and not user.disabled:
        end_sessions(session, user)
        session.execute(
            update(LoginLink).where(LoginLink.user_id == user.id, LoginLink.used_at.is_(None)).values(used_at=utcnow())
        )
    user.disabled = disabled


def end_sessions(session: Session, user: User) -> None:
    session.execute(
        update(UserSession)
        .where(UserSession.user_id == user.id, UserSession.expires_at > utcnow())
        .values(expires_at=utcnow())
    )


def any_user(session: Session) -> bool:
    return session.scalar(select(User.id).limit(1)) is not None


# -- browser sessions -------------------------------------------------------------------------------------------------


def start_session(session: Session, keyring: Keyring, user: User) -> tuple[str, UserSession]:
    """A new login for `user`: returns the cookie value (shown once) and the stored session."""
    cookie, digest = keyring.new()
    row = UserSession(
        user_id=user.id,
        token_hash=digest,
        csrf_token=secrets.token_urlsafe(32),
        expires_at=utcnow() + SESSION_LIFETIME,
    )
    session.add(row)
    session.flush()
    return cookie, row


def session_user(session: Session, keyring: Keyring, cookie: str) -> tuple[User, UserSession] | None:
    if not cookie or len(cookie) > 200:
        return None
    found = session.execute(
        select(User, UserSession)
        .join(UserSession, UserSession.user_id == User.id)
        .where(UserSession.token_hash == keyring.digest(cookie), UserSession.expires_at > utcnow())
    ).first()
    if found is None or found[0].disabled:
        return None
    return found[0], found[1]


def end_session(session: Session, keyring: Keyring, cookie: str) -> None:
    session.execute(
        update(UserSession).where(UserSession.token_hash == keyring.digest(cookie)).values(expires_at=utcnow())
    )


# -- API tokens -------------------------------------------------------------------------------------------------------


def create_token(session: Session, keyring: Keyring, user: User, label: str) -> tuple[str, ApiToken]:
    """A new API token for `user`: returns the token (shown once, never stored) and its row."""
    if not label.strip() or len(label) > 100:
        raise AuthError("token label: 1–100 characters")
    token, digest = keyring.new(TOKEN_PREFIX)
    row = ApiToken(user_id=user.id, label=label.strip(), token_hash=digest)
    session.add(row)
    session.flush()
    return token, row


def token_user(session: Session, keyring: Keyring, token: str) -> User | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    found = session.execute(
        select(User, ApiToken)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(ApiToken.token_hash == keyring.digest(token), ApiToken.revoked_at.is_(None))
    ).first()
    if found is None or found[0].disabled:
        return None
    user, row = found
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
        row.last_used_at = now  # at most one write a minute per token
    return user


def user_tokens(session: Session, user: User) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)))


def revoke_tokens(session: Session, user: User, token_id: int | None = None) -> int:
    """Revoke one of `user`'s tokens (by id) or all of them; returns how many were live and are now revoked."""
    statement = update(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
    if token_id is not None:
        statement = statement.where(ApiToken.id == token_id)
    result = session.execute(statement.values(revoked_at=utcnow()).execution_options(synchronize_session=False))
    return int(result.rowcount)  # type: ignore[attr-defined]


# -- one-time login links ---------------------------------------------------------------------------------------------


def create_login_link(session: Session, keyring: Keyring, user: User) -> str:
    token, digest = keyring.new()
    session.add(LoginLink(user_id=user.id, token_hash=digest, expires_at=utcnow() + LOGIN_LINK_LIFETIME))
    session.flush()
    return token


def use_login_link(session: Session, keyring: Keyring, token: str) -> User | None:
    """The link's user, once: a conditional UPDATE marks it used, so two clicks never both log in."""
    if not token or len(token) > 200:
        return None
    link_id = session.scalar(
        update(LoginLink)
        .where(
            LoginLink.token_hash == keyring.digest(token), LoginLink.used_at.is_(None), LoginLink.expires_at > utcnow()
        )
        .values(used_at=utcnow())
        .returning(LoginLink.user_id)
    )
    if link_id is None:
        return None
    user = session.get(User, link_id)
    return None if user is None or user.disabled else user


# -- login rate limit -------------------------------------------------------------------------------------------------


class LoginLimiter:
    """Failed logins within the last `window_s`, counted three ways, in memory, per web process (OWASP's
    authentication and credential-stuffing guidance: limit per account and per source, and never let one
    source's failures on other accounts lock an account out):

    - per (address, name), `per_pair` (5): that name from that address waits (guessing one account from one place);
    - per name, from any address, `per_name` (20): that name waits everywhere (one account guessed from many
      addresses, or through forwarded headers a trusted proxy passes on);
    - per address, `per_address` (50): the address may then try only names with no failure from it in the
      window (one guess each), so a teammate behind the same address (every embedded-mode user comes from
      127.0.0.1) who types the right password gets in whatever others got wrong.

    A success clears its (address, name) count only: the per-name count keeps a distributed guesser slow."""

    def __init__(self, per_pair: int = 5, window_s: float = 60.0, per_name: int = 20, per_address: int = 50) -> None:
        self.per_pair, self.window_s, self.per_name, self.per_address = per_pair, window_s, per_name, per_address
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def _wait(self, times: deque[float], now: float) -> float:
        return max(1.0, self.window_s - (now - times[0]))

    def retry_after(self, client: str, name: str) -> float | None:
        """Seconds to wait before another attempt, or None if one may be made now."""
        now, name = time.monotonic(), name.lower()
        with self._lock:
            pair = self._recent((client, name), now)
            if len(pair) >= self.per_pair:
                return self._wait(pair, now)
            by_name = self._recent(("", name), now)
            if len(by_name) >= self.per_name:
                return self._wait(by_name, now)
            by_address = self._recent((client, ""), now)
            if pair and len(by_address) >= self.per_address:
                return self._wait(pair, now)
        return None

    def failed(self, client: str, name: str) -> None:
        now, name = time.monotonic(), name.lower()
        with self._lock:
            if len(self._failures) > 100_000:  # a flood of distinct names: forget the oldest state
                self._failures.clear()
            for key in ((client, name), ("", name), (client, "")):
                self._recent(key, now).append(now)

    def succeeded(self, client: str, name: str) -> None:
        with self._lock:
            self._failures.pop((client, name.lower()), None)
