"""Celery tasks. `meal.train_run` trains one stored run, from its last checkpoint if it has one, then (for a run of
an experiment that asks for it) evaluates it on the experiment's held-out prompts;
`meal.playground_generate` samples one playground comparison and `meal.export_model` exports a trained run (both on
the playground queue, so they never wait behind training)."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from celery.signals import worker_ready, worker_shutting_down
from sqlalchemy import select, update

from app.store import run_state
from app.store.artifacts import EXPORTS, ArtifactStore, open_store
from app.store.db import session_scope
from app.store.models import (
    Evaluation,
    Experiment,
    HeldOutEvaluation,
    ModelExport,
    PlaygroundGeneration,
    Run,
    read_config,
    utcnow,
)
from app.store.run_delete import forget_deleted_runs
from app.store.settings import Settings, get_settings
from app.store.sql import insert_ignoring_duplicates, storable_text
from meal_core.config import RunConfig
from meal_core.enums import JobStatus, RunStatus
from meal_core.experiment import HeldOutConfig
from meal_core.experiment_runs import held_out_evaluation
from meal_core.export import ExportError, export_run, zip_folder
from meal_core.inference import BASE, LoadedRun
from meal_core.policy import Sampling
from meal_core.trainer import Trainer
from worker.celery_app import celery_app
from worker.recorder import DatabaseRecorder, evaluation_record, evaluation_row

log = logging.getLogger(__name__)

# Set when this worker is told to shut down (Ctrl-C, SIGTERM). The run it is training then stops after the current
# iteration with a checkpoint, as if stopped from the panel, and can be resumed; without this the solo pool would
# train on until killed, and the run would only be failed once its heartbeat was overdue.
shutdown_requested = threading.Event()


@worker_shutting_down.connect
def _stop_training_on_shutdown(**_: object) -> None:
    shutdown_requested.set()


@worker_ready.connect
def _forget_deleted_on_start(**_: object) -> None:
    forget_deleted(get_settings())


def forget_deleted(settings: Settings) -> None:
    """Drop this machine's cached copies of runs deleted elsewhere; before every task (cheap: a folder listing and
    one SELECT), and never the task's failure."""
    try:
        with session_scope(settings.database_url) as session:
            gone = forget_deleted_runs(session, open_store(settings))
        if gone:
            log.info("dropped the cached copies of deleted runs %s", gone)
    except Exception:
        log.exception("could not drop the cached copies of deleted runs")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@celery_app.task(name="meal.train_run")
def train_run(run_id: int) -> str:
    settings = get_settings()
    forget_deleted(settings)
    name = worker_name()
    with session_scope(settings.database_url) as session:
        if not run_state.claim(session, run_id, name):
            log.info("run %s is not queued any more (stopped, or taken by another worker): skipping", run_id)
            return "skipped"
        run = session.get(Run, run_id)
        assert run is not None
        stored_config = run.config
        held_out = held_out_asked(session, run)
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
        config = read_config(stored_config)
        store = open_store(settings)
        # Resuming on any machine: the store's newest checkpoint into this machine's cache, where resume looks (or
        # this machine's own, published first, if it is newer).
        store.fetch_latest(run_id)
        store.adopt(run_id, config.checkpoint.keep_last)
        trainer = Trainer(
            config,
            store.run_dir(run_id),
            recorder,
            on_checkpoint=lambda saved: store.publish(run_id, saved, config.checkpoint.keep_last),
        )
        if trainer.resume():
            log.info("run %s: resuming from iteration %s", run_id, trainer.iteration)
        # From a checkpoint at the last iteration (a worker that died in the held-out evaluation) this trains no
        # iteration: it repeats the final evaluation (stored once: a record lost with that worker is recovered)
        # and ends, leaving the held-out evaluation.
        status = trainer.train(config.iterations)
        if status == RunStatus.SUCCEEDED and held_out is not None:
            evaluate_held_out(settings.database_url, run_id, trainer, HeldOutConfig.model_validate(held_out))
        error = None
        if status == RunStatus.STOPPED and shutdown_requested.is_set():
            error = f"the worker shut down after iteration {trainer.iteration}; resume to continue"
    except Exception as exc:  # the run page shows the error and its traceback; the worker carries on
        log.exception("run %s failed", run_id)
        status = RunStatus.FAILED  # also after training succeeded: its held-out evaluation failed
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


def held_out_asked(session: Any, run: Run) -> dict[str, Any] | None:
    """The held-out evaluation the run's experiment asks of every run (ExperimentConfig.held_out), if any."""
    experiment = session.get(Experiment, run.experiment_id) if run.experiment_id is not None else None
    asked = experiment.config.get("held_out") if experiment is not None else None
    return asked if isinstance(asked, dict) else None


class HeldOutFailed(RuntimeError):
    """Training finished, its held-out evaluation did not: a resume evaluates again without training again."""


