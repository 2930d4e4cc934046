"""Post-training quantization by name: torchao's configs, the legacy `torch.ao.quantization` path, MoE experts.

    q = quantize(model, "int8-weight-only")                  # a quantized copy; `inplace=True` to skip the copy
    q = quantize(model, "int8-static", calibration=batches)  # static activation scales from a calibration set

| method | what is stored / computed | path |
|---|---|---|
| int8-weight-only | int8 weights, one scale per row; float activations | torchao `Int8WeightOnlyConfig` |
| int8-dynamic | int8 weights; activations quantized per token at run time | torchao `Int8DynamicActivationInt8WeightConfig` |
| int8-static | int8 weights; activations with one scale per layer, fixed by calibration | torchao `Int8StaticActivationInt8WeightConfig` |
| int4-weight-only | int4 weights packed two per byte, one scale and zero per group of 32; bf16 model | torchao `Int4WeightOnlyConfig` (tinygemm: CUDA only) |
| int4-unpacked | int4 values stored one per byte, one scale per group of 32 | torchao `IntxWeightOnlyConfig(torch.int4)` (any device) |
| legacy-dynamic | qint8 weights, per-token int8 activations (fbgemm/x86) | `torch.ao.quantization.quantize_dynamic` (deprecated; CPU only) |

Every method quantizes the `nn.Linear` layers; with `experts=True` (the default) the routed experts of a MoE
become int8 weight-only through `Int8Experts` (no library path covers their 3-D parameters). The router, the
embeddings and the norms stay in their own precision, as DeepSeek-V3 keeps gating, embedding and norms in high
precision in FP8 training (DeepSeek-V3 report §3.3.1); `coverage` lists what each method left.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from cookbook.compress.experts import quantize_experts
from cookbook.train.batches import as_batch

__all__ = ["GROUP_SIZE", "METHODS", "calibrate", "methods_for", "quantize", "require_torchao"]

METHODS = ("int8-weight-only", "int8-dynamic", "int8-static", "int4-weight-only", "int4-unpacked", "legacy-dynamic")
GROUP_SIZE = 32  # int4 weights per scale (int4-unpacked: widths not divisible by it get one scale per row instead)


def require_torchao():
    """The torchao package, imported on first use (the optional `quant` extra), or a clear ImportError."""
    try:  # function-level: torchao is an optional heavy extra (pip install 'cookbook[quant]')
        import torchao as ao
        import torchao.quantization  # noqa: F401  (the configs live here)
    except ImportError as exc:
        raise ImportError("the torchao methods need torchao: pip install 'cookbook[quant]' (or torchao>=0.13); "
                          "'legacy-dynamic' and the sparsity helpers run without it") from exc
    return ao


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def methods_for(device) -> tuple[str, ...]:
    """The `METHODS` whose kernels run on `device` (a name or torch.device): `legacy-dynamic` needs the CPU
    (torch.ao's fbgemm/x86 kernels), `int4-weight-only` a CUDA GPU of compute capability 8.0+ (tinygemm).
    Shown in notebooks/09 §3."""
    device = torch.device(device)
    tinygemm = (device.type == "cuda" and torch.cuda.is_available()
                and torch.cuda.get_device_capability(device) >= (8, 0))
    return tuple(m for m in METHODS if (m != "legacy-dynamic" or device.type == "cpu")
                 and (m != "int4-weight-only" or tinygemm))


def _unsupported(method: str, device: torch.device) -> str:
    if method == "legacy-dynamic":
        return (f"legacy-dynamic runs torch.ao's quantized CPU kernels (fbgemm/x86) only; the model is on {device}: "
                "move it to the CPU, or use int8-weight-only")
    return (f"int4-weight-only packs int4 for torchao's tinygemm kernel, which needs a CUDA GPU of compute capability "
            f"8.0+; the model is on {device}: use 'int4-unpacked' (int4 values stored one per byte: runs anywhere, "
            "no smaller than int8), or move the model to such a GPU")


@torch.no_grad()
def calibrate(model: nn.Module, batches) -> dict[str, tuple[float, int]]:
    """Largest |input| seen by each `nn.Linear` over `batches`, and the input's number of dims: {name: (amax, ndim)}.

    Static int8 turns amax into a per-layer activation scale (amax / 127); activations beyond the calibrated
    range saturate, so calibrate on data like what the model will serve. Shown in notebooks/09 §3.
    """
    seen: dict[str, tuple[float, int]] = {}

    def hook(name):
        def record(_module, args):
            x = args[0]
            amax = float(x.detach().abs().amax())
            if name in seen and seen[name][1] != x.dim():
                raise ValueError(f"{name} saw inputs of {seen[name][1]} and {x.dim()} dims; a static scale needs one")
            seen[name] = (max(amax, seen.get(name, (0.0, 0))[0]), x.dim())

        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    device, was_training = _device(model), model.training
    model.eval()
    try:
        for batch in batches:
            batch = as_batch(batch)
            model(input_ids=batch["input_ids"].to(device), attention_mask=_on(batch.get("attention_mask"), device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if not seen:
        raise ValueError("calibration saw no nn.Linear input: empty batches, or a model without nn.Linear layers")
    return seen


def _on(tensor, device):
    return None if tensor is None else tensor.to(device)


def _int4(model: nn.Module, ao) -> None:
    from torchao.quantization import Int4WeightOnlyConfig  # the optional extra

    # tinygemm takes bf16 (Int4TilePackedTo4dTensor asserts it; quantize() casts first) and groups of 32 inputs:
    # narrower or odd widths stay bf16, and coverage() shows them
    ao.quantization.quantize_(model, Int4WeightOnlyConfig(group_size=GROUP_SIZE, int4_packing_format="tile_packed_to_4d"),
                              filter_fn=lambda m, _name="": _grouped(m))


def _grouped(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and module.in_features % GROUP_SIZE == 0


def _int4_unpacked(model: nn.Module, ao) -> None:
    from torchao.quantization import IntxWeightOnlyConfig  # the optional extra
    from torchao.quantization.granularity import PerAxis, PerGroup

    # torchao 0.18's Int4WeightOnlyConfig has no CPU packing (plain needs the mslk package, plain_int32 has no CPU
    # kernel, tile_packed_to_4d needs CUDA); IntxWeightOnlyConfig runs anywhere but keeps one int4 value per byte.
    # PerGroup needs the width divisible by the group: other layers get one scale per row (PerAxis(0)).
    ao.quantization.quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(GROUP_SIZE)),
                              filter_fn=lambda m, _name="": _grouped(m))
    ao.quantization.quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerAxis(0)),
                              filter_fn=lambda m, _name="": isinstance(m, nn.Linear) and not _grouped(m))


def _static(model: nn.Module, ranges: dict[str, tuple[float, int]], ao) -> None:
    from torchao.quantization import FqnToConfig, Int8StaticActivationInt8WeightConfig  # the optional extra
    from torchao.quantization.granularity import PerRow, PerTensor

    # the scale has the activation's number of dims (torchao checks it); one scale per layer (PerTensor)
    configs = {name: Int8StaticActivationInt8WeightConfig(
        act_quant_scale=torch.full([1] * ndim, max(amax, 1e-8) / 127, device=_device(model)),
        granularity=[PerTensor(), PerRow()]) for name, (amax, ndim) in ranges.items()}
    ao.quantization.quantize_(model, FqnToConfig(configs), filter_fn=None)


def _legacy_dynamic(model: nn.Module) -> None:
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise ValueError(f"legacy-dynamic quantizes float32 models, this one holds {sorted(map(str, dtypes))}")
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it is deprecated (torchao's quantize_ replaces it), once per call and
        # again for each quantized tensor it creates; notebooks/09 explains it once instead.
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel")
        torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def quantize(model: nn.Module, method: str, *, experts: bool = True, calibration=None, inplace: bool = False):
    """`model` quantized with `method` (one of `METHODS`): a copy unless `inplace`; eval mode.

    `experts=True` also makes the routed experts of a MoE int8 weight-only (`Int8Experts`); with False they stay
    in full precision, as torchao alone leaves them. `calibration` (batches) is needed by int8-static only.
    A method whose kernels do not run on the model's device (`methods_for`) raises a ValueError naming the
    alternative; int4-weight-only casts the model (the copy, unless `inplace`) to bf16, tinygemm's input.
    Shown in notebooks/09 §2-3.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if method == "int8-static" and calibration is None:
        raise ValueError("int8-static needs calibration=batches (a few batches like the ones served) to fix the "
                         "activation scales; int8-dynamic measures them at run time instead")
    if method not in methods_for(_device(model)):
        raise ValueError(_unsupported(method, _device(model)))
    ao = None if method == "legacy-dynamic" else require_torchao()
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    ranges = calibrate(model, calibration) if method == "int8-static" else None  # in full precision, first
    if method == "int4-weight-only":
        model.to(torch.bfloat16)  # before the experts too: every weight's "before" in coverage() is then bf16
    if experts:
        quantize_experts(model)
    if method == "int8-weight-only":
        ao.quantization.quantize_(model, ao.quantization.Int8WeightOnlyConfig())
    elif method == "int8-dynamic":
        ao.quantization.quantize_(model, ao.quantization.Int8DynamicActivationInt8WeightConfig())
    elif method == "int8-static":
        _static(model, ranges, ao)
    elif method == "int4-weight-only":
        _int4(model, ao)
    elif method == "int4-unpacked":
        _int4_unpacked(model, ao)
    else:
        _legacy_dynamic(model)
    return model
