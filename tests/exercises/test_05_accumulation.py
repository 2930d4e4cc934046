"""Solutions to the exercises of notebooks/05 (gradient accumulation and memory), each checked against an
independent result."""

import math

import pytest
import torch
import torch.nn.functional as F

from cookbook.train import memory


# Exercise 1: gradient accumulation equals the big batch, in float64
def tiny_lm(vocab: int = 50, d: int = 16) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(vocab, d), torch.nn.Tanh(), torch.nn.Linear(d, vocab)).double()


def ragged_batches(lengths: list[list[int]], vocab: int = 50, pad: int = 0) -> list[dict]:
    """Micro-batches of sequences of the given lengths, padded; padded targets are -100 (ignored by the loss)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for micro in lengths:
        width = max(micro)
        ids = torch.full((len(micro), width), pad)
        labels = torch.full((len(micro), width), -100)
        for row, n in enumerate(micro):
            ids[row, :n] = torch.randint(1, vocab, (n,), generator=g)
            labels[row, :n] = ids[row, :n]
        out.append({"input_ids": ids, "labels": labels})
    return out


def summed_loss(model, batch) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropies over the real targets, and how many there are."""
    logits = model(batch["input_ids"])[:, :-1]
    targets = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    return loss, int((targets != -100).sum())


def accumulated_grads(model, micro_batches, normalize: str) -> list[torch.Tensor]:
    """`tokens`: each micro-batch's summed loss / the step's target tokens; `steps`: each mean loss / k."""
    model.zero_grad()
    total = sum(summed_loss(model, b)[1] for b in micro_batches)  # counted before the first backward
    for b in micro_batches:
        loss, n = summed_loss(model, b)
        (loss / total if normalize == "tokens" else loss / n / len(micro_batches)).backward()
    return [p.grad.clone() for p in model.parameters()]


def big_batch_grads(model, micro_batches) -> list[torch.Tensor]:
    """The reference: all sequences in one padded batch, mean loss over every real target token."""
    width = max(b["input_ids"].shape[1] for b in micro_batches)
    ids = torch.cat([F.pad(b["input_ids"], (0, width - b["input_ids"].shape[1])) for b in micro_batches])
    labels = torch.cat([F.pad(b["labels"], (0, width - b["labels"].shape[1]), value=-100) for b in micro_batches])
    model.zero_grad()
    loss, n = summed_loss(model, {"input_ids": ids, "labels": labels})
    (loss / n).backward()
    return [p.grad.clone() for p in model.parameters()]


def relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    diff = torch.cat([(x - y).flatten() for x, y in zip(a, b, strict=True)]).norm()
    return (diff / torch.cat([y.flatten() for y in b]).norm()).item()


def test_token_normalised_accumulation_is_the_big_batch():
    model = tiny_lm()
    micro = ragged_batches([[40, 5], [3, 2], [25, 30], [7, 9]])  # very different target counts
    big = big_batch_grads(model, micro)
    assert relative_error(accumulated_grads(model, micro, "tokens"), big) < 1e-12
    assert relative_error(accumulated_grads(model, micro, "steps"), big) > 1e-2  # mean / k over-weights short ones


def test_naive_accumulation_is_exact_only_with_equal_target_counts():
    model = tiny_lm()
    micro = ragged_batches([[12, 9], [10, 11], [8, 13]])  # 19 targets in every micro-batch
    big = big_batch_grads(model, micro)
    assert relative_error(accumulated_grads(model, micro, "steps"), big) < 1e-12


# Exercise 2: the batch-size finder
def largest_fitting(fits, start: int = 1, cap: int = 1024) -> tuple[int, list[int]]:
    """Double from `start` while `fits`, then bisect between the last size that fit and the first that did not."""
    tried, good, n = [], None, start
    while n <= cap:
        tried.append(n)
        if not fits(n):
            break
        good, n = n, 2 * n
    else:  # every doubling fit: try the cap itself
        if good < cap:
            tried.append(cap)
            if fits(cap):
                return cap, tried
        else:
            return good, tried
    bad = tried[-1]
    while bad - good > 1:
        mid = (good + bad) // 2
        tried.append(mid)
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good, tried


@pytest.mark.parametrize("limit", [*range(1, 70), 511, 512, 513, 1000, 1024])
def test_finder_finds_the_limit_in_few_tries(limit):
    found, tried = largest_fitting(lambda n: n <= limit)
    assert found == limit  # the brute-force answer, by construction of `fits`
    assert len(tried) <= 2 * math.ceil(math.log2(limit + 1)) + 2  # doubling, then halving the gap


@pytest.mark.parametrize("limit", [37, 1024])  # few: the cookbook's finder runs gc.collect() after every failure
def test_finder_tries_what_the_cookbook_tries(limit):
    def step(n):
        if n > limit:
            raise torch.OutOfMemoryError(f"{n} > {limit}")

    theirs, attempts = memory.find_batch_size(step, start=1, max_batch=1024)
    assert (theirs, attempts["batch_size"].tolist()) == largest_fitting(lambda n: n <= limit)
