"""Celery tasks. `meal.train_run` trains one stored run, from its last checkpoint if it has one."""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback

from celery.signals import worker_shutting_down

from app import run_state
from app.db import session_scope
from app.models import Run, RunStatus
from app.settings import get_settings
from meal_core.config import parse_config
from meal_core.trainer import Trainer
from worker.celery_app import celery_app
from worker.recorder import DatabaseRecorder

log = logging.getLogger(__name__)

# Set when this worker is told to shut down (Ctrl-C, SIGTERM). The run it is training then stops after the current
# iteration with a checkpoint, as if stopped from the panel, and can be resumed; without this the solo pool would
# train on until killed, and the run would only be failed once its heartbeat was overdue.
shutdown_requested = threading.Event()


@worker_shutting_down.connect
def _stop_training_on_shutdown(**_: object) -> None:
    shutdown_requested.set()


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
        settings.database_url,
        run_id,
        name,
        settings.recorder_flush_s,
        settings.heartbeat_interval_s,
        also_stop_when=shutdown_requested,
    )
    # What the run ends as if training is cut short by something other than an exception (a cold shutdown).
    status, trace = RunStatus.FAILED, None
    error: str | None = "the worker was terminated while training; resume to continue"
    try:
        config = parse_config(stored_config)
        trainer = Trainer(config, settings.runs_dir / f"run-{run_id}", recorder)
        if trainer.resume():
            log.info("run %s: resuming from iteration %s", run_id, trainer.iteration)
        status = trainer.train(config.iterations)
        error = None
        if status == RunStatus.STOPPED and shutdown_requested.is_set():
            error = f"the worker shut down after iteration {trainer.iteration}; resume to continue"
    except Exception as exc:  # the run page shows the error and its traceback; the worker carries on
        log.exception("run %s failed", run_id)
        error, trace = f"{type(exc).__name__}: {exc}", traceback.format_exc()
    finally:
        try:
            recorder.close()
        except Exception as exc:  # the run's last records are lost: say so, rather than leave the run running
            log.exception("run %s: could not store its last records", run_id)
            if status != RunStatus.FAILED:
                status, error = RunStatus.FAILED, f"could not store the run's records: {exc}"
            trace = trace or traceback.format_exc()
        with session_scope(settings.database_url) as session:
            run_state.finish(session, run_id, name, status, error, trace)
    return status
