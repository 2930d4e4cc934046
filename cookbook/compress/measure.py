"""What a compressed model really buys: bytes, coverage, latency and perplexity, side by side in one table.

    report = coverage(q)                   # one row per stored weight: kind, format, bytes before/after, quantized
    table = compare({"fp32": model, "int8": q}, eval_batches, latency_ids)

Sizes are measured, not computed from bit widths: `state_bytes` serializes the state dict as `torch.save` writes
it, and `coverage` counts the bytes of every tensor a quantized weight is made of (values, scales, zero points).
"""

from __future__ import annotations

import copy
import io
import math
import statistics
import time
from collections.abc import Mapping

import pandas as pd
import torch
from torch import nn

from cookbook import models
from cookbook.compress.experts import Int8Experts, is_fused_experts
from cookbook.train import token_loss
from cookbook.train.batches import as_batch, target_count

__all__ = ["compare", "coverage", "evaluate", "latencies", "latency", "quantized_share", "state_bytes"]


def state_bytes(model: nn.Module) -> int:
    """Bytes of `torch.save(model.state_dict())`: the size on disk of the weights, whatever their format.
    Shown in notebooks/09 §1."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def _tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor stores: a plain one's elements; a torchao subclass's inner tensors; a qint8's values + qparams."""
    if t.is_quantized:  # torch.ao's qint8: one byte per value, plus a float64 scale and int64 zero point
        n_params = t.q_per_channel_scales().numel() if t.qscheme() in (torch.per_channel_affine,
                                                                        torch.per_channel_symmetric) else 1
        return t.numel() * t.element_size() + 16 * n_params
    if type(t) in (torch.Tensor, nn.Parameter, nn.Buffer) or not hasattr(t, "__tensor_flatten__"):
        return t.numel() * t.element_size()
    names, _ = t.__tensor_flatten__()
    return sum(_tensor_bytes(inner) for inner in (getattr(t, n) for n in names) if inner is not None)


def _short(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype).split(".")[-1])


def _format(t: torch.Tensor) -> tuple[str, str]:
    """(format, kernel path) of a stored weight; kernel is "" for plain tensors."""
    kind = type(t).__name__
    if kind == "Int8Tensor":
        if getattr(t, "act_quant_kwargs", None) is None:
            return "int8", "torchao Int8Tensor: int8 weights cast to float, float matmul"
        if getattr(t, "act_quant_scale", None) is None:
            return "int8 + dynamic int8 act", "torchao Int8Tensor: per-token int8 activations, torch._int_mm"
        return "int8 + static int8 act", "torchao Int8Tensor: calibrated int8 activations, torch._int_mm"
    if kind == "IntxUnpackedToInt8Tensor":
        bits = str(getattr(t, "target_dtype", "intx")).split(".")[-1]
        act = " + dynamic int8 act" if getattr(t, "activation_quantization", None) else ""
        return f"{bits} (one per byte){act}", "torchao IntxUnpackedToInt8Tensor: dequantized to float, float matmul"
    if kind == "Int4TilePackedTo4dTensor":
        return "int4 packed", "torchao Int4TilePackedTo4dTensor: tinygemm int4 kernel (CUDA, bf16)"
    if kind == "SparseSemiStructuredTensor" or kind.startswith("SparseSemiStructuredTensor"):
        return "2:4 sparse", "2:4 semi-structured sparse matmul (CUDA)"
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, nn.Parameter):
        return kind, f"torchao {kind}"
    return _short(t.dtype), ""


def _zeros(t: torch.Tensor) -> int:
    plain = type(t) in (torch.Tensor, nn.Parameter, nn.Buffer) and t.dtype.is_floating_point
    return int((t.detach() == 0).sum()) if plain else 0


def _kind(module: nn.Module, router_ids: set[int]) -> str:
    if id(module) in router_ids:
        return "router"
    if isinstance(module, Int8Experts) or is_fused_experts(module):
        return "routed experts"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, nn.Linear) or _is_legacy_linear(module):
        return "linear"
    return "norm" if "norm" in type(module).__name__.lower() else "other"


def _is_legacy_linear(module: nn.Module) -> bool:
    """torch.ao's quantized Linear (its weight is a method returning a qint8 tensor), not its packed-params child."""
    return type(module).__module__.startswith("torch.ao.nn.quantized") and callable(getattr(type(module), "weight", None))


