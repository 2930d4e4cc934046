"""Active learning by uncertainty sampling, a simulated labelling loop, and annotation quality (Cohen's kappa).

    order = select(probs, k=20, strategy="margin")          # the k pool items to label next
    curve = labelling_curve(train, x_pool, y_pool, x_test, y_test, initial=20, batch=10, rounds=8, strategy="entropy")
    cohen_kappa(annotator_a, annotator_b)                    # agreement beyond chance

The guide's rule "label the samples whose predicted probability is nearest 0.5" is least-confidence sampling for
two classes; `least_confidence`, `margin` and `entropy` are its multi-class forms (Settles 2009, §3.1).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from cookbook.checks import positive_int

__all__ = ["STRATEGIES", "cohen_kappa", "labelling_curve", "noisy_labels", "select", "uncertainty"]

STRATEGIES = ("least_confidence", "margin", "entropy", "random")


def _probs(probs) -> np.ndarray:
    probs = np.asarray(probs.detach().cpu() if hasattr(probs, "detach") else probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2 or len(probs) == 0:
        raise ValueError(f"probs must be (N, classes >= 2) class probabilities, got shape {probs.shape}")
    if (probs < 0).any() or not np.allclose(probs.sum(1), 1, atol=1e-4):
        raise ValueError("each row of probs must be a probability distribution (>= 0, summing to 1): pass softmax "
                         "outputs, not logits")
    return probs


def uncertainty(probs, strategy: str) -> np.ndarray:
    """How unsure the model is about each item (higher: label it first). Shown in notebooks/13 §3.

    least_confidence: 1 - max p · margin: 1 - (p_top1 - p_top2) · entropy: -sum p log p (nats).
    """
    probs = _probs(probs)
    if strategy == "least_confidence":
        return 1.0 - probs.max(1)
    if strategy == "margin":
        top = np.sort(probs, axis=1)
        return 1.0 - (top[:, -1] - top[:, -2])
    if strategy == "entropy":
        return -(probs * np.log(np.clip(probs, 1e-300, None))).sum(1)
    raise ValueError(f"unknown uncertainty strategy {strategy!r}; valid: least_confidence, margin, entropy")


def select(probs, k: int, strategy: str, *, seed: int = 0) -> np.ndarray:
    """Indices of the `k` items to label next: the most uncertain first (ties by index), or `k` at random
    (seeded) for strategy "random", the baseline. Shown in notebooks/13 §3."""
    positive_int("k", k)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    n = len(_probs(probs))
    if k > n:
        raise ValueError(f"cannot select k={k} items from a pool of {n}")
    if strategy == "random":
        return np.random.default_rng(seed).choice(n, size=k, replace=False)
    return np.argsort(-uncertainty(probs, strategy), kind="stable")[:k]


def labelling_curve(train: Callable, x_pool, y_pool, x_test, y_test, *, initial: int, batch: int, rounds: int,
                    strategy: str, seed: int = 0) -> pd.DataFrame:
    """Simulate labelling: start from `initial` random pool items, then each round label `batch` more.

    `train(x, y)` fits a fresh model on the labelled items and returns `predict(x) -> probs`; `y_pool` plays
    the annotator (pass noisy labels to simulate a poor one). Before each new batch the model is scored on
    the test set. Returns one row per round: labelled, accuracy. Shown in notebooks/13 §3.
    """
    for name, value in (("initial", initial), ("batch", batch), ("rounds", rounds)):
        positive_int(name, value)
    x_pool, y_pool, y_test = np.asarray(x_pool), np.asarray(y_pool), np.asarray(y_test)
    if initial + batch * (rounds - 1) > len(x_pool):
        raise ValueError(f"{initial} + {rounds - 1} rounds x {batch} labels exceed the pool of {len(x_pool)} items")
    labelled = np.zeros(len(x_pool), dtype=bool)
    labelled[np.random.default_rng(seed).choice(len(x_pool), size=initial, replace=False)] = True
    rows = []
    for r in range(rounds):
        predict = train(x_pool[labelled], y_pool[labelled])
        accuracy = float((np.asarray(predict(x_test)).argmax(1) == y_test).mean())
        rows.append({"round": r, "labelled": int(labelled.sum()), "accuracy": accuracy})
        if r == rounds - 1:
            break
        unlabelled = np.flatnonzero(~labelled)
        picked = select(predict(x_pool[unlabelled]), batch, strategy, seed=seed + 1 + r)
        labelled[unlabelled[picked]] = True
    return pd.DataFrame(rows).set_index("round")


def noisy_labels(y, error_rate: float, classes: int, *, seed: int = 0) -> np.ndarray:
    """`y` with a share `error_rate` of the labels replaced by a different random class: a careless annotator."""
    y = np.asarray(y).copy()
    if not isinstance(classes, int) or classes < 2:  # a wrong label is another class (bools are 0 and 1)
        raise ValueError(f"classes must be an int >= 2, got {classes!r}")
    if not 0 <= error_rate <= 1:
        raise ValueError(f"error_rate must be in [0, 1], got {error_rate!r}")
    rng = np.random.default_rng(seed)
    wrong = rng.random(len(y)) < error_rate
    y[wrong] = (y[wrong] + rng.integers(1, classes, size=wrong.sum())) % classes  # never the true class
    return y


def cohen_kappa(a, b) -> float:
    """Cohen's kappa of two annotators on the same items: (p_o - p_e) / (1 - p_e) (Cohen 1960; scikit-learn's).

    p_o is their observed agreement, p_e the agreement expected by chance from each one's label frequencies;
    1 is perfect, 0 chance level, < 0 worse than chance. Undefined (an error, not NaN) when both give every
    item one label. Shown in notebooks/13 §3, which computes it by hand.
    """
    from sklearn.metrics import cohen_kappa_score  # optional, heavy: the `evaluate` extra

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"a and b must be equally long, non-empty label lists, got shapes {a.shape} and {b.shape}")
    labels = np.unique(np.concatenate([a, b]))
    if len(labels) == 1:
        raise ValueError(f"kappa is undefined when both annotators give every item the same label ({labels[0]!r}): "
                         "chance agreement is already 1")
    return float(cohen_kappa_score(a, b))
