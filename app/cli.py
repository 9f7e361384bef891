"""`meal up`, `meal web`, `meal migrate`: subcommands added to the `meal` CLI through an entry point."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]


def _apply_data_dir(args: argparse.Namespace) -> None:
    if getattr(args, "data_dir", None):
        os.environ["MEAL_DATA_DIR"] = str(Path(args.data_dir).resolve())


def register_migrate(sub: argparse._SubParsersAction) -> Handler:  # type: ignore[type-arg]
    parser = sub.add_parser("migrate", help="apply database migrations (Alembic) and exit")
    parser.add_argument("--data-dir", help="embedded mode's data folder (default: ./data)")
    return migrate


def migrate(args: argparse.Namespace) -> int:
    from app.migrate import upgrade
    from app.settings import Settings

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
    from app.migrate import upgrade
    from app.settings import Settings

    _apply_data_dir(args)
    settings = Settings()
    if not args.no_migrate:
        upgrade(settings.database_url)
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level="info",
        timeout_graceful_shutdown=3,
    )
    return 0


def register_up(sub: argparse._SubParsersAction) -> Handler:  # type: ignore[type-arg]
    parser = sub.add_parser("up", help="start the web server and one worker together (embedded mode)")
    _add_server_options(parser)
    return up


SHUTDOWN_WAIT_S = 300  # longest a worker gets to finish its iteration on Ctrl-C (CPU iterations take tens of seconds)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def up(args: argparse.Namespace) -> int:
    """Migrate, then run `meal web` and `meal worker` as child processes; Ctrl-C stops both."""
    from app.migrate import upgrade
    from app.settings import Settings

    _apply_data_dir(args)
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    host, port = args.host or settings.host, args.port or settings.port
    meal = [sys.executable, "-m", "meal_core.cli"]
    children = [
        subprocess.Popen([*meal, "web", "--no-migrate", "--host", host, "--port", str(port)]),
        subprocess.Popen([*meal, "worker"]),
    ]
    print(
        f"\nMeal Studio is starting on http://{host}:{port}/  (data in {settings.data_dir.resolve()}; "
        "Ctrl-C stops it)\n",
        file=sys.stderr,
        flush=True,
    )
    # Installed explicitly: a process started in the background by a script inherits SIGINT as ignored.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        return 1  # one of them died on its own: take the other down too
    except KeyboardInterrupt:
        return 0
    finally:
        _stop_children(children)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
