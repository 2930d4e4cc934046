"""MinHash signatures bit-for-bit equal to `datasketch.MinHash`, computed in batches with NumPy.

datasketch's default "affine32" scheme hashes each shingle with SHA-1 (first 4 bytes, little-endian),
pre-mixes it with MurmurHash3's 32-bit finalizer and applies `num_perm` permutations a·h + b mod 2³²,
keeping the minimum per permutation. Here each document's shingles are hashed in one list
comprehension, all permutations are one (shingles × num_perm) uint32 matrix operation, documents are
batched into blocks, and large corpora are spread over worker processes. `engine="datasketch"` keeps
the straightforward per-shingle `MinHash.update` loop as the reference.
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import os
import re
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from datasketch import MinHash

__all__ = ["minhash_signatures", "permutations", "shingles"]

_TOKEN = re.compile(r"\w+|[^\w\s]")  # words and single punctuation marks; whitespace never matters
_MAX32 = np.uint32(0xFFFFFFFF)


def shingles(text: str, k: int = 5) -> set[str]:
    """The set of k-token shingles of a text (tokens: words and punctuation; a shorter text is one shingle)."""
    tokens = _TOKEN.findall(text)
    if len(tokens) <= k:
        return {" ".join(tokens)} if tokens else set()
    return set(map(" ".join, zip(*[tokens[j:] for j in range(k)], strict=False)))


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, the pre-mix datasketch applies before its affine permutations."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _sign_chunk(texts: list[str], k: int, a: np.ndarray, b: np.ndarray, block: int = 1 << 16):
    """Signatures (n, num_perm) and sorted shingle-hash arrays of a chunk of documents."""
    sha1 = hashlib.sha1
    hashes = []
    for text in texts:
        # datasketch's sha1_hash32: the first 4 digest bytes read as a little-endian uint32.
        raw = b"".join([sha1(s.encode()).digest()[:4] for s in shingles(text, k)])
        hashes.append(np.unique(np.frombuffer(raw, dtype="<u4")))
    signatures = np.full((len(texts), len(a)), _MAX32, dtype=np.uint32)
    sizes = np.array([len(h) for h in hashes])
    doc = 0
    while doc < len(texts):  # batch documents so one (shingles x num_perm) matrix stays ~block rows
        end, rows = doc, 0
        while end < len(texts) and (rows == 0 or rows + sizes[end] <= block):
            rows += sizes[end]
            end += 1
        members = [d for d in range(doc, end) if sizes[d]]
        if members:
            mixed = _fmix32(np.concatenate([hashes[d] for d in members]))
            permuted = mixed[:, None] * a + b  # uint32 arithmetic wraps: this *is* mod 2^32
            starts = np.concatenate([[0], np.cumsum(sizes[members])[:-1]])
            signatures[members] = np.minimum.reduceat(permuted, starts, axis=0)
        doc = end
    return signatures, hashes


_SHARED: Sequence[str] = []  # the documents forked workers read (set only while a pool runs)


def _sign_shared(start: int, end: int, k: int, a: np.ndarray, b: np.ndarray):
    return _sign_chunk(list(_SHARED[start:end]), k, a, b)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) parameters datasketch draws for `MinHash(num_perm, seed)`: the same ones, by construction."""
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a, b


def _workers(workers: int | None, total_chars: int) -> int:
    if workers is None:  # processes only pay off beyond a few MB of text
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = min(cores, 8) if total_chars > 4_000_000 else 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return workers


def minhash_signatures(texts: Sequence[str], *, num_perm: int = 128, k: int = 5, seed: int = 1,
                       engine: str = "numpy", workers: int | None = None):
    """MinHash signatures (n, num_perm) uint32 equal to `datasketch.MinHash(num_perm, seed).hashvalues`
    after updating with each document's shingles, plus the per-document shingle sets used to verify
    candidates (sorted hash arrays for engine="numpy", Python sets of str for engine="datasketch")."""
    if num_perm < 2:
        raise ValueError(f"num_perm must be >= 2, got {num_perm}")
    if k < 1:
        raise ValueError(f"shingle size k must be >= 1, got {k}")
    if engine == "datasketch":
        a, b = permutations(num_perm, seed)
        sets, signatures = [], np.empty((len(texts), num_perm), dtype=np.uint32)
        for i, text in enumerate(texts):
            shingle_set = shingles(text, k)
            m = MinHash(num_perm=num_perm, seed=seed, permutations=(a, b), scheme="affine32")
            for s in shingle_set:
                m.update(s.encode())
            signatures[i] = m.hashvalues
            sets.append(shingle_set)
        return signatures, sets
    if engine != "numpy":
        raise ValueError(f"engine must be 'numpy' or 'datasketch', got {engine!r}")
    a, b = permutations(num_perm, seed)
    workers = _workers(workers, sum(map(len, texts)))
    if workers == 1 or len(texts) < 2 * workers:
        return _sign_chunk(list(texts), k, a, b)
    # Chunks of similar byte size, a few per worker so one big file does not leave a core idle.
    sizes = np.cumsum([len(t) for t in texts])
    n_chunks = 4 * workers
    bounds = np.searchsorted(sizes, np.linspace(0, sizes[-1], n_chunks + 1)[1:-1])
    edges = [0, *sorted(set(int(x) + 1 for x in bounds)), len(texts)]
    ranges = [(s, e) for s, e in zip(edges[:-1], edges[1:], strict=True) if e > s]
    try:
        parts = _sign_parallel(texts, ranges, workers, k, a, b)
    except (BrokenProcessPool, RuntimeError, OSError) as exc:  # e.g. spawn from a script with no main guard
        warnings.warn(f"MinHash worker processes failed ({type(exc).__name__}); signing in this process",
                      stacklevel=2)
        return _sign_chunk(list(texts), k, a, b)
    return np.concatenate([p[0] for p in parts]), [h for p in parts for h in p[1]]


def _sign_parallel(texts, ranges, workers: int, k: int, a: np.ndarray, b: np.ndarray) -> list:
    global _SHARED
    if sys.platform.startswith("linux"):
        # Forked workers read the texts from the parent's memory instead of receiving pickled copies,
        # and fork needs no `if __name__ == "__main__"` guard in the caller's script. The workers only
        # run hashlib, re and NumPy element-wise code (no OpenMP, no locks of the parent's threads).
        _SHARED = texts
        gc.freeze()  # the children's garbage collector then leaves the parent's pages shared (no copy-on-write)
        context, jobs = multiprocessing.get_context("fork"), [(_sign_shared, (s, e)) for s, e in ranges]
    else:  # macOS/Windows: fork is unsafe or absent there
        context, jobs = multiprocessing.get_context("spawn"), [(_sign_chunk, (list(texts[s:e]),)) for s, e in ranges]
    try:
        with warnings.catch_warnings():
            # Python >= 3.12 warns about fork() in any multi-threaded process (a Jupyter kernel is one).
            warnings.filterwarnings("ignore", message=".*multi-threaded.*fork", category=DeprecationWarning)
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                return [f.result() for f in [pool.submit(fn, *args, k, a, b) for fn, args in jobs]]
    finally:
        _SHARED = []
        gc.unfreeze()
