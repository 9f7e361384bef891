"""Reward objectives: one small interface (`Objective`) and plug-ins on raw text, built from config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from meal_core.config import HFClassifierObjective, ObjectiveConfig
from meal_core.objectives.base import Objective, ObjectiveError
from meal_core.objectives.hf_classifier import ClassifierModel, HFClassifierScorer
from meal_core.objectives.python_function import PythonScorer
from meal_core.objectives.relevance import RelevanceScorer
from meal_core.objectives.text_scorers import BrevityScorer, CoverageScorer, ReadabilityScorer, SentimentScorer

__all__ = ["Objective", "ObjectiveError", "build_objective", "build_objectives", "score_responses"]


def score_responses(
    objectives: Sequence[Objective], prompts: Sequence[str], responses: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(raw, oriented) scores, each (N, K): raw as the scorers return them, oriented higher-is-better. The trainer,
    `meal generate` and the playground all score through this."""
    raw = np.stack([o.score(prompts, responses) for o in objectives], axis=1)
    return raw, raw * np.array([o.sign for o in objectives])


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
            options["device"] = device if options["device"] == "auto" else options["device"]
            return HFClassifierScorer(**options)
        case "python":
            return PythonScorer(**options)
    raise ObjectiveError(f"unknown objective type {config.type!r}")  # pragma: no cover - the config union is closed


def build_objectives(configs: list[ObjectiveConfig], device: str = "cpu") -> list[Objective]:
    """The run's objectives. hf_classifier objectives that name the same model with the same input settings share
    one loaded model and one forward pass per batch (a multi-output reward model)."""
    shared: dict[tuple[object, ...], ClassifierModel] = {}
    objectives: list[Objective] = []
    for config in configs:
        if isinstance(config, HFClassifierObjective):
            where = device if config.device == "auto" else config.device
            key: tuple[Any, ...] = (config.model, config.input_format, config.separator, config.max_length)
            key += (config.trust_remote_code, where, config.dtype, config.batch_size)
            if key not in shared:
                try:
                    shared[key] = ClassifierModel(*key)
                except ObjectiveError as error:
                    raise ObjectiveError(f"{config.name}: {error}") from None
            options = config.model_dump(include={"name", "direction", "batch_size", "output"})
            objectives.append(HFClassifierScorer(**options, model=shared[key]))
        else:
            objectives.append(build_objective(config, device))
    return objectives
