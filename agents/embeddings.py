"""Sentence embeddings computed on this machine: WordLlama's static model by default, or any ``module:factory``.

WordLlama ships its 256-dimension model inside its wheel. Its ``load()`` looks for the tokenizer
in a ``tokenizer/`` folder while the wheel ships ``tokenizers/``, then downloads; loaded with the
package's own folder as the cache and downloads disabled, it finds both files and never goes online.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from kosmos_grpc import ConfigError, import_object

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import NDArray

__all__ = ["Embedder", "WordLlamaEmbedder", "cosine", "load_embedder"]

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """Turns texts into unit vectors, one row each, so a dot product is their cosine similarity."""

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """One unit row per text (a text of no known word: a row of zeros)."""
        ...


class WordLlamaEmbedder:
    """WordLlama's l2_supercat model (256 dimensions), loaded from the installed package, offline."""

    def __init__(self) -> None:
        import wordllama  # about 0.4 s: imported by the agents that embed, when they start

        folder = Path(wordllama.__file__).parent
        try:
            self._model = wordllama.WordLlama.load(cache_dir=folder, disable_download=True)
        except FileNotFoundError as exc:
            raise ConfigError(f"WordLlama's model is not in its package ({folder}): {exc}") from None

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if not texts:
            return np.zeros((0, 256), dtype=np.float32)
        rows: NDArray[np.float32] = np.asarray(self._model.embed(list(texts), norm=False), dtype=np.float32)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        unit = np.zeros_like(rows)
        np.divide(rows, norms, out=unit, where=norms > 0)
        return unit


@functools.cache
def load_embedder(spec: str | None = None) -> Embedder:
    """The embedder ``spec`` names (``module:factory``, called with no argument), else WordLlama's; one a process."""
    if spec is None:
        return WordLlamaEmbedder()
    factory = import_object(spec, form="module:factory")
    embedder = factory()
    if not callable(getattr(embedder, "embed", None)):
        raise ConfigError(f"embedder {spec!r} has no embed(texts) method")
    log.info("embedder: %s", spec)
    return embedder  # type: ignore[no-any-return]


def cosine(query: NDArray[np.float32], rows: NDArray[np.float32]) -> NDArray[np.float32]:
    """Cosine similarity of one unit vector with each unit row."""
    return np.asarray(rows @ query, dtype=np.float32)
