"""DP-SGD: the accountant against the exact Gaussian-mechanism ε, a run that spends its target, bad input."""

import dataclasses
import math
import re
import sys
import warnings

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import brentq
from scipy.stats import norm

from cookbook import env, robust
from cookbook.robust import privacy

pytest.importorskip("opacus")


def _exact_gaussian_epsilon(noise_multiplier, steps, delta):
    """ε of `steps` full-batch Gaussian mechanisms (q = 1), exactly: one Gaussian with μ = √steps / σ.

    Balle & Wang 2018, Theorem 8: δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2); solved for ε.
    """
    mu = math.sqrt(steps) / noise_multiplier
    return brentq(lambda e: norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2) - delta, 0, 100)


@pytest.mark.parametrize("sigma, steps", [(1.0, 1), (2.0, 10), (5.0, 100)])
def test_accountants_against_the_exact_gaussian_mechanism(sigma, steps):
    assert robust.ACCOUNTANTS == ("rdp", "prv")
    exact = _exact_gaussian_epsilon(sigma, steps, 1e-5)
    prv = robust.epsilon(sigma, 1.0, steps, 1e-5, accountant="prv")
    rdp = robust.epsilon(sigma, 1.0, steps, 1e-5, accountant="rdp")
    assert prv == pytest.approx(exact, rel=0.01)  # PRV is numerically exact up to its error bound
    assert exact <= rdp <= 1.15 * exact  # RDP is a valid, slightly loose upper bound


def test_epsilon_grows_with_steps_and_sampling_and_shrinks_with_noise():
    base = robust.epsilon(1.0, 0.01, 100, 1e-5)  # the guide's noise_multiplier and sample_rate, one epoch
    assert 0 < base < robust.epsilon(1.0, 0.01, 1000, 1e-5)
    assert base < robust.epsilon(1.0, 0.02, 100, 1e-5) and base > robust.epsilon(2.0, 0.01, 100, 1e-5)


def test_dp_run_spends_its_target_and_returns_a_plain_model(digits_loaders):
    train_loader, test_loader = digits_loaders
    model = robust.cnn(0.3, 0.37, channels=(8, 16), seed=0)
    result = robust.dp_train(model, train_loader, target_epsilon=3.0, delta=1e-5, epochs=2, lr=3e-3)
    assert math.isfinite(result.epsilon) and result.epsilon == pytest.approx(3.0, rel=0.05)
    assert result.epsilon <= 3.0 + 1e-9  # the noise is chosen so the target is not exceeded
    assert result.noise_multiplier > 0 and result.max_grad_norm == 1.0 and result.delta == 1e-5
    assert result.steps == 2 * len(train_loader) and result.sample_rate == pytest.approx(1 / len(train_loader))
    assert result.epsilon == pytest.approx(robust.epsilon(result.noise_multiplier, result.sample_rate,
                                                          result.steps, 1e-5), rel=1e-9)  # same accountant
    assert any("Secure RNG turned off" in note for note in result.notes)  # Opacus's warnings, kept
    assert len(result.notes) == len(set(result.notes))
    assert list(result.history.index) == [1, 2]
    assert type(model) is torch.nn.Sequential and not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())  # Opacus's hooks removed
    assert robust.accuracy(model, test_loader) > 0.3  # learned something (chance: 0.1)


