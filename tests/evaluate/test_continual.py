import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from cookbook import models, train
from cookbook.evaluate import continual
from tests.blocks import VOCAB, loader


class Line(torch.nn.Module):
    """y = theta * x: with unit Gaussian noise, the per-example NLL is (y - theta x)^2 / 2 + const."""

    def __init__(self, theta):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(float(theta), dtype=torch.float64))

    def forward(self, x):
        return self.theta * x


def _nll(model, batch):
    x, y = batch
    return (0.5 * (y - model(x)) ** 2).mean()


def test_fisher_of_a_one_parameter_model_by_hand():
    x = torch.tensor([0.5, -1.0, 2.0, 1.5], dtype=torch.float64)
    y = torch.tensor([0.3, -0.2, 1.9, 0.1], dtype=torch.float64)
    model = Line(0.7)
    fisher = continual.fisher_diagonal(model, [(x[i:i + 1], y[i:i + 1]) for i in range(4)], _nll)
    # d/dtheta of (y - theta x)^2 / 2 is -(y - theta x) x: the empirical Fisher is its mean square
    by_hand = (((y - 0.7 * x) * x) ** 2).mean()
    assert fisher["theta"].item() == pytest.approx(by_hand.item(), rel=1e-12)
    assert model.theta.grad is None  # no gradient left behind


def _logistic_nll(model, batch):
    """p(y = 1 | x) = sigmoid(theta x), the Line as a logit: the per-example gradient is (sigmoid(theta x) - y) x."""
    return torch.nn.functional.binary_cross_entropy_with_logits(model(batch["x"]), batch["y"])


@pytest.mark.parametrize("batch_size", [1, 3, 8, 50])
def test_fisher_is_per_example_whatever_the_batch_size(batch_size):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(50, generator=gen, dtype=torch.float64) * 2
    y = (torch.rand(50, generator=gen, dtype=torch.float64) < torch.sigmoid(0.8 * x)).double()
    closed_form = (((torch.sigmoid(0.4 * x) - y) * x) ** 2).mean().item()
    batches = [{"x": x[i:i + batch_size], "y": y[i:i + batch_size]} for i in range(0, 50, batch_size)]
    fisher = continual.fisher_diagonal(Line(0.4), batches, _logistic_nll)
    assert fisher["theta"].item() == pytest.approx(closed_form, rel=1e-12)
    # the squared gradient of each batch's mean loss: what a per-batch Fisher would report, far smaller
    batch_means = np.mean([(((torch.sigmoid(0.4 * b["x"]) - b["y"]) * b["x"]).mean() ** 2).item() for b in batches])
    assert batch_size == 1 or batch_means < 0.8 * closed_form


def test_fisher_splits_tuples_lists_and_bare_tensors_and_rejects_the_rest():
    x = torch.tensor([0.5, -1.0, 2.0, 1.5], dtype=torch.float64)
    y = torch.tensor([0.3, -0.2, 1.9, 0.1], dtype=torch.float64)
    by_hand = (((y - 0.7 * x) * x) ** 2).mean().item()
    assert continual.fisher_diagonal(Line(0.7), [[x, y]], _nll)["theta"].item() == pytest.approx(by_hand, rel=1e-12)
    bare = continual.fisher_diagonal(Line(0.7), [x[:3], x[3:]], lambda m, b: (0.5 * m(b) ** 2).mean())
    assert bare["theta"].item() == pytest.approx(((0.7 * x * x) ** 2).mean().item(), rel=1e-12)
    with pytest.raises(TypeError, match="a batch is a tensor or a tuple, list or dict"):
        continual.fisher_diagonal(Line(0.7), ["not a batch"], _nll)
    with pytest.raises(ValueError, match="no examples"):
        continual.fisher_diagonal(Line(0.7), [], _nll)


def test_fisher_with_labels_from_the_model_is_the_expected_fisher():
    # labels drawn from the model itself: E[(eps x)^2] = E[x^2] (unit noise), the true Fisher of the line
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, generator=gen, dtype=torch.float64)
    y = 0.7 * x + torch.randn(2000, generator=gen, dtype=torch.float64)
    fisher = continual.fisher_diagonal(Line(0.7), [(x[i:i + 100], y[i:i + 100]) for i in range(0, 2000, 100)], _nll)
    assert fisher["theta"].item() == pytest.approx(1.0, rel=0.15)  # sampling error: ~0.055 relative


