"""Solutions to the exercises of notebooks/01 (data cleaning and deduplication), each checked against an
independent result."""

import hashlib

import datasketch
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cookbook.data import clean, dedup

PRIME = (1 << 61) - 1


# Exercise 1: a MinHash estimate against the exact Jaccard
def minhash_signature(items: set[str], num_perm: int, seed: int) -> np.ndarray:
    """For each of `num_perm` random affine hashes (a·h + b) mod p, the smallest value over the set."""
    rng = np.random.default_rng(seed)
    a = [int(x) for x in rng.integers(1, PRIME, num_perm)]
    b = [int(x) for x in rng.integers(0, PRIME, num_perm)]
    hashes = [int.from_bytes(hashlib.sha1(s.encode()).digest()[:8], "little") for s in items]
    return np.array([min((ai * h + bi) % PRIME for h in hashes) for ai, bi in zip(a, b, strict=True)])


def minhash_jaccard(x: set[str], y: set[str], num_perm: int = 128, seed: int = 0) -> float:
    """The share of permutations on which the two sets have the same minimum: P(equal) = Jaccard."""
    return float(np.mean(minhash_signature(x, num_perm, seed) == minhash_signature(y, num_perm, seed)))


def pair(shared: int, only: int) -> tuple[set[str], set[str]]:
    """Two sets with `shared` common items and `only` items each of their own: Jaccard shared / (shared + 2·only)."""
    common = {f"c{i}" for i in range(shared)}
    return common | {f"x{i}" for i in range(only)}, common | {f"y{i}" for i in range(only)}


@pytest.mark.parametrize("shared,only", [(80, 10), (50, 25), (20, 40), (100, 0)])
def test_minhash_estimate_within_its_binomial_error(shared, only):
    x, y = pair(shared, only)
    exact = len(x & y) / len(x | y)
    sigma = np.sqrt(exact * (1 - exact) / 128)  # each permutation is one Bernoulli(J) draw
    estimate = minhash_jaccard(x, y)
    assert abs(estimate - exact) <= 4 * sigma
    theirs = datasketch.MinHash(num_perm=128, seed=1)
    other = datasketch.MinHash(num_perm=128, seed=1)
    theirs.update_batch([s.encode() for s in x])
    other.update_batch([s.encode() for s in y])
    assert abs(theirs.jaccard(other) - exact) <= 4 * sigma  # the library's estimate obeys the same bound


def test_minhash_is_unbiased_over_seeds():
    x, y = pair(50, 25)  # Jaccard 0.5
    estimates = [minhash_jaccard(x, y, num_perm=32, seed=s) for s in range(40)]
    assert np.mean(estimates) == pytest.approx(0.5, abs=4 * np.sqrt(0.25 / (32 * 40)))
    assert np.std(estimates) == pytest.approx(np.sqrt(0.25 / 32), rel=0.35)  # spread of one 32-slot estimate


# Exercise 2: the LSH S-curve
def candidate_probability(s: float, bands: int, rows: int) -> float:
    """A pair whose slots agree with probability s shares at least one whole band of `rows` slots."""
    return 1 - (1 - s**rows) ** bands


@pytest.mark.parametrize("s", [0.5, 0.7, 0.8, 0.9])
def test_candidate_probability_by_simulation(s):
    bands, rows = dedup.lsh_params(0.8, 128)
    assert (bands, rows) == (21, 6)  # the notebook's 21 x 6 (§4)
    agree = np.random.default_rng(0).random((20000, bands, rows)) < s
    simulated = agree.all(axis=2).any(axis=1).mean()
    p = candidate_probability(s, bands, rows)
    assert simulated == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / 20000) + 1e-9)


def test_lsh_params_is_the_most_selective_band_split_with_99_percent_recall():
    ok = [(128 // r, r) for r in range(1, 129) if candidate_probability(0.8, 128 // r, r) >= 0.99]
    assert dedup.lsh_params(0.8, 128) == max(ok, key=lambda br: br[1])
    assert candidate_probability(0.5, 21, 6) < 0.3  # a Jaccard-0.5 pair is rarely even compared


# Exercise 3: how many normal rows do Tukey's fences cut?
def tukey_normal_share(k: float = 1.5) -> float:
    """P(|Z| beyond Q3 + k·IQR) for a Gaussian: quartiles at ±0.6745σ, fences at ±(0.6745 + 2k·0.6745)σ."""
    q3 = stats.norm.ppf(0.75)
    return 2 * stats.norm.sf(q3 + k * 2 * q3)


def test_tukey_share_closed_form_and_simulated():
    assert round(tukey_normal_share(), 4) == 0.007  # the 0.70% the notebook quotes
    x = np.random.default_rng(0).normal(50_000, 8_000, 200_000)
    removed = len(clean.iqr_outliers(pd.DataFrame({"income": x}), "income").removed)
    p = tukey_normal_share()
    assert removed / len(x) == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / len(x)))
