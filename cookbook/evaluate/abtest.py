"""A/B tests of two models on the same examples, a switch decision that respects significance, and shadow mode.

    paired_bootstrap(score_a, score_b)      # difference b - a with its bootstrap confidence interval
    mcnemar(correct_a, correct_b)           # do they err on different examples more than chance allows?
    paired_t(loss_a, loss_b)                # is the mean per-example difference non-zero?
    decide(p_value, diff, alpha=0.01)       # switch only on a significant improvement (the guide: p < 0.01)
    shadow = Shadow(live, candidate); shadow(request) ...; shadow.report(truth)

Paired tests: both models see the same examples, so per-example differences cancel the examples' own
difficulty; that makes them far more sensitive than comparing two accuracies as if they were independent.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from cookbook.checks import positive_int

__all__ = ["Decision", "Shadow", "decide", "mcnemar", "paired_bootstrap", "paired_t"]


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"a and b must be paired 1-D scores of the same examples (2 or more), got shapes {a.shape} "
                         f"and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a and b must be finite numbers")
    return a, b


def paired_bootstrap(a, b, *, resamples: int = 10_000, confidence: float = 0.95, seed: int = 0,
                     statistic: Callable = np.mean) -> dict[str, float]:
    """Difference `statistic(b) - statistic(a)` with a percentile bootstrap interval over resampled examples.

    `scipy.stats.bootstrap(paired=True)` underneath: examples are resampled with their pair (both models'
    scores of one example stay together). `statistic(x, axis=...)` must reduce along `axis`, as np.mean and
    np.median do. Also returns `p_value`: twice the share of resampled differences on the far side of 0
    (two-sided). Shown in notebooks/13 §5.
    """
    from scipy import stats  # optional: the `evaluate` extra

    a, b = _paired(a, b)
    positive_int("resamples", resamples)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    res = stats.bootstrap((a, b), lambda x, y, axis: statistic(y, axis=axis) - statistic(x, axis=axis),
                          paired=True, vectorized=True, n_resamples=resamples, confidence_level=confidence,
                          method="percentile", rng=np.random.default_rng(seed))
    diffs, diff = res.bootstrap_distribution, float(statistic(b) - statistic(a))
    far = (diffs <= 0).mean() if diff > 0 else (diffs >= 0).mean() if diff < 0 else 1.0
    return {"diff": diff, "low": float(res.confidence_interval.low), "high": float(res.confidence_interval.high),
            "p_value": float(min(1.0, 2 * far))}


def mcnemar(correct_a, correct_b, *, exact: bool | None = None) -> dict[str, float]:
    """McNemar's test on paired right/wrong outcomes (McNemar 1947; statsmodels): only discordant examples count.

    n01 = a wrong and b right, n10 = a right and b wrong. Exact: a two-sided binomial test of n01 out of
    n01 + n10 at 1/2; otherwise the chi-square statistic with continuity correction, (|n01 - n10| - 1)^2 /
    (n01 + n10), on 1 degree of freedom. `exact=None` uses the exact test under 25 discordant pairs.
    Shown in notebooks/13 §5.
    """
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar  # optional: the `evaluate` extra

    a, b = (np.asarray(x) for x in (correct_a, correct_b))
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"correct_a and correct_b must be equally long 1-D right/wrong lists, got {a.shape}, {b.shape}")
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("correct_a and correct_b hold booleans (1: the model got the example right)")
    a, b = a.astype(bool), b.astype(bool)
    n01, n10 = int((~a & b).sum()), int((a & ~b).sum())
    n = n01 + n10
    exact = n < 25 if exact is None else exact
    if n == 0:  # no discordant pair, no evidence (the chi-square form would divide by zero)
        return {"n01": 0, "n10": 0, "statistic": 0.0, "p_value": 1.0, "exact": exact}
    table = [[int((a & b).sum()), n10], [n01, int((~a & ~b).sum())]]
    result = sm_mcnemar(table, exact=exact, correction=True)
    return {"n01": n01, "n10": n10, "statistic": float(result.statistic), "p_value": float(result.pvalue),
            "exact": exact}


def paired_t(a, b) -> dict[str, float]:
    """Paired t-test of the per-example differences d = b - a (`scipy.stats.ttest_rel`): t = mean(d) / (sd(d) /
    sqrt(n)), n - 1 degrees of freedom, two-sided p-value. Assumes roughly normal differences;
    `paired_bootstrap` does not. Shown in notebooks/13 §5."""
    from scipy import stats  # optional: the `evaluate` extra

    a, b = _paired(a, b)
    d = b - a
    if d.std(ddof=1) == 0:
        raise ValueError("every paired difference is the same: the t statistic is undefined (no variance)")
    result = stats.ttest_rel(b, a)
    return {"diff": float(d.mean()), "t": float(result.statistic), "df": len(d) - 1, "p_value": float(result.pvalue)}


@dataclasses.dataclass(frozen=True)
class Decision:
    """Whether to switch to the candidate, and why in one sentence."""

    switch: bool
    reason: str


def decide(p_value: float, diff: float, *, alpha: float = 0.01, higher_is_better: bool = True) -> Decision:
    """Switch to the candidate only when it is better (`diff` = candidate - live, in the direction of
    `higher_is_better`) AND the difference is significant: p < alpha. Anything else keeps the live model.
    Shown in notebooks/13 §5."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), e.g. 0.01, got {alpha!r}")
    if not 0 <= p_value <= 1 or not math.isfinite(diff):
        raise ValueError(f"p_value must be in [0, 1] and diff finite, got {p_value!r} and {diff!r}")
    better = diff > 0 if higher_is_better else diff < 0
    if not better:
        return Decision(False, f"keep the live model: the candidate is not better (difference {diff:+.4g})")
    if p_value >= alpha:
        return Decision(False, f"keep the live model: the improvement {diff:+.4g} is not significant "
                               f"(p = {p_value:.3g} >= alpha = {alpha:g})")
    return Decision(True, f"switch: the candidate is better by {diff:+.4g}, significant at p = {p_value:.3g} < {alpha:g}")


