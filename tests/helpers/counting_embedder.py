"""An embedder that counts what it embeds: WordLlama's, wrapped, so a test can see what was embedded again."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from agents.embeddings import WordLlamaEmbedder

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    from numpy.typing import NDArray

__all__ = ["CountingEmbedder", "factory"]


class CountingEmbedder:
    """WordLlama's embeddings, counting the texts embedded (queries included) and remembering them."""

    def __init__(self) -> None:
        self._inner = WordLlamaEmbedder()
        self._lock = threading.Lock()  # Athena embeds from worker threads
        self.texts: list[str] = []

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.texts)

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        with self._lock:
            self.texts.extend(texts)
        return self._inner.embed(texts)


def factory() -> CountingEmbedder:
    """``embedder = "tests.helpers.counting_embedder:factory"``: one per process (load_embedder keeps it)."""
    return CountingEmbedder()
