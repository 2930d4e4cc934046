"""Deduplication: exact (hash of normalized text), near-duplicate (MinHash LSH) and semantic (embeddings).

All three take a list of strings, a pandas Series/DataFrame column or a `datasets.Dataset` column and
return a `DedupReport`: the clusters (representative first), a keep-mask, the removed fraction, and
`report.apply(data)` to drop the duplicates from the same kind of object you passed in.

MinHash signatures (`cookbook.data.dedup.signatures`) are bit-for-bit those of `datasketch.MinHash` (default
"affine32" scheme, SHA-1 of each shingle): `engine="numpy"` batches the hashing and the permutations with NumPy and uses several
processes, `engine="datasketch"` is the straightforward per-document `MinHash.update` loop kept as the
reference. Both feed the same `datasketch.MinHashLSH` index, so they find identical clusters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from datasketch import MinHash, MinHashLSH

from cookbook.data.dedup.embeddings import embed
from cookbook.data.dedup.signatures import minhash_signatures, permutations, shingles

__all__ = [
    "DedupReport",
    "exact",
    "lsh_params",
    "minhash",
    "minhash_signatures",
    "normalize",
    "semantic",
    "shingles",
]

_WS = re.compile(r"\s+")


# --------------------------------------------------------------------------------------------- report
@dataclasses.dataclass
class DedupReport:
    """What a deduplication found. `clusters` hold document indices, the kept representative first."""

    method: str
    n: int
    clusters: list[list[int]]
    keep: np.ndarray  # bool per document: True for singletons and representatives
    params: dict
    seconds: float
    pairs: pd.DataFrame  # compared pairs: i, j, similarity, duplicate
    nearest: np.ndarray | None = None  # semantic only: each document's highest cosine to another one

    @property
    def removed(self) -> list[int]:
        """Indices of the documents a deduplication drops (every cluster member but its representative)."""
        return [i for cluster in self.clusters for i in cluster[1:]]

    @property
    def removed_fraction(self) -> float:
        return len(self.removed) / self.n if self.n else 0.0

    @property
    def sizes(self) -> list[int]:
        """Size of each cluster, largest first."""
        return [len(c) for c in self.clusters]

    @property
    def representatives(self) -> list[int]:
        return [cluster[0] for cluster in self.clusters]

    def summary(self) -> dict:
        """Counts for a comparison table: documents, clusters, largest cluster, removed, removed fraction."""
        return {
            "method": self.method,
            "documents": self.n,
            "clusters": len(self.clusters),
            "largest cluster": max((len(c) for c in self.clusters), default=0),
            "removed": len(self.removed),
            "removed fraction": round(self.removed_fraction, 4),
            "seconds": round(self.seconds, 2),
        }

    def table(self, names: Sequence[str] | None = None, max_members: int = 4) -> pd.DataFrame:
        """One row per cluster (largest first): size, representative and a few other members, by name."""
        label = (lambda i: str(names[i])) if names is not None else str
        rows = []
        for cluster in self.clusters:
            others = [label(i) for i in cluster[1 : max_members + 1]]
            if len(cluster) > max_members + 1:
                others.append(f"… +{len(cluster) - max_members - 1}")
            rows.append({"size": len(cluster), "kept": label(cluster[0]), "duplicates": ", ".join(others)})
        return pd.DataFrame(rows, columns=["size", "kept", "duplicates"])

    def apply(self, data, column: str = "text"):
        """`data` without the removed documents, as the same type (list, Series, DataFrame or Dataset)."""
        if _length(data) != self.n:
            raise ValueError(f"report covers {self.n} documents but data has {_length(data)}")
        keep = np.flatnonzero(self.keep)
        if _is_dataset(data):
            return data.select(keep.tolist())
        if isinstance(data, (pd.Series, pd.DataFrame)):
            return data.iloc[keep]
        items = list(data)
        return [items[i] for i in keep]


def _is_dataset(data) -> bool:
    return type(data).__module__.startswith("datasets.") and hasattr(data, "select")


def _length(data) -> int:
    return data.shape[0] if isinstance(data, pd.DataFrame) else len(data)


def _texts(data, column: str = "text") -> list[str]:
    """The documents as a list of str, from a list, Series, DataFrame column or Dataset column."""
    if _is_dataset(data) or isinstance(data, pd.DataFrame):
        names = data.column_names if _is_dataset(data) else list(data.columns)
        if column not in names:
            raise ValueError(f"no column {column!r} to deduplicate; columns are {list(names)}")
        values = list(data[column])
    elif isinstance(data, (str, bytes)):
        raise TypeError("pass a collection of documents (list, Series, Dataset), not a single string")
    elif isinstance(data, Iterable):
        values = list(data)
    else:
        raise TypeError(f"cannot deduplicate a {type(data).__name__}; pass a list, Series, DataFrame or Dataset")
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(f"document {i} is {type(value).__name__} ({value!r:.40}), not text; "
                             "drop or fill missing values first (cookbook.data.clean)")
    return values


def _components(n: int, edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components of size ≥ 2 (union-find), each sorted, ordered by first member."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in edges:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def _report(method, texts, clusters, keep_rule, params, start, pairs=None, nearest=None) -> DedupReport:
    if keep_rule not in ("first", "longest"):
        raise ValueError(f"keep must be 'first' or 'longest', got {keep_rule!r}")
    ordered = []
    for cluster in clusters:
        rep = cluster[0] if keep_rule == "first" else max(cluster, key=lambda i: (len(texts[i]), -i))
        ordered.append([rep] + [i for i in cluster if i != rep])
    ordered.sort(key=lambda c: (-len(c), c[0]))  # largest families first
    keep = np.ones(len(texts), dtype=bool)
    for cluster in ordered:
        keep[cluster[1:]] = False
    if pairs is None:
        pairs = pd.DataFrame({"i": [], "j": [], "similarity": [], "duplicate": []})
    return DedupReport(method, len(texts), ordered, keep, params, time.perf_counter() - start, pairs, nearest)


# ---------------------------------------------------------------------------------------------- exact
def normalize(text: str, lowercase: bool = False) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, ends stripped (optionally case-folded)."""
    text = _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()
    return text.casefold() if lowercase else text


