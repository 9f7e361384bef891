"""Exports: a trained run taken away from the panel, as `meal export` makes it.

A trainer asks for one on the run page (a checkpoint, and the weights to merge in, or the adapters alone); it is
stored, a worker on the playground queue writes the export and zips it into the artefact store, and the page offers
the zip for download once it is done. Every export is kept, with who asked for it.
"""

from __future__ import annotations

import math
from datetime import datetime

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy import select

from app.deps import REQUIRE, IdPath, RunDep, SessionDep, SettingsDep, TrainerDep
from app.routers.playground import STORE_WAIT_S
from app.schemas import API_ERRORS, BODY_ERRORS, error_responses
from app.store.artifacts import EXPORTS, ArtifactError, ArtifactStore, open_store
from app.store.models import ModelExport, Run
from app.store.queue import BrokerUnavailable, enqueue_export
from meal_core.enums import JobStatus, Role

router = APIRouter(tags=["exports"], dependencies=[Depends(REQUIRE[Role.TRAINER])], responses=API_ERRORS)
EXPORTS_LISTED = 50


class ExportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: list[float] | None = Field(
        None,
        min_length=2,
        max_length=8,
        description="One value per objective, merged into the model; none: the adapters alone (adapters: true).",
    )
    adapters: StrictBool = Field(
        False, description="Export the adapters in peft format with their mixing rule, to choose a weight later."
    )
    checkpoint: str | None = Field(None, pattern=r"^iter-\d{6}$", description="'iter-000012', or none: the latest.")


class ExportOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: int
    status: JobStatus
    created_by: str
    checkpoint: str | None
    weights: list[float] | None
    adapters: bool
    artifact: str | None = Field(None, description="The zip's file name, once written.")
    size_bytes: int | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None


def checked_weights(weights: list[float] | None, adapters: bool, objectives: list[str]) -> list[float] | None:
    """The weights on the simplex, or a 422 naming what is wrong with them."""
    if weights is None:
        if not adapters:
            raise HTTPException(422, "weights: needed for a merged export (or adapters: true, to choose them later)")
        return None
    if len(weights) != len(objectives):
        raise HTTPException(422, f"weights: {len(objectives)} values, one per objective ({', '.join(objectives)})")
    total = sum(weights)  # inf when it overflows (math.fsum would raise)
    if not all(math.isfinite(v) and v >= 0 for v in weights) or not math.isfinite(total) or total <= 0:
        raise HTTPException(422, "weights: finite, non-negative numbers with a positive sum")
    return [v / total for v in weights]


def store_of(settings: SettingsDep) -> ArtifactStore:
    return open_store(settings, retry_s=STORE_WAIT_S)


def check_checkpoint(store: ArtifactStore, run: Run, checkpoint: str | None) -> None:
    try:
        names = store.checkpoint_names(run.id)
    except ArtifactError as exc:
        raise HTTPException(503, str(exc)) from exc
    if not names:
        raise HTTPException(409, f"run {run.id} has no checkpoint yet: nothing to export until an iteration is saved")
    if checkpoint is not None and checkpoint not in names:
        raise HTTPException(409, f"checkpoint: run {run.id} has {', '.join(names)}")


@router.post(
    "/api/runs/{run_id}/exports",
    response_model=ExportOut,
    status_code=status.HTTP_201_CREATED,
    responses={**BODY_ERRORS, **error_responses(404, 409, 503)},
)
def create_export(
    body: ExportIn, run: RunDep, session: SessionDep, settings: SettingsDep, user: TrainerDep
) -> ModelExport:
    weights = checked_weights(body.weights, body.adapters, run.objective_names)
    check_checkpoint(store_of(settings), run, body.checkpoint)
    export = ModelExport(
        run_id=run.id,
        created_by=user.name,
        checkpoint=body.checkpoint,
        weights=weights,
        adapters=body.adapters,
        status=JobStatus.QUEUED,
    )
    session.add(export)
    session.commit()  # the worker must find it when the message arrives
    try:
        enqueue_export(settings.broker_url, export.id)
    except BrokerUnavailable as unavailable:
        export.status, export.error = JobStatus.FAILED, str(unavailable)
        session.commit()
        raise HTTPException(503, f"export {export.id} stored but not queued: {unavailable}") from None
    session.refresh(export)
    return export


@router.get("/api/runs/{run_id}/exports", response_model=list[ExportOut], responses=error_responses(404))
def list_exports(run: RunDep, session: SessionDep) -> list[ModelExport]:
    query = select(ModelExport).where(ModelExport.run_id == run.id).order_by(ModelExport.id.desc())
    return list(session.scalars(query.limit(EXPORTS_LISTED)))


def get_export(export_id: IdPath, session: SessionDep) -> ModelExport:
    export = session.get(ModelExport, export_id)
    if export is None:
        raise HTTPException(404, f"export {export_id} not found")
    return export


@router.get("/api/exports/{export_id}", response_model=ExportOut, responses=error_responses(404))
def read_export(export_id: IdPath, session: SessionDep) -> ModelExport:
    return get_export(export_id, session)


@router.get(
    "/api/exports/{export_id}/download",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}, **error_responses(404, 409, 503)},
)
def download_export(export_id: IdPath, session: SessionDep, settings: SettingsDep) -> FileResponse:
    """The export's zip (from the artefact store, through this server's cache)."""
    export = get_export(export_id, session)
    if export.status != JobStatus.SUCCEEDED or export.artifact is None:
        raise HTTPException(409, f"export {export_id} is {export.status}: nothing to download")
    try:
        path = store_of(settings).fetch_file(export.run_id, f"{EXPORTS}/{export.artifact}")
    except FileNotFoundError:
        raise HTTPException(404, f"export {export_id}: its file is no longer in the artefact store") from None
    except ArtifactError as exc:
        raise HTTPException(503, str(exc)) from exc
    return FileResponse(path, media_type="application/zip", filename=export.artifact)
