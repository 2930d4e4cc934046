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
