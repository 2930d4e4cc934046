"""Export a causal LM for serving: `torch.export`, ONNX (the dynamo exporter) checked in ONNX Runtime, TorchScript (legacy).

Every export takes `input_ids` (batch, seq) int64 and returns `logits` (batch, seq, vocab) float32 — the
guide's interface — with *dynamic* batch and sequence axes, so one artefact serves any request shape.

The MoE trap: transformers runs DeepSeek-V3's routed experts through `grouped_mm` by default. `torch.export`
captures it (on CPU as the custom op `transformers::grouped_mm_fallback`), but the ONNX exporter has no ONNX
function for that op and fails. The `batched_mm` implementation is plain aten ops (gather each selected expert's
weights, one `bmm`), so `onnx_export` switches the model to it for the export and switches back afterwards.

    program = torch_export(model, example_ids)
    result = onnx_export(model, "model.onnx", example_ids)   # or onnx_from_program(program, "model.onnx")
    parity(model, "model.onnx", [(1, 5), (3, 24)])        # max |logit difference| per ORT optimisation level
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from transformers.utils import logging as hf_logging

from cookbook.checks import positive_int

__all__ = ["EXPERTS_FOR_ONNX", "ORT_LEVELS", "ExportResult", "LogitsOnly", "OnnxRunner", "check_input_ids",
           "custom_ops", "dynamic_shapes", "experts_implementation", "export_limits", "onnx_export",
           "onnx_from_program", "ort_session", "parity", "torch_export", "torchscript_trace"]

EXPERTS_FOR_ONNX = "batched_mm"  # the experts implementation the ONNX exporter can translate (plain aten ops)
# ONNX Runtime's graph optimisation levels, from none to all (constant folding, node fusions, layout changes).
ORT_LEVELS = ("disable", "basic", "extended", "all")
_ATEN = ("aten", "prims")  # op namespaces every exporter knows
# ONNX metadata keys holding the export's declared limits: ONNX Runtime checks none of them by itself (a batch of 65
# runs through a graph exported for 64, and token id -1 silently reads the last embedding row)
_LIMIT_KEYS = {"max_batch": "cookbook.max_batch", "max_seq": "cookbook.max_seq"}


class LogitsOnly(nn.Module):
    """`input_ids` → `logits` of a Hugging Face causal LM, without a KV cache: the serving interface to export.

    Shown in notebooks/12 §1.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def _is_moe(model: nn.Module) -> bool:
    return callable(getattr(model, "_can_set_experts_implementation", None)) and \
        model._can_set_experts_implementation()


@contextlib.contextmanager
def experts_implementation(model: nn.Module, name: str):
    """Run the block with `model`'s MoE experts on implementation `name` (transformers' `set_experts_implementation`:
    grouped_mm, batched_mm, ...), restoring the previous one afterwards. A no-op for models without routed experts.

    Shown in notebooks/12 §2.
    """
    if not _is_moe(model):
        yield model
        return
    before = model.get_experts_implementation()
    model.set_experts_implementation(name)  # raises, listing the valid names, for an unknown one
    try:
        yield model
    finally:
        model.set_experts_implementation(before)


def _check_example(example_ids: torch.Tensor) -> None:
    if not isinstance(example_ids, torch.Tensor) or example_ids.dim() != 2 or example_ids.dtype != torch.long:
        got = f"{example_ids.dtype} tensor of shape {tuple(example_ids.shape)}" if isinstance(
            example_ids, torch.Tensor) else type(example_ids).__name__
        raise ValueError(f"example_ids must be an int64 tensor of shape (batch, seq), got {got}")
    if example_ids.shape[0] < 2 or example_ids.shape[1] < 2:
        # torch.export specialises a size-1 axis to the constant 1, which would make that axis static
        raise ValueError(f"example_ids needs batch >= 2 and seq >= 2 so both axes stay dynamic, got shape "
                         f"{tuple(example_ids.shape)}")


