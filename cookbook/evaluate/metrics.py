"""Evaluation metrics per task: perplexity for language models, a classification report, BLEU / chrF / ROUGE-L.

    perplexity(model, batches)                        # token-weighted over a dataset, padding ignored
    perplexity_by(model, tok, {"json": [...], ...}, seq_len=128)   # one row per group of documents
    classification_report(y_true, scores)             # accuracy, macro-F1, AUC-PR, confusion matrix
    text_scores(generated, references)                # BLEU, chrF (sacrebleu), ROUGE-L (rouge-score)

The pass@k execution check of generated code lives in `cookbook.evaluate.execution`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cookbook import env
from cookbook.checks import positive_int
from cookbook.train import pad_batch, token_loss
from cookbook.train.batches import as_batch, target_count

__all__ = ["bleu", "chrf", "classification_report", "per_example", "perplexity", "perplexity_by", "rouge_l",
           "text_batches", "text_scores"]


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
    loss = total / count
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": count}


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
    rows["all"] = {"loss": total / count, "ppl": math.exp(min(total / count, 700.0)), "tokens": count}
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


def _pairs(hypotheses, references) -> tuple[list[str], list[str]]:
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError("pass lists of strings (one hypothesis and one reference per example), not one string")
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"need as many references as hypotheses (and at least one), got {len(hypotheses)} "
                         f"hypotheses and {len(references)} references")
    return hypotheses, references


def bleu(hypotheses: Sequence[str], references: Sequence[str], *, tokenize: str = "13a") -> float:
    """Corpus BLEU (0-100, sacrebleu; Papineni et al. 2002): clipped 1-4-gram precisions x brevity penalty.

    `tokenize` is sacrebleu's ("13a", the WMT default; "none" splits on spaces only). Shown in notebooks/13 §1.
    """
    import sacrebleu  # optional: the `evaluate` extra

    hypotheses, references = _pairs(hypotheses, references)
    return float(sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score)


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0-100, sacrebleu; Popović 2015): character 6-gram F-score, kinder to near-miss identifiers."""
    import sacrebleu  # optional: the `evaluate` extra

    hypotheses, references = _pairs(hypotheses, references)
    return float(sacrebleu.corpus_chrf(hypotheses, [references]).score)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (0-1, rouge-score; Lin 2004): longest common subsequence of words.

    rouge-score's tokenizer lowercases and keeps only letters and digits, so for code it compares identifier
    and keyword sequences, not punctuation. Shown in notebooks/13 §1.
    """
    from rouge_score import rouge_scorer  # optional: the `evaluate` extra

    hypotheses, references = _pairs(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return float(np.mean([scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references, strict=True)]))


def text_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """`{"bleu", "chrf", "rouge_l"}` of generated texts against their references. Shown in notebooks/13 §1."""
    return {"bleu": bleu(hypotheses, references), "chrf": chrf(hypotheses, references),
            "rouge_l": rouge_l(hypotheses, references)}
