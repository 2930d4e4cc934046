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


def test_fisher_of_a_single_example_and_batches_it_cannot_split():
    x, y = torch.tensor([1.5], dtype=torch.float64), torch.tensor([0.1], dtype=torch.float64)
    fisher = continual.fisher_diagonal(Line(0.7), [(x, y)], _nll)  # the boundary: one example
    assert fisher["theta"].item() == pytest.approx(((0.1 - 0.7 * 1.5) * 1.5) ** 2, rel=1e-12)
    message = "^a batch is a tensor or a tuple, list or dict holding tensors with a batch dimension, got {}$"
    with pytest.raises(TypeError, match=message.format("str")):
        continual.fisher_diagonal(Line(0.7), ["not a batch"], _nll)
    with pytest.raises(TypeError, match=message.format("Tensor")):  # 0-dim: no batch dimension to split
        continual.fisher_diagonal(Line(0.7), [torch.tensor(1.0)], _nll)
    with pytest.raises(ValueError, match=r"^fisher_diagonal\(\) got no examples$"):
        continual.fisher_diagonal(Line(0.7), [], _nll)


def test_fisher_passes_non_tensor_members_whole_in_eval_mode_and_restores_the_mode():
    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    y = torch.tensor([0.3, -0.2, 1.9], dtype=torch.float64)
    modes = []

    def scaled_nll(model, batch):
        modes.append(model.training)
        return batch["scale"] * _nll(model, (batch["x"], batch["y"]))

    for training in (True, False):
        model = Line(0.7).train(training)
        fisher = continual.fisher_diagonal(model, [{"x": x, "y": y, "scale": 2.0}], scaled_nll)
        # the gradient doubles, so the Fisher is 4x the unscaled one
        assert fisher["theta"].item() == pytest.approx(4 * (((y - 0.7 * x) * x) ** 2).mean().item(), rel=1e-12)
        assert model.training is training
    assert modes == [False] * 6  # dropout off for every example


@pytest.mark.parametrize("lam", [-1e-9, float("nan"), float("inf")])
def test_ewc_refuses_a_negative_or_non_finite_lam(lam):
    with pytest.raises(ValueError, match=rf"^lam \(the EWC penalty weight\) must be >= 0 and finite, got {lam!r}$"):
        continual.EWC(Line(0.7), {}, lam=lam)


def test_ewc_boundaries_and_its_unknown_parameter_message():
    model = Line(0.7)
    ewc = continual.EWC(model, {"theta": torch.tensor(4.0, dtype=torch.float64)}, lam=0)  # the lower limit
    with torch.no_grad():
        model.theta.fill_(5.0)
    assert ewc.penalty(model).item() == 0.0
    ewc = continual.EWC(model, {}, lam=1e30)  # no Fisher entries: nothing to hold, whatever lam
    assert ewc.penalty(model).item() == 0.0
    fisher = {name: torch.ones(1) for name in ("d", "c", "b", "a")}
    with pytest.raises(ValueError, match=r"^fisher holds \['a', 'b', 'c'\], which the model has no parameter of "
                                         r"\(another model\?\)$"):  # the first three, sorted
        continual.EWC(model, fisher, lam=1)


@pytest.mark.parametrize("smoothing", [-0.1, float("nan"), float("inf")])
def test_kl_shift_refuses_a_negative_or_non_finite_smoothing(smoothing):
    with pytest.raises(ValueError, match=rf"^smoothing must be >= 0 and finite, got {smoothing!r}$"):
        continual.kl_shift([1, 1], [1, 2], smoothing=smoothing)


@pytest.mark.parametrize("base", [0, -2.0, 1, 1.0, float("inf"), float("nan")])
def test_kl_shift_refuses_a_base_without_a_logarithm(base):
    with pytest.raises(ValueError, match=rf"^base must be a finite number > 0 other than 1 \(math.e: nats, 2: bits\), "
                                         rf"got {base!r}$"):
        continual.kl_shift([1, 1], [1, 2], base=base)


def test_kl_shift_in_another_base_and_near_the_limits():
    p, q = [0.5, 0.5], [0.25, 0.75]
    nats = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    assert continual.kl_shift(p, q, smoothing=0, base=10) == pytest.approx(nats / math.log(10), rel=1e-12)
    assert continual.kl_shift(p, q, smoothing=0, base=1.5) == pytest.approx(nats / math.log(1.5), rel=1e-12)
    assert continual.kl_shift(p, q, smoothing=0, base=0.5) == pytest.approx(-nats / math.log(2), rel=1e-12)  # any log
    # a huge smoothing drowns the counts: no shift left
    assert continual.kl_shift(p, q, smoothing=1e12) == pytest.approx(0.0, abs=1e-12)


