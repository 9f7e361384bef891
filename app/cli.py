"""`meal up`, `meal web`, `meal migrate`: subcommands added to the `meal` CLI through an entry point."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from app.store.queue import PLAYGROUND_QUEUE
from app.store.settings import Settings
from meal_core.cli import CLIError
from meal_core.enums import Role

if TYPE_CHECKING:  # the commands import the data layer when they run, so that `meal --help` stays quick
    from sqlalchemy.orm import Session

    from app.store.models import User

Handler = Callable[[argparse.Namespace], int]


def _apply_data_dir(args: argparse.Namespace) -> None:
    if getattr(args, "data_dir", None):
        os.environ["MEAL_DATA_DIR"] = str(Path(args.data_dir).resolve())


def register_migrate(sub: argparse._SubParsersAction) -> Handler:  # type: ignore[type-arg]
    parser = sub.add_parser("migrate", help="apply database migrations (Alembic) and exit")
    parser.add_argument("--data-dir", help="embedded mode's data folder (default: ./data)")
    return migrate


def migrate(args: argparse.Namespace) -> int:
    from app.store.migrate import upgrade
    from app.store.settings import Settings

    _apply_data_dir(args)
    settings = Settings()
    upgrade(settings.database_url)
    print(f"database is up to date: {settings.database_url.split('@')[-1]}", file=sys.stderr)
    return 0


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="bind address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: 8000)")
    parser.add_argument("--data-dir", help="embedded mode's data folder (default: ./data)")


def register_web(sub: argparse._SubParsersAction) -> Handler:  # type: ignore[type-arg]
    parser = sub.add_parser("web", help="start the web server (API and pages)")
    _add_server_options(parser)
    parser.add_argument("--no-migrate", action="store_true", help="don't apply migrations first")
    return web


def web(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.server import server_config
    from app.store.migrate import upgrade
    from app.store.settings import Settings

    _apply_data_dir(args)
    settings = Settings()
    if not args.no_migrate:
        upgrade(settings.database_url)
    if settings.mode == "deployed":
        deployed_first_admin(settings)
    config = server_config(
        create_app(settings),
        settings,
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level="info",
        timeout_graceful_shutdown=3,
    )
    uvicorn.Server(config).run()
    return 0


def register_up(sub: argparse._SubParsersAction) -> Handler:  # type: ignore[type-arg]
    parser = sub.add_parser("up", help="start the web server and one worker together (embedded mode)")
    _add_server_options(parser)
    return up


SHUTDOWN_WAIT_S = 300  # longest a worker gets to finish its iteration on Ctrl-C (CPU iterations take tens of seconds)


def _interrupt(signum: int, frame: object) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


def up(args: argparse.Namespace) -> int:
    """Migrate, then run `meal web`, the training worker and the playground worker as child processes, restarting
    any that dies; Ctrl-C stops them all."""
    from app.store.migrate import upgrade

    _apply_data_dir(args)
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    host, port = args.host or settings.host, args.port or settings.port
    link = embedded_first_admin(settings)
    meal = [sys.executable, "-m", "meal_core.cli"]
    ready = settings.data_dir / "ready"  # each worker's file, there while it takes tasks
    ready.mkdir(exist_ok=True)
    worker, playground = ready / "worker", ready / "playground-worker"
    for stale in (worker, playground):  # left by a start that was killed
        stale.unlink(missing_ok=True)
    children = [
        Child("web", [*meal, "web", "--no-migrate", "--host", host, "--port", str(port)]),
        Child("worker", [*meal, "worker", "--ready-file", str(worker)]),
        # Its own worker, so that a playground generation never waits behind a training run.
        Child(
            "playground worker",
            [*meal, "worker", "--queues", PLAYGROUND_QUEUE, "--name", "playground@%h", "--ready-file", str(playground)],
        ),
    ]
    for child in children:
        child.start()
    print(f"\nMeal Studio is starting (data in {settings.data_dir.resolve()}) …\n", file=sys.stderr, flush=True)
    banner = Banner(host, port, link, [worker, playground])
    # Installed explicitly: a process started in the background by a script inherits SIGINT as ignored.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            for child in children:
                child.supervise(settings)
            banner.show_once_up()
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        _stop_children([child.process for child in children if child.process is not None])
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Banner:
    """The address (and the first start's login link) printed last, once the web server answers and both workers
    take tasks: printed at once, it scrolled away under the workers' start-up messages. After a minute and a half
    it is printed anyway, saying what is not up yet."""

    def __init__(self, host: str, port: int, link: str | None, ready_files: list[Path], wait_s: float = 90.0) -> None:
        self.host, self.port, self.link, self.ready_files = host, port, link, ready_files
        self.deadline = time.monotonic() + wait_s
        self.shown = False

    def _web_answers(self) -> bool:
        import httpx

        local = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        try:
            return httpx.get(f"http://{local}:{self.port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def show_once_up(self) -> None:
        if self.shown:
            return
        workers_up = all(path.exists() for path in self.ready_files)
        up = workers_up and self._web_answers()
        if not up and time.monotonic() < self.deadline:
            return
        self.shown = True
        lines = [f"\nMeal Studio is up on http://{self.host}:{self.port}/  (Ctrl-C stops it)"]
        if not up:
            lines.append("  (not everything answered within 90 s: see the messages above)")
        if self.link:
            # Like Jupyter's token: the first admin logs in by this link, once (then sets a password, adds teammates).
            lines += [
                "\nFirst start: log in as the admin with this one-time link (valid 24 h):\n",
                f"    http://{self.host}:{self.port}/login/once/{self.link}\n",
            ]
        print("\n".join(lines), file=sys.stderr, flush=True)


class Child:
    """One process `meal up` keeps running: restarted when it dies (after 1, 2, 4 … up to 30 s; a child that ran
    for a minute starts again from 1 s), its runs failed at once when it was a worker."""

    def __init__(self, name: str, command: list[str]) -> None:
        self.name, self.command = name, command
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restart_at: float | None = None
        self.backoff = 1.0

    def start(self) -> None:
        self.process = subprocess.Popen(self.command)
        self.started_at, self.restart_at = time.monotonic(), None

    def supervise(self, settings: Settings) -> None:
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
            return
        assert self.process is not None
        code = self.process.poll()
        if code is None:
            return
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        if self.name != "web":
            failed = self.fail_its_runs(settings, f"worker died ({how})")
            if failed:
                print(f"meal up: runs {failed} failed with their worker (resumable)", file=sys.stderr, flush=True)
        self.backoff = 1.0 if now - self.started_at > 60 else min(self.backoff * 2, 30.0)
        self.restart_at = now + self.backoff
        print(f"meal up: the {self.name} died ({how}); restarting in {self.backoff:.0f} s", file=sys.stderr, flush=True)

    def fail_its_runs(self, settings: Settings, reason: str) -> list[int]:
        """The runs this worker held: the worker names itself host:pid (worker.tasks.worker_name)."""
        from app.store import run_state
        from app.store.db import session_scope

        assert self.process is not None
        try:
            with session_scope(settings.database_url) as session:
                return run_state.fail_runs_of_worker(session, f"{socket.gethostname()}:{self.process.pid}", reason)
        except Exception as error:  # the stale-run sweeper will fail them later
            print(f"meal up: could not mark the runs of the dead worker failed: {error}", file=sys.stderr)
            return []


def _stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM, then wait: uvicorn closes its connections, and a worker that is training ends its current iteration
    and saves a checkpoint (the run becomes `stopped`, resumable). A second Ctrl-C kills them at once."""
    deadline = time.monotonic() + SHUTDOWN_WAIT_S
    try:
        for child in children:
            if child.poll() is None:
                child.terminate()
        if any(child.poll() is None for child in children):
            print(
                "\nStopping: a run in training finishes its current iteration and saves a checkpoint first "
                f"(up to {SHUTDOWN_WAIT_S} s; Ctrl-C again to kill now).",
                file=sys.stderr,
                flush=True,
            )
        for child in children:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass  # killed below
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


# -- users and tokens -------------------------------------------------------------------------------------------------


def register_users(sub: argparse._SubParsersAction) -> Handler:  # type: ignore[type-arg]
    parser = sub.add_parser("users", help="add, list and change the users of the panel (the database MEAL_* names)")
    actions = parser.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a user; prints a generated password unless --password-stdin")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    listing = actions.add_parser("list", help="list users and their roles")
    password = actions.add_parser(
        "set-password", help="a new password for NAME (printed, unless --password-stdin); its sessions end"
    )
    password.add_argument("name")
    password.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    role = actions.add_parser("set-role", help="change NAME's role")
    role.add_argument("name")
    role.add_argument("role", choices=[r.value for r in Role])
    disable = actions.add_parser("disable", help="NAME can no longer log in or use its tokens; its sessions end")
    disable.add_argument("name")
    enable = actions.add_parser("enable", help="NAME can log in again (with its password; old sessions stay ended)")
    enable.add_argument("name")
    for action in (parser, add, listing, password, role, disable, enable):
        action.add_argument("--data-dir", help="embedded mode's data folder (default: ./data)")
    return users


def users(args: argparse.Namespace) -> int:
    from app.store.db import session_scope
    from app.store.migrate import upgrade

    settings = _settings(args)
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        return USER_ACTIONS[args.action](session, args)


def _list_users(session: Session, args: argparse.Namespace) -> int:
    from app.store.models import User

    for user in session.query(User).order_by(User.name):
        state = " (disabled)" if user.disabled else ""
        print(f"{user.name}\t{user.role}{state}")
    return 0


def _new_password(args: argparse.Namespace) -> tuple[str, bool]:
    """The password to set and whether to print it (generated ones only)."""
    from app import auth

    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n"), False
    return auth.generate_password(), True


def _add_user(session: Session, args: argparse.Namespace) -> int:
    from app import auth

    password, show = _new_password(args)
    try:
        auth.create_user(session, args.name, Role(args.role), password)
    except auth.AuthError as error:
        raise CLIError(str(error)) from None
    print(f"added {args.name} ({args.role})", file=sys.stderr)
    if show:
        print(f"password: {password}")
    return 0


def _existing_user(session: Session, name: str) -> User:
    from app import auth

    user = auth.find_user(session, name)
    if user is None:
        raise CLIError(f"no user {name!r} (meal users list)")
    return user


def _keep_an_admin(session: Session, changed: User) -> None:
    """Refuse a change that would leave no enabled admin: nobody could manage the team from the panel."""
    from app.store.models import User

    others = session.query(User).filter(User.role == Role.ADMIN, User.disabled.is_(False), User.id != changed.id)
    if changed.role == Role.ADMIN and not changed.disabled:
        return
    if others.count() == 0:
        raise CLIError(f"{changed.name} is the last enabled admin: make another admin first")


def _set_password(session: Session, args: argparse.Namespace) -> int:
    from app import auth

    user = _existing_user(session, args.name)
    password, show = _new_password(args)
    try:
        auth.set_password(session, user, password)
    except auth.AuthError as error:
        raise CLIError(str(error)) from None
    print(f"new password for {user.name}; its sessions ended", file=sys.stderr)
    if show:
        print(f"password: {password}")
    return 0


def _set_role(session: Session, args: argparse.Namespace) -> int:
    user = _existing_user(session, args.name)
    user.role = Role(args.role).value
    _keep_an_admin(session, user)
    print(f"{user.name} is now {user.role}", file=sys.stderr)
    return 0


def _set_disabled(session: Session, args: argparse.Namespace) -> int:
    from app import auth

    user = _existing_user(session, args.name)
    auth.set_disabled(session, user, args.action == "disable")
    _keep_an_admin(session, user)
    print(f"{user.name} {'disabled: its sessions ended' if user.disabled else 'enabled'}", file=sys.stderr)
    return 0


USER_ACTIONS: dict[str, Callable[[Session, argparse.Namespace], int]] = {
    "add": _add_user,
    "list": _list_users,
    "set-password": _set_password,
    "set-role": _set_role,
    "disable": _set_disabled,
    "enable": _set_disabled,
}


def register_tokens(sub: argparse._SubParsersAction) -> Handler:  # type: ignore[type-arg]
    parser = sub.add_parser("tokens", help="create, list and revoke API tokens (Authorization: Bearer …)")
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new token for NAME, printed alone on the last line, once")
    create.add_argument("name")
    create.add_argument("--label", default="created with meal tokens create")
    listing = actions.add_parser("list", help="NAME's tokens (ids, labels, when used, whether revoked)")
    listing.add_argument("name")
    revoke = actions.add_parser("revoke", help="revoke one of NAME's tokens (--id) or all of them (--all)")
    revoke.add_argument("name")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, help="the token's id (meal tokens list NAME)")
    which.add_argument("--all", action="store_true")
    for action in (parser, create, listing, revoke):
        action.add_argument("--data-dir", help="embedded mode's data folder (default: ./data)")
    return tokens


