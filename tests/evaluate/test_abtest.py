import math
import warnings

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


@pytest.mark.parametrize("a, b, match", [
    ([1.0], [2.0], r"^a and b must be paired 1-D scores of the same examples \(2 or more\), got shapes \(1,\) and \(1,\)$"),
    ([1.0, 2.0], [1.0, 2.0, 3.0], r"got shapes \(2,\) and \(3,\)$"),
    ([1.0, math.nan], [1.0, 2.0], "^a and b must be finite numbers$"),
    ([1.0, 2.0], [1.0, math.inf], "^a and b must be finite numbers$"),
    ([1.0, None], [1.0, 2.0], "^a and b must be finite numbers$"),  # a missing score reads as NaN
    ([1.0, 2.0], [None, 2.0], "^a and b must be finite numbers$"),
])
def test_paired_inputs_are_checked(a, b, match):
    with pytest.raises(ValueError, match=match):
        abtest.paired_t(a, b)


def test_paired_t_of_right_wrong_outcomes_and_its_messages():
    # booleans (right/wrong per example) are scores 1.0 / 0.0: the same as scipy on floats
    a = np.array([True, False, True, True, False, False, True, False])
    b = np.array([True, True, True, True, False, True, True, True])
    reference = stats.ttest_rel(b.astype(float), a.astype(float))
    r = abtest.paired_t(a, b)
    assert (r["diff"], r["t"], r["df"]) == (pytest.approx(3 / 8), pytest.approx(reference.statistic), 7)
    assert r["p_value"] == pytest.approx(reference.pvalue)
    with pytest.raises(ValueError, match=r"^every paired difference is the same: the t statistic is undefined "
                                         r"\(no variance\)$"):
        abtest.paired_t([1.0, 2.0], [2.0, 3.0])


def test_paired_bootstrap_p_value_counts_ties_at_zero_as_far_side():
    # b - a is 1 on one example of 5, 0 elsewhere: a resample misses it with probability (4/5)^5 = 0.32768, and
    # then its difference is exactly 0, which counts as "not above 0": p = 2 x 0.32768
    a, b = np.zeros(5), np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    r = abtest.paired_bootstrap(a, b, resamples=20_000, seed=1)
    assert r["diff"] == pytest.approx(0.2) and r["p_value"] == pytest.approx(2 * 0.8**5, abs=0.03)
    worse = abtest.paired_bootstrap(b, a, resamples=20_000, seed=1)  # the mirror image: diff < 0
    assert worse["diff"] == pytest.approx(-0.2) and worse["p_value"] == pytest.approx(2 * 0.8**5, abs=0.03)


def test_paired_bootstrap_worse_candidate_is_significant_too():
    rng = np.random.default_rng(5)
    a = rng.normal(size=300)
    b = a - 0.3 + rng.normal(0, 0.1, 300)  # clearly worse: the two-sided p-value is small, not 1
    r = abtest.paired_bootstrap(a, b, resamples=2000, seed=0)
    assert r["diff"] < 0 and r["high"] < 0 and r["p_value"] < 0.01


def test_paired_bootstrap_defaults_and_bad_settings():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=30), rng.normal(0.1, 1, size=30)
    assert abtest.paired_bootstrap(a, b) == abtest.paired_bootstrap(a, b, resamples=10_000, seed=0)  # the signature
    with pytest.raises(ValueError, match="^resamples must be a positive int, got 0$"):
        abtest.paired_bootstrap(a, b, resamples=0)
    for confidence in (0, 1, 1.5):
        with pytest.raises(ValueError, match=rf"^confidence must be in \(0, 1\), got {confidence}$"):
            abtest.paired_bootstrap(a, b, confidence=confidence)


def test_mcnemar_boundaries_against_statsmodels():
    from statsmodels.stats.contingency_tables import mcnemar

    def outcomes(n01, n10, both=5):
        return ([0] * n01 + [1] * n10 + [1] * both, [1] * n01 + [0] * n10 + [1] * both)

    # exact below 25 discordant pairs, chi-square from 25 (the docstring)
    for n01, n10, exact in ((14, 10, True), (15, 10, False), (3, 3, True), (20, 10, False)):
        r = abtest.mcnemar(*outcomes(n01, n10))
        ref = mcnemar([[5, n10], [n01, 0]], exact=exact, correction=True)
        assert (r["n01"], r["n10"], r["exact"]) == (n01, n10, exact)
        assert (r["statistic"], r["p_value"]) == pytest.approx((ref.statistic, ref.pvalue), abs=1e-12)
    # one example: a single discordant pair, exact two-sided binomial p = min(1, 2 x 1/2) = 1
    assert abtest.mcnemar([0], [1]) == {"n01": 1, "n10": 0, "statistic": 0.0, "p_value": 1.0, "exact": True}
    # no discordant pair: no evidence, whichever test was asked for
    assert abtest.mcnemar([1, 0], [1, 0]) == {"n01": 0, "n10": 0, "statistic": 0.0, "p_value": 1.0, "exact": True}
    assert abtest.mcnemar([1, 0], [1, 0], exact=False)["exact"] is False


@pytest.mark.parametrize("a, b, match", [
    ([], [], r"^correct_a and correct_b must be equally long 1-D right/wrong lists, got \(0,\), \(0,\)$"),
    ([1, 0], [1, 0, 1], r"^correct_a and correct_b must be equally long 1-D right/wrong lists, got \(2,\), \(3,\)$"),
    ([0, 2], [1, 1], r"^correct_a and correct_b hold booleans \(1: the model got the example right\)$"),
])
def test_mcnemar_bad_input_messages(a, b, match):
    with pytest.raises(ValueError, match=match):
        abtest.mcnemar(a, b)


