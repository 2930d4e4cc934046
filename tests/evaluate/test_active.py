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


def test_probs_from_torch_with_grad_in_float32_and_a_zero_probability():
    torch = pytest.importorskip("torch")
    probs = torch.tensor([[1.0, 0.0], [0.25, 0.75]], requires_grad=True)  # float32; 0 log 0 = 0, not NaN
    by_hand = [0.0, -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))]
    assert active.uncertainty(probs, "entropy") == pytest.approx(by_hand, abs=1e-12)
    assert active.uncertainty(probs, "least_confidence") == pytest.approx([0.0, 0.25])
    assert list(active.select(probs, 1, "margin")) == [1]


PROBS_SHAPE = r"^probs must be \(N, classes >= 2\) class probabilities, got shape \({}\)$"
NOT_PROBS = r"^each row of probs must be a probability distribution \(>= 0, summing to 1\): pass softmax outputs, not logits$"


@pytest.mark.parametrize(("probs", "shape"), [(np.zeros((0, 3)), "0, 3"), (np.ones((2, 1)), "2, 1"),
                                              (np.array([0.5, 0.5]), "2,"), (np.full((1, 2, 2), 0.5), "1, 2, 2")])
def test_probs_of_the_wrong_shape(probs, shape):
    with pytest.raises(ValueError, match=PROBS_SHAPE.format(shape)):
        active.uncertainty(probs, "margin")


def test_probs_rows_must_sum_to_one_within_1e_4():
    # one row, two classes: the smallest pool
    assert active.uncertainty([[0.3, 0.7]], "margin") == pytest.approx([0.6])
    assert active.uncertainty([[0.50009, 0.5]], "least_confidence") == pytest.approx([0.49991])  # 9e-5 over: kept
    for bad in ([[0.5002, 0.5]], [[0.7, 0.8]], [[1.5, -0.5]], [[0.0, 1.0], [0.4, 0.4]]):
        with pytest.raises(ValueError, match=NOT_PROBS):
            active.uncertainty(bad, "entropy")
    with pytest.raises(ValueError, match=r"^unknown uncertainty strategy 'random'; valid: least_confidence, margin, "
                                         r"entropy$"):
        active.uncertainty(PROBS, "random")


def test_select_limits_and_the_random_baseline_against_numpy():
    assert list(active.select(PROBS, 4, "least_confidence")) == [3, 1, 2, 0]  # k = pool size: everything
    assert list(active.select(PROBS, 3, "random")) == list(np.random.default_rng(0).choice(4, size=3, replace=False))
    assert list(active.select(PROBS, 4, "random", seed=7)) == list(
        np.random.default_rng(7).choice(4, size=4, replace=False))
    for k in (0, -1, True, 1.0):
        with pytest.raises(ValueError, match=rf"^k must be a positive int, got {k!r}$"):
            active.select(PROBS, k, "margin")
    with pytest.raises(ValueError, match=r"^unknown strategy 'bald'; valid: least_confidence, margin, entropy, random$"):
        active.select(PROBS, 1, "bald")
    with pytest.raises(ValueError, match=r"^cannot select k=5 items from a pool of 4$"):
        active.select(PROBS, 5, "margin")


def test_select_breaks_ties_by_index_in_a_large_pool():
    # 90 items in three groups of equal rows (quicksort would scramble the ties): most uncertain group first
    rows = np.repeat([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3]], 30, axis=0)
    order = active.select(rows, 90, "margin")
    assert list(order) == list(range(30, 60)) + list(range(60, 90)) + list(range(30))


def _fixed_learner(log, threshold=3.3):
    """A learner known by hand: p(class 1) = sigmoid(x - threshold), whatever it is trained on; it logs what it got."""

    def train(x, y):
        assert list(y) == [int(v) % 2 for v in x[:, 0]]  # the annotator's labels for exactly these items
        log.append(sorted(int(v) for v in x[:, 0]))

        def predict(xs):
            s = 1 / (1 + np.exp(-(np.asarray(xs, dtype=float)[:, 0] - threshold)))
            return np.stack([1 - s, s], axis=1)

        return predict

    return train


def test_labelling_curve_labels_the_items_nearest_the_boundary_until_the_pool_is_used_up():
    log = []
    x = np.arange(8.0)[:, None]
    x_test, y_test = np.array([[0.0], [2.0], [4.0], [6.0]]), np.array([0, 1, 1, 1])  # predicted 0, 0, 1, 1
    curve = active.labelling_curve(_fixed_learner(log), x, np.arange(8) % 2, x_test, y_test, initial=2, batch=3,
                                   rounds=3, strategy="margin")  # 2 + 2 x 3 = 8: the whole pool, the limit
    first = sorted(int(i) for i in np.random.default_rng(0).choice(8, size=2, replace=False))  # the default seed
    nearest = [i for i in (3, 4, 2, 5, 1, 6, 0, 7) if i not in first]  # by distance from 3.3
    assert log == [first, sorted(first + nearest[:3]), list(range(8))]
    assert curve.index.name == "round" and list(curve.index) == [0, 1, 2]
    assert list(curve.labelled) == [2, 5, 8] and list(curve.accuracy) == [0.75] * 3
    one = active.labelling_curve(_fixed_learner(log), x, np.arange(8) % 2, x_test, 1 - y_test, initial=8, batch=1,
                                 rounds=1, strategy="margin")  # one round: no selection at all
    assert list(one.labelled) == [8] and list(one.accuracy) == [0.25]


