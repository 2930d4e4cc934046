import onnx
import pytest
from onnx import TensorProto, helper

from cookbook import deploy

pytest.importorskip("tritonclient.grpc", reason="Triton config validation needs tritonclient[grpc]")

# A hand-written config in the style of the guide's example: the vocabulary dimension is pinned to another model's
GUIDE_STYLE = """
name: "deepseek"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ -1, 32000 ] } ]
"""


def test_generated_config_parses_into_tritons_protobuf_with_our_vocabulary(onnx_files, moe):
    path = onnx_files["moe"].path
    config = deploy.parse_triton_config(deploy.triton_config(path, name="tiny-moe", max_batch_size=4))
    assert (config.name, config.platform, config.max_batch_size) == ("tiny-moe", "onnxruntime_onnx", 4)
    # Triton owns the batch axis when max_batch_size > 0: dims leave it out
    assert [(t.name, list(t.dims)) for t in config.input] == [("input_ids", [-1])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("logits", [-1, moe.config.vocab_size])]
    assert config.input[0].data_type == config.input[0].DESCRIPTOR.fields_by_name[
        "data_type"].enum_type.values_by_name["TYPE_INT64"].number
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    deploy.check_triton_config(config, path)  # consistent with the graph it was read from


def test_a_fixed_foreign_vocabulary_is_caught(onnx_files, moe):
    config = deploy.parse_triton_config(GUIDE_STYLE)
    with pytest.raises(ValueError, match=rf"output 'logits': dims \[-1, 32000\], the model has \[-1, "
                                         rf"{moe.config.vocab_size}\]"):
        deploy.check_triton_config(config, onnx_files["moe"].path)


def test_malformed_config_names_the_line():
    with pytest.raises(ValueError, match="not a valid Triton ModelConfig: 2:"):
        deploy.parse_triton_config('name: "x"\nmax_batch_size: "eight"\n')


def test_repository_layout(onnx_files, tmp_path):
    path = deploy.triton_repository(tmp_path, onnx_files["dense"].path, name="dense", max_batch_size=2)
    assert path == tmp_path / "dense" / "config.pbtxt"
    assert (tmp_path / "dense" / "1" / "model.onnx").read_bytes() == onnx_files["dense"].path.read_bytes()


def test_static_batch_axis_is_refused(tmp_path):
    x = helper.make_tensor_value_info("input_ids", TensorProto.INT64, [4, 16])
    y = helper.make_tensor_value_info("logits", TensorProto.INT64, [4, 16])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])], "g", [x], [y]))
    onnx.save(model, tmp_path / "static.onnx")
    with pytest.raises(ValueError, match=r"input_ids has dims \[4, 16\]: its first \(batch\) axis must be dynamic"):
        deploy.triton_config(tmp_path / "static.onnx", name="static")
    with pytest.raises(ValueError, match="max_batch_size must be a positive int, got 0"):
        deploy.triton_config(tmp_path / "static.onnx", name="static", max_batch_size=0)
