"""MinHash signatures: bit-identical to datasketch.MinHash, the same in one or several processes."""

import numpy as np
import pytest
from datasketch import MinHash

from cookbook.data import synthetic
from cookbook.data.dedup import signatures

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
