"""The run configuration's JSON schema and defaults (what the launch form is generated from), and a YAML/JSON
parser for the form's "paste or upload" panel."""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field

from app.deps import REQUIRE
from app.routers.runs import config_errors_as_422
from app.schemas import API_ERRORS, BODY_ERRORS
from meal_core.config import (
    MAX_CONFIG_TEXT,
    ConfigError,
    RunConfig,
    config_json_schema,
    parse_config,
    parse_config_text,
)
from meal_core.enums import Role

# One YAML parse at a time per process: the parser is pure Python and holds the GIL, so concurrent parses took turns
# with the event loop (four clients posting at once slowed /healthz 25-fold); waiting on this lock does not.
PARSING = threading.Lock()

router = APIRouter(
    prefix="/api/config", tags=["config"], dependencies=[Depends(REQUIRE[Role.TRAINER])], responses=API_ERRORS
)


class ConfigText(BaseModel):
    text: str = Field(..., max_length=MAX_CONFIG_TEXT, description="A RunConfig as YAML or JSON.")


@router.get("/schema")
def schema() -> dict[str, Any]:
    return config_json_schema()


@router.get("/defaults")
def defaults() -> dict[str, Any]:
    return RunConfig().model_dump(mode="json")


@router.post("/parse", responses=BODY_ERRORS)
def parse(body: ConfigText) -> dict[str, Any]:
    """Parse YAML or JSON text and validate it: the whole config with defaults filled in, or 422 naming each field
    (`loc` ["body", "text"] when the text itself is not YAML/JSON, ["body", "config", *path] for a bad field).
    A plain `def`: FastAPI runs it in its thread pool, off the event loop; the parser's work is bounded by
    MAX_CONFIG_TEXT and MAX_CONFIG_NODES (meal_core/config.py), and one parse runs at a time (PARSING)."""
    try:
        with PARSING:
            data = parse_config_text(body.text, source="text")
    except ConfigError as error:
        raise HTTPException(
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[{"loc": ["body", "text"], "msg": str(error), "type": "parse_error"}],
        ) from None
    try:
        config = parse_config(data)
    except ConfigError as error:
        raise config_errors_as_422(error) from None
    return config.model_dump(mode="json")