def dynamic_shapes(max_batch: int = 64, max_seq: int = 2048) -> dict:
    """`torch.export` dynamic shapes for `input_ids`: batch in [1, max_batch], sequence in [1, max_seq].

    Shown in notebooks/12 §1.
    """
    positive_int("max_batch", max_batch)
    positive_int("max_seq", max_seq)
    return {"input_ids": {0: torch.export.Dim("batch", min=1, max=max_batch),
                          1: torch.export.Dim("seq", min=1, max=max_seq)}}


def torch_export(model: nn.Module, example_ids: torch.Tensor, *, max_batch: int = 64,
                 max_seq: int = 2048) -> torch.export.ExportedProgram:
    """`torch.export` of `model`'s `input_ids` → `logits` with dynamic batch and sequence axes (eval mode, no grad).

    `max_seq` should not exceed the model's `max_position_embeddings`. Shown in notebooks/12 §1.
    """
    _check_example(example_ids)
    with torch.no_grad():
        return torch.export.export(LogitsOnly(model).eval(), (example_ids,),
                                   dynamic_shapes=dynamic_shapes(max_batch, max_seq))


def custom_ops(program: torch.export.ExportedProgram) -> list[str]:
    """The ops of an exported program outside aten/prims (e.g. `transformers::grouped_mm_fallback`), sorted.

    The ONNX exporter translates aten ops; a custom op needs an ONNX function registered for it, which is why
    the default MoE path does not export. Shown in notebooks/12 §2.
    """
    names = set()
    for node in program.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            namespace = node.target.namespace
            if namespace not in _ATEN:
                names.add(f"{namespace}::{node.target._opname}")
    return sorted(names)


def export_limits(program: torch.export.ExportedProgram) -> dict[str, int]:
    """{"max_batch", "max_seq"}: the upper bounds the program declares for its dynamic `input_ids` axes."""
    name = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
    limits = {}
    for key, size in zip(("max_batch", "max_seq"), node.meta["val"].shape, strict=True):
        if isinstance(size, torch.SymInt):
            limits[key] = int(program.range_constraints[size.node.expr].upper)
        else:  # a static axis: its only size is its limit
            limits[key] = int(size)
    return limits


