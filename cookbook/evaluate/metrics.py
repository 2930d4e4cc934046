"""Evaluation metrics per task: perplexity, classification scores, BLEU / chrF / ROUGE / exact match.

    perplexity(model, batches)                        # token-weighted over a dataset, padding ignored
    perplexity_from_nll(total_nll, tokens)            # the same from a summed NLL and its token count
    perplexity_by(model, tok, {"json": [...], ...}, seq_len=128)   # one row per group of documents
    classification_report(y_true, scores)             # accuracy, macro-F1, AUC-PR, confusion matrix
    f1_scores(y_true, y_pred)                         # F1 micro / macro / weighted (/ binary), P and R per class
    rouge(generated, references, stemmer=False)       # ROUGE-1/2/L/Lsum; Chinese, Japanese, Korean per character
    bleu(generated, [[ref_a, ref_b], ...]), chrf(generated, refs, word_order=2)   # sacrebleu; chrF++
    text_scores(generated, references)                # BLEU, chrF, ROUGE-L

The pass@k execution check of generated code lives in `cookbook.evaluate.execution`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cookbook import env
from cookbook.checks import positive_int
from cookbook.train import pad_batch, token_loss
from cookbook.train.batches import as_batch, target_count

__all__ = ["bleu", "chrf", "classification_report", "exact_match", "f1_scores", "per_example", "perplexity",
           "perplexity_by", "perplexity_from_nll", "ROUGE_TYPES", "rouge", "rouge_l", "text_batches", "text_scores"]


@torch.no_grad()
def perplexity(model, batches: Iterable, *, device=None) -> dict[str, float]:
    """Loss and perplexity over every target token of `batches`, each token weighing the same.

    The mean of per-batch perplexities (or losses) over-weights short batches; this sums the token losses of the
    whole dataset and divides once by its number of targets (labels != -100: padding and the first position
    are not targets). Returns `{"loss", "ppl", "tokens"}`. Shown in notebooks/13 §1.
    """
    device = torch.device(device) if device is not None else env.device()
    model = model.to(device)
    was_training, total, count = model.training, 0.0, 0
    model.eval()
    try:
        for batch in batches:
            batch = as_batch(batch)
            count += target_count(batch)
            total += token_loss(model, {k: v.to(device) for k, v in batch.items()}).item()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("perplexity() got no target tokens (no batches, or every label is -100)")
    return perplexity_from_nll(total, count)


def perplexity_from_nll(total_nll: float, tokens: int) -> dict[str, float]:
    """`{"loss", "ppl", "tokens"}` from a summed negative log-likelihood (nats) and the number of tokens it covers.

    ppl = exp(total_nll / tokens): the exponent of the mean token loss, never a mean of per-batch perplexities.
    Shown in notebooks/13 §1.
    """
    if isinstance(tokens, bool) or not isinstance(tokens, (int, np.integer)) or tokens < 1:
        raise ValueError(f"perplexity needs at least one token, got tokens={tokens!r}")
    if not (math.isfinite(total_nll) and total_nll >= 0):
        raise ValueError(f"total_nll must be a finite sum of token losses >= 0 nats, got {total_nll!r}")
    loss = total_nll / tokens
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": int(tokens)}


@torch.no_grad()
def per_example(model, batches: Iterable, *, device=None) -> dict[str, np.ndarray]:
    """Paired-test material: each sequence's mean next-token loss and each target token's top-1 correctness.

    `{"loss": (sequences,), "correct": (target tokens,) bool}` in the batches' order, padding and -100 labels
    left out; two models scored on the same batches give paired samples (`cookbook.evaluate.abtest`).
    Shown in notebooks/13 §5.
    """
    device = torch.device(device) if device is not None else env.device()
    model = model.to(device)
    was_training, losses, correct = model.training, [], []
    model.eval()
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in as_batch(batch).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            mask = labels != -100
            nll = F.cross_entropy(logits.float().transpose(1, 2), labels.clamp(min=0), reduction="none") * mask
            keep = mask.sum(1) > 0
            losses.append((nll.sum(1)[keep] / mask.sum(1)[keep]).cpu())
            correct.append((logits.argmax(-1) == labels)[mask].cpu())
    finally:
        model.train(was_training)
    if not losses or sum(len(x) for x in losses) == 0:
        raise ValueError("per_example() got no sequence with a target token")
    return {"loss": torch.cat(losses).double().numpy(), "correct": torch.cat(correct).numpy()}


def text_batches(tokenizer, texts: Sequence[str], seq_len: int, batch_size: int, *,
                 max_blocks: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Documents as padded batches: each text + EOS cut into windows of `seq_len` tokens, the last one kept.

    Unlike `tokenizer.pack` nothing is dropped and no window spans two documents, so every document of a
    small held-out group counts; the padding of short windows is masked (labels -100). `max_blocks` keeps
    the first windows only. Shown in notebooks/13 §1.
    """
    positive_int("seq_len", seq_len)
    positive_int("batch_size", batch_size)
    if isinstance(texts, str):
        raise TypeError("texts must be a list of documents, got one string")
    windows = []
    for text in texts:
        ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
        windows += [ids[i:i + seq_len] for i in range(0, len(ids), seq_len) if len(ids[i:i + seq_len]) > 1]
    windows = windows[:max_blocks]
    if not windows:
        raise ValueError(f"{len(texts)} text(s) gave no window of 2 tokens or more")
    return [pad_batch(windows[i:i + batch_size], tokenizer.pad_token_id or 0)
            for i in range(0, len(windows), batch_size)]


