"""Training memory in practice: activation bytes, memory vs micro-batch size, checkpointing, batch-size finder.

`cookbook.planning` estimates memory from a config; this module measures it on a real model. Activation
memory (what autograd keeps for backward) is counted the same way on every device with saved-tensor
hooks; on CUDA the allocator's peak is reported as well.
"""

from __future__ import annotations

import contextlib
import gc
import time

import pandas as pd
import torch

from cookbook.train import precision as amp
from cookbook.train.loss import token_loss

__all__ = ["find_batch_size", "saved_activation_bytes", "set_checkpointing", "step_cost", "sweep", "with_budget"]


def saved_activation_bytes(fn, exclude=()) -> tuple[object, int]:
    """Run `fn()` and count the bytes autograd keeps for its backward: (result, bytes).

    Tensors sharing storage are counted once, and `exclude` (e.g. `model.parameters()`, which live in
    memory anyway) not at all. Gradient checkpointing shrinks this number.
    """
    seen: dict[tuple[int, int], int] = {}
    params = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(t: torch.Tensor):
        if t.layout == torch.strided and t.device.type != "meta":
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                seen[(storage.data_ptr(), t.device.index or 0)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def set_checkpointing(model, enabled: bool) -> None:
    """Switch (non-reentrant) gradient checkpointing of a transformers model on or off."""
    if enabled:
        if getattr(getattr(model, "config", None), "use_cache", False):
            model.config.use_cache = False  # a KV cache is for generation; recomputation cannot use one
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    else:
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()


def step_cost(model, batch_size: int, seq_len: int, *, precision: str = "fp32", checkpointing: bool = False,
              seed: int = 0) -> dict:
    """Memory and time of one forward + backward on a random batch (gradients are cleared afterwards).

    Returns batch_size, activations_mb (saved for backward), peak_mb (CUDA allocator peak, NaN elsewhere)
    and seconds.
    """
    if batch_size < 1 or seq_len < 2:
        raise ValueError(f"batch_size must be >= 1 and seq_len >= 2, got {batch_size}, {seq_len}")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=gen).to(device)
    set_checkpointing(model, checkpointing)
    model.train()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        with amp.autocast(precision, device):
            loss, saved = saved_activation_bytes(lambda: token_loss(model, {"input_ids": ids, "labels": ids}),
                                                 exclude=model.parameters())
        loss.backward()
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")
    finally:
        model.zero_grad(set_to_none=True)
        set_checkpointing(model, False)
    return dict(batch_size=batch_size, activations_mb=saved / 2**20, peak_mb=peak, seconds=seconds)


def sweep(model, batch_sizes, seq_len: int, *, precision: str = "fp32", checkpointing=(False, True)):
    """`step_cost` for every micro-batch size, with and without checkpointing: a DataFrame."""

    step_cost(model, batch_sizes[0], seq_len, precision=precision)  # warm-up: first calls allocate caches
    rows = [{"checkpointing": ckpt, **step_cost(model, n, seq_len, precision=precision, checkpointing=ckpt)}
            for ckpt in checkpointing for n in batch_sizes]
    return pd.DataFrame(rows)


def with_budget(try_step, budget_mb: float):
    """Wrap `try_step(n) -> dict with activations_mb` so it raises out-of-memory above `budget_mb`.

    A stand-in for a smaller GPU, so the batch-size finder can be shown (and tested) on a CPU.
    """
    def step(n: int):
        cost = try_step(n)
        if cost["activations_mb"] > budget_mb:
            raise torch.OutOfMemoryError(f"{cost['activations_mb']:.1f} MB of activations > budget {budget_mb} MB")
        return cost

    return step


def find_batch_size(try_step, *, start: int = 1, max_batch: int = 1024):
    """The largest batch size for which `try_step(n)` does not run out of memory: (size, attempts DataFrame).

    Doubles from `start` until a CUDA out-of-memory error (or `max_batch`), then bisects between the last
    size that fit and the first that did not. After each failure the CUDA cache is emptied, so the next
    attempt starts clean.
    """
    if start < 1 or max_batch < start:
        raise ValueError(f"need 1 <= start <= max_batch, got start={start}, max_batch={max_batch}")
    attempts = []

    def fits(n: int) -> bool:
        try:
            try_step(n)
            ok = True
        except torch.OutOfMemoryError:
            ok = False
            gc.collect()  # drop the failed attempt's tensors before the next one
            if torch.cuda.is_available():
                with contextlib.suppress(RuntimeError):
                    torch.cuda.empty_cache()
        attempts.append(dict(batch_size=n, fits=ok))
        return ok

    good, bad, n = None, None, start
    while n <= max_batch:
        if not fits(n):
            bad = n
            break
        good, n = n, n * 2
    if good is None:
        raise RuntimeError(f"even a batch of {start} runs out of memory: shorten the sequences, enable "
                           "gradient checkpointing or use a lower precision")
    if bad is None and good < max_batch:  # every doubling fit: the cap itself may fit too
        if fits(max_batch):
            return max_batch, pd.DataFrame(attempts)
        bad = max_batch
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good, pd.DataFrame(attempts)