def evaluate_held_out(database_url: str, run_id: int, trainer: Trainer, asked: HeldOutConfig) -> bool:
    """The trained run's final evaluation on the held-out prompts (Trainer.evaluation, as `meal experiment run`
    and `meal eval --prompts` call it), stored once: skipped where the run has it already, and a second store
    of it is a no-op (one row per run). True if it evaluated."""
    with session_scope(database_url) as session:
        if session.scalar(select(HeldOutEvaluation.id).where(HeldOutEvaluation.run_id == run_id)) is not None:
            log.info("run %s: has its held-out evaluation already", run_id)
            return False
    try:
        result = held_out_evaluation(trainer, asked.prompts, asked.samples_per_weight, asked.max_prompts)
    except Exception as exc:
        raise HeldOutFailed(
            f"training finished, but the held-out evaluation on {asked.prompts} failed ({type(exc).__name__}: "
            f"{exc}); resume to evaluate again (training is not repeated)"
        ) from exc
    row = evaluation_row(run_id, result)
    with session_scope(database_url) as session:
        insert_ignoring_duplicates(session, HeldOutEvaluation, [row], ["run_id"])
    log.info("run %s: held-out evaluation on %s stored (hypervolume %.4f)", run_id, asked.prompts, result.hypervolume)
    return True


# -- the playground ---------------------------------------------------------------------------------------------------


class PolicyCache:
    """The most recently used policies, kept loaded: comparing prompt after prompt on one run loads it once."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._loaded: OrderedDict[tuple[int, str, str | None], LoadedRun] = OrderedDict()

    def get(self, run_id: int, config: RunConfig, store: ArtifactStore, checkpoint: str | None) -> LoadedRun:
        latest = store.fetch_latest(run_id)  # the normaliser and the net come from the newest checkpoint
        chosen = checkpoint or latest or BASE
        key = (run_id, chosen, latest)
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        loaded = LoadedRun(config, store.fetch(run_id, [chosen]), chosen)
        self._loaded[key] = loaded
        while len(self._loaded) > self.size:
            self._loaded.popitem(last=False)
        return loaded


POLICIES = PolicyCache()


def front_placement(normalized: np.ndarray, front: np.ndarray, step: int | None) -> dict[str, Any]:
    """Where a response's normalised scores lie against the run's latest evaluation front (all maximised)."""
    if front.size == 0:
        return {"evaluation_step": None, "front_points": 0, "dominated_by": 0, "dominates": 0}
    dominated_by = int(((front >= normalized).all(axis=1) & (front > normalized).any(axis=1)).sum())
    dominates = int(((normalized >= front).all(axis=1) & (normalized > front).any(axis=1)).sum())
    return {"evaluation_step": step, "front_points": len(front), "dominated_by": dominated_by, "dominates": dominates}


def latest_front(session: Any, run_id: int) -> tuple[np.ndarray, int | None]:
    evaluation = session.scalar(
        select(Evaluation).where(Evaluation.run_id == run_id).order_by(Evaluation.step.desc()).limit(1)
    )
    if evaluation is None:
        return np.empty((0, 0)), None
    points = [p["rewards"] for p in evaluation.points if p.get("on_front")]
    return np.asarray(points, dtype=np.float64), evaluation.step


@dataclass(frozen=True)
class PlaygroundJob:
    """What a claimed generation asks for, read in one short transaction."""

    id: int
    run_id: int
    config: dict[str, Any]
    checkpoint: str | None
    prompt: str
    weights: list[Any]  # vectors or "auto"
    seed: int
    samples: int
    temperature: float
    max_new_tokens: int


def claim_generation(session: Any, generation_id: int) -> PlaygroundJob | None:
    """queued → running (run_state.claim_job); None if another worker took it or it was not queued."""
    g = run_state.claim_job(session, PlaygroundGeneration, generation_id)
    if g is None:
        return None
    run = session.get(Run, g.run_id)
    return PlaygroundJob(
        g.id,
        run.id,
        run.config,
        g.checkpoint,
        g.prompt,
        list(g.weights),
        g.seed,
        g.samples,
        g.temperature,
        g.max_new_tokens,
    )


def by_objective(names: list[str], values: np.ndarray) -> dict[str, float]:
    return dict(zip(names, values.tolist(), strict=True))


def playground_outputs(job: PlaygroundJob, loaded: LoadedRun, front: np.ndarray, step: int | None) -> list[dict]:
    """Sample every weight vector in one call, score every response, place each against the front."""
    rows = np.stack([loaded.auto_weights(job.prompt) if w == "auto" else np.asarray(w, float) for w in job.weights])
    sampling = Sampling.of(loaded.config.algorithm, temperature=job.temperature, max_new_tokens=job.max_new_tokens)
    texts = loaded.sample(job.prompt, rows, job.samples, sampling, job.seed)
    scored = loaded.score(job.prompt, [t for group in texts for t in group])
    outputs = []
    for v, (weights, group) in enumerate(zip(rows, texts, strict=True)):
        samples = []
        for i, text in enumerate(group):
            raw = scored.raw[v * job.samples + i]
            normalized = scored.normalized[v * job.samples + i] if scored.normalized is not None else None
            samples.append(
                {
                    "text": storable_text(text),
                    "scores": dict(zip(loaded.names, raw.tolist(), strict=True)),
                    "normalized": {}
                    if normalized is None
                    else dict(zip(loaded.names, normalized.tolist(), strict=True)),
                    "front": None if normalized is None else front_placement(normalized, front, step),
                }
            )
        outputs.append({"weights": weights.round(4).tolist(), "auto": job.weights[v] == "auto", "samples": samples})
    return outputs


@celery_app.task(name="meal.playground_generate")
def playground_generate(generation_id: int) -> str:
    settings = get_settings()
    forget_deleted(settings)
    with session_scope(settings.database_url) as session:
        job = claim_generation(session, generation_id)
        if job is None:
            return "skipped"
        front, step = latest_front(session, job.run_id)
    values: dict[str, Any] = {"status": JobStatus.FAILED, "finished_at": utcnow()}
    try:
        loaded = POLICIES.get(job.run_id, read_config(job.config), open_store(settings), job.checkpoint)
        outputs = playground_outputs(job, loaded, front, step)
        values.update(status=JobStatus.SUCCEEDED, outputs=outputs, checkpoint=loaded.checkpoint)
    except Exception as exc:  # shown on the playground page; the worker carries on
        log.exception("playground generation %s failed", generation_id)
        values["error"] = storable_text(f"{type(exc).__name__}: {exc}")
    with session_scope(settings.database_url) as session:
        session.execute(update(PlaygroundGeneration).where(PlaygroundGeneration.id == generation_id).values(**values))
    return str(values["status"])


# -- exports ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportJob:
    """What a claimed export asks for, read in one short transaction with the run's config and last evaluation."""

    id: int
    run_id: int
    config: RunConfig
    checkpoint: str | None
    weights: list[float] | None
    adapters: bool
    evaluation: dict[str, Any] | None