def test_ewc_penalty_by_hand_and_it_holds_important_weights():
    model = Line(0.7)
    ewc = continual.EWC(model, {"theta": torch.tensor(4.0, dtype=torch.float64)}, lam=10.0)
    with torch.no_grad():
        model.theta.fill_(1.0)
    assert ewc.penalty(model).item() == pytest.approx(0.5 * 10.0 * 4.0 * 0.3 ** 2)
    # task B alone pulls theta to 2.0; with EWC the optimum is (2 x B + lam F x 0.7) / (B + lam F)
    xb = torch.ones(8, dtype=torch.float64)
    for lam, want in ((0.0, 2.0), (10.0, (2.0 + 10 * 4 * 0.7) / (1 + 10 * 4))):
        model = Line(0.7)
        ewc = continual.EWC(model, {"theta": torch.tensor(4.0, dtype=torch.float64)}, lam=lam)
        opt = torch.optim.LBFGS(model.parameters(), max_iter=100)

        def closure(model=model, ewc=ewc, opt=opt):
            opt.zero_grad()
            loss = _nll(model, (xb, 2.0 * xb)) + ewc.penalty(model)
            loss.backward()
            return loss
        opt.step(closure)
        assert model.theta.item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="lam .* must be >= 0"):
        continual.EWC(model, {}, lam=-1)
    with pytest.raises(ValueError, match="no parameter of"):
        continual.EWC(model, {"weight": torch.ones(1)}, lam=1)


def test_ewc_as_a_trainer_loss_fn_adds_one_penalty_per_step():
    model = models.build("tiny", VOCAB, seed=0)
    batches = list(loader(n=8, seq_len=12, batch=4))
    fisher = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    ewc = continual.EWC(model, fisher, lam=2.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # away from the anchor, so the penalty is not zero
    penalty = ewc.penalty(model).item()
    assert penalty == pytest.approx(0.5 * 2.0 * sum(p.numel() for p in model.parameters()) * 1e-4, rel=1e-3)
    plain = train.backward_micro_batches(model, batches, device="cpu").item()
    model.zero_grad()
    with_ewc = train.backward_micro_batches(model, batches, device="cpu", loss_fn=ewc.token_loss_fn()).item()
    assert with_ewc == pytest.approx(plain + penalty, rel=1e-5)  # two micro-batches, still one penalty
    config = train.TrainConfig(steps=2, lr=1e-3, log_interval=1, progress=False, device="cpu")
    history = train.Trainer(model, loader(n=8, seq_len=12, batch=4), config=config, loss_fn=ewc.token_loss_fn()).fit()
    assert len(history) == 2 and np.isfinite(history.loss).all()


def test_kl_shift_closed_form_and_scipy():
    p, q = [0.5, 0.5], [0.25, 0.75]
    by_hand = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert continual.kl_shift(p, q, smoothing=0) == pytest.approx(by_hand)
    assert continual.kl_shift(p, q, smoothing=0, base=2) == pytest.approx(by_hand / math.log(2))
    assert continual.kl_shift(p, p) == 0.0
    # Bernoulli closed form on counts; smoothing: Lidstone counts against scipy's entropy()
    counts_p, counts_q = {"a": 3, "b": 1}, {"a": 1, "b": 2, "c": 1}
    smoothed_p, smoothed_q = np.array([3.5, 1.5, 0.5]), np.array([1.5, 2.5, 1.5])
    assert continual.kl_shift(counts_p, counts_q) == pytest.approx(entropy(smoothed_p, smoothed_q))


def test_kl_shift_refuses_infinite_and_meaningless_shifts():
    with pytest.raises(ValueError, match=r"p has 1 outcome\(s\) q never shows \(e.g. \['c'\]\)"):
        continual.kl_shift({"a": 1, "c": 2}, {"a": 3, "b": 1}, smoothing=0)
    with pytest.raises(ValueError, match="disjoint supports"):
        continual.kl_shift({"a": 1}, {"b": 1})
    with pytest.raises(ValueError, match="same outcomes"):
        continual.kl_shift([1, 2], [1, 2, 3])
    with pytest.raises(TypeError, match="both be mappings"):
        continual.kl_shift({"a": 1}, [1])


def test_token_counts():
    class Tok:
        def __call__(self, texts):
            return {"input_ids": [[ord(c) for c in t] for t in texts]}

    assert continual.token_counts(Tok(), ["aab", "b"]) == {97: 2, 98: 2}
    with pytest.raises(TypeError, match="one string"):
        continual.token_counts(Tok(), "ab")