def perplexity_by(model, tokenizer, groups: Mapping[str, Sequence[str]], *, seq_len: int, batch_size: int = 8,
                  max_blocks: int | None = None, device=None) -> pd.DataFrame:
    """Perplexity of each group of documents (a package, a source ...), plus the token-weighted "all" row.

    Columns: tokens, loss, ppl; one row per group in the given order, then "all" (every target token of
    every group weighing the same: not the mean of the rows). Shown in notebooks/13 §1.
    """
    if not groups:
        raise ValueError("perplexity_by() needs at least one group of documents")
    rows, total, count = {}, 0.0, 0
    for name, texts in groups.items():
        r = perplexity(model, text_batches(tokenizer, texts, seq_len, batch_size, max_blocks=max_blocks),
                       device=device)
        rows[name] = r
        total, count = total + r["loss"] * r["tokens"], count + r["tokens"]
    rows["all"] = perplexity_from_nll(total, count)
    return pd.DataFrame(rows).T[["tokens", "loss", "ppl"]].astype({"tokens": int})


def classification_report(y_true, scores=None, *, y_pred=None, labels: Sequence | None = None) -> dict:
    """Accuracy, macro-F1, AUC-PR and the confusion matrix of a classifier (scikit-learn underneath).

    `scores` are class probabilities or logits, shape (N, classes); predictions are their argmax unless
    `y_pred` is given. AUC-PR is the macro average precision over one-vs-rest problems (NaN without
    scores): unlike ROC-AUC it stays honest when positives are rare. Returns a dict with `accuracy`,
    `macro_f1`, `auc_pr` and `confusion` (a DataFrame: rows true, columns predicted). Shown in notebooks/13 §5.
    """
    from sklearn import metrics as skm  # optional, heavy: the `evaluate` extra

    y_true = np.asarray(y_true)
    if scores is None and y_pred is None:
        raise ValueError("classification_report() needs scores (N, classes) or y_pred")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or len(scores) != len(y_true):
            raise ValueError(f"scores must have shape (N={len(y_true)}, classes), got {scores.shape}")
    y_pred = np.asarray(y_pred) if y_pred is not None else scores.argmax(1)
    if len(y_pred) != len(y_true) or len(y_true) == 0:
        raise ValueError(f"y_true and y_pred must be equally long and non-empty, got {len(y_true)} and {len(y_pred)}")
    labels = list(labels) if labels is not None else sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    auc_pr = math.nan
    if scores is not None:
        onehot = (y_true[:, None] == np.arange(scores.shape[1])[None, :]).astype(int)
        present = onehot.sum(0) > 0  # a class absent from y_true has no precision-recall curve
        auc_pr = float(skm.average_precision_score(onehot[:, present], scores[:, present], average="macro"))
    confusion = pd.DataFrame(skm.confusion_matrix(y_true, y_pred, labels=labels), index=labels, columns=labels)
    confusion.index.name, confusion.columns.name = "true", "predicted"
    return {"accuracy": float(skm.accuracy_score(y_true, y_pred)),
            "macro_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
            "auc_pr": auc_pr, "confusion": confusion}


