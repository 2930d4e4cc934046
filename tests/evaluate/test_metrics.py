import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from cookbook import models, train
from cookbook.evaluate import metrics
from tests.blocks import VOCAB, counting_ids


@pytest.fixture(scope="module")
def tiny_lm():
    return models.build("tiny", VOCAB, seed=0).eval()


def _hand_loss(model, sequences):
    """Sum and count of next-token cross-entropies, one unpadded sequence at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for seq in sequences:
            ids = torch.tensor([seq])
            logits = model(input_ids=ids).logits[0, :-1]
            total += F.cross_entropy(logits.double(), ids[0, 1:], reduction="sum").item()
            count += len(seq) - 1
    return total, count


def test_perplexity_is_token_weighted_and_ignores_padding(tiny_lm):
    ids = counting_ids(3, 20, seed=1)
    sequences = [ids[0].tolist(), ids[1, :6].tolist(), ids[2, :11].tolist()]  # ragged: padded in one batch
    batch = train.pad_batch(sequences, pad_id=0)
    got = metrics.perplexity(tiny_lm, [batch], device="cpu")
    total, count = _hand_loss(tiny_lm, sequences)
    assert got["tokens"] == count == 19 + 5 + 10
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(total / count), rel=1e-5)
    # the mean of per-batch losses over-weights the short sequence: not what perplexity() returns
    per_batch = [metrics.perplexity(tiny_lm, [train.pad_batch([s])], device="cpu")["loss"] for s in sequences]
    assert abs(np.mean(per_batch) - got["loss"]) > 1e-4


def test_perplexity_by_group_and_the_all_row_is_token_weighted(tiny_lm):
    class Tok:  # a character tokenizer over VOCAB ids, with the interface text_batches uses
        eos_token_id, pad_token_id = 0, 1

        def __call__(self, text):
            return {"input_ids": [2 + ord(c) % (VOCAB - 2) for c in text]}

    groups = {"short": ["abc", "de"], "long": ["the quick brown fox jumps over the lazy dog " * 3]}
    table = metrics.perplexity_by(tiny_lm, Tok(), groups, seq_len=16, batch_size=2, device="cpu")
    assert list(table.index) == ["short", "long", "all"]
    # each window of a document predicts all but its first token; the last window keeps its tail
    assert table.loc["short", "tokens"] == (4 - 1) + (3 - 1)
    long_ids = len(groups["long"][0]) + 1
    assert table.loc["long", "tokens"] == long_ids - math.ceil(long_ids / 16)
    weighted = (table.loss[:2] * table.tokens[:2]).sum() / table.tokens[:2].sum()
    assert table.loc["all", "loss"] == pytest.approx(weighted)
    with pytest.raises(ValueError, match="at least one group"):
        metrics.perplexity_by(tiny_lm, Tok(), {}, seq_len=16)
    with pytest.raises(TypeError, match="one string"):
        metrics.text_batches(Tok(), "abc", 16, 2)


def test_perplexity_without_targets_says_so(tiny_lm):
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long), "labels": torch.full((2, 4), -100)}
    with pytest.raises(ValueError, match="no target tokens"):
        metrics.perplexity(tiny_lm, [batch], device="cpu")


def test_classification_report_matches_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    scores = rng.random((200, 4)) + np.eye(4)[y] * rng.random((200, 1))  # informative, not perfect
    r = metrics.classification_report(y, scores)
    pred = scores.argmax(1)
    assert r["accuracy"] == skm.accuracy_score(y, pred)
    assert r["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    # AUC-PR by hand: average precision of each one-vs-rest problem, then the mean
    ap = [skm.average_precision_score(y == c, scores[:, c]) for c in range(4)]
    assert r["auc_pr"] == pytest.approx(np.mean(ap))
    assert (r["confusion"].to_numpy() == skm.confusion_matrix(y, pred)).all()
    assert r["confusion"].to_numpy().sum() == 200


def test_classification_report_bad_input():
    with pytest.raises(ValueError, match="scores .* or y_pred"):
        metrics.classification_report([0, 1])
    with pytest.raises(ValueError, match=r"shape \(N=2, classes\)"):
        metrics.classification_report([0, 1], np.ones(2))
    r = metrics.classification_report([0, 1, 1], y_pred=[0, 1, 0])
    assert math.isnan(r["auc_pr"]) and r["accuracy"] == pytest.approx(2 / 3)


def test_per_example_losses_and_correctness_by_hand(tiny_lm):
    ids = counting_ids(2, 9, seed=2)
    sequences = [ids[0].tolist(), ids[1, :5].tolist()]
    got = metrics.per_example(tiny_lm, [train.pad_batch(sequences)], device="cpu")
    assert got["correct"].shape == (8 + 4,) and got["correct"].dtype == bool
    for i, seq in enumerate(sequences):
        total, count = _hand_loss(tiny_lm, [seq])
        assert got["loss"][i] == pytest.approx(total / count, rel=1e-5)
    with torch.no_grad():
        first = tiny_lm(input_ids=ids[:1]).logits[0, :-1].argmax(-1)
    assert (got["correct"][:8] == (first == ids[0, 1:]).numpy()).all()
