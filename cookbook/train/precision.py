"""Mixed precision: number formats, autocast, TF32 and the fp16 loss scaler, on CPU and CUDA alike.

`fp32` computes everything in float32; `tf32` keeps float32 tensors but lets CUDA tensor cores round
matmul inputs to a 10-bit mantissa (Ampere and newer; identical to fp32 elsewhere); `bf16` and `fp16`
run matmuls under `torch.autocast` in 16 bits while the weights, the optimizer state and the loss stay
in float32. fp16 has a narrow range, so small gradients underflow to zero: multiply the loss by a large
scale before backward, divide it out before the step, and skip steps whose gradients overflowed. That
is `torch.amp.GradScaler`, which works on CPU too (torch >= 2.3).
"""

from __future__ import annotations

import contextlib
import math

import pandas as pd
import torch

__all__ = [
    "PRECISIONS",
    "autocast",
    "autocast_dtype",
    "check",
    "dtype_table",
    "grad_scaler",
    "supported",
    "tf32",
]

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_AUTOCAST = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check(precision: str) -> str:
    """`precision` if it is one of `PRECISIONS`, else a ValueError listing the valid names."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The 16-bit dtype autocast computes in for `precision`, or None when it runs in float32."""
    return _AUTOCAST[check(precision)]


def supported(precision: str, device: torch.device | str) -> tuple[bool, str]:
    """Whether `precision` runs on `device` as intended, and why not (an empty reason when it does)."""
    device = torch.device(device)
    check(precision)
    if device.type == "cuda":
        major = torch.cuda.get_device_capability(device)[0]
        if precision == "tf32" and major < 8:
            return False, "TF32 tensor cores need compute capability >= 8.0 (Ampere); this runs as fp32"
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            return False, "this GPU has no bf16 support"
        return True, ""
    if precision == "tf32":
        return False, f"TF32 is a CUDA tensor-core mode; on {device.type} it is plain fp32"
    if precision in ("bf16", "fp16") and not torch.amp.autocast_mode.is_autocast_available(device.type):
        return False, f"no autocast for {device.type}"
    return True, ""


def autocast(precision: str, device: torch.device | str):
    """The context the forward pass and loss run in: `torch.autocast` for bf16/fp16, nothing otherwise."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def tf32(enabled: bool = True):
    """Allow (or forbid) TF32 for CUDA float32 matmuls and convolutions inside the block, then restore."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision = conv.fp32_precision = "tf32" if enabled else "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = before


def grad_scaler(precision: str, device: torch.device | str, **kwargs) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for fp16 (None for the other precisions, which need none).

    Defaults follow torch: start at 2**16, halve on overflow (and skip that step), double after 2000
    clean steps. Pass e.g. `init_scale=`, `growth_interval=` to change them.
    """
    if check(precision) != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type, **kwargs)


def dtype_table():
    """Bits, range and precision of the training number formats (a DataFrame; exact, machine-independent).

    tf32 is not a torch dtype: it is fp32's 8-bit exponent with fp16's 10-bit mantissa, used inside
    tensor-core matmuls only, so its row is derived from those two.
    """
    rows = []
    for name, dtype in [("fp32", torch.float32), ("tf32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)]:
        if dtype is None:  # tf32: range of fp32, mantissa (so epsilon) of fp16
            f32, f16 = torch.finfo(torch.float32), torch.finfo(torch.float16)
            rows.append(dict(format=name, bits=19, exponent_bits=8, mantissa_bits=10, max=f32.max,
                             smallest_normal=f32.tiny, epsilon=f16.eps))
            continue
        info = torch.finfo(dtype)
        mantissa = round(-math.log2(info.eps))
        rows.append(dict(format=name, bits=info.bits, exponent_bits=info.bits - 1 - mantissa,
                         mantissa_bits=mantissa, max=info.max, smallest_normal=info.tiny, epsilon=info.eps))
    return pd.DataFrame(rows).set_index("format")
