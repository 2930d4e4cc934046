import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import cohen_kappa_score

from cookbook.evaluate import active

PROBS = np.array([[0.9, 0.05, 0.05],   # sure
                  [0.4, 0.35, 0.25],   # unsure, small margin
                  [0.5, 0.5, 0.0],     # a tie between two classes
                  [1 / 3, 1 / 3, 1 / 3]])  # knows nothing


def test_uncertainty_scores_by_hand():
    assert active.uncertainty(PROBS, "least_confidence") == pytest.approx([0.1, 0.6, 0.5, 2 / 3])
    assert active.uncertainty(PROBS, "margin") == pytest.approx([1 - 0.85, 1 - 0.05, 1.0, 1.0])
    entropy = [-(0.9 * np.log(0.9) + 2 * 0.05 * np.log(0.05)), -(0.4 * np.log(0.4) + 0.35 * np.log(0.35)
               + 0.25 * np.log(0.25)), np.log(2), np.log(3)]
    assert active.uncertainty(PROBS, "entropy") == pytest.approx(entropy)
    # two classes: least confidence ranks by distance from p = 0.5, the guide's rule
    binary = np.array([[0.9, 0.1], [0.55, 0.45], [0.3, 0.7]])
    assert list(active.select(binary, 3, "least_confidence")) == [1, 2, 0]


def test_select_and_bad_input():
    assert list(active.select(PROBS, 2, "entropy")) == [3, 1]  # ln 3, then 1.08 nats (above ln 2)
    assert list(active.select(PROBS, 2, "margin")) == [2, 3]  # ties keep index order
    picked = active.select(PROBS, 3, "random", seed=1)
    assert len(set(picked)) == 3 and list(picked) == list(active.select(PROBS, 3, "random", seed=1))
    with pytest.raises(ValueError, match="valid: least_confidence, margin, entropy, random"):
        active.select(PROBS, 1, "bald")
    with pytest.raises(ValueError, match="softmax outputs, not logits"):
        active.uncertainty(np.array([[2.0, -1.0]]), "entropy")
    with pytest.raises(ValueError, match="k=5 items from a pool of 4"):
        active.select(PROBS, 5, "margin")


def test_cohen_kappa_matches_scikit_learn():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 300)
    b = active.noisy_labels(a, 0.3, 4, seed=1)
    assert 0.6 < (a == b).mean() < 0.8  # about 30% relabelled, never to the true class
    assert active.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-9)
    assert active.cohen_kappa(a, a) == 1.0
    # hand computation: p_o = 0.5, p_e = 0.5 x 0.5 + 0.5 x 0.5 = 0.5 -> kappa 0
    assert active.cohen_kappa([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0)
    # p_o = 4/6; label shares 2:2:2 and 2:3:1 give p_e = (4 + 6 + 2) / 36 = 1/3 -> kappa (2/3 - 1/3) / (2/3) = 1/2
    assert active.cohen_kappa([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]) == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ValueError, match="undefined when both annotators give every item the same label"):
        active.cohen_kappa([1, 1], [1, 1])
    with pytest.raises(ValueError, match="equally long"):
        active.cohen_kappa([1, 2], [1])


def test_labelling_curve_uncertainty_beats_random_on_a_separable_pool():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 2))
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(int)

    def train(xl, yl):
        if len(set(yl)) < 2:
            return lambda xs: np.tile([0.5, 0.5], (len(xs), 1))
        return LogisticRegression(C=100.0).fit(xl, yl).predict_proba

    runs = {s: active.labelling_curve(train, x[:400], y[:400], x[400:], y[400:], initial=4, batch=2, rounds=6,
                                      strategy=s, seed=0) for s in ("margin", "random")}
    assert list(runs["margin"].labelled) == [4, 6, 8, 10, 12, 14]
    assert runs["margin"].accuracy.iloc[-1] >= runs["random"].accuracy.iloc[-1]
    assert runs["margin"].accuracy.mean() > runs["random"].accuracy.mean()
    with pytest.raises(ValueError, match="exceed the pool"):
        active.labelling_curve(train, x[:10], y[:10], x, y, initial=4, batch=4, rounds=3, strategy="margin")
