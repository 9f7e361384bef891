"""`meal worker`: one Celery worker, one run at a time (--pool=solo)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def register_worker(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:  # type: ignore[type-arg]
    parser = sub.add_parser("worker", help="start a Celery worker that trains queued runs")
    parser.add_argument("--name", default="meal@%h", help="worker node name (default: meal@<host>)")
    parser.add_argument("--loglevel", default="INFO")
    return run_worker


def run_worker(args: argparse.Namespace) -> int:
    from worker.celery_app import QUEUE, celery_app

    celery_app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--hostname={args.name}",
            f"--loglevel={args.loglevel}",
            f"--queues={QUEUE}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0
