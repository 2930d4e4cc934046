"""The alert rules on crafted signals: each fires when it should, once per episode, and not on noise."""

import math

import pytest

from cookbook.monitor import rules


def test_vanishing_fires_after_three_consecutive_small_norms_and_rearms():
    rule = rules.Vanishing(1e-6, 3)
    assert rule.update(0, {"(all)": 1e-7}) is None
    assert rule.update(1, {"(all)": 1e-7}) is None
    fired = rule.update(2, {"(all)": 5e-8})
    assert fired is not None and fired.kind == "vanishing" and fired.step == 2 and fired.value == 5e-8
    assert rule.update(3, {"(all)": 1e-8}) is None  # same episode: reported once
    assert rule.update(4, {"(all)": 1.0}) is None
    assert [rule.update(s, {"(all)": 0.0}) is not None for s in (5, 6, 7)] == [False, False, True]


def test_vanishing_interrupted_run_does_not_fire():
    rule = rules.Vanishing(1e-6, 3)
    results = [rule.update(s, {"(all)": v}) for s, v in enumerate([1e-7, 1e-7, 1e-3, 1e-7, 1e-7])]
    assert all(r is None for r in results)


def test_spike_rule_scores_against_the_window_and_ignores_flat_noise():
    rule = rules.Spike("loss_spike", window=10, z=6.0, floor=0.02, min_points=5)
    for step, value in enumerate([5.0, 4.9, 5.05, 4.95, 5.0, 4.98]):
        assert rule.update(step, value) is None
    # mean 4.98, std 0.046 -> floor 0.02*4.98 = 0.0996 wins: z = (6 - 4.98) / 0.0996 = 10.2
    assert rule.score(6.0) == pytest.approx((6.0 - 4.98) / (0.02 * 4.98), rel=1e-3)
    fired = rule.update(6, 6.0)
    assert fired.kind == "loss_spike" and fired.step == 6
    assert rules.Spike("loss_spike", min_points=5).update(0, 100.0) is None  # too little history to judge


def test_gradient_spikes_are_scored_in_decades_with_a_floor():
    rule = rules.Spike("exploding", window=10, z=6.0, floor=0.1, min_points=3, log=True)
    for step, value in enumerate([1.0, 1.0, 1.0]):
        assert rule.update(step, value) is None
    # a flat history: the spread is floored at 0.1 decade, so x3.9 (0.59 decade) is z = 5.9: no alarm ...
    assert rule.score(3.9) == pytest.approx(math.log10(3.9) / 0.1)
    assert rule.update(3, 3.9) is None
    # ... but x100 is far outside it
    assert rule.update(4, 100.0).kind == "exploding"


def test_divergence_fires_when_the_smoothed_loss_climbs_back_up():
    rule = rules.Divergence(ratio=0.1, weight=0.5, min_points=3)
    falling = [8.0, 7.0, 6.5, 6.4, 6.6, 6.3, 6.2]  # noisy but converging: never 10% above the best
    assert all(rule.update(s, v) is None for s, v in enumerate(falling))
    fired = [rule.update(s, v) for s, v in enumerate([9.0, 9.5], start=7)]
    # by hand: EMA (weight 0.5, debiased) goes 6.40 -> 7.70 (+20% over the best, 6.40 at step 6)
    assert fired[0] is not None and fired[0].kind == "diverging" and fired[0].step == 7
    assert fired[0].threshold == pytest.approx(rule.best * 1.1) and fired[1] is None  # one alert per episode
    assert rules.Divergence().update(0, 100.0) is None  # one point: nothing to compare with


def test_plateau_and_overflow_stay_quiet_while_things_are_fine():
    plateau = rules.Plateau(patience=2, min_delta=0.01)
    assert all(plateau.update(s, v) is None for s, v in enumerate([3.0, 2.5, 2.2, 2.1, 2.05]))
    assert plateau.update(5, 2.045) is None and plateau.update(6, 2.06).kind == "stalled"  # < min_delta is no gain
    overflow = rules.Overflow(patience=3)
    # GradScaler's normal rhythm: an occasional skipped step, then clean ones
    assert all(overflow.update(s, skipped) is None for s, skipped in enumerate([True, True, False, True, False]))
    assert [overflow.update(s, True) is not None for s in (5, 6, 7, 8)] == [False, False, True, False]


def test_imbalance_rule_uses_maxvio():
    rule = rules.Imbalance(threshold=1.0, patience=2)
    assert rule.update(0, {"layers.1": [25, 25, 25, 25]}) == (0.0, None)
    assert rule.update(1, {"layers.1": [70, 10, 10, 10]})[1] is None
    worst, fired = rule.update(2, {"layers.1": [10, 10, 10, 10], "layers.2": [70, 10, 10, 10]})
    assert worst == pytest.approx(1.8) and fired.kind == "imbalance" and "layers.2" in fired.message


def test_plateau_state_survives_a_round_trip():
    plateau = rules.Plateau(patience=3)
    for step, value in enumerate([2.0, 1.5, 1.6]):
        plateau.update(step, value)
    resumed = rules.Plateau(patience=3)
    resumed.load_state_dict(plateau.state_dict())
    assert (resumed.best, resumed.best_step, resumed.bad) == (1.5, 1, 1)
    assert resumed.update(3, 1.7) is None and resumed.update(4, 1.8).kind == "stalled"  # the 3rd bad evaluation
    with pytest.raises(ValueError, match="min_delta must be >= 0"):
        rules.Plateau(min_delta=-1.0)
    assert math.isinf(rules.Plateau().state_dict()["best"])
