"""Solutions to the exercises of notebooks/13 (evaluation, tuning and the data loop), each checked against an
independent result."""

import itertools
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cookbook import evaluate


# Exercise 1: pass@k, unbiased
def pass_at_k(n: int, c: int, k: int) -> float:
    """Chance that at least one of k samples drawn without replacement from n (c of them correct) is correct."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 0, 1), (5, 1, 1), (5, 2, 3), (6, 3, 5), (7, 7, 2), (8, 1, 8)])
def test_pass_at_k_by_enumerating_every_draw(n, c, k):
    outcomes = [True] * c + [False] * (n - c)
    draws = list(itertools.combinations(range(n), k))
    brute = sum(any(outcomes[i] for i in d) for d in draws) / len(draws)
    assert pass_at_k(n, c, k) == pytest.approx(brute)
    assert evaluate.pass_at_k(n, c, k) == pytest.approx(brute)
    naive = 1 - (1 - c / n) ** k  # drawing with replacement: wrong whenever 0 < c < n and k > 1
    if 0 < c < n and k > 1:
        assert naive < brute


# Exercise 2: perplexity over a dataset, token-weighted
def dataset_perplexity(batch_losses: list[float], batch_tokens: list[int]) -> float:
    """exp(total loss / total tokens) from each batch's mean token loss and its number of target tokens."""
    total = sum(loss * n for loss, n in zip(batch_losses, batch_tokens, strict=True))
    return math.exp(total / sum(batch_tokens))


def test_token_weighted_perplexity_equals_one_pass_over_all_tokens():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 10, 7, generator=gen)
    labels = torch.randint(0, 7, (3, 10), generator=gen)
    labels[0, 2:] = -100  # a short row: mostly padding
    labels[2, 6:] = -100
    per_batch = [(F.cross_entropy(lg, lb, ignore_index=-100).item(), int((lb != -100).sum())) for lg, lb in
                 zip(logits, labels, strict=True)]
    ours = dataset_perplexity(*map(list, zip(*per_batch, strict=True)))
    one_pass = math.exp(F.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1), ignore_index=-100).item())
    assert ours == pytest.approx(one_pass, rel=1e-6)
    averaged = float(np.mean([math.exp(loss) for loss, _ in per_batch]))  # the mistake: short batches weigh as much
    assert abs(averaged - one_pass) > 1e-3


# Exercise 3: ROUGE-L by hand, and why a body can score exactly the floor
def rouge_l(hypothesis: str, reference: str) -> float:
    """F-measure of the longest common subsequence of lowercase alphanumeric words."""
    h, r = (re.findall(r"[a-z0-9]+", s.lower()) for s in (hypothesis, reference))
    if not h or not r:
        return 0.0
    table = [[0] * (len(r) + 1) for _ in range(len(h) + 1)]
    for i, a in enumerate(h):
        for j, b in enumerate(r):
            table[i + 1][j + 1] = table[i][j] + 1 if a == b else max(table[i][j + 1], table[i + 1][j])
    lcs = table[-1][-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(h), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize(("hyp", "ref"), [
    ("    return a + b\n", "    return a + b\n"),
    ("    return sum(xs) / len(xs)\n", "    total = 0\n    for x in xs:\n        total += x\n    return total / len(xs)\n"),
    ("    pass\n", "    return [x for x in items if x]\n"),  # no shared word: 0, the `pass` floor
    ("    x = 1\n", "    if not items:\n        return None\n"),  # a body with no word in common also scores 0
])
def test_rouge_l_by_hand_matches_rouge_score(hyp, ref):
    assert rouge_l(hyp, ref) == pytest.approx(evaluate.rouge_l([hyp], [ref]), abs=1e-9)


def test_a_body_sharing_no_word_equals_the_floor():
    ref = "    return [x for x in items if x]\n"
    assert rouge_l("    y = 2\n", ref) == rouge_l("    pass\n", ref) == 0.0
