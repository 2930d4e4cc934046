"""Item embeddings by skip-gram over sessions (item2vec: Word2Vec with items as words, sessions as sentences).

    vectors = item2vec(sessions, n_items, dim=128, window=3, epochs=5, seed=0)   # (n_items, dim); unseen rows 0
    nearest(vectors, item, k=5)                                               # cosine neighbours
    category_agreement(vectors, categories, k=5)                              # sanity: neighbours share a category

gensim's Word2Vec (the `casestudy` extra) is the field standard and installs next to our pins without moving
numpy, scipy or torch; with one worker thread and a seed its vectors are reproducible.
"""

from __future__ import annotations

import numpy as np

from cookbook.checks import positive_int

__all__ = ["category_agreement", "item2vec", "nearest", "require_gensim"]


def require_gensim():
    """gensim's Word2Vec, imported on first use (the optional `casestudy` extra), or a clear ImportError."""
    try:  # function-level: gensim is an optional extra (pip install 'cookbook[casestudy]')
        from gensim.models import Word2Vec
    except ImportError as exc:
        raise ImportError("item2vec needs gensim: pip install 'cookbook[casestudy]' (or gensim>=4.4)") from exc
    return Word2Vec


def item2vec(sessions, n_items: int, *, dim: int = 128, window: int = 3, negative: int = 5, epochs: int = 5,
             sample: float = 0.0, seed: int = 0) -> np.ndarray:
    """Skip-gram with negative sampling over `sessions` (lists of item ids): an (n_items, dim) float32 matrix,
    row i the vector of item i (zeros for an item in no session). One worker thread, so a seed reproduces it.
    The guide's dimension is 128. `sample` is Word2Vec's down-sampling of frequent tokens (gensim's default 1e-3
    is for text): in a catalogue of a few hundred items every item is "frequent", so 1e-3 throws most of the
    sessions away (two clean clusters of 10 items: neighbours agree 50% with it, 100% without); raise it for
    catalogues of millions of items. Shown in notebooks/14 §3."""
    for name, value in (("n_items", n_items), ("dim", dim), ("window", window), ("negative", negative),
                        ("epochs", epochs)):
        positive_int(name, value)
    if not 0 <= sample < 1:
        raise ValueError(f"sample must be in [0, 1), got {sample!r}")
    sessions = [list(s) for s in sessions]
    if not any(len(s) >= 2 for s in sessions):
        raise ValueError("item2vec needs sessions of at least 2 items: a skip-gram learns from co-occurrence")
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sessions if len(s)])
    if flat.min() < 0 or flat.max() >= n_items:
        raise ValueError(f"item id {flat.max() if flat.max() >= n_items else flat.min()} is outside [0, {n_items})")
    Word2Vec = require_gensim()
    model = Word2Vec(sentences=[[str(i) for i in s] for s in sessions], vector_size=dim, window=window,
                     min_count=1, sg=1, negative=negative, epochs=epochs, sample=sample, seed=seed, workers=1)
    vectors = np.zeros((n_items, dim), dtype=np.float32)
    keys = model.wv.index_to_key
    vectors[np.array([int(k) for k in keys])] = model.wv[keys]
    return vectors


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def nearest(vectors, item: int, k: int = 5) -> list[tuple[int, float]]:
    """The `k` items most cosine-similar to `item` (itself and items without a vector left out), with their
    similarity, best first. Shown in notebooks/14 §3."""
    positive_int("k", k)
    unit = _unit(np.asarray(vectors, dtype=np.float32))
    if not 0 <= item < len(unit) or not unit[item].any():
        raise ValueError(f"item {item!r} has no vector (ids run 0..{len(unit) - 1}; items in no session are zero)")
    sims = unit @ unit[item]
    sims[item] = -np.inf
    sims[~unit.any(1)] = -np.inf
    order = np.argsort(-sims, kind="stable")[:k]
    return [(int(i), float(sims[i])) for i in order if np.isfinite(sims[i])]


def category_agreement(vectors, categories, k: int = 5) -> float:
    """Share of each item's `k` nearest neighbours that are in its own category, over items with a vector:
    random vectors give about the share of the largest categories, good ones much more. Shown in notebooks/14 §3."""
    positive_int("k", k)
    categories = np.asarray(categories)
    unit = _unit(np.asarray(vectors, dtype=np.float32))
    if len(categories) != len(unit):
        raise ValueError(f"{len(unit)} vectors but {len(categories)} categories: one per item")
    has = np.flatnonzero(unit.any(1))
    if len(has) <= k:
        raise ValueError(f"only {len(has)} items have a vector; need more than k={k}")
    sims = unit[has] @ unit[has].T
    np.fill_diagonal(sims, -np.inf)
    neighbours = has[np.argsort(-sims, axis=1, kind="stable")[:, :k]]
    return float((categories[neighbours] == categories[has, None]).mean())
