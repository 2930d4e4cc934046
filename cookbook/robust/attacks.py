"""Adversarial attacks on classifiers (FGSM, PGD in L∞ and L2) and the robust-accuracy table.

The conventions are torchattacks' (`eps`, `alpha`, `steps`, `random_start`, inputs in [0, 1], the mean
cross-entropy, `targeted=True` meaning `y` holds the target labels), and on the same model and batch the
results are the same. Unlike the guide's FGSM, an attack leaves the model as it found it: its train/eval mode
(per module) and its parameters' `.grad` are untouched, and the input tensor is never modified.

    x_adv = pgd(model, x, y, eps=0.1, steps=10)
    table = robust_accuracy(model, test_loader, functools.partial(pgd, steps=10), [0, 0.05, 0.1])
"""

from __future__ import annotations

import contextlib
import math

import pandas as pd
import torch
import torch.nn.functional as F

from cookbook.checks import positive_int

__all__ = ["NORMS", "accuracy", "eval_mode", "fgsm", "perturb", "pgd", "robust_accuracy"]

NORMS = ("linf", "l2")
_DIVISION_EPS = 1e-10  # torchattacks' PGDL2: keeps a zero gradient from dividing by zero


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """The model in eval mode inside the block; every module's own train/eval flag restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def _check_inputs(x, clamp) -> torch.Tensor:
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__} "
                        f"{getattr(x, 'dtype', '')}".rstrip())
    if clamp is not None:
        lo, hi = clamp
        if not lo < hi:
            raise ValueError(f"clamp must be (low, high) with low < high, got {clamp!r}")
        if x.numel() and (x.min() < lo or x.max() > hi):
            raise ValueError(f"x must lie in the valid range [{lo}, {hi}], got values in [{x.min().item():.3g}, "
                             f"{x.max().item():.3g}]: attacks work in pixel space, so put the normalisation "
                             "inside the model (robust.Normalize) or pass clamp=None")
    return x.detach()


def _l2(t: torch.Tensor, dims) -> torch.Tensor:
    """The L2 norm over `dims`, kept as broadcastable dimensions."""
    if dims == tuple(range(1, t.dim())):  # per example: computed as torchattacks does, to the same rounding
        return t.reshape(len(t), -1).norm(p=2, dim=1).view(-1, *[1] * (t.dim() - 1))
    return t.norm(p=2, dim=dims, keepdim=True)


def perturb(loss_fn, x: torch.Tensor, eps: float, *, alpha: float | None = None, steps: int = 10,
            norm: str = "linf", random_start: bool = True, clamp: tuple[float, float] | None = (0.0, 1.0),
            norm_dims=None) -> torch.Tensor:
    """Projected gradient ascent of `loss_fn(x_adv)` over the ε-ball around `x` (Madry et al. 2018): x_adv.

    Each step moves `alpha` along the gradient's sign (L∞) or its direction (L2), projects back onto the
    ball and clamps to `clamp` (None: unbounded, e.g. embeddings). `alpha` defaults to 2.5·eps/steps: the
    steps together can cross the whole ball from a random start. The L2 ball is per example (`norm_dims`: every dimension but the first), or per any
    sub-tensor you name, e.g. `norm_dims=(-1,)` for one ball per token embedding. `x` is not modified;
    `loss_fn` must not reduce over the batch with anything but a sum or a mean.
    """
    eps = _check_eps(eps)
    positive_int("steps", steps)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    x = _check_inputs(x, clamp)
    if eps == 0:
        return x.clone()
    alpha = 2.5 * eps / steps if alpha is None else alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha (the step size) must be a number > 0, got {alpha!r}")
    dims = tuple(range(1, x.dim())) if norm_dims is None else tuple(norm_dims)
    lo, hi = clamp if clamp is not None else (None, None)

    adv = x.clone()
    if random_start:
        if norm == "linf":  # uniform in the cube
            adv = adv + torch.empty_like(adv).uniform_(-eps, eps)
        else:  # a random direction at a uniformly random radius (torchattacks' PGDL2)
            delta = torch.empty_like(adv).normal_()
            delta = delta * torch.rand_like(_l2(delta, dims)) / _l2(delta, dims) * eps
            adv = adv + delta
        if clamp is not None:
            adv = adv.clamp(lo, hi)
    with torch.enable_grad():  # attacks also work when called under torch.no_grad()
        for _ in range(steps):
            adv = adv.detach().requires_grad_(True)
            # autograd.grad (not .backward()): only the input's gradient, the parameters' .grad stay as they were
            (grad,) = torch.autograd.grad(loss_fn(adv), adv)
            if norm == "linf":
                adv = adv.detach() + alpha * grad.sign()
                delta = (adv - x).clamp(-eps, eps)
            else:
                adv = adv.detach() + alpha * (grad / (_l2(grad, dims) + _DIVISION_EPS))
                delta = adv - x
                delta = delta * torch.clamp(eps / _l2(delta, dims), max=1.0)
            adv = x + delta
            if clamp is not None:
                adv = adv.clamp(lo, hi)
    return adv.detach()


def _labels(x, y) -> torch.Tensor:
    if not torch.is_tensor(y) or y.dtype not in (torch.int64, torch.int32) or y.shape != x.shape[:1]:
        raise ValueError(f"y must be integer class labels, one per example of x ({tuple(x.shape[:1])}), got "
                         f"{getattr(y, 'dtype', type(y).__name__)} of shape {tuple(getattr(y, 'shape', ()))}")
    return y.detach().long()


def _classifier_loss(model, y, targeted: bool):
    # targeted: descend the loss of the target class (torchattacks: cost = -CE(logits, target))
    sign = -1.0 if targeted else 1.0
    return lambda inputs: sign * F.cross_entropy(model(inputs), y)


def fgsm(model, x: torch.Tensor, y: torch.Tensor, eps: float, *, targeted: bool = False,
         clamp: tuple[float, float] | None = (0.0, 1.0)) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015): clamp(x + eps·sign(∇x loss)), the adversarial batch.

    `targeted=True`: `y` holds target labels and the step goes down their loss. The model runs in eval mode;
    its modes, its gradients and `x` are left as they were. Shown in notebooks/10 §2.
    """
    eps = _check_eps(eps)
    x = _check_inputs(x, clamp)
    y = _labels(x, y)
    with eval_mode(model), torch.enable_grad():
        inputs = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(_classifier_loss(model, y, targeted)(inputs), inputs)
    adv = x + eps * grad.sign()
    return (adv.clamp(*clamp) if clamp is not None else adv).detach()