def claim_export(session: Any, export_id: int) -> ExportJob | None:
    """queued → running (run_state.claim_job); None if another worker took it or it was not queued."""
    export = run_state.claim_job(session, ModelExport, export_id)
    if export is None:
        return None
    run = session.get(Run, export.run_id)
    last = session.scalar(
        select(Evaluation).where(Evaluation.run_id == run.id).order_by(Evaluation.step.desc()).limit(1)
    )
    return ExportJob(
        export.id,
        run.id,
        read_config(run.config),
        export.checkpoint,
        export.weights,
        export.adapters,
        None if last is None else evaluation_record(last),
    )


def write_export(job: ExportJob, store: ArtifactStore) -> dict[str, Any]:
    """`meal export` on the store's checkpoint, zipped into the run's exports folder and published; returns what
    the export's row records."""
    names = store.checkpoint_names(job.run_id)
    chosen = job.checkpoint or (names[-1] if names else None)
    if chosen is None:
        raise ExportError(f"run {job.run_id} has no checkpoint yet: nothing to export")
    run_dir = store.fetch(job.run_id, [chosen])
    weights = None if job.weights is None else ",".join(repr(float(v)) for v in job.weights)
    relative = f"{EXPORTS}/run-{job.run_id}-{'adapters' if job.adapters else 'merged'}-{job.id}.zip"
    target = run_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as scratch:
        folder = export_run(run_dir, Path(scratch) / "model", weights, job.adapters, chosen, job.evaluation, job.config)
        zip_folder(folder, target)
    store.publish_file(job.run_id, relative)
    return {"checkpoint": chosen, "artifact": target.name, "size_bytes": target.stat().st_size}


@celery_app.task(name="meal.export_model")
def export_model(export_id: int) -> str:
    settings = get_settings()
    forget_deleted(settings)
    with session_scope(settings.database_url) as session:
        job = claim_export(session, export_id)
    if job is None:
        return "skipped"
    values: dict[str, Any] = {"status": JobStatus.FAILED, "finished_at": utcnow()}
    try:
        values.update(write_export(job, open_store(settings)), status=JobStatus.SUCCEEDED)
    except ExportError as refused:  # the user's to fix (a checkpoint that is gone): shown as it is
        values["error"] = storable_text(str(refused))
    except Exception as exc:  # shown on the run page; the worker carries on
        log.exception("export %s failed", export_id)
        values["error"] = storable_text(f"{type(exc).__name__}: {exc}")
    values["finished_at"] = utcnow()
    with session_scope(settings.database_url) as session:
        session.execute(update(ModelExport).where(ModelExport.id == export_id).values(**values))
    return str(values["status"])