def _rows(name: str, module: nn.Module):
    """(name, shape, format, kernel, bytes before, bytes stored, zeros) for each weight `module` itself stores."""
    if isinstance(module, Int8Experts):
        implementation = getattr(getattr(module.kernel, "config", None), "_experts_implementation", None) or "eager"
        for weight in ("gate_up_proj", "down_proj"):
            qdata, scale = getattr(module, f"{weight}_int8"), getattr(module, f"{weight}_scale")
            before = qdata.numel() * module.dtype.itemsize
            yield (f"{name}.{weight}", tuple(qdata.shape), "int8", "cookbook Int8Experts: int8 expert weights cast "
                   f"to float, transformers' {implementation} experts", before,
                   _tensor_bytes(qdata) + _tensor_bytes(scale), 0)
        return
    if _is_legacy_linear(module):
        engine = torch.backends.quantized.engine
        weight, bias = module.weight(), module.bias()
        yield (f"{name}.weight", tuple(weight.shape), "qint8", f"torch.ao dynamic Linear: {engine} int8 GEMM",
               weight.numel() * 4, _tensor_bytes(weight), 0)
        if bias is not None:
            size = _tensor_bytes(bias)
            yield f"{name}.bias", tuple(bias.shape), _short(bias.dtype), "", size, size, _zeros(bias)
        return
    tensors = list(module.named_parameters(recurse=False))
    tensors += [(n, b) for n, b in module.named_buffers(recurse=False) if n not in module._non_persistent_buffers_set]
    for leaf, t in tensors:
        fmt, kernel = _format(t)
        yield (f"{name}.{leaf}" if name else leaf, tuple(t.shape), fmt, kernel, t.numel() * t.dtype.itemsize,
               _tensor_bytes(t), _zeros(t))


def coverage(model: nn.Module) -> pd.DataFrame:
    """One row per weight the model stores: kind, shape, format, kernel path, bytes before and after, quantized.

    `bytes_before` is the weight at its original float width (its sum is the unquantized state dict's tensor
    bytes); `bytes` is what is stored now (values + scales + zero points). Nothing is left out, so a weight a
    quantizer skipped shows up as full precision instead of disappearing. Shown in notebooks/09 §1-2.
    """
    router_ids = {id(m) for _, m in models.routers(model)}
    rows = []
    for name, module in model.named_modules():
        kind = _kind(module, router_ids)
        for weight, shape, fmt, kernel, before, stored, zeros in _rows(name, module):
            rows.append(dict(name=weight, kind=kind, shape=shape, format=fmt, kernel=kernel, bytes_before=before,
                             bytes=stored, quantized=bool(kernel) and fmt != "2:4 sparse", zeros=zeros))
    if not rows:
        raise ValueError(f"{type(model).__name__} stores no weights")
    return pd.DataFrame(rows).set_index("name")


def quantized_share(report: pd.DataFrame) -> float:
    """Share of the model's original bytes that are now quantized (from a `coverage` report)."""
    return float(report.loc[report["quantized"], "bytes_before"].sum() / report["bytes_before"].sum())


def _device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    raise ValueError(f"{type(model).__name__} has no parameters or buffers")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def latencies(models_: Mapping[str, nn.Module], input_ids: torch.Tensor, *, repeats: int = 5,
              warmup: int = 2) -> dict[str, float]:
    """Seconds per token of one forward over `input_ids`, per model, each on its own device.

    Each model first runs `warmup` untimed forwards (first-call allocations and kernel selection are not the
    steady state); then the timed forwards go round-robin, one per model per round, so a machine that slows
    down or speeds up midway (other jobs, turbo, thermals) affects every model alike. The median of `repeats`
    rounds, divided by the tokens of `input_ids`.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    if input_ids.dim() != 2 or input_ids.numel() == 0:
        raise ValueError(f"input_ids must be a non-empty (batch, seq_len) tensor, got shape {tuple(input_ids.shape)}")
    runs = {}
    for name, model in models_.items():
        device = _device(model)
        runs[name] = (model, input_ids.to(device), device, model.training)
        model.eval()
    times: dict[str, list[float]] = {name: [] for name in runs}
    try:
        for model, ids, device, _ in runs.values():
            for _ in range(warmup):
                model(input_ids=ids)
            _sync(device)
        for _ in range(repeats):
            for name, (model, ids, device, _) in runs.items():
                start = time.perf_counter()
                model(input_ids=ids)
                _sync(device)
                times[name].append(time.perf_counter() - start)
    finally:
        for model, _, _, was_training in runs.values():
            model.train(was_training)
    return {name: statistics.median(t) / input_ids.numel() for name, t in times.items()}


def latency(model: nn.Module, input_ids: torch.Tensor, *, repeats: int = 5, warmup: int = 2) -> float:
    """Seconds per token of one forward over `input_ids` on the model's device (see `latencies`)."""
    return latencies({"model": model}, input_ids, repeats=repeats, warmup=warmup)["model"]


