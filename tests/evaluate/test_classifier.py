import copy

import numpy as np
import pytest
import torch

from cookbook.evaluate import classifier


def _blobs(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 4)) + 3 * np.eye(3, 4)[y]
    return x.astype(np.float32), y


def test_fit_is_seeded_learns_and_stops_when_asked():
    x, y = _blobs()
    a = classifier.fit(classifier.mlp(4, 3, hidden=8, seed=0), x, y, epochs=10, lr=5e-2, seed=0)
    b = classifier.fit(classifier.mlp(4, 3, hidden=8, seed=0), x, y, epochs=10, lr=5e-2, seed=0)
    probs = classifier.predict_proba(a, x)
    assert torch.equal(probs, classifier.predict_proba(b, x))  # same seeds, same model
    assert torch.allclose(probs.sum(1), torch.ones(len(x)))
    assert (probs.argmax(1).numpy() == y).mean() > 0.9
    seen = []
    classifier.fit(classifier.mlp(4, 3, seed=0), x, y, epochs=10, lr=1e-2, on_epoch=lambda e, m: seen.append(e) or e == 3)
    assert seen == [1, 2, 3]


def test_custom_loss_fn_is_used():
    x, y = _blobs(40)
    calls = []

    def loss_fn(model, xb, yb):
        calls.append(len(xb))
        return model(xb).pow(2).mean()

    classifier.fit(classifier.mlp(4, 3, seed=0), x, y, epochs=1, lr=1e-2, batch_size=16, loss_fn=loss_fn)
    assert calls == [16, 16, 8]


def test_bad_input():
    x, y = _blobs(10)
    with pytest.raises(ValueError, match="dropout must be in"):
        classifier.mlp(4, 3, dropout=1.0)
    with pytest.raises(ValueError, match=r"one label per row of x \(10\)"):
        classifier.fit(classifier.mlp(4, 3), x, y[:5], epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="lr must be > 0"):
        classifier.fit(classifier.mlp(4, 3), x, y, epochs=1, lr=0)
    with pytest.raises(ValueError, match=r"\(N, features\) matrix"):
        classifier.predict_proba(classifier.mlp(4, 3), np.ones(4))


def test_mlp_layers_defaults_and_seeding_against_torch():
    model = classifier.mlp(5, 3)
    assert [type(m) for m in model] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Dropout, torch.nn.Linear]
    assert (model[0].in_features, model[0].out_features, model[3].in_features, model[3].out_features) == (5, 32, 32, 3)
    assert model[2].p == 0.0
    for seed, torch_seed in ((0, 0), (7, 7), (None, 3)):  # seed 0 by default; None: the global generator as it is
        torch.manual_seed(3)
        model = classifier.mlp(5, 3, hidden=4) if seed == 0 else classifier.mlp(5, 3, hidden=4, seed=seed)
        torch.manual_seed(torch_seed)
        first, last = torch.nn.Linear(5, 4), torch.nn.Linear(4, 3)
        assert torch.equal(model[0].weight, first.weight) and torch.equal(model[3].bias, last.bias)


def test_mlp_forward_by_hand_with_dropout_off_in_eval_mode():
    model = classifier.mlp(4, 3, hidden=6, dropout=0.5, seed=1).eval()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    first, last = model[0], model[3]
    by_hand = torch.relu(x @ first.weight.T + first.bias) @ last.weight.T + last.bias
    assert torch.allclose(model(x), by_hand, atol=1e-6)
    probs = classifier.predict_proba(model.train(), x.numpy())
    assert torch.allclose(probs, torch.softmax(by_hand, -1), atol=1e-6)  # no dropout, though the model trains
    assert model.training  # and left as it was


def test_mlp_limits():
    assert classifier.mlp(1, 1, hidden=1, dropout=0.999)[2].p == 0.999  # the smallest net, nearly all dropped
    for name in ("inputs", "classes", "hidden"):
        args = {"inputs": 4, "classes": 3, "hidden": 8, name: 0}
        with pytest.raises(ValueError, match=rf"^{name} must be a positive int, got 0$"):
            classifier.mlp(args.pop("inputs"), args.pop("classes"), **args)
    for dropout in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match=rf"^dropout must be in \[0, 1\), got {dropout!r}$"):
            classifier.mlp(4, 3, dropout=dropout)


