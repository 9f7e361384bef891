"""Celery tasks. `meal.train_run` trains one stored run, from its last checkpoint if it has one."""

from __future__ import annotations

import logging
import os
import socket
import traceback

from app import run_state
from app.db import session_scope
from app.models import Run, RunStatus
from app.settings import get_settings
from meal_core.config import parse_config
from meal_core.trainer import Trainer
from worker.celery_app import celery_app
from worker.recorder import DatabaseRecorder

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@celery_app.task(name="meal.train_run")
def train_run(run_id: int) -> str:
    settings = get_settings()
    name = worker_name()
    with session_scope(settings.database_url) as session:
        if not run_state.claim(session, run_id, name):
            log.info("run %s is not queued any more (stopped, or taken by another worker): skipping", run_id)
            return "skipped"
        run = session.get(Run, run_id)
        assert run is not None
        stored_config = run.config
    recorder = DatabaseRecorder(
        settings.database_url, run_id, name, settings.recorder_flush_s, settings.heartbeat_interval_s
    )
    status, error, trace = RunStatus.FAILED, None, None
    try:
        config = parse_config(stored_config)
        trainer = Trainer(config, settings.runs_dir / f"run-{run_id}", recorder)
        if trainer.resume():
            log.info("run %s: resuming from iteration %s", run_id, trainer.iteration)
        status = trainer.train(config.iterations)
    except Exception as exc:  # the run page shows the error and its traceback; the worker carries on
        log.exception("run %s failed", run_id)
        error, trace = f"{type(exc).__name__}: {exc}", traceback.format_exc()
    finally:
        recorder.close()
        with session_scope(settings.database_url) as session:
            run_state.finish(session, run_id, name, status, error, trace)
    return status