def test_kl_shift_skips_outcomes_p_never_shows_and_outcomes_neither_shows():
    # p = 0 where q > 0 adds nothing (0 log 0 = 0): KL = 0.5 ln(0.5/0.25) x 2 = ln 2
    assert continual.kl_shift([0.5, 0.5, 0], [0.25, 0.25, 0.5], smoothing=0) == pytest.approx(math.log(2), rel=1e-12)
    assert continual.kl_shift([0.5, 0.5, 0], [0.25, 0.25, 0.5], smoothing=0) == pytest.approx(
        entropy([0.5, 0.5, 0], [0.25, 0.25, 0.5]), rel=1e-12)
    # an outcome both give 0 is not "missing from q"
    nats = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    assert continual.kl_shift([0.5, 0.5, 0], [0.25, 0.75, 0], smoothing=0) == pytest.approx(nats, rel=1e-12)


def test_kl_shift_smooths_an_outcome_q_never_shows():
    # q has no "b": smoothed, p = (2.5, 2.5), q = (4.5, 0.5)
    assert continual.kl_shift({"a": 2, "b": 2}, {"a": 4}) == pytest.approx(entropy([2.5, 2.5], [4.5, 0.5]), rel=1e-12)
    assert continual.kl_shift({"a": 2, "b": 2}, {"a": 4}, smoothing=1) == pytest.approx(
        entropy([3, 3], [5, 1]), rel=1e-12)
    # outcomes of mixed types (ints and strings) are aligned by their repr, not compared with each other
    assert continual.kl_shift({0: 3, "a": 1}, {0: 1, "a": 2}) == pytest.approx(
        entropy([3.5, 1.5], [1.5, 2.5]), rel=1e-12)


@pytest.mark.parametrize(("p", "q"), [([0, 0], [1, 1]), ([1, 1], [0, 0]), ([-1, 2], [1, 1]), ([1, 1], [2, -1]),
                                      ({"a": 0}, {"a": 1}), ({"a": 1}, {"b": 0})])
def test_kl_shift_refuses_negative_counts_and_no_mass(p, q):
    with pytest.raises(ValueError, match="^p and q must be non-negative counts or probabilities with some mass$"):
        continual.kl_shift(p, q)


def test_kl_shift_messages():
    with pytest.raises(ValueError, match=r"^p and q have disjoint supports \(no outcome occurs in both\): KL\(p\|\|q\) "
                                         r"is infinite, and with smoothing it would only measure the smoothing; compare "
                                         r"distributions over shared outcomes \(the same tokenizer, the same feature "
                                         r"bins\)$"):
        continual.kl_shift({"a": 1}, {"b": 1})
    # four outcomes q never shows, three named (sorted)
    with pytest.raises(ValueError, match=r"^KL\(p\|\|q\) is infinite: p has 4 outcome\(s\) q never shows \(e.g. "
                                         r"\['b', 'c', 'd'\]\); pass smoothing > 0$"):
        continual.kl_shift(dict.fromkeys("edcba", 1), {"a": 1, "z": 1}, smoothing=0)
    # probabilities, not counts: outcome 1 has p = 0.5 and q = 0
    with pytest.raises(ValueError, match=r"^KL\(p\|\|q\) is infinite: p has 1 outcome\(s\) q never shows \(e.g. \[1\]\)"):
        continual.kl_shift([0.5, 0.5], [1.0, 0.0], smoothing=0)
    with pytest.raises(ValueError, match=r"^p and q must cover the same outcomes, got 2 and 3 entries$"):
        continual.kl_shift([1, 2], [1, 2, 3])
    with pytest.raises(TypeError, match=r"^p and q must both be mappings \(outcome -> count\) or both arrays over the "
                                        r"same outcomes$"):
        continual.kl_shift([1], {"a": 1})


def test_token_counts_of_no_texts_and_its_message():
    class Tok:
        def __call__(self, texts):
            assert isinstance(texts, list)
            return {"input_ids": [[ord(c) for c in t] for t in texts]}

    assert continual.token_counts(Tok(), ()) == {}
    assert continual.token_counts(Tok(), ("ab", "")) == {97: 1, 98: 1}
    with pytest.raises(TypeError, match="^texts must be a list of documents, got one string$"):
        continual.token_counts(Tok(), "ab")


def test_kl_shift_computes_in_float64_whatever_the_input_dtype():
    p32, q32 = np.array([0.1, 0.2, 0.7], dtype=np.float32), np.array([0.3, 0.3, 0.4], dtype=np.float32)
    want = entropy(p32.astype(np.float64) + 0.5, q32.astype(np.float64) + 0.5)
    assert continual.kl_shift(p32, q32) == pytest.approx(want, rel=1e-12)
    assert continual.kl_shift(torch.from_numpy(p32), torch.from_numpy(q32)) == pytest.approx(want, rel=1e-12)
    as_mappings = (dict(zip("abc", p32, strict=True)), dict(zip("abc", q32, strict=True)))  # numpy float32 values
    assert continual.kl_shift(*as_mappings) == pytest.approx(want, rel=1e-12)
