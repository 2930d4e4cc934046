"""A Triton Inference Server `config.pbtxt` for the exported ONNX model, read off the model itself, and validated.

A hand-written config pins the vocabulary dimension of `logits` (the guide's example has a fixed one); when it
does not match the model, Triton refuses to load it. Here every name, type and dimension comes from the ONNX
graph, and `parse_triton_config` parses the text into Triton's own `ModelConfig` protobuf (from the
`tritonclient` package) so a typo is caught before a server ever sees it.

    text = triton_config("model.onnx", name="deepseek-smoke", max_batch_size=8)
    check_triton_config(parse_triton_config(text), "model.onnx")
"""

from __future__ import annotations

from pathlib import Path

from cookbook.checks import positive_int

__all__ = ["check_triton_config", "parse_triton_config", "triton_config", "triton_repository"]

# ONNX TensorProto element types -> Triton data types (the ones a language model's inputs and outputs use)
_TYPES = {1: "TYPE_FP32", 6: "TYPE_INT32", 7: "TYPE_INT64", 10: "TYPE_FP16", 16: "TYPE_BF16", 9: "TYPE_BOOL"}


def _signature(onnx_path: str | Path) -> tuple[list, list]:
    """[(name, triton type, dims)] of the graph's inputs and outputs; a symbolic dimension is -1."""
    import onnx  # optional (serve extra)

    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def rows(values):
        out = []
        for value in values:
            tensor = value.type.tensor_type
            if tensor.elem_type not in _TYPES:
                raise ValueError(f"{value.name}: ONNX element type {tensor.elem_type} has no Triton type here; "
                                 f"known: {sorted(_TYPES)}")
            out.append((value.name, _TYPES[tensor.elem_type],
                        [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]))
        return out

    return rows(graph.input), rows(graph.output)


def triton_config(onnx_path: str | Path, *, name: str, max_batch_size: int = 8, instances: int = 1,
                  kind: str = "KIND_CPU", max_queue_delay_us: int = 2000) -> str:
    """The `config.pbtxt` text for serving `onnx_path` with Triton's ONNX Runtime backend.

    With `max_batch_size` > 0 Triton owns the batch axis, so each tensor's `dims` leave out the first (batch)
    dimension: `input_ids` is `[-1]` (any length) and `logits` is `[-1, vocab]`, vocab read from the graph.
    Dynamic batching merges requests that arrive within `max_queue_delay_us`. Shown in notebooks/12 §4.
    """
    positive_int("max_batch_size", max_batch_size)
    positive_int("instances", instances)
    if kind not in ("KIND_CPU", "KIND_GPU"):
        raise ValueError(f"kind must be KIND_CPU or KIND_GPU, got {kind!r}")
    inputs, outputs = _signature(onnx_path)
    for tensor, _, dims in inputs + outputs:
        if not dims or dims[0] != -1:
            raise ValueError(f"{tensor} has dims {dims}: its first (batch) axis must be dynamic for "
                             f"max_batch_size > 0; export with a dynamic batch axis")

    def block(kind_, tensors):
        items = ",\n".join(f'  {{\n    name: "{tensor}"\n    data_type: {type_}\n    dims: [ {", ".join(map(str, dims[1:]))} ]\n  }}'
                           for tensor, type_, dims in tensors)
        return f"{kind_} [\n{items}\n]"

    return "\n".join([
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        block("input", inputs),
        block("output", outputs),
        f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]",
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}",
    ]) + "\n"


def parse_triton_config(text: str):
    """`text` parsed into Triton's `ModelConfig` protobuf (tritonclient's `model_config_pb2`); a ValueError names
    the line of a malformed config. Needs the `tritonclient` package. Shown in notebooks/12 §4."""
    try:  # optional: only validating a Triton config needs Triton's protobuf definitions
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise ImportError('validating a Triton config needs tritonclient: pip install "tritonclient[grpc]"') from None
    from google.protobuf import text_format

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise ValueError(f"not a valid Triton ModelConfig: {err}") from None
    return config


def check_triton_config(config, onnx_path: str | Path) -> None:
    """Raise a ValueError naming each input/output of a parsed `ModelConfig` whose type or dims disagree with the
    ONNX model (e.g. a fixed vocabulary dimension from another model). Shown in notebooks/12 §4."""
    inputs, outputs = _signature(onnx_path)
    batched = config.max_batch_size > 0
    problems = []
    for section, tensors in (("input", inputs), ("output", outputs)):
        declared = {t.name: t for t in getattr(config, section)}
        for tensor, type_, dims in tensors:
            want = dims[1:] if batched else dims
            if tensor not in declared:
                problems.append(f"{section} {tensor!r} missing (declared: {sorted(declared) or 'none'})")
                continue
            got = declared[tensor]
            type_name = got.DESCRIPTOR.fields_by_name["data_type"].enum_type.values_by_number[got.data_type].name
            if type_name != type_:
                problems.append(f"{section} {tensor!r}: data_type {type_name}, the model has {type_}")
            if list(got.dims) != want:
                problems.append(f"{section} {tensor!r}: dims {list(got.dims)}, the model has {want}")
    if problems:
        raise ValueError("Triton config does not match the ONNX model: " + "; ".join(problems))


def triton_repository(root: str | Path, onnx_path: str | Path, *, name: str, **options) -> Path:
    """A Triton model repository `root/name/{config.pbtxt, 1/model.onnx}` (the layout `tritonserver
    --model-repository=root` loads), the config validated first; returns the config's path."""
    text = triton_config(onnx_path, name=name, **options)
    check_triton_config(parse_triton_config(text), onnx_path)
    folder = Path(root) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.onnx").write_bytes(Path(onnx_path).read_bytes())
    (folder / "config.pbtxt").write_text(text)
    return folder / "config.pbtxt"