def check_input_ids(input_ids, *, vocab_size: int, max_batch: int, max_seq: int) -> np.ndarray:
    """`input_ids` as an int64 (batch, seq) array if it is within the limits, else a ValueError naming the bad
    value and the valid range: ids in [0, vocab_size), 1 <= batch <= max_batch, 1 <= seq <= max_seq.

    An exported graph checks none of this: ONNX Runtime runs id -1 (it gathers the last embedding row), a batch or
    a length past what the export declared, and fails on an empty sequence with an opaque Reshape error.
    Shown in notebooks/12 §3.
    """
    ids = input_ids.detach().cpu().numpy() if isinstance(input_ids, torch.Tensor) else np.asarray(input_ids)
    if ids.dtype.kind not in "iu" and not (ids.size == 0 and ids.dtype.kind == "f"):
        raise ValueError(f"input_ids must hold integer token ids, got dtype {ids.dtype}")
    if ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (batch, seq), got {ids.ndim} dimension(s): {ids.shape}")
    batch, seq = ids.shape
    if batch == 0:
        raise ValueError("input_ids holds no sequence (batch 0); send at least one")
    if seq == 0:
        raise ValueError("input_ids holds empty sequences (seq 0); every sequence needs at least one token")
    if batch > max_batch:
        raise ValueError(f"batch {batch} exceeds the export's limit of {max_batch}; split it into smaller batches")
    if seq > max_seq:
        raise ValueError(f"sequence length {seq} exceeds the export's limit of {max_seq} tokens")
    bad = np.argwhere((ids < 0) | (ids >= vocab_size))
    if len(bad):
        row, col = (int(i) for i in bad[0])
        raise ValueError(f"token id {int(ids[row, col])} at [{row}, {col}] is outside the vocabulary: valid ids are "
                         f"0..{vocab_size - 1} ({len(bad)} bad id(s) in all)")
    return ids.astype(np.int64, copy=False)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `onnx_export` wrote: the file, its size, the experts implementation exported and the time it took."""

    path: Path
    megabytes: float
    experts: str  # the MoE experts implementation inside the graph ("" for a dense model)
    seconds: float
    inputs: dict  # {name: [dims]}: symbolic names for the dynamic axes
    outputs: dict


def _io(path: Path) -> tuple[dict, dict]:
    import onnx  # optional (serve extra); only reading the saved graph's signature needs it

    graph = onnx.load(str(path), load_external_data=False).graph

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return {v.name: dims(v) for v in graph.input}, {v.name: dims(v) for v in graph.output}


def onnx_from_program(program: torch.export.ExportedProgram, path: str | Path, *,
                      optimize: bool = True) -> ExportResult:
    """Convert an exported `input_ids` → `logits` program to ONNX (`torch.onnx.export(dynamo=True)`) and save it.

    If the graph holds an op ONNX cannot translate, a ValueError names it before the slow conversion starts.
    `optimize` runs onnxscript's graph optimiser on the result. Shown in notebooks/12 §2.
    """
    path = Path(path)
    start = time.perf_counter()
    blockers = custom_ops(program)
    if blockers:
        raise ValueError(f"the exported graph holds ops with no ONNX translation: {', '.join(blockers)}; for MoE "
                         f"experts export under experts_implementation(model, 'batched_mm') (onnx_export does)")
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    # the registry's "torchvision is not installed. Skipping torchvision::nms" lines concern ops a LM never uses
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # pytree's LeafSpec deprecation notice comes from torch's own exporter internals, not from our call
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            # string axis names: the exporter renames the graph's symbols (s70, s72, ...) to batch and seq
            exported = torch.onnx.export(program, dynamo=True, output_names=["logits"], optimize=optimize,
                                         dynamic_shapes={"input_ids": {0: "batch", 1: "seq"}}, verbose=False)
    finally:
        registration.setLevel(level)
    # the declared limits travel inside the file, so whoever serves it can check requests against them (OnnxRunner)
    exported.model.metadata_props.update({_LIMIT_KEYS[k]: str(v) for k, v in export_limits(program).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    exported.save(str(path))
    inputs, outputs = _io(path)
    return ExportResult(path=path, megabytes=path.stat().st_size / 2**20, experts="",
                        seconds=time.perf_counter() - start, inputs=inputs, outputs=outputs)


def onnx_export(model: nn.Module, path: str | Path, example_ids: torch.Tensor, *, max_batch: int = 64,
                max_seq: int = 2048, optimize: bool = True) -> ExportResult:
    """Export `model` to ONNX with dynamic batch and sequence axes: `torch_export`, then `onnx_from_program`.

    A MoE model is switched to `EXPERTS_FOR_ONNX` for the capture (see the module docstring) and back.
    Shown in notebooks/12 §2.
    """
    start = time.perf_counter()
    with experts_implementation(model, EXPERTS_FOR_ONNX):
        experts = model.get_experts_implementation()[""] if _is_moe(model) else ""
        program = torch_export(model, example_ids, max_batch=max_batch, max_seq=max_seq)
    result = onnx_from_program(program, path, optimize=optimize)
    return dataclasses.replace(result, experts=experts, seconds=time.perf_counter() - start)


def ort_session(path: str | Path, level: str = "all", *, threads: int = 1, optimized_path: str | Path | None = None):
    """An ONNX Runtime CPU session for `path` at graph optimisation `level` (one of `ORT_LEVELS`).

    `optimized_path` saves the graph as ONNX Runtime rewrote it (to count its nodes). Shown in notebooks/12 §3.
    """
    import onnxruntime as ort  # optional (serve extra)

    levels = dict(zip(ORT_LEVELS, (ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_ALL), strict=True))
    if level not in levels:
        raise ValueError(f"unknown ORT optimisation level {level!r}; valid levels: {', '.join(ORT_LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[level]
    options.intra_op_num_threads = positive_int("threads", threads)
    options.log_severity_level = 3  # errors only: ORT's info lines about each fusion are not for the reader
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRunner:
    """An exported LM in ONNX Runtime that checks every input first (`check_input_ids`): `runner(input_ids)` →
    logits (batch, seq, vocab) as a NumPy array, or a ValueError that says what is wrong with the input.

    The limits come from the file (`onnx_from_program` stores the export's max batch and length in its metadata)
    and the vocabulary from the logits' static last axis; pass them for an ONNX file exported elsewhere.
    Shown in notebooks/12 §3.
    """

    def __init__(self, path: str | Path, level: str = "all", *, threads: int = 1, max_batch: int | None = None,
                 max_seq: int | None = None, vocab_size: int | None = None,
                 optimized_path: str | Path | None = None):
        self.session = ort_session(path, level, threads=threads, optimized_path=optimized_path)
        declared = self.session.get_modelmeta().custom_metadata_map
        given = {"max_batch": max_batch, "max_seq": max_seq}
        for key, value in given.items():
            value = value if value is not None else declared.get(_LIMIT_KEYS[key])
            if value is None:
                raise ValueError(f"{path} declares no {key} (not exported by onnx_from_program): pass {key}=...")
            setattr(self, key, positive_int(key, int(value)))
        vocab = self.session.get_outputs()[0].shape[-1]
        vocab = vocab_size if vocab_size is not None else vocab
        if not isinstance(vocab, int):
            raise ValueError(f"{path}: the logits' vocabulary axis is dynamic ({vocab!r}): pass vocab_size=...")
        self.vocab_size = positive_int("vocab_size", vocab)

    def __call__(self, input_ids) -> np.ndarray:
        ids = check_input_ids(input_ids, vocab_size=self.vocab_size, max_batch=self.max_batch, max_seq=self.max_seq)
        return self.session.run(["logits"], {"input_ids": ids})[0]


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: first runs allocate
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def parity(model: nn.Module, path: str | Path, shapes, *, levels=ORT_LEVELS, vocab_size: int | None = None,
           repeats: int = 3, seed: int = 0, threads: int = 1) -> pd.DataFrame:
    """ONNX Runtime against PyTorch on random `input_ids` of each (batch, seq) in `shapes`, at each level.

    One row per level: the largest |logit difference| over all shapes, the ONNX nodes after ORT's rewriting,
    and the median milliseconds per forward of the last shape (PyTorch's own time in the `torch` row).
    Shown in notebooks/12 §3.
    """
    import onnx  # optional (serve extra)

    vocab = vocab_size or model.config.vocab_size
    generator = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, vocab, tuple(shape), generator=generator) for shape in shapes]
    wrapped = LogitsOnly(model).eval()
    with torch.no_grad():
        expected = [wrapped(ids).float().numpy() for ids in batches]
        rows = [dict(level="torch", max_abs_diff=0.0, nodes=None,
                     ms=_median_ms(lambda: wrapped(batches[-1]), repeats))]
    for level in levels:
        rewritten = Path(path).with_suffix(f".{level}.onnx")
        runner = OnnxRunner(path, level, threads=threads, optimized_path=rewritten,
                            max_batch=max(b for b, _ in shapes), max_seq=max(s for _, s in shapes))
        got = [runner(ids) for ids in batches]
        nodes = len(onnx.load(str(rewritten), load_external_data=False).graph.node)
        rewritten.unlink()
        diff = max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))
        rows.append(dict(level=level, max_abs_diff=diff, nodes=nodes,
                         ms=_median_ms(lambda r=runner: r(batches[-1]), repeats)))
    return pd.DataFrame(rows).set_index("level")


def torchscript_trace(model: nn.Module, example_ids: torch.Tensor) -> tuple[torch.jit.ScriptModule, list[str]]:
    """Legacy: `torch.jit.trace` of `input_ids` → `logits`, and the warnings it raised (one line each, deduplicated).

    TorchScript is in maintenance mode upstream (torch says: switch to `torch.compile` or `torch.export`);
    tracing records one run's Python control flow, which the TracerWarnings point at. Shown in notebooks/12 §1.
    """
    _check_example(example_ids)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers' one-time config notices are not about tracing
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            traced = torch.jit.trace(LogitsOnly(model).eval(), (example_ids,), check_trace=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    seen = dict.fromkeys(f"{w.category.__name__}: {str(w.message).splitlines()[0][:120]}" for w in caught)
    return traced, list(seen)
