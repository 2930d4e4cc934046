import math

import numpy as np
import pytest
from scipy import stats

from cookbook.evaluate import abtest


def test_mcnemar_exact_and_chi_square_by_hand():
    # 10 discordant pairs, 8 favour b: exact two-sided p = 2 x P(X <= 2), X ~ Bin(10, 1/2)
    a = np.array([0] * 8 + [1] * 2 + [1] * 30)
    b = np.array([1] * 8 + [0] * 2 + [1] * 30)
    r = abtest.mcnemar(a, b)
    assert (r["n01"], r["n10"], r["exact"]) == (8, 2, True)
    assert r["p_value"] == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert r["p_value"] == pytest.approx(stats.binomtest(2, 10, 0.5).pvalue)
    # the chi-square version with continuity correction: (|8 - 2| - 1)^2 / 10 = 2.5 on 1 degree of freedom
    r = abtest.mcnemar(a, b, exact=False)
    assert r["statistic"] == pytest.approx(2.5)
    assert r["p_value"] == pytest.approx(stats.chi2.sf(2.5, 1))
    assert abtest.mcnemar([1, 0], [1, 0])["p_value"] == 1.0  # no discordant pair: no evidence
    with pytest.raises(ValueError, match="booleans"):
        abtest.mcnemar([0, 2], [1, 1])


def test_paired_t_matches_closed_forms_and_scipy():
    a = np.array([1.0, 2.0, 3.0])
    b = np.array([1.5, 2.1, 3.9])
    d = b - a
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    r = abtest.paired_t(a, b)
    assert r["t"] == pytest.approx(t) and r["df"] == 2
    # Student's t with 2 degrees of freedom has a closed-form tail: P(|T| > t) = 1 - t / sqrt(2 + t^2)
    assert r["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(0.3, 1, size=50)
    reference = stats.ttest_rel(b, a)
    r = abtest.paired_t(a, b)
    assert (r["t"], r["p_value"]) == pytest.approx((reference.statistic, reference.pvalue), abs=1e-9)
    with pytest.raises(ValueError, match="no variance"):
        abtest.paired_t([1.0, 2.0], [2.0, 3.0])


def test_paired_bootstrap_interval_and_p_value():
    rng = np.random.default_rng(1)
    base = rng.normal(size=400)
    a, b = base + rng.normal(0, 0.1, 400), base + 0.05 + rng.normal(0, 0.1, 400)
    r = abtest.paired_bootstrap(a, b, resamples=2000, seed=0)
    assert r["diff"] == pytest.approx(b.mean() - a.mean())
    assert r["low"] < r["diff"] < r["high"] and r["low"] > 0  # pairing cancels the shared per-example noise
    # the normal approximation of the interval: diff +- 1.96 standard errors of the mean difference
    se = (b - a).std(ddof=1) / math.sqrt(400)
    assert r["high"] - r["low"] == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert r["p_value"] < 0.01
    assert r == abtest.paired_bootstrap(a, b, resamples=2000, seed=0)  # seeded
    with pytest.raises(ValueError, match="paired 1-D scores"):
        abtest.paired_bootstrap([1, 2, 3], [1, 2])


@pytest.mark.parametrize("statistic", [np.mean, np.median])
def test_paired_bootstrap_equals_scipy_and_keeps_pairs(statistic):
    rng = np.random.default_rng(2)
    a = rng.normal(size=60)
    b = a + rng.normal(0.2, 0.05, 60)
    r = abtest.paired_bootstrap(a, b, resamples=500, confidence=0.9, seed=3, statistic=statistic)
    ref = stats.bootstrap((a, b), lambda x, y, axis: statistic(y, axis=axis) - statistic(x, axis=axis), paired=True,
                          n_resamples=500, confidence_level=0.9, method="percentile", rng=np.random.default_rng(3))
    assert (r["low"], r["high"]) == pytest.approx(tuple(ref.confidence_interval), abs=1e-9)
    # resampling examples with their pair: the differences' spread is that of b - a (sd 0.05), far narrower than
    # an unpaired resampling of a and b (sd ~1 each) would give
    assert r["high"] - r["low"] < 0.1 and r["low"] > 0.1 and r["p_value"] == 0.0


def test_mcnemar_equals_statsmodels():
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(4)
    a, b = rng.random(300) < 0.6, rng.random(300) < 0.7
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    for exact in (True, False):
        r, ref = abtest.mcnemar(a, b, exact=exact), mcnemar(table, exact=exact, correction=True)
        assert (r["statistic"], r["p_value"]) == pytest.approx((ref.statistic, ref.pvalue), abs=1e-9)


def test_decide_refuses_to_switch_below_significance():
    assert abtest.decide(0.001, 0.02).switch
    no = abtest.decide(0.03, 0.02, alpha=0.01)
    assert not no.switch and "not significant (p = 0.03 >= alpha = 0.01)" in no.reason
    worse = abtest.decide(1e-6, -0.02)
    assert not worse.switch and "not better" in worse.reason
    assert abtest.decide(1e-6, -0.02, higher_is_better=False).switch  # a lower loss is better
    with pytest.raises(ValueError, match="alpha must be in"):
        abtest.decide(0.001, 0.1, alpha=5)


def test_shadow_serves_only_the_live_answer():
    def live(x):
        return x % 3

    def candidate(x):
        if x == 4:
            raise RuntimeError("candidate crashed")
        return x % 2

    shadow = abtest.Shadow(live, candidate)
    served = [shadow(x) for x in range(6)]
    assert served == [live(x) for x in range(6)]  # a differing or crashing candidate never reaches the caller
    report = shadow.report(truth=[0, 1, 2, 0, 1, 2])
    assert report["requests"] == 6 and report["candidate_errors"] == 1
    assert report["live_accuracy"] == 1.0
    assert report["candidate_accuracy"] == pytest.approx(2 / 6)  # right on 0 and 1; the crash counts as wrong
    assert report["agreement"] == pytest.approx(2 / 5)  # of the 5 answered requests, 0 and 1 agree
    with pytest.raises(ValueError, match="one label per request seen"):
        shadow.report(truth=[0])
