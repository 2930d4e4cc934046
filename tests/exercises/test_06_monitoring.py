"""Solutions to the exercises of notebooks/06 (monitoring and convergence diagnostics), each checked against an
independent result."""

import numpy as np
import pandas as pd
import pytest
import torch

from cookbook import plots
from cookbook.monitor import EarlyStopping


# Exercise 1: an EMA smoother with bias correction
def ema(values, weight: float) -> np.ndarray:
    """avg_t = w·avg_{t-1} + (1 − w)·x_t from avg_0 = 0, divided by 1 − w^t so the start is not pulled to zero."""
    out, avg = [], 0.0
    for t, x in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * x
        out.append(avg / (1 - weight**t))
    return np.array(out)


@pytest.mark.parametrize("weight", [0.0, 0.5, 0.9, 0.99])
def test_ema_equals_pandas_adjusted_ewm_and_plots_smooth(weight):
    x = 7.6 - np.log1p(np.arange(200)) * 0.3 + np.random.default_rng(0).normal(0, 0.2, 200)  # a noisy loss curve
    np.testing.assert_allclose(ema(x, weight), pd.Series(x).ewm(alpha=1 - weight, adjust=True).mean(), rtol=1e-12)
    np.testing.assert_allclose(ema(x, weight), plots.smooth(x, weight), rtol=1e-12)


def test_bias_correction_keeps_a_constant_constant():
    assert np.allclose(ema([5.0] * 30, 0.9), 5.0)  # without the correction the first value would be 0.5


# Exercise 2: early stopping by hand
def early_stop(val_losses, patience: int, min_delta: float = 0.0) -> tuple[int | None, int | None]:
    """(index of the evaluation that stops the run, index of the best one): stop after `patience` evaluations in
    a row that are not below the best by more than `min_delta`."""
    best, best_i, bad = np.inf, None, 0
    for i, v in enumerate(val_losses):
        if v < best - min_delta:
            best, best_i, bad = v, i, 0
        else:
            bad += 1
            if bad == patience:
                return i, best_i
    return None, best_i


def stop_by_window(val_losses, patience: int) -> int | None:
    """Another reading of the rule (min_delta 0): the first i whose last `patience` losses all stay at or above
    the lowest loss before them."""
    for i in range(patience, len(val_losses)):
        if min(val_losses[i - patience + 1:i + 1]) >= min(val_losses[:i - patience + 1]):
            return i
    return None


class _FakeTrainer:
    should_stop, stop_reason, step = False, "", 0


def callback_stop(val_losses, patience: int, min_delta: float) -> int | None:
    callback, trainer = EarlyStopping(patience, min_delta), _FakeTrainer()
    for i, v in enumerate(val_losses):
        callback.on_evaluate(trainer, {"step": i, "val_loss": float(v)})
        if trainer.should_stop:
            return i
    return None


@pytest.mark.parametrize("seed", range(30))
def test_early_stop_against_the_window_rule_and_the_callback(seed):
    rng = np.random.default_rng(seed)
    n = 25
    curve = 7 - 2 * (1 - np.exp(-np.arange(n) / 5)) + np.maximum(0, np.arange(n) - 12) * 0.05  # falls, then turns up
    losses = np.round(curve + rng.normal(0, 0.08, n), 2)  # rounded, so ties happen too
    for patience in (1, 2, 3, 5):
        stop, _ = early_stop(losses, patience)
        assert stop == stop_by_window(losses, patience)
        for min_delta in (0.0, 0.03):
            assert early_stop(losses, patience, min_delta)[0] == callback_stop(losses, patience, min_delta)


def test_early_stop_by_hand():
    # the best at evaluation 6, then three evaluations above it (as in §4: best 7.0147, stop at 7.2170)
    val = [7.6, 7.45, 7.3, 7.2, 7.1, 7.05, 7.0147, 7.05, 7.13, 7.217]
    assert early_stop(val, patience=3) == (9, 6)


# Exercise 3: vanishing gradients through saturating layers
def test_each_sigmoid_layer_shrinks_the_gradient_by_at_most_a_quarter_of_its_spectral_norm():
    torch.manual_seed(0)
    layers = [torch.nn.Linear(32, 32, bias=False) for _ in range(12)]
    for layer in layers:
        torch.nn.init.normal_(layer.weight, std=0.1)
    h = [torch.randn(4, 32, requires_grad=True)]
    for layer in layers:
        h.append(torch.sigmoid(layer(h[-1])))
        h[-1].retain_grad()
    h[-1].sum().backward()
    norms = [x.grad.norm().item() for x in h]
    for i, layer in enumerate(layers):
        bound = 0.25 * torch.linalg.matrix_norm(layer.weight, ord=2).item()  # sigmoid' <= 1/4
        assert norms[i] <= bound * norms[i + 1] * (1 + 1e-6)
    assert norms[0] / norms[-1] < np.prod([0.25 * torch.linalg.matrix_norm(m.weight, ord=2).item() for m in layers])
    assert norms[0] < 1e-6 * norms[-1]  # twelve such layers: more than six decades lost