def test_infinite_epsilon_is_the_non_private_baseline():
    a, b = robust.cnn(seed=0), robust.cnn(seed=0)
    result = robust.dp_train(a, robust.digits(64)[0], target_epsilon=math.inf, delta=1e-5, epochs=1, lr=3e-3)
    assert result.epsilon == math.inf and result.noise_multiplier == 0 and result.notes == ()
    robust.adversarial_training(b, robust.digits(64)[0], epochs=1, lr=3e-3)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kwargs, match", [
    (dict(target_epsilon=0.0), "target_epsilon must be > 0"),
    (dict(delta=1.0), r"delta must be in \(0, 1\)"),
    (dict(accountant="gdp2"), "accountant must be one of rdp, prv, got 'gdp2'"),
    (dict(epochs=0), "epochs must be a positive int"),
    (dict(max_grad_norm=0.0), "max_grad_norm must be > 0"),
])
def test_dp_train_bad_arguments(kwargs, match):
    batches = [(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))]
    args = {**dict(target_epsilon=1.0, delta=1e-5, epochs=1), **kwargs}
    with pytest.raises(ValueError, match=match):
        robust.dp_train(robust.cnn(seed=0), batches, **args)
    with pytest.raises(ValueError, match="noise_multiplier must be > 0"):
        robust.epsilon(0.0, 0.01, 10, 1e-5)


def test_missing_opacus_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)  # import opacus now raises ImportError
    with pytest.raises(ImportError, match=r'"privacy" extra'):
        robust.epsilon(1.0, 0.01, 10, 1e-5)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")  # explained in notebooks/10 §6
def test_an_empty_poisson_batch_still_takes_a_noisy_step():
    from opacus import PrivacyEngine

    model = robust.cnn(seed=0)
    batches = [(torch.rand(8, 1, 8, 8), torch.arange(8) % 10)] * 4
    with warnings.catch_warnings():  # Opacus: secure RNG off (explained in notebooks/10)
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="rdp")
        private, optimizer, _ = engine.make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), 0.1),
                                                    data_loader=torch.utils.data.DataLoader(batches),
                                                    noise_multiplier=1.0, max_grad_norm=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    empty = (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="no examples"):  # one empty batch only: nothing to report, but ...
        robust.adversarial_training(private, [empty], optimizer=optimizer)
    assert engine.accountant.history[-1][2] == 1  # ... the step was taken and accounted for
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))  # noise only


# ----------------------------------------------------------------------------- against Opacus itself, exact messages
def _small_loader():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def test_dp_train_is_opacus_make_private_with_epsilon_and_a_plain_loop():
    """The same run written with Opacus's API: seed 0, the cookbook's AdamW groups (matrices first, no decay)."""
    from opacus import PrivacyEngine

    ours = robust.cnn(channels=(4, 4), seed=0)
    result = robust.dp_train(ours, _small_loader(), target_epsilon=2.0, delta=1e-5, epochs=2, lr=1e-2,
                             max_grad_norm=0.5)
    reference = robust.cnn(channels=(4, 4), seed=0)
    env.seed_everything(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="rdp")
        groups = [dict(params=[p for p in reference.parameters() if p.ndim >= 2]),
                  dict(params=[p for p in reference.parameters() if p.ndim < 2])]  # Opacus adds noise in this order
        optimizer = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
        private, optimizer, loader = engine.make_private_with_epsilon(
            module=reference, optimizer=optimizer, data_loader=_small_loader(), target_epsilon=2.0,
            target_delta=1e-5, epochs=2, max_grad_norm=0.5)
        for _ in range(2):
            for x, y in loader:
                logits = private(x)
                loss = F.cross_entropy(logits, y) if len(x) else logits.sum() * 0.0
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        spent = engine.get_epsilon(1e-5)
    for p, q in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)  # the fused AdamW rounds a little differently
    assert result.noise_multiplier == optimizer.noise_multiplier and result.epsilon == spent
    assert (result.delta, result.max_grad_norm, result.sample_rate, result.steps, result.accountant) == (
        1e-5, 0.5, 16 / 64, 2 * 4, "rdp")
    assert list(result.history.columns) == ["loss", "accuracy", "seconds"]
    assert isinstance(result, robust.DPResult) and dataclasses.is_dataclass(result)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.epsilon = 0.0


