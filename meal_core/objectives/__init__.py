"""Reward objectives: one small interface (`Objective`) and plug-ins on raw text, built from config."""

from __future__ import annotations

from meal_core.config import ObjectiveConfig
from meal_core.objectives.base import Objective, ObjectiveError
from meal_core.objectives.hf_classifier import HFClassifierScorer
from meal_core.objectives.python_function import PythonScorer
from meal_core.objectives.relevance import RelevanceScorer
from meal_core.objectives.text_scorers import BrevityScorer, CoverageScorer, ReadabilityScorer, SentimentScorer

__all__ = ["Objective", "ObjectiveError", "build_objective", "build_objectives"]


def build_objective(config: ObjectiveConfig, device: str = "cpu") -> Objective:
    options = config.model_dump(exclude={"type"})
    match config.type:
        case "sentiment":
            return SentimentScorer(**options)
        case "readability":
            return ReadabilityScorer(**options)
        case "brevity":
            return BrevityScorer(**options)
        case "coverage":
            return CoverageScorer(**options)
        case "relevance":
            return RelevanceScorer(**options, device=device)
        case "hf_classifier":
            return HFClassifierScorer(**options, device=device)
        case "python":
            return PythonScorer(**options)
    raise ObjectiveError(f"unknown objective type {config.type!r}")  # pragma: no cover - the config union is closed


def build_objectives(configs: list[ObjectiveConfig], device: str = "cpu") -> list[Objective]:
    return [build_objective(c, device) for c in configs]
