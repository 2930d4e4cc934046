"""Differential privacy: DP-SGD (Abadi et al. 2016) with Opacus to a target ε, and the privacy accountant.

DP-SGD clips each example's gradient to `max_grad_norm` and adds Gaussian noise of std σ·max_grad_norm to
their sum; an accountant turns (σ, sampling rate, steps) into the (ε, δ) guarantee. Opacus is the optional
`privacy` extra (`pip install "cookbook[privacy]"`).

    result = dp_train(model, train_loader, target_epsilon=3.0, delta=1e-5, epochs=10)
    result.epsilon, result.noise_multiplier
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import pandas as pd

from cookbook import env
from cookbook.checks import positive_int
from cookbook.robust.adversarial import adversarial_training
from cookbook.train import adamw

__all__ = ["ACCOUNTANTS", "DPResult", "dp_train", "epsilon"]

# rdp: Rényi DP (Mironov 2017), fast, a slightly loose upper bound; prv: privacy random variables (Gopi et
# al. 2021), Opacus's default, tighter but ~5x slower to compute.
ACCOUNTANTS = ("rdp", "prv")


def _opacus():
    try:  # optional, heavy: only DP training needs Opacus
        import opacus
        import opacus.accountants
    except ImportError:
        raise ImportError('DP-SGD needs Opacus, the optional "privacy" extra: pip install "cookbook[privacy]" '
                          "(or: pip install opacus)") from None
    return opacus


def _check(accountant: str, delta: float) -> None:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1) (well below 1 / the number of examples), got {delta!r}")


@dataclasses.dataclass(frozen=True)
class DPResult:
    """What a DP-SGD run spent: the guarantee (ε, δ) and the settings that produced it."""

    epsilon: float  # ε spent, from the accountant (inf: no DP)
    delta: float
    noise_multiplier: float  # σ: noise std / clipping norm (0: no DP)
    max_grad_norm: float  # per-example clipping norm C
    sample_rate: float  # q: each example's chance to be in a batch (Poisson sampling)
    steps: int  # noisy optimizer steps
    accountant: str
    history: pd.DataFrame  # loss and accuracy per epoch
    notes: tuple[str, ...]  # the warnings the run raised (Opacus's among them), one line each, once


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, *,
            accountant: str = "rdp") -> float:
    """ε after `steps` DP-SGD steps with noise σ and Poisson sampling rate q, at δ (Opacus's accountants).

    Shown in notebooks/10 §6.
    """
    _check(accountant, delta)
    positive_int("steps", steps)
    if not noise_multiplier > 0 or not 0 < sample_rate <= 1:
        raise ValueError(f"noise_multiplier must be > 0 and sample_rate in (0, 1], got {noise_multiplier!r} "
                         f"and {sample_rate!r}")
    acc = _opacus().accountants.create_accountant(mechanism=accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        # RDP's "optimal order is the largest alpha" notes a looser bound, not an error; PRV's log(0) at q = 1
        # is a harmless numpy RuntimeWarning inside Opacus.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(acc.get_epsilon(delta=delta))


def _one_line(message) -> str:
    return str(message).strip().splitlines()[0] if str(message).strip() else type(message).__name__


def dp_train(model, loader, *, target_epsilon: float, delta: float, epochs: int, max_grad_norm: float = 1.0,
             lr: float = 1e-3, accountant: str = "rdp", grad_sample_mode: str = "hooks", seed: int = 0) -> DPResult:
    """Train a classifier with DP-SGD to spend `target_epsilon` at `delta` over `epochs`: a `DPResult`.

    Opacus's `make_private_with_epsilon` picks the noise σ that the accountant says reaches the target after
    `epochs` epochs with Poisson sampling at rate 1 / len(loader); the model then trains through
    `adversarial_training`'s loop (attack=None) with the cookbook's AdamW wrapped by Opacus's DP optimizer.
    The model is trained in place and returned to a plain module (Opacus's hooks and per-example gradients
    removed). `target_epsilon=math.inf` trains without DP (no clipping, no noise) through the same loop: the
    baseline. Warnings raised during the run are returned in `notes`, each once, rather than printed.
    grad_sample_mode "hooks" is Opacus's default and needs no functorch tracing. Shown in notebooks/10 §6.
    """
    _check(accountant, delta)
    positive_int("epochs", epochs)
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, (int, float)) or not target_epsilon > 0:
        raise ValueError(f"target_epsilon must be > 0 (math.inf: no DP), got {target_epsilon!r}")
    if not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm!r}")
    env.seed_everything(seed)  # Opacus draws noise and Poisson batches from torch's global generator
    device = next(model.parameters()).device
    if math.isinf(target_epsilon):
        history = adversarial_training(model, loader, epochs=epochs, lr=lr)
        return DPResult(math.inf, delta, 0.0, math.inf, 1 / len(loader), epochs * len(loader), "none", history, ())

    opacus = _opacus()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = opacus.PrivacyEngine(accountant=accountant)
        private, optimizer, private_loader = engine.make_private_with_epsilon(
            module=model, optimizer=adamw(model, lr=lr, weight_decay=0.0, device=device), data_loader=loader,
            target_epsilon=target_epsilon, target_delta=delta, epochs=epochs, max_grad_norm=max_grad_norm,
            grad_sample_mode=grad_sample_mode)
        try:
            history = adversarial_training(private, private_loader, epochs=epochs, optimizer=optimizer)
            spent = float(engine.get_epsilon(delta))
        finally:
            private.to_standard_module()  # removes Opacus's hooks and .grad_sample from the caller's model
    notes = tuple(dict.fromkeys(_one_line(w.message) for w in caught))
    steps = sum(n for _, _, n in engine.accountant.history)
    sample_rate = engine.accountant.history[-1][1]
    return DPResult(spent, delta, float(optimizer.noise_multiplier), float(max_grad_norm), float(sample_rate),
                    int(steps), accountant, history, notes)