def exact(data, *, column: str = "text", lowercase: bool = False, keep: str = "first") -> DedupReport:
    """Exact duplicates: documents whose normalized text has the same SHA-256."""
    start = time.perf_counter()
    texts = _texts(data, column)
    groups: dict[bytes, list[int]] = {}
    for i, text in enumerate(texts):
        groups.setdefault(hashlib.sha256(normalize(text, lowercase).encode()).digest(), []).append(i)
    clusters = [g for g in groups.values() if len(g) > 1]
    return _report("exact", texts, clusters, keep, {"lowercase": lowercase}, start)


# -------------------------------------------------------------------------------------------- minhash
def lsh_params(threshold: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
    """LSH bands × rows: the most selective (b, r) whose candidate probability at `threshold` is ≥ `recall`.

    A pair with Jaccard s becomes a candidate with probability 1 − (1 − s^r)^b. Candidates are verified
    exactly afterwards, so tuning for recall only costs a few extra comparisons.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if not 0 < recall < 1:
        raise ValueError(f"recall must be in (0, 1), got {recall}")
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if 1 - (1 - threshold**r) ** b >= recall:
            best = (b, r)
    return best


def _jaccard_sorted(x: np.ndarray, y: np.ndarray) -> float:
    if not len(x) and not len(y):
        return 1.0
    inter = len(np.intersect1d(x, y, assume_unique=True))
    return inter / (len(x) + len(y) - inter)


def minhash(data, *, column: str = "text", threshold: float = 0.8, num_perm: int = 128, k: int = 5,
            seed: int = 1, recall: float = 0.99, keep: str = "first", engine: str = "numpy",
            workers: int | None = None) -> DedupReport:
    """Near-duplicates: MinHash LSH candidates whose exact shingle Jaccard is ≥ `threshold`.

    Documents with identical shingle sets are grouped first; one of each then goes into a
    `datasketch.MinHashLSH` with bands tuned by `lsh_params`, every candidate pair is verified with the
    exact Jaccard of the shingle sets, and clusters are the connected components of verified pairs
    (so A~B and B~C put A, B and C together even when A and C differ more).
    """
    start = time.perf_counter()
    texts = _texts(data, column)
    signatures, sets = minhash_signatures(texts, num_perm=num_perm, k=k, seed=seed, engine=engine,
                                          workers=workers)
    # 1) identical shingle sets (incl. documents with no tokens at all) are duplicates outright.
    key = (lambda s: s.tobytes()) if engine == "numpy" else frozenset
    first: dict = {}
    edges = [(first.setdefault(key(s), i), i) for i, s in enumerate(sets)]
    edges = [(i, j) for i, j in edges if i != j]
    uniques = sorted(set(first.values()))
    # 2) LSH over one document per distinct set, then exact verification of every candidate pair.
    b, r = lsh_params(threshold, num_perm, recall)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=(b, r))
    perms = permutations(num_perm, seed)
    sketches = {i: MinHash(seed=seed, hashvalues=signatures[i], permutations=perms, scheme="affine32")
                for i in uniques}
    with lsh.insertion_session() as session:
        for i in uniques:
            session.insert(i, sketches[i], check_duplication=False)
    if engine == "numpy":
        similarity: Callable[[int, int], float] = lambda i, j: _jaccard_sorted(sets[i], sets[j])  # noqa: E731
    else:
        similarity = lambda i, j: len(sets[i] & sets[j]) / len(sets[i] | sets[j])  # noqa: E731
    rows = []
    for i in uniques:
        for j in sorted(lsh.query(sketches[i])):
            if j > i:
                rows.append((i, j, similarity(i, j)))
    pairs = pd.DataFrame(rows, columns=["i", "j", "similarity"]).astype({"i": int, "j": int, "similarity": float})
    pairs["duplicate"] = pairs["similarity"] >= threshold
    edges += list(pairs.loc[pairs["duplicate"], ["i", "j"]].itertuples(index=False, name=None))
    params = dict(threshold=threshold, num_perm=num_perm, k=k, seed=seed, bands=b, rows=r, engine=engine)
    return _report("minhash", texts, _components(len(texts), edges), keep, params, start, pairs)


# ------------------------------------------------------------------------------------------- semantic
def semantic(data, *, column: str = "text", threshold: float = 0.9, model=None, embeddings=None,
             batch_size: int = 32, keep: str = "first", block: int = 2048) -> DedupReport:
    """Semantic duplicates: pairs whose embedding cosine similarity is ≥ `threshold`.

    `model`: a local sentence-transformers folder or a loaded model (default: the offline MiniLM, see
    `cookbook.data.dedup.embeddings`); `embeddings`: precomputed vectors (n, dim) instead.
    """
    if not -1 <= threshold <= 1:
        raise ValueError(f"cosine threshold must be in [-1, 1], got {threshold}")
    start = time.perf_counter()
    texts = _texts(data, column)
    if embeddings is not None:
        name = "embeddings given"
    elif model is None or isinstance(model, (str, Path)):
        name = str(model or "offline all-MiniLM-L6-v2")
    else:
        name = type(model).__name__  # a loaded encoder
    if embeddings is None:
        embeddings = embed(texts, model, batch_size=batch_size)
    vectors = np.asarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise ValueError(f"embeddings must be (n={len(texts)}, dim); got shape {vectors.shape}")
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    nearest = np.full(len(texts), -1.0, dtype=np.float32)
    rows = []
    for s in range(0, len(texts), block):  # blocks of rows keep the similarity matrix small
        sims = vectors[s : s + block] @ vectors.T
        idx = np.arange(s, s + len(sims))
        sims[idx - s, idx] = -np.inf  # a document is not its own neighbour
        nearest[idx] = sims.max(axis=1) if len(texts) > 1 else -1.0
        ii, jj = np.nonzero(sims >= threshold)
        rows += [(s + i, j, float(sims[i, j])) for i, j in zip(ii, jj, strict=True) if j > s + i]
    pairs = pd.DataFrame(rows, columns=["i", "j", "similarity"]).astype({"i": int, "j": int, "similarity": float})
    pairs["duplicate"] = True
    clusters = _components(len(texts), zip(pairs["i"], pairs["j"], strict=True))
    params = dict(threshold=threshold, model=name)
    return _report("semantic", texts, clusters, keep, params, start, pairs, nearest)