def tokens(args: argparse.Namespace) -> int:
    from app import auth
    from app.store.db import session_scope
    from app.store.migrate import upgrade

    settings = _settings(args)
    upgrade(settings.database_url)
    keyring = auth.Keyring(auth.load_secret(settings))
    with session_scope(settings.database_url) as session:
        user = auth.find_user(session, args.name)
        if user is None:
            raise CLIError(f"no user {args.name!r} (meal users add {args.name} --role …)")
        if args.action == "list":
            for row in auth.user_tokens(session, user):
                used = row.last_used_at.isoformat(timespec="seconds") if row.last_used_at else "never used"
                state = f"revoked {row.revoked_at.isoformat(timespec='seconds')}" if row.revoked_at else "live"
                print(f"{row.id}\t{row.label}\t{used}\t{state}")
            return 0
        if args.action == "revoke":
            count = auth.revoke_tokens(session, user, None if args.all else args.id)
            if not count and not args.all:
                raise CLIError(f"{args.name} has no live token {args.id}")
            print(f"revoked {count} token{'s' * (count != 1)} of {args.name}", file=sys.stderr)
            return 0
        try:
            token, row = auth.create_token(session, keyring, user, args.label)
        except auth.AuthError as error:
            raise CLIError(str(error)) from None
    print(f"token {row.id} for {args.name} (shown once; send it as 'Authorization: Bearer <token>'):", file=sys.stderr)
    print(token)
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    _apply_data_dir(args)
    return Settings()