def _adamw_by_hand(model, x, y, *, epochs, lr, batch_size, weight_decay, seed):
    """The training loop fit() documents, written out: AdamW, a generator seeded once, a fresh order each epoch."""
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return model


def test_fit_is_adamw_over_seeded_shuffles():
    x, y = _blobs(20)
    model = classifier.mlp(4, 3, hidden=8, seed=0)
    reference = _adamw_by_hand(copy.deepcopy(model), x, y, epochs=2, lr=0.05, batch_size=64, weight_decay=0.0, seed=0)
    assert classifier.fit(model, x, y, epochs=2, lr=0.05) is model  # the defaults: batch 64, no decay, seed 0
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)
    model = classifier.mlp(4, 3, hidden=8, seed=0)
    reference = _adamw_by_hand(copy.deepcopy(model), x, y, epochs=3, lr=0.02, batch_size=6, weight_decay=0.5, seed=3)
    classifier.fit(model, x.astype(np.float64), y.astype(np.int32), epochs=3, lr=0.02, batch_size=6, weight_decay=0.5,
                   seed=3)  # float64 features and int32 labels are cast
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not model.training


def test_fit_default_batch_size_and_on_epoch_in_eval_mode():
    x, y = _blobs(130)
    sizes, seen = [], []
    model = classifier.mlp(4, 3, seed=0)

    def loss_fn(m, xb, yb):
        sizes.append(len(xb))
        return torch.nn.functional.cross_entropy(m(xb), yb)

    def on_epoch(epoch, m):
        seen.append((epoch, m is model, m.training))

    assert classifier.fit(model, x, y, epochs=2, lr=1e-3, loss_fn=loss_fn, on_epoch=on_epoch) is model
    assert sizes == [64, 64, 2] * 2
    assert seen == [(1, True, False), (2, True, False)]
    stopped = classifier.fit(model.train(), x, y, epochs=5, lr=1e-3, on_epoch=lambda e, m: e == 2)
    assert stopped is model and not model.training  # returned, in eval mode, after epoch 2


def test_fit_leaves_a_layer_the_loss_stops_using_where_it_is():
    # gradients are set to None between steps: AdamW skips a parameter without one (a zeroed gradient would let
    # its momentum keep moving it)
    x, y = _blobs(16)
    model = classifier.mlp(4, 3, hidden=8, seed=0)
    after_first = []

    def loss_fn(m, xb, yb):
        if not after_first:
            after_first.append(None)
            return torch.nn.functional.cross_entropy(m(xb), yb)
        if len(after_first) == 1:
            after_first[0] = m[3].weight.detach().clone()
            after_first.append(None)
        return m[0](xb).pow(2).mean()  # the last layer is no longer used

    classifier.fit(model, x, y, epochs=2, lr=0.1, batch_size=4, loss_fn=loss_fn)
    assert torch.equal(model[3].weight, after_first[0])


def test_fit_and_predict_limits():
    x, y = _blobs(10)
    assert classifier.predict_proba(classifier.mlp(4, 3), x[:1]).shape == (1, 3)  # one row
    for name in ("epochs", "batch_size"):
        with pytest.raises(ValueError, match=rf"^{name} must be a positive int, got 0$"):
            classifier.fit(classifier.mlp(4, 3), x, y, lr=1e-3, **{"epochs": 1, name: 0})
    for lr in (0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=rf"^lr must be > 0 and finite, got {lr!r}$"):
            classifier.fit(classifier.mlp(4, 3), x, y, epochs=1, lr=lr)
    for bad, shape in ((np.ones(4), r"\(4,\)"), (np.ones((0, 4)), r"\(0, 4\)"), (np.ones((2, 2, 4)), r"\(2, 2, 4\)")):
        with pytest.raises(ValueError, match=rf"^x must be a non-empty \(N, features\) matrix, got shape {shape}$"):
            classifier.predict_proba(classifier.mlp(4, 3), bad)
    for labels, shape in ((y[:5], r"\(5,\)"), (y[:, None], r"\(10, 1\)")):
        with pytest.raises(ValueError, match=rf"^y must hold one label per row of x \(10\), got shape {shape}$"):
            classifier.fit(classifier.mlp(4, 3), x, labels, epochs=1, lr=1e-3)
