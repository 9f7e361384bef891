"""The run configuration's JSON schema and defaults: what the launch form is generated from."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from meal_core.config import RunConfig, config_json_schema

router = APIRouter(prefix="/api/config", tags=["config"])


@router.get("/schema")
def schema() -> dict[str, Any]:
    return config_json_schema()


@router.get("/defaults")
def defaults() -> dict[str, Any]:
    return RunConfig().model_dump(mode="json")