def test_infinite_epsilon_result_by_hand():
    a, b = robust.cnn(channels=(4, 4), seed=0), robust.cnn(channels=(4, 4), seed=0)
    result = robust.dp_train(a, _small_loader(), target_epsilon=math.inf, delta=1e-5, epochs=2)
    history = robust.adversarial_training(b, _small_loader(), epochs=2, lr=1e-3)  # the default lr
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert (result.epsilon, result.delta, result.noise_multiplier, result.max_grad_norm) == (math.inf, 1e-5, 0.0,
                                                                                              math.inf)
    assert (result.sample_rate, result.steps, result.accountant, result.notes) == (1 / 4, 2 * 4, "none", ())
    pd.testing.assert_frame_equal(result.history.drop(columns="seconds"), history.drop(columns="seconds"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(target_epsilon=True), "target_epsilon must be > 0 (math.inf: no DP), got True"),
    (dict(target_epsilon="3"), "target_epsilon must be > 0 (math.inf: no DP), got '3'"),
    (dict(target_epsilon=-1.0), "target_epsilon must be > 0 (math.inf: no DP), got -1.0"),
    (dict(delta=0), "delta must be in (0, 1) (well below 1 / the number of examples), got 0"),
    (dict(delta=True), "delta must be in (0, 1) (well below 1 / the number of examples), got True"),
    (dict(delta="1e-5"), "delta must be in (0, 1) (well below 1 / the number of examples), got '1e-5'"),
    (dict(accountant="RDP"), "accountant must be one of rdp, prv, got 'RDP'"),
    (dict(epochs=0), "epochs must be a positive int, got 0"),
    (dict(max_grad_norm=-1.0), "max_grad_norm must be > 0, got -1.0"),
])
def test_dp_train_messages_in_full(kwargs, message):
    batches = [(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))]
    args = {**dict(target_epsilon=1.0, delta=1e-5, epochs=1), **kwargs}
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        robust.dp_train(robust.cnn(seed=0), batches, **args)


@pytest.mark.parametrize("args, message", [
    ((1.0, 0.0, 10, 1e-5), "noise_multiplier must be > 0 and sample_rate in (0, 1], got 1.0 and 0.0"),
    ((1.0, 1.5, 10, 1e-5), "noise_multiplier must be > 0 and sample_rate in (0, 1], got 1.0 and 1.5"),
    ((-1.0, 0.5, 10, 1e-5), "noise_multiplier must be > 0 and sample_rate in (0, 1], got -1.0 and 0.5"),
    ((1.0, 0.5, 0, 1e-5), "steps must be a positive int, got 0"),
    ((1.0, 0.5, 10, 1), "delta must be in (0, 1) (well below 1 / the number of examples), got 1"),
])
def test_epsilon_messages_in_full(args, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        robust.epsilon(*args)


def test_epsilon_keeps_the_accountants_notes_to_itself():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that escaped would raise here
        loose = robust.epsilon(20.0, 0.01, 1, 1e-5)  # RDP: "optimal order is the largest alpha"
        full_batch = robust.epsilon(1.0, 1.0, 1, 1e-5, accountant="prv")  # PRV: numpy's log(0) at q = 1
    assert 0 < loose < 0.2 and full_batch == pytest.approx(_exact_gaussian_epsilon(1.0, 1, 1e-5), rel=0.01)


def test_notes_are_the_first_line_or_the_warnings_class():
    assert privacy._one_line(UserWarning("  first\nsecond  ")) == "first"
    assert privacy._one_line(UserWarning("")) == "UserWarning"
    assert privacy._one_line(RuntimeWarning("   \n ")) == "RuntimeWarning"


def test_missing_opacus_message_in_full(monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)
    message = ('DP-SGD needs Opacus, the optional "privacy" extra: pip install "cookbook[privacy]" '
               "(or: pip install opacus)")
    with pytest.raises(ImportError, match=f"^{re.escape(message)}$"):
        robust.dp_train(robust.cnn(seed=0), [(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))],
                        target_epsilon=1.0, delta=1e-5, epochs=1)