def test_labelling_curve_random_rounds_draw_from_seed_plus_one_plus_round():
    log = []
    x = np.arange(10.0)[:, None]
    active.labelling_curve(_fixed_learner(log), x, np.arange(10) % 2, x[:2], [0, 0], initial=2, batch=2, rounds=4,
                           strategy="random", seed=5)
    labelled = np.zeros(10, dtype=bool)
    labelled[np.random.default_rng(5).choice(10, size=2, replace=False)] = True
    expected = [list(np.flatnonzero(labelled))]
    for r in range(3):
        unlabelled = np.flatnonzero(~labelled)
        labelled[unlabelled[np.random.default_rng(5 + 1 + r).choice(len(unlabelled), size=2, replace=False)]] = True
        expected.append(list(np.flatnonzero(labelled)))
    assert log == expected


def test_labelling_curve_bad_input():
    x, y = np.arange(10.0)[:, None], np.arange(10) % 2
    train = _fixed_learner([])
    for name in ("initial", "batch", "rounds"):
        args = {"initial": 2, "batch": 2, "rounds": 2, name: 0}
        with pytest.raises(ValueError, match=rf"^{name} must be a positive int, got 0$"):
            active.labelling_curve(train, x, y, x, y, strategy="margin", **args)
    with pytest.raises(ValueError, match=r"^4 \+ 2 rounds x 4 labels exceed the pool of 10 items$"):
        active.labelling_curve(train, x, y, x, y, initial=4, batch=4, rounds=3, strategy="margin")
    with pytest.raises(ValueError, match=r"^10 \+ 1 rounds x 1 labels exceed the pool of 10 items$"):  # one too many
        active.labelling_curve(train, x, y, x, y, initial=10, batch=1, rounds=2, strategy="margin")


def test_noisy_labels_limits_and_the_random_stream():
    y = np.array([0, 1, 2, 1, 0, 2, 2, 1])
    assert list(active.noisy_labels(y, 0.0, 3)) == list(y)  # the lower limit: a perfect annotator
    binary = np.array([0, 1, 1, 0, 1])
    assert list(active.noisy_labels(binary, 1.0, 2)) == list(1 - binary)  # the upper limit: every label the other
    # every label wrong, 3 classes: the offsets are numpy's integers in [1, 3) after one uniform draw per item
    rng = np.random.default_rng(0)
    rng.random(len(y))
    assert list(active.noisy_labels(y, 1.0, 3)) == list((y + rng.integers(1, 3, size=len(y))) % 3)
    # a draw exactly equal to the rate keeps its label (wrong = draw < rate)
    draws = np.random.default_rng(0).random(len(binary))
    noisy = active.noisy_labels(binary, draws[0], 2)
    assert list(noisy) == list(np.where(draws < draws[0], 1 - binary, binary))
    assert noisy[0] == binary[0]
    assert list(active.noisy_labels(y, 0.5, 3)) == list(active.noisy_labels(y, 0.5, 3, seed=0))  # seed 0 by default
    assert list(y) == [0, 1, 2, 1, 0, 2, 2, 1]  # the input is not modified


def test_noisy_labels_bad_input():
    for rate in (-0.01, 1.01, float("nan")):
        with pytest.raises(ValueError, match=rf"^error_rate must be in \[0, 1\], got {rate!r}$"):
            active.noisy_labels([0, 1], rate, 2)
    for classes in (1, 0, True, 2.0):  # one class has no wrong label to give
        with pytest.raises(ValueError, match=rf"^classes must be an int >= 2, got {classes!r}$"):
            active.noisy_labels([0, 0], 0.5, classes)


def test_cohen_kappa_limits_and_messages():
    assert active.cohen_kappa([0], [1]) == 0.0  # one item: p_o = 0, p_e = 0
    assert active.cohen_kappa([0, 1], [1, 0]) == pytest.approx(-1.0)  # p_o = 0, p_e = 1/2: worse than chance
    for a, b, shapes in (([], [], r"\(0,\) and \(0,\)"), ([1, 2], [1], r"\(2,\) and \(1,\)"),
                         ([[0, 1]], [[0, 1]], r"\(1, 2\) and \(1, 2\)")):
        with pytest.raises(ValueError, match=rf"^a and b must be equally long, non-empty label lists, got shapes {shapes}$"):
            active.cohen_kappa(a, b)
    with pytest.raises(ValueError, match=r"^kappa is undefined when both annotators give every item the same label "
                                         r"\(np.str_\('x'\)\): chance agreement is already 1$"):
        active.cohen_kappa(["x", "x"], ["x", "x"])