def f1_scores(y_true, y_pred, *, labels: Sequence | None = None, pos_label=None) -> dict:
    """F1 micro, macro and weighted (and binary for `pos_label`), with precision, recall and F1 per class.

    scikit-learn's `precision_recall_fscore_support` underneath. Micro-F1 equals accuracy on single-label data;
    macro weighs every class the same, weighted by its support. A class nobody predicts has precision 0.
    Binary F1 needs `pos_label` among the true labels: with no positive example, recall is undefined and this
    raises rather than report 0. Returns `{"micro", "macro", "weighted", ["binary"], "per_class"}`, the last a
    DataFrame (precision, recall, f1, support) indexed by label. Shown in notebooks/13 §5.
    """
    from sklearn import metrics as skm  # optional, heavy: the `evaluate` extra

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(f"y_true and y_pred must be equally long, non-empty 1-D label lists, got shapes "
                         f"{y_true.shape} and {y_pred.shape}")
    labels = list(labels) if labels is not None else sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    out = {average: float(skm.f1_score(y_true, y_pred, labels=labels, average=average, zero_division=0))
           for average in ("micro", "macro", "weighted")}
    if pos_label is not None:
        if not (y_true == pos_label).any():
            raise ValueError(f"binary F1: no true example has pos_label={pos_label!r}, so recall is undefined "
                             f"(true labels: {sorted(set(y_true.tolist()))[:10]})")
        out["binary"] = float(skm.f1_score(y_true == pos_label, y_pred == pos_label, zero_division=0))
    p, r, f, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out["per_class"] = pd.DataFrame({"precision": p, "recall": r, "f1": f, "support": support},
                                    index=pd.Index(labels, name="label"))
    return out


def _pairs(hypotheses, references) -> tuple[list[str], list[list[str]]]:
    """Hypotheses and, for each, its list of references (one string is a list of one)."""
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError("pass lists of strings (one hypothesis and one reference per example), not one string")
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"need as many references as hypotheses (and at least one), got {len(hypotheses)} "
                         f"hypotheses and {len(references)} references")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    bad = [i for i, (h, r) in enumerate(zip(hypotheses, refs, strict=True))
           if not isinstance(h, str) or not r or not all(isinstance(x, str) for x in r)]
    if bad:
        raise TypeError(f"example {bad[0]}: a hypothesis is a string and its references a string or a non-empty "
                        f"list of strings, got {hypotheses[bad[0]]!r} and {references[bad[0]]!r}")
    return hypotheses, refs


def _streams(refs: list[list[str]]) -> list[list[str | None]]:
    """Per-example reference lists as sacrebleu's reference streams; None where an example has fewer."""
    return [[r[j] if j < len(r) else None for r in refs] for j in range(max(map(len, refs)))]


def bleu(hypotheses: Sequence[str], references: Sequence, *, tokenize: str = "13a") -> float:
    """Corpus BLEU (0-100, sacrebleu; Papineni et al. 2002): clipped 1-4-gram precisions x brevity penalty.

    `references[i]` is one string or a list of strings (any number per example): n-grams are clipped by
    the most any reference holds, the brevity penalty uses the closest reference length. `tokenize` is
    sacrebleu's ("13a", the WMT default; "zh" splits Chinese characters; "char"; "none"). Shown in notebooks/13 §1.
    """
    import sacrebleu  # optional: the `evaluate` extra

    hypotheses, refs = _pairs(hypotheses, references)
    return float(sacrebleu.corpus_bleu(hypotheses, _streams(refs), tokenize=tokenize).score)


