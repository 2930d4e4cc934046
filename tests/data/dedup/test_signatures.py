"""MinHash signatures: bit-identical to datasketch.MinHash, the same in one or several processes."""

import warnings

import numpy as np
import pytest
from datasketch import MinHash

from cookbook.data import synthetic
from cookbook.data.dedup import signatures
from tests.data.clean.caller import at_caller

BASE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\nprint(add(1, 2), sub(3, 4))\n"


def test_shingles_are_k_token_windows():
    assert signatures.shingles("x = f(a)", k=3) == {"x = f", "= f (", "f ( a", "( a )"}
    assert signatures.shingles("x = 1", k=5) == {"x = 1"}  # shorter than k: the whole text is one shingle
    assert signatures.shingles("   \n\t ") == set()
    assert signatures.shingles("a  b\n\tc", k=2) == signatures.shingles("a b c", k=2)  # whitespace never matters


def test_permutations_are_datasketch_s():
    a, b = signatures.permutations(16, seed=3)
    np.testing.assert_array_equal(np.array([a, b]), MinHash(num_perm=16, seed=3).permutations)
    assert (a % 2 == 1).all()  # odd multipliers: each permutation is a bijection mod 2^32


def test_signatures_equal_datasketch_minhash_update():
    texts = [BASE, BASE.replace("sub", "mul"), "x", "", "é ü ß 日本語 テキスト " * 20]
    fast, hashes = signatures.minhash_signatures(texts, num_perm=64, k=3, seed=7)
    for text, signature in zip(texts, fast, strict=True):
        reference = MinHash(num_perm=64, seed=7)  # the library itself, one update per shingle
        for s in signatures.shingles(text, 3):
            reference.update(s.encode("utf-8"))
        np.testing.assert_array_equal(signature, reference.hashvalues)
    assert len(hashes[3]) == 0 and fast[3].min() == 2**32 - 1  # empty document: untouched sketch
    slow, sets = signatures.minhash_signatures(texts, num_perm=64, k=3, seed=7, engine="datasketch")
    np.testing.assert_array_equal(fast, slow)
    assert sets[0] == signatures.shingles(BASE, 3)


def test_process_pool_matches_single_process():
    docs, _ = synthetic.near_duplicates(20, seed=1)
    one, h1 = signatures.minhash_signatures(docs, workers=1)
    two, h2 = signatures.minhash_signatures(docs, workers=2)
    np.testing.assert_array_equal(one, two)
    assert all(np.array_equal(a, b) for a, b in zip(h1, h2, strict=True))


def test_failed_worker_processes_fall_back_to_one_process(monkeypatch):
    docs, _ = synthetic.near_duplicates(10, seed=1)

    def broken(*args):
        raise RuntimeError("start method not usable here")

    monkeypatch.setattr(signatures, "_sign_parallel", broken)
    with pytest.warns(UserWarning, match="signing in this process"):
        fallback, _ = signatures.minhash_signatures(docs, workers=2)
    np.testing.assert_array_equal(fallback, signatures.minhash_signatures(docs, workers=1)[0])


# --- the survivors of the 2026-12-06 mutation run (issue 30) ---------------------------------------------------

def _datasketch(text, num_perm=128, seed=1, k=5):
    reference = MinHash(num_perm=num_perm, seed=seed)
    for s in signatures.shingles(text, k):
        reference.update(s.encode("utf-8"))
    return reference.hashvalues


def test_defaults_are_datasketch_s_and_the_smallest_k_and_num_perm_work():
    texts = [BASE, "one two three four five six seven"]
    fast, _ = signatures.minhash_signatures(texts)  # defaults: 128 permutations, seed 1 (datasketch's), k = 5
    np.testing.assert_array_equal(fast, [_datasketch(t) for t in texts])
    one, _ = signatures.minhash_signatures(texts, k=1, num_perm=2)
    np.testing.assert_array_equal(one, [_datasketch(t, num_perm=2, k=1) for t in texts])
    slow, _ = signatures.minhash_signatures(texts, engine="datasketch")
    assert slow.dtype == np.uint32 and fast.dtype == np.uint32
    with pytest.raises(ValueError, match=r"^num_perm must be >= 2, got 1$"):
        signatures.minhash_signatures(texts, num_perm=1)
    with pytest.raises(ValueError, match=r"^shingle size k must be >= 1, got 0$"):
        signatures.minhash_signatures(texts, k=0)


@pytest.mark.parametrize("block", [1, 3, 10])
def test_small_batches_of_shingle_rows_give_the_same_signatures(block):
    texts = [BASE, "", "a b c d e f g", "x", BASE.replace("add", "mul"), "p q r s t u v w"]
    a, b = signatures.permutations(16, seed=2)
    batched, hashes = signatures._sign_chunk(texts, 3, a, b, block=block)
    np.testing.assert_array_equal(batched, [_datasketch(t, num_perm=16, seed=2, k=3) for t in texts])
    assert [len(h) for h in hashes] == [len(signatures.shingles(t, 3)) for t in texts]


def test_workers_by_corpus_size_and_cores(monkeypatch):
    monkeypatch.setattr(signatures.os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    assert signatures._workers(None, 4_000_000) == 1  # up to 4 MB of text: one process
    assert signatures._workers(None, 4_000_001) == 8  # beyond: one per core, at most 8
    monkeypatch.setattr(signatures.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert signatures._workers(None, 10_000_000) == 3 and signatures._workers(5, 10) == 5
    with pytest.raises(ValueError, match=r"^workers must be >= 1, got 0$"):
        signatures._workers(0, 10)


def test_process_pool_with_one_long_document_first():
    # the first document is longer than a chunk's share of the bytes: chunk bounds start at 0
    docs = ["word " * 3000, *synthetic.near_duplicates(6, seed=2)[0]]
    np.testing.assert_array_equal(signatures.minhash_signatures(docs, workers=2)[0],
                                  signatures.minhash_signatures(docs, workers=1)[0])


def test_failed_worker_processes_warning_in_full_at_the_caller(monkeypatch):
    def broken(*args):
        raise OSError("no fork here")

    monkeypatch.setattr(signatures, "_sign_parallel", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        signatures.minhash_signatures(synthetic.near_duplicates(10, seed=1)[0], workers=2)
    assert [str(w.message) for w in caught] == ["MinHash worker processes failed (OSError); signing in this process"]
    assert at_caller(caught[0], __file__)


def test_a_forked_worker_signs_its_slice_of_the_shared_documents(monkeypatch):
    texts = [BASE, "a b c d e f g", "", "x y"]
    a, b = signatures.permutations(8, seed=3)
    monkeypatch.setattr(signatures, "_SHARED", texts)  # what _sign_parallel sets before forking
    part, hashes = signatures._sign_shared(1, 3, 2, a, b)
    np.testing.assert_array_equal(part, [_datasketch(t, num_perm=8, seed=3, k=2) for t in texts[1:3]])
    assert len(hashes) == 2 and len(hashes[1]) == 0


def test_workers_without_sched_getaffinity_count_cpus(monkeypatch):
    monkeypatch.delattr(signatures.os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.setattr(signatures.os, "cpu_count", lambda: 6)
    assert signatures._workers(None, 5_000_000) == 6
    monkeypatch.setattr(signatures.os, "cpu_count", lambda: None)  # "undeterminable": one process
    assert signatures._workers(None, 5_000_000) == 1
