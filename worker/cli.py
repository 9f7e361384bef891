"""`meal worker`: one Celery worker, one task at a time (--pool=solo): training runs, or with --queues playground,
playground generations."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from app.store.queue import PLAYGROUND_QUEUE, QUEUE


def register_worker(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:  # type: ignore[type-arg]
    parser = sub.add_parser("worker", help="start a Celery worker that trains queued runs")
    parser.add_argument("--name", default="meal@%h", help="worker node name (default: meal@<host>)")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument(
        "--queues",
        default=QUEUE,
        help=f"queues to take tasks from (default: {QUEUE}, training; {PLAYGROUND_QUEUE}: playground generations)",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="create this file once the worker takes tasks and delete it when it stops (a container health check: "
        "a worker busy training cannot answer Celery's ping)",
    )
    return run_worker


def _mark_ready_in(path: Path) -> None:
    from celery.signals import worker_ready, worker_shutdown

    path.unlink(missing_ok=True)  # left by an earlier start of the same container
    worker_ready.connect(lambda **_: path.touch(), weak=False)
    worker_shutdown.connect(lambda **_: path.unlink(missing_ok=True), weak=False)


def run_worker(args: argparse.Namespace) -> int:
    from worker.celery_app import celery_app

    if args.ready_file is not None:
        _mark_ready_in(args.ready_file)
    celery_app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--hostname={args.name}",
            f"--loglevel={args.loglevel}",
            f"--queues={args.queues}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0
