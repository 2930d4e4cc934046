"""Compression measured honestly: quantization (torchao PTQ and QAT, the legacy torch.ao path), sparsity, and one
table of what each method buys (size on disk, latency, perplexity, coverage).

experts (int8 routed experts of a MoE, which torchao skips) · quantize (methods by name, calibration) · qat
(prepare → Trainer → convert) · sparsity (magnitude/TopK, 2:4) · measure (bytes, coverage, latency, perplexity,
compare). The torchao methods need the `quant` extra; its import-time noise is filtered in `cookbook/__init__.py`.
Shown in notebooks/09.
"""

from cookbook.compress.experts import Int8Experts, int8_rows, is_fused_experts, quantize_experts
from cookbook.compress.measure import (
    compare,
    coverage,
    evaluate,
    latencies,
    latency,
    quantized_share,
    state_bytes,
)
from cookbook.compress.qat import QAT_METHODS, convert_qat, prepare_qat, qat
from cookbook.compress.quantize import GROUP_SIZE, METHODS, calibrate, methods_for, quantize, require_torchao
from cookbook.compress.sparsity import (
    prune_2_4,
    prune_magnitude,
    sparsity_report,
    to_semi_structured,
)

__all__ = ["GROUP_SIZE", "METHODS", "QAT_METHODS", "Int8Experts", "calibrate", "compare", "convert_qat", "coverage",
           "evaluate", "int8_rows", "is_fused_experts", "latencies", "latency", "methods_for", "prepare_qat",
           "prune_2_4", "prune_magnitude", "qat", "quantize", "quantize_experts", "quantized_share",
           "require_torchao", "sparsity_report", "state_bytes", "to_semi_structured"]