class Shadow:
    """Shadow mode: serve the live model's answer, run the candidate on the same request and only record it.

    `shadow(request)` returns `live(request)`; the candidate's answer, its latency and any exception it
    raises are kept in `records` and never reach the caller. `report(truth)` compares both on the traffic
    seen so far. Shown in notebooks/13 §5.
    """

    def __init__(self, live: Callable, candidate: Callable):
        self.live, self.candidate = live, candidate
        self.records: list[dict] = []

    def __call__(self, request):
        start = time.perf_counter()
        answer = self.live(request)
        live_s = time.perf_counter() - start
        record = {"live": answer, "candidate": None, "error": None, "live_s": live_s}
        start = time.perf_counter()
        try:
            record["candidate"] = self.candidate(request)
        except Exception as exc:  # a failing candidate must never break the live service
            record["error"] = f"{type(exc).__name__}: {exc}"
        record["candidate_s"] = time.perf_counter() - start
        self.records.append(record)
        return answer

    def report(self, truth: Sequence | None = None) -> dict:
        """Requests seen, candidate errors, agreement with live, and with `truth` (one label per request so far)
        each model's accuracy and McNemar's test of the difference."""
        if not self.records:
            raise ValueError("no traffic yet: call the shadow with requests first")
        ok = [r for r in self.records if r["error"] is None]
        out = {"requests": len(self.records), "candidate_errors": len(self.records) - len(ok),
               "agreement": float(np.mean([r["live"] == r["candidate"] for r in ok])) if ok else math.nan}
        if truth is not None:
            truth = list(truth)
            if len(truth) != len(self.records):
                raise ValueError(f"truth must hold one label per request seen ({len(self.records)}), got {len(truth)}")
            live = np.array([r["live"] == t for r, t in zip(self.records, truth, strict=True)])
            cand = np.array([r["error"] is None and r["candidate"] == t for r, t in zip(self.records, truth, strict=True)])
            out.update(live_accuracy=float(live.mean()), candidate_accuracy=float(cand.mean()),
                       mcnemar_p=mcnemar(live, cand)["p_value"])
        return out
