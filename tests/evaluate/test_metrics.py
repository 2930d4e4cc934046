import math
import warnings

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


class _CharTok:
    """A character tokenizer over VOCAB ids with the interface text_batches uses; `pad_token_id` as given."""

    eos_token_id = 0

    def __init__(self, pad_token_id=1):
        self.pad_token_id = pad_token_id

    def __call__(self, text):
        return {"input_ids": [2 + ord(c) % (VOCAB - 2) for c in text]}


def test_text_batches_windows_and_padding():
    # "abc" + EOS = 4 ids in windows of 3: [a b c] and [EOS]; a 1-token window has no target and is dropped
    (batch,) = metrics.text_batches(_CharTok(), ["abc"], 3, 4)
    assert batch["input_ids"].shape == (1, 3)
    # "ab" + EOS in windows of 2: [a b] kept (one target), [EOS] dropped
    (batch,) = metrics.text_batches(_CharTok(), ["ab"], 2, 4)
    assert batch["input_ids"].tolist() == [[2 + ord("a") % (VOCAB - 2), 2 + ord("b") % (VOCAB - 2)]]
    # padding uses the tokenizer's pad id, 0 when it has none; padded positions are never targets
    for pad, expected in ((5, 5), (None, 0)):
        (batch,) = metrics.text_batches(_CharTok(pad), ["abcdef", "ab"], 16, 2)
        assert batch["input_ids"][1, 3:].tolist() == [expected] * 4 and (batch["labels"][1, 3:] == -100).all()


@pytest.mark.parametrize("args, error, match", [
    ((["abc"], 0, 2), ValueError, "^seq_len must be a positive int, got 0$"),
    ((["abc"], 4, 0), ValueError, "^batch_size must be a positive int, got 0$"),
    (("abc", 4, 2), TypeError, "^texts must be a list of documents, got one string$"),
    (([""], 4, 2), ValueError, r"^1 text\(s\) gave no window of 2 tokens or more$"),  # EOS alone
])
def test_text_batches_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        metrics.text_batches(_CharTok(), *args)


def test_perplexity_by_max_blocks_dtypes_and_messages(tiny_lm):
    text = "the quick brown fox jumps over the lazy dog " * 3
    table = metrics.perplexity_by(tiny_lm, _CharTok(), {"long": [text]}, seq_len=16, max_blocks=1, device="cpu")
    assert table.loc["long", "tokens"] == 15  # the first window only: 16 tokens, 15 targets
    assert table["tokens"].dtype == np.int64  # token counts stay integers
    with pytest.raises(ValueError, match="^perplexity_by\\(\\) needs at least one group of documents$"):
        metrics.perplexity_by(tiny_lm, _CharTok(), {}, seq_len=16)


def test_perplexity_from_nll_of_one_token():
    assert metrics.perplexity_from_nll(2.0, 1) == {"loss": 2.0, "ppl": pytest.approx(math.e**2), "tokens": 1}


def test_classification_report_labels_given_and_string_labels():
    y_true, y_pred = [0, 1, 1, 0], [0, 1, 0, 0]
    # by hand: class 0 P 2/3 R 1 F1 0.8; class 1 P 1 R 1/2 F1 2/3; class 2 (asked for, never seen) F1 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero_division=0: no UndefinedMetricWarning for the unseen class
        r = metrics.classification_report(y_true, y_pred=y_pred, labels=[0, 1, 2])
    assert r["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    assert r["confusion"].to_numpy().tolist() == [[2, 0, 0], [1, 1, 0], [0, 0, 0]]
    # labels default to the union of true and predicted labels, in order, as the frame's index and columns
    r = metrics.classification_report(["cat", "dog", "eel"], y_pred=["cat", "dog", "dog"])
    confusion = r["confusion"]
    assert list(confusion.index) == list(confusion.columns) == ["cat", "dog", "eel"]
    assert (confusion.index.name, confusion.columns.name) == ("true", "predicted")
    assert confusion.to_numpy().tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]
    assert metrics.classification_report([1], y_pred=[1])["accuracy"] == 1.0  # one example is enough


def test_classification_report_auc_pr_over_the_classes_present():
    # class 2 has a score column but no true example (no precision-recall curve): left out of the mean; class 1
    # has a single example, which counts
    y = np.array([0, 0, 1, 0])
    scores = np.array([[0.9, 0.1, 0.0], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1]])
    r = metrics.classification_report(y, scores)
    # by hand, average precision: class 0 ranks 0.9 (hit), 0.6 (hit), 0.4 (hit) first -> 1; class 1 ranks its one
    # positive (0.7) first -> 1
    assert r["auc_pr"] == 1.0
    scores[2, 1] = 0.2  # class 1's positive now ranks 3rd of 4 -> precision 1/3 at its recall: AP 1/3
    assert metrics.classification_report(y, scores)["auc_pr"] == pytest.approx((1 + 1 / 3) / 2)


@pytest.mark.parametrize("args, kwargs, match", [
    (([0, 1],), {}, r"^classification_report\(\) needs scores \(N, classes\) or y_pred$"),
    (([0, 1, 1],), {"y_pred": [0, 1]}, "^y_true and y_pred must be equally long and non-empty, got 3 and 2$"),
])
def test_classification_report_messages_in_full(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.classification_report(*args, **kwargs)


def test_f1_scores_labels_given_by_hand():
    y_true, y_pred = [0, 1, 1, 0], [0, 1, 0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero_division=0: no UndefinedMetricWarning
        r = metrics.f1_scores(y_true, y_pred, labels=[0, 1, 2])
    assert r["micro"] == pytest.approx(0.75)  # = accuracy: 3 of 4
    assert r["macro"] == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    assert r["weighted"] == pytest.approx((2 * 0.8 + 2 * 2 / 3) / 4)
    per_class = r["per_class"]
    assert list(per_class.columns) == ["precision", "recall", "f1", "support"] and per_class.index.name == "label"
    assert per_class.loc[2].tolist() == [0.0, 0.0, 0.0, 0]
    assert per_class["precision"].tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert metrics.f1_scores([1], [1])["micro"] == 1.0  # one example is enough


@pytest.mark.parametrize("y_true, y_pred, kwargs, match", [
    ([], [], {}, r"^y_true and y_pred must be equally long, non-empty 1-D label lists, got shapes \(0,\) and \(0,\)$"),
    (list(range(12)), list(range(12)), {"pos_label": 99},
     r"^binary F1: no true example has pos_label=99, so recall is undefined \(true labels: \[0, 1, 2, 3, 4, 5, 6, 7, "
     r"8, 9\]\)$"),
])
def test_f1_scores_messages_in_full(y_true, y_pred, kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.f1_scores(y_true, y_pred, **kwargs)