def pgd(model, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float | None = None, steps: int = 10, *,
        random_start: bool = True, norm: str = "linf", targeted: bool = False,
        clamp: tuple[float, float] | None = (0.0, 1.0)) -> torch.Tensor:
    """Projected Gradient Descent (Madry et al. 2018) in the L∞ or L2 ball of radius `eps`: the adversarial batch.

    torchattacks' PGD (norm="linf") and PGDL2 (norm="l2"); `alpha` defaults to 2.5·eps/steps. With
    `random_start=False, steps=1, alpha=eps` it is FGSM. The model runs in eval mode; its modes, its
    gradients and `x` are left as they were. Shown in notebooks/10 §2.
    """
    x = _check_inputs(x, clamp)
    y = _labels(x, y)
    with eval_mode(model):
        return perturb(_classifier_loss(model, y, targeted), x, eps, alpha=alpha, steps=steps, norm=norm,
                       random_start=random_start, clamp=clamp)


def _batches(loader, device, max_examples):
    seen = 0
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("the loader must yield (inputs, labels) batches, like a TensorDataset or torchvision's")
        x, y = batch[0], batch[1]
        if max_examples is not None:
            if seen >= max_examples:
                return
            x, y = x[: max_examples - seen], y[: max_examples - seen]
        seen += len(x)
        yield x.to(device), y.to(device)


def _device(model) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


@torch.no_grad()
def accuracy(model, loader, *, max_examples: int | None = None) -> float:
    """Share of the loader's examples (the first `max_examples`) the model classifies right, in eval mode.

    Shown in notebooks/10 §1.
    """
    correct = total = 0
    with eval_mode(model):
        for x, y in _batches(loader, _device(model), max_examples):
            correct += int((model(x).argmax(-1) == y).sum())
            total += len(y)
    if total == 0:
        raise ValueError("the loader yielded no examples")
    return correct / total


def robust_accuracy(model, loader, attack, eps_list, *, max_examples: int | None = None) -> pd.DataFrame:
    """Clean and robust accuracy and the attack success rate per ε: a DataFrame indexed by eps.

    `attack(model, x, y, eps)` returns adversarial inputs (e.g. `fgsm`, `functools.partial(pgd, steps=10)`).
    Robust accuracy counts an example only if it is classified right both clean and attacked (RobustBench's
    convention, so it never exceeds clean accuracy); the attack success rate is the share of the correctly
    classified examples the attack flips, and 1 − it is the defense success rate. Shown in notebooks/10 §3.
    """
    eps_list = [_check_eps(e) for e in eps_list]
    if not eps_list:
        raise ValueError("eps_list needs at least one radius")
    device = _device(model)
    clean_correct, robust_correct, total = 0, dict.fromkeys(eps_list, 0), 0
    with eval_mode(model):
        for x, y in _batches(loader, device, max_examples):
            with torch.no_grad():
                right = model(x).argmax(-1) == y
            clean_correct, total = clean_correct + int(right.sum()), total + len(y)
            for eps in eps_list:
                if eps == 0:
                    robust_correct[eps] += int(right.sum())
                    continue
                x_adv = attack(model, x, y, eps)
                with torch.no_grad():
                    robust_correct[eps] += int((right & (model(x_adv).argmax(-1) == y)).sum())
    if total == 0:
        raise ValueError("the loader yielded no examples")
    rows = [dict(eps=eps, clean_accuracy=clean_correct / total, robust_accuracy=robust_correct[eps] / total,
                 attack_success_rate=1 - robust_correct[eps] / clean_correct if clean_correct else math.nan,
                 examples=total) for eps in eps_list]
    return pd.DataFrame(rows).set_index("eps")