@pytest.mark.parametrize("p_value, diff, kwargs, switch", [
    (0.0, 0.1, {}, True),  # p = 0 happens (a bootstrap with no resample on the far side)
    (1.0, 0.1, {}, False),
    (0.01, 0.1, {"alpha": 0.01}, False),  # p must be below alpha, not equal
    (0.001, 0.0, {}, False),  # no difference is not better
    (0.001, 0.0, {"higher_is_better": False}, False),
    (0.001, 0.5, {"higher_is_better": False}, False),  # a higher loss is worse
])
def test_decide_boundaries(p_value, diff, kwargs, switch):
    assert abtest.decide(p_value, diff, **kwargs).switch is switch


def test_decide_reasons_in_full():
    assert abtest.decide(0.001, 0.02) == abtest.Decision(
        True, "switch: the candidate is better by +0.02, significant at p = 0.001 < 0.01")
    assert abtest.decide(0.03, 0.02).reason == ("keep the live model: the improvement +0.02 is not significant "
                                                "(p = 0.03 >= alpha = 0.01)")
    assert abtest.decide(1e-6, -0.02).reason == "keep the live model: the candidate is not better (difference -0.02)"


@pytest.mark.parametrize("p_value, diff, kwargs, match", [
    (0.001, 0.1, {"alpha": 0}, r"^alpha must be in \(0, 1\), e.g. 0.01, got 0$"),
    (0.001, 0.1, {"alpha": 1}, r"^alpha must be in \(0, 1\), e.g. 0.01, got 1$"),
    (0.001, 0.1, {"alpha": 1.5}, r"^alpha must be in \(0, 1\), e.g. 0.01, got 1.5$"),
    (1.5, 0.1, {}, r"^p_value must be in \[0, 1\] and diff finite, got 1.5 and 0.1$"),
    (-0.1, 0.1, {}, r"^p_value must be in \[0, 1\] and diff finite, got -0.1 and 0.1$"),
    (0.001, math.nan, {}, r"^p_value must be in \[0, 1\] and diff finite, got 0.001 and nan$"),
])
def test_decide_bad_input(p_value, diff, kwargs, match):
    with pytest.raises(ValueError, match=match):
        abtest.decide(p_value, diff, **kwargs)


def test_shadow_records_times_and_errors(monkeypatch):
    clock = iter([10.0, 13.0, 20.0, 27.0, 30.0, 31.5, 40.0, 44.0])  # start, after live, start, after candidate
    monkeypatch.setattr(abtest.time, "perf_counter", lambda: next(clock))

    def candidate(x):
        if x:
            raise KeyError("no such item")
        return "b"

    shadow = abtest.Shadow(lambda x: "a", candidate)
    assert shadow(0) == "a" and shadow(1) == "a"
    assert shadow.records == [
        {"live": "a", "candidate": "b", "error": None, "live_s": 3.0, "candidate_s": 7.0},
        {"live": "a", "candidate": None, "error": "KeyError: 'no such item'", "live_s": 1.5, "candidate_s": 4.0},
    ]


def test_shadow_report_mcnemar_and_a_candidate_that_always_fails():
    shadow = abtest.Shadow(lambda x: x % 2, lambda x: 0)
    for x in range(4):
        shadow(x)
    report = shadow.report(truth=[0, 1, 0, 1])
    # live right on all 4, the candidate on 0 and 2: 2 discordant pairs, exact p = min(1, 2 x (1/2)^2) = 0.5
    assert report["mcnemar_p"] == pytest.approx(stats.binomtest(0, 2, 0.5).pvalue) == 0.5
    failing = abtest.Shadow(lambda x: x, lambda x: 1 / 0)
    failing(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mean of an empty list
        report = failing.report()
    assert report["candidate_errors"] == 1 and math.isnan(report["agreement"])
    with pytest.raises(ValueError, match="^no traffic yet: call the shadow with requests first$"):
        abtest.Shadow(lambda x: x, lambda x: x).report()


def test_paired_bootstrap_p_value_at_no_difference_and_its_cap():
    # medians: a -0.5, b -0.5, so diff = 0 exactly: no side of 0 to be far from, p = 1 (a third of the resampled
    # differences lie at or above 0 here, so any share read off them would give less)
    a, b = [2.0, -1.0, 1.0, 0.0, -3.0, -1.0], [0.0, 3.0, 0.0, -1.0, -3.0, -3.0]
    r = abtest.paired_bootstrap(a, b, resamples=2000, seed=0, statistic=np.median)
    assert r["diff"] == 0.0 and r["p_value"] == 1.0
    # medians -1 and -1: here only 40% of the resampled differences lie at or below 0 (whichever side is read)
    r = abtest.paired_bootstrap([-2.0, 0.0, 0.0, -3.0], [-1.0, 2.0, -3.0, -1.0], resamples=2000, seed=0,
                                statistic=np.median)
    assert r["diff"] == 0.0 and r["p_value"] == 1.0
    # median diff +1, yet most resampled differences are <= 0 (a skewed bootstrap distribution): twice that share
    # exceeds 1, and a p-value is a probability
    a, b = [2.0, -2.0, -2.0, -2.0, 3.0], [-1.0, -3.0, 0.0, -2.0, 2.0]
    r = abtest.paired_bootstrap(a, b, resamples=2000, seed=0, statistic=np.median)
    assert r["diff"] == 1.0 and r["p_value"] == 1.0
