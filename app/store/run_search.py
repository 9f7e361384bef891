"""The runs list's filters as one query: every filter given must hold (they combine with AND)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from app.store.models import Run
from app.store.sql import json_list_holds


@dataclass(frozen=True)
class RunFilter:
    name: str | None = None  # a substring of the name, in any case
    tag: str | None = None  # one of its tags (normalised as stored)
    status: str | None = None
    algorithm: str | None = None  # config.algorithm.name
    objective: str | None = None  # the name of one of its objectives
    experiment_id: int | None = None
    archived: bool = False  # include archived runs (left out by default)


def find_runs(session: Session, where: RunFilter, limit: int) -> list[Run]:
    """The newest `limit` runs that pass the filter."""
    return list(session.scalars(_query(session, where).order_by(Run.id.desc()).limit(limit)))


def _query(session: Session, where: RunFilter) -> Select[Run]:
    query = select(Run)
    if not where.archived:
        query = query.where(Run.archived.is_(False))
    if where.name:
        query = query.where(func.lower(Run.name).contains(where.name.lower(), autoescape=True))
    if where.tag:
        query = query.where(json_list_holds(session, Run.tags, where.tag))
    if where.status:
        query = query.where(Run.status == where.status)
    if where.algorithm:
        query = query.where(Run.config["algorithm"]["name"].as_string() == where.algorithm)
    if where.objective:
        query = query.where(json_list_holds(session, Run.config, where.objective, key="name", path="objectives"))
    if where.experiment_id is not None:
        query = query.where(Run.experiment_id == where.experiment_id)
    return query