# -- the first admin ------------------------------------------------------------------------------------------------


def embedded_first_admin(settings: Settings) -> str | None:
    """Embedded mode's first start: an `admin` user with no password and a one-time login link for it (returned);
    None when users exist already."""
    from app import auth
    from app.store.db import session_scope

    keyring = auth.Keyring(auth.load_secret(settings))
    with session_scope(settings.database_url) as session:
        if auth.any_user(session):
            return None
        admin = auth.create_user(session, "admin", Role.ADMIN, None)
        return auth.create_login_link(session, keyring, admin)


def deployed_first_admin(settings: Settings) -> None:
    """Deployed mode refuses a missing or example secret, and creates the first admin from MEAL_ADMIN_NAME and
    MEAL_ADMIN_PASSWORD when the database has no user yet."""
    from app import auth
    from app.store.db import session_scope

    try:
        auth.load_secret(settings)
    except auth.SecretError as error:
        raise CLIError(str(error)) from None
    with session_scope(settings.database_url) as session:
        if auth.any_user(session):
            return
        if not settings.admin_name:
            print("no users yet: set MEAL_ADMIN_NAME and MEAL_ADMIN_PASSWORD, or run `meal users add`", file=sys.stderr)
            return
        try:
            auth.create_user(session, settings.admin_name, Role.ADMIN, settings.admin_password.get_secret_value())
        except auth.AuthError as error:
            raise CLIError(f"MEAL_ADMIN_NAME / MEAL_ADMIN_PASSWORD: {error}") from None
    print(f"created the first admin, {settings.admin_name}", file=sys.stderr)