@torch.no_grad()
def evaluate(model: nn.Module, batches) -> dict[str, float]:
    """Mean next-token loss, perplexity and top-1 next-token accuracy of `model` over `batches` (dicts or
    input_ids tensors). The loss is `cookbook.train.token_loss`; the accuracy reads the logits of the same forward."""
    device, was_training = _device(model), model.training
    total, count, correct = 0.0, 0, 0
    logits = []
    handle = model.register_forward_hook(lambda _module, _args, output: logits.append(output.logits))
    model.eval()
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in as_batch(batch).items()}
            count += target_count(batch)
            total += float(token_loss(model, batch))
            targets = batch["labels"][:, 1:]
            hits = (logits.pop()[:, :-1].argmax(-1) == targets) & (targets != -100)
            correct += int(hits.sum())
    finally:
        handle.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("the evaluation batches hold no target tokens")
    return {"loss": total / count, "ppl": math.exp(min(total / count, 700.0)), "accuracy": correct / count}


@torch.no_grad()
def _runnable(model: nn.Module, device: torch.device, input_ids: torch.Tensor):
    """(model on `device`, "") after one trial forward, moving a copy there if needed; (None, why) if it fails."""
    was_training = model.training
    try:
        moved = model if _device(model) == device else copy.deepcopy(model).to(device)
        moved.eval()(input_ids=input_ids.to(device))
        return moved, ""
    except (RuntimeError, NotImplementedError, AssertionError, ValueError, TypeError) as exc:
        return None, f"no {device.type} run: {str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__}"
    finally:
        model.train(was_training)  # the trial run must not leave the caller's model in eval mode


def compare(variants: Mapping[str, nn.Module], eval_batches=None, latency_ids: torch.Tensor | None = None, *,
            devices=None, repeats: int = 5, warmup: int = 2, baseline: str | None = None) -> pd.DataFrame:
    """One row per variant: size on disk, quantized share, bytes of the quantized weights against their float
    bytes (`covered_ratio`), zeros, latency per token on each device, loss, perplexity and next-token accuracy,
    their ratios / deltas to `baseline` (default: the first variant), and the kernel path.

    `eval_batches` (re-iterable: a list or DataLoader) gives the quality columns; `latency_ids` (batch, seq_len)
    the latency columns, timed round-robin across the variants (`latencies`); `devices` (e.g. ["cpu", "cuda"])
    times a copy of each variant on each, by default each variant's own device only. A variant that cannot run
    on a device gets NaN there and says why in `notes`. Shown in notebooks/09 §3.
    """
    if not variants:
        raise ValueError("compare() needs at least one variant")
    baseline = next(iter(variants)) if baseline is None else baseline
    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} is not a variant; variants: {', '.join(variants)}")
    rows = {}
    for name, model in variants.items():
        report = coverage(model)
        matrices = report[report["kind"].isin(["linear", "routed experts"])]
        covered = report[report["quantized"]]
        rows[name] = dict(size_mb=state_bytes(model) / 1e6, quantized_share=quantized_share(report),
                          # the quantized weights alone: where "int8 is 4x smaller" can hold
                          covered_ratio=covered["bytes"].sum() / covered["bytes_before"].sum() if len(covered) else 1.0,
                          zeros=float(matrices["zeros"].sum() / max(1, sum(math.prod(s) for s in matrices["shape"]))))
        if eval_batches is not None:
            rows[name].update(evaluate(model, eval_batches))
        kernels = dict.fromkeys(report.loc[report["kernel"] != "", "kernel"])  # quantized or 2:4 sparse
        rows[name]["path"] = " + ".join(kernels) or f"dense {_short(next(model.parameters()).dtype)}"
        rows[name]["notes"] = ""
    if latency_ids is not None:
        own = {name: _device(model) for name, model in variants.items()}
        for device in [torch.device(d) for d in devices] if devices else list(dict.fromkeys(own.values())):
            runnable = {}
            for name, model in variants.items():
                if devices or own[name] == device:
                    runnable[name], why = _runnable(model, device, latency_ids)
                    rows[name]["notes"] = "; ".join(filter(None, [rows[name]["notes"], why]))
            timed = latencies({n: m for n, m in runnable.items() if m is not None}, latency_ids, repeats=repeats,
                              warmup=warmup) if any(m is not None for m in runnable.values()) else {}
            for name in variants:
                rows[name][f"us_per_token_{device.type}"] = 1e6 * timed.get(name, math.nan)
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant")
    base = table.loc[baseline]
    table.insert(1, "size_ratio", table["size_mb"] / base["size_mb"])
    for column in [c for c in table.columns if c.startswith("us_per_token_")]:
        table[f"speedup_{column.rsplit('_', 1)[1]}"] = base[column] / table[column]
    if "ppl" in table:
        table["ppl_delta_pct"] = 100 * (table["ppl"] / base["ppl"] - 1)
        table["accuracy_delta_pts"] = 100 * (table["accuracy"] - base["accuracy"])
    order = [c for c in table.columns if c not in ("path", "notes")] + ["path", "notes"]
    return table[order]
