"""A user's own scorer: `module:function` taking (prompts, responses) and returning one float per response."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from meal_core.objectives.base import Objective, ObjectiveError

ScoreFunction = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


def import_function(reference: str) -> ScoreFunction:
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ObjectiveError(f"cannot import module {module_name!r} for {reference!r}: {error}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ObjectiveError(f"{reference!r}: module {module_name!r} has no function {attribute!r}")
    return function  # type: ignore[no-any-return]


class PythonScorer(Objective):
    def __init__(self, name: str, function: str, direction: str = "maximize", batch_size: int = 64) -> None:
        super().__init__(name, direction, batch_size)
        self._function = import_function(function)

    def score_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> Sequence[float]:
        return self._function(list(prompts), list(responses))
