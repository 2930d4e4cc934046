"""Solutions to the exercises of notebooks/10 (adversarial robustness and privacy), each checked independently."""

import math

import torch
from torch import nn

from cookbook import evaluate, robust


# ----------------------------------------------------------------------------- exercise 1: FGSM on a linear model
def linear_fgsm(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """FGSM on the logistic loss log(1 + exp(-y (w·x + b))), y in {-1, +1}, without clamping."""
    x = x.clone().requires_grad_(True)
    loss = nn.functional.softplus(-y * (x @ w + b)).mean()
    (grad,) = torch.autograd.grad(loss, x)
    return (x + eps * grad.sign()).detach()


def test_exercise_1_fgsm_lowers_a_linear_margin_by_eps_l1():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(20, generator=g, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    x = torch.randn(50, 20, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (50,), generator=g).double() * 2 - 1
    eps = 0.1
    margin = lambda inputs: y * (inputs @ w + b)  # noqa: E731
    drop = margin(x) - margin(linear_fgsm(w, b, x, y, eps))
    torch.testing.assert_close(drop, torch.full_like(drop, eps * w.abs().sum().item()))  # the closed form
    # the library's FGSM on the same model (two logits: 0 and the score) moves the images the same way
    two_logits = nn.Linear(20, 2).double()
    with torch.no_grad():
        two_logits.weight.copy_(torch.stack([torch.zeros_like(w), w]))
        two_logits.bias.copy_(torch.stack([torch.zeros_like(b), b]))
    labels = (y > 0).long()
    torch.testing.assert_close(robust.fgsm(two_logits, x, labels, eps, clamp=None), linear_fgsm(w, b, x, y, eps))


# ----------------------------------------------------------------------------- exercise 2: DP-SGD with torch.func
def dp_sgd_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float, sigma: float,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One DP-SGD gradient: per-example gradients (vmap of grad), each clipped to `clip`, summed, noised, / batch."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        out = torch.func.functional_call(model, p, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0))

    per_example = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.cat([g.reshape(len(x), -1) for g in per_example.values()], dim=1).norm(dim=1)
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    out = {}
    for name, g in per_example.items():
        summed = torch.einsum("i,i...->...", factor, g)
        noise = torch.normal(0.0, sigma * clip, size=summed.shape, generator=generator) if sigma > 0 else 0.0
        out[name] = (summed + noise) / len(x)
    return out


def _model_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    return model, torch.randn(12, 6), torch.randint(0, 3, (12,))


def test_exercise_2_dp_sgd_without_noise_or_clipping_is_the_mean_gradient():
    model, x, y = _model_and_batch()
    ours = dp_sgd_gradient(model, x, y, clip=1e6, sigma=0.0)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()  # the independent check: one ordinary backward pass
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-5, atol=1e-6)


def test_exercise_2_a_tiny_clip_bounds_the_mean_gradient():
    model, x, y = _model_and_batch()
    clip = 1e-3
    ours = dp_sgd_gradient(model, x, y, clip=clip, sigma=0.0)
    norm = torch.cat([g.flatten() for g in ours.values()]).norm().item()
    assert norm <= clip * (1 + 1e-4)  # a mean of vectors of norm <= C has norm <= C
    noisy = dp_sgd_gradient(model, x, y, clip=clip, sigma=1.0, generator=torch.Generator().manual_seed(0))
    d = sum(p.numel() for p in model.parameters())
    noise_norm = torch.cat([(noisy[k] - ours[k]).flatten() for k in ours]).norm().item() * len(x)
    assert abs(noise_norm / (clip * math.sqrt(d)) - 1) < 0.25  # N(0, σ²C²) per coordinate: norm about σ·C·√d


# ----------------------------------------------------------------------------- exercise 3: a paired bootstrap
def paired_bootstrap(a: torch.Tensor, b: torch.Tensor, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(a) - mean(b) over paired examples, resampling the examples."""
    idx = torch.randint(len(a), (n, len(a)), generator=torch.Generator().manual_seed(seed))
    diffs = a.float()[idx].mean(1) - b.float()[idx].mean(1)
    return diffs.quantile(0.025).item(), diffs.quantile(0.975).item()


def test_exercise_3_paired_bootstrap():
    right = torch.rand(300, generator=torch.Generator().manual_seed(1)) < 0.8
    assert paired_bootstrap(right, right) == (0.0, 0.0)  # identical answers: no difference at all
    other = right.clone()
    flip = torch.randperm(300, generator=torch.Generator().manual_seed(2))[:60]  # a known share changes
    other[flip[:45]] = True
    other[flip[45:]] = False
    truth = (other.float() - right.float()).mean().item()
    lo, hi = paired_bootstrap(other, right)
    assert lo <= truth <= hi
    diff = other.float() - right.float()  # independent check: the normal approximation's 95% width
    normal_width = 2 * 1.96 * diff.std().item() / math.sqrt(len(diff))
    assert abs((hi - lo) / normal_width - 1) < 0.2
    library = evaluate.paired_bootstrap(right.float().numpy(), other.float().numpy())  # scipy's, as §3 uses
    assert abs(lo - library["low"]) < 0.01 and abs(hi - library["high"]) < 0.01
