import numpy as np
import pytest
import torch

from cookbook import casestudy as cs
from cookbook.monitor import TrainingMonitor

CATEGORY = np.array([0, 1, 1, 2])
TOP = np.array([2, -1, 0])


def test_pair_features_by_hand():
    x = cs.pair_features([0, 1, 2], [3, 1, 0], CATEGORY, TOP)
    # columns: user, item, item category, user's top category (-1 becomes n_categories = 3)
    assert x.tolist() == [[0, 3, 2, 2], [1, 1, 1, 3], [2, 0, 0, 0]] and x.dtype == torch.int64


def test_wide_ids_are_the_item_and_two_crosses():
    model = cs.WideDeep(3, 4, 3, dim=4, hidden=(8,))
    x = cs.pair_features([1], [2], CATEGORY, TOP)  # user 1 (top: none = 3), item 2 of category 1
    assert model.wide_ids(x).tolist() == [[2, 4 + 3 * 3 + 1, 4 + 4 * 3 + 1 * 3 + 1]]
    assert model.wide.num_embeddings == 4 + 4 * 3 + 3 * 3


def test_forward_is_wide_plus_deep():
    torch.manual_seed(0)
    model = cs.WideDeep(3, 4, 3, dim=4, hidden=(8, 4))
    with torch.no_grad():
        model.wide.weight.normal_()
    x = cs.pair_features([0, 2], [3, 1], CATEGORY, TOP)
    user, item, cat, top = x.unbind(1)
    deep = model.deep(torch.cat([model.user(user), model.item(item), model.category(cat), model.top(top)], 1))
    wide = model.wide.weight[model.wide_ids(x)].sum((1, 2))
    torch.testing.assert_close(model(x), deep.squeeze(-1) + wide + model.bias)
    assert [m.out_features for m in model.deep if isinstance(m, torch.nn.Linear)] == [8, 4, 1]


def test_item_vectors_keep_their_directions():
    vectors = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    model = cs.WideDeep(3, 4, 3, dim=4, hidden=(8,), item_vectors=vectors)
    w = model.item.weight.detach().numpy()
    assert w.shape == (4, 6) and w.std(ddof=1) == pytest.approx(0.05, rel=1e-4)
    cos = (w * vectors).sum(1) / np.linalg.norm(w, axis=1) / np.linalg.norm(vectors, axis=1)
    assert np.allclose(cos, 1, atol=1e-6)


def learnable(n=4096, seed=0):
    """Users like the items of their top category: the label is exactly "category == top category"."""
    rng = np.random.default_rng(seed)
    category = np.arange(40) % 4
    top = rng.integers(4, size=50)
    users, items = rng.integers(50, size=n), rng.integers(40, size=n)
    y = torch.tensor((category[items] == top[users]).astype(np.float32))
    return cs.pair_features(users, items, category, top), y, category, top


def test_fit_learns_a_learnable_rule_and_is_seeded():
    x, y, _, _ = learnable()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = cs.WideDeep(50, 40, 4, dim=8, hidden=(32, 16))
        history = cs.fit(model, x[:3584], y[:3584], epochs=6, batch_size=256, lr=1e-2, val=(x[3584:], y[3584:]),
                         device="cpu")
        runs.append(history)
    assert runs[0]["train_loss"].tolist() == runs[1]["train_loss"].tolist()
    assert list(runs[0].columns) == ["epoch", "step", "train_loss", "val_loss", "examples_per_s", "seconds"]
    assert runs[0]["step"].tolist() == [14 * e for e in range(1, 7)]  # 3584 / 256 = 14 steps an epoch
    assert runs[0]["val_loss"].iloc[-1] < 0.1 < 0.5 < runs[0]["train_loss"].iloc[0]
    logits = cs.predict(model, x[3584:])
    assert cs.auc(y[3584:].numpy().astype(int), logits) > 0.99


def test_fit_reports_to_the_monitor_and_stops_early():
    x, y, _, _ = learnable(1024)
    torch.manual_seed(0)
    model = cs.WideDeep(50, 40, 4, dim=8, hidden=(16,))
    monitor = TrainingMonitor(hardware=False, patience=1, warn=False)
    # validation labels flipped: the validation loss rises while training improves, so it stalls at once
    history = cs.fit(model, x[:768], y[:768], epochs=10, batch_size=128, lr=1e-2, val=(x[768:], 1 - y[768:]),
                     monitor=monitor, device="cpu")
    assert len(history) < 10 and monitor.should_stop and "stalled" in monitor.stop_reason
    assert monitor.log.frame()["step"].max() == history["step"].iloc[-1]


def test_score_matrix_scores_every_item_for_each_user():
    torch.manual_seed(0)
    model = cs.WideDeep(3, 4, 3, dim=4, hidden=(8,))
    scores = cs.score_matrix(model, [2, 0], 4, CATEGORY, TOP)
    assert scores.shape == (2, 4)
    x = cs.pair_features([0], [3], CATEGORY, TOP)
    assert scores[1, 3] == pytest.approx(float(model(x).detach()), abs=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda: cs.WideDeep(0, 4, 3), "n_users must be a positive int"),
    (lambda: cs.WideDeep(3, 4, 3, hidden=()), "hidden must be a non-empty tuple"),
    (lambda: cs.WideDeep(3, 4, 3, item_vectors=np.zeros((5, 2))), r"item_vectors must be \(4, dim\)"),
    (lambda: cs.WideDeep(3, 4, 3)(torch.zeros(2, 4)), r"x must be \(N, 4\) int64"),
    (lambda: cs.pair_features([0, 1], [0], CATEGORY, TOP), "users and items must be 1-d of one length"),
    (lambda: cs.fit(cs.WideDeep(3, 4, 3), torch.zeros(0, 4, dtype=torch.long), torch.zeros(0), epochs=1),
     "x and y must be non-empty"),
    (lambda: cs.fit(cs.WideDeep(3, 4, 3), torch.zeros(2, 4, dtype=torch.long), torch.zeros(2), epochs=1,
                    precision="tf32", device="cpu"), "precision 'tf32' on cpu"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