def chrf(hypotheses: Sequence[str], references: Sequence, *, word_order: int = 0) -> float:
    """Corpus chrF (0-100, sacrebleu; Popović 2015): character 6-gram F-score, kinder to near-miss identifiers.

    `word_order=2` is chrF++ (word 1- and 2-grams as well, Popović 2017). References as in `bleu`.
    Shown in notebooks/13 §1.
    """
    import sacrebleu  # optional: the `evaluate` extra

    hypotheses, refs = _pairs(hypotheses, references)
    return float(sacrebleu.corpus_chrf(hypotheses, _streams(refs), word_order=word_order).score)


def exact_match(hypotheses: Sequence[str], references: Sequence, *, strip: bool = True) -> float:
    """Share (0-1) of hypotheses equal to one of their references, after stripping outer whitespace (`strip`)."""
    hypotheses, refs = _pairs(hypotheses, references)
    clean = str.strip if strip else str
    return float(np.mean([clean(h) in {clean(r) for r in rs} for h, rs in zip(hypotheses, refs, strict=True)]))


# One token per Han, kana or Hangul character: those scripts do not put spaces between words, so a per-character
# ROUGE is the common choice (as sacrebleu's "zh" BLEU); other letters and digits form words, as rouge-score's.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\u1100-\u11ff\u3130-\u318f"
_TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")


class _Tokenizer:
    """rouge-score's tokenizer (lowercase words of letters and digits, Porter stems of words over 3 letters) for
    any script: non-ASCII letters are kept, not dropped, and CJK characters are tokens of their own."""

    def __init__(self, stemmer: bool):
        from nltk.stem import porter  # rouge-score's own dependency, and its stemmer

        self._stem = porter.PorterStemmer().stem if stemmer else None

    def tokenize(self, text: str) -> list[str]:
        tokens = _TOKEN.findall(text.lower())
        if self._stem is None:
            return tokens
        return [self._stem(t) if len(t) > 3 and t.isascii() else t for t in tokens]


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge(hypotheses: Sequence[str], references: Sequence, *, stemmer: bool = False) -> dict[str, float]:
    """Mean ROUGE-1, -2, -L and -Lsum F-measures (0-1, rouge-score; Lin 2004) over the examples.

    Words are lowercase runs of letters and digits (rouge-score's rule, which on ASCII text this equals; it
    drops every other character, so it scores Chinese as 0); Chinese, Japanese and Korean count one token per
    character. `stemmer` applies rouge-score's Porter stemmer to English words. rougeLsum splits sentences at
    newlines. With several references an example takes its best. A reference with no token raises, so no
    score is silently 0; an empty hypothesis scores 0. Shown in notebooks/13 §1.
    """
    from rouge_score import rouge_scorer  # optional: the `evaluate` extra

    hypotheses, refs = _pairs(hypotheses, references)
    tokenizer = _Tokenizer(stemmer)
    empty = [i for i, rs in enumerate(refs) if any(not tokenizer.tokenize(r) for r in rs)]
    if empty:
        raise ValueError(f"example {empty[0]}: a reference has no word or character to score "
                         f"({refs[empty[0]]!r}); ROUGE would be 0 whatever the hypothesis")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=tokenizer)
    scores = [scorer.score_multi(rs, h) for h, rs in zip(hypotheses, refs, strict=True)]
    return {t: float(np.mean([s[t].fmeasure for s in scores])) for t in ROUGE_TYPES}


def rouge_l(hypotheses: Sequence[str], references: Sequence, *, stemmer: bool = False) -> float:
    """Mean ROUGE-L F-measure (longest common subsequence of tokens) of `rouge`. Shown in notebooks/13 §1."""
    return rouge(hypotheses, references, stemmer=stemmer)["rougeL"]


def text_scores(hypotheses: Sequence[str], references: Sequence) -> dict[str, float]:
    """`{"bleu", "chrf", "rouge_l"}` of generated texts against their references. Shown in notebooks/13 §1."""
    return {"bleu": bleu(hypotheses, references), "chrf": chrf(hypotheses, references),
            "rouge_l": rouge_l(hypotheses, references)}
