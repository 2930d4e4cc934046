import numpy as np
import pytest

from cookbook import casestudy as cs

pytest.importorskip("gensim", reason="item2vec needs gensim (the casestudy extra)")


def two_clusters(n_sessions=300, seed=0):
    """Sessions that stay inside one of two groups of items: 0-9 and 10-19 (item 20 appears nowhere)."""
    rng = np.random.default_rng(seed)
    return [list(rng.integers(10, size=6) + 10 * rng.integers(2)) for _ in range(n_sessions)]


def test_item2vec_learns_the_session_structure_reproducibly():
    sessions = two_clusters()
    vectors = cs.item2vec(sessions, 21, dim=16, window=3, epochs=10, seed=0)
    assert vectors.shape == (21, 16) and vectors.dtype == np.float32
    assert not vectors[20].any()  # in no session: a zero row
    assert np.array_equal(vectors, cs.item2vec(sessions, 21, dim=16, window=3, epochs=10, seed=0))
    categories = np.r_[np.zeros(10, int), np.ones(11, int)]
    assert cs.category_agreement(vectors, categories, k=5) > 0.95  # chance: about 0.45
    neighbours = cs.nearest(vectors, 3, k=5)
    assert len(neighbours) == 5 and all(i < 10 and i != 3 for i, _ in neighbours)
    sims = [s for _, s in neighbours]
    assert sims == sorted(sims, reverse=True)


def test_nearest_and_agreement_by_hand():
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0], [0, 0]], dtype=np.float32)
    assert [i for i, _ in cs.nearest(vectors, 0, k=3)] == [1, 2, 3]
    assert cs.nearest(vectors, 0, k=1)[0][1] == pytest.approx(0.9 / np.hypot(0.9, 0.1))
    # item 4 has no vector: left out. Nearest: 0 -> 1, 1 -> 0 (same category), 2 -> 1 (cos 0.11: not), 3 -> 2
    # (cos 0 beats -1 and -0.99: same category): 3 of 4
    assert cs.category_agreement(vectors, [0, 0, 1, 1, 1], k=1) == pytest.approx(0.75)


@pytest.mark.parametrize("call, match", [
    (lambda: cs.item2vec([[1], [2]], 5), "sessions of at least 2 items"),
    (lambda: cs.item2vec([[1, 7]], 5), r"item id 7 is outside \[0, 5\)"),
    (lambda: cs.item2vec([[1, 2]], 5, dim=0), "dim must be a positive int"),
    (lambda: cs.nearest(np.eye(3), 5), "item 5 has no vector"),
    (lambda: cs.category_agreement(np.eye(3), [0, 1]), "3 vectors but 2 categories"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
