"""QAT: prepare swaps in fake quantization that trains, convert stores exactly what training simulated."""

import re

import pytest
import torch

from cookbook import compress, train
from tests.compress.tiny import loader, needs_torchao, tiny

pytestmark = needs_torchao


def _logits(model, batch):
    with torch.no_grad():
        return model.eval()(input_ids=batch["input_ids"]).logits


@pytest.mark.parametrize("method", compress.QAT_METHODS)
def test_fake_quantized_forward_equals_the_converted_model(method, batches):
    model = compress.prepare_qat(tiny(), method)
    assert type(model.lm_head).__name__ == "FakeQuantizedLinear"
    model.train()
    model(input_ids=batches[0]["input_ids"]).logits.sum().backward()
    assert model.lm_head.weight.grad.abs().sum() > 0  # straight-through gradients reach the weights
    simulated = _logits(model, batches[1])
    converted = compress.convert_qat(model, method, experts=False)
    assert type(converted.lm_head.weight).__name__ == "IntxUnpackedToInt8Tensor"
    bits = {"int8-weight-only": 8, "int4-unpacked": 4}[method]
    codes = converted.lm_head.weight.qdata
    assert -(2 ** (bits - 1)) <= int(codes.min()) and int(codes.max()) <= 2 ** (bits - 1) - 1
    # what training saw is what is stored: same rounding grid
    assert torch.allclose(_logits(converted, batches[1]), simulated, atol=1e-4)


def test_qat_round_trip_with_the_trainer(batches):
    config = train.TrainConfig(steps=3, lr=1e-3, log_interval=1, progress=False, device="cpu")
    model = tiny()
    quantized, history = compress.qat(model, loader(), config, "int4-unpacked", val_loader=batches)
    assert list(history["step"]) == [1, 2, 3] and history["loss"].notna().all()
    assert "val_loss" in history  # the Trainer evaluated the fake-quantized model at the end
    assert type(quantized.lm_head.weight).__name__ == "IntxUnpackedToInt8Tensor"
    assert isinstance(quantized.model.layers[1].mlp.experts, compress.Int8Experts)  # experts int8 at convert
    assert type(model.lm_head.weight) is torch.nn.Parameter  # a copy was trained
    assert not quantized.training and torch.isfinite(_logits(quantized, batches[0])).all()


def test_qat_bad_input():
    with pytest.raises(ValueError, match="rejects its base config.*QAT methods: int8-weight-only, int4-unpacked"):
        compress.prepare_qat(tiny(), "int8-dynamic")
    with pytest.raises(ValueError, match="tinygemm's packing; 'int4-unpacked' trains int4 weights on any device"):
        compress.prepare_qat(tiny(), "int4-weight-only")
    with pytest.raises(ValueError, match="call prepare_qat"):
        compress.convert_qat(tiny(), "int4-unpacked")
    with pytest.raises(ValueError, match="prepared for int8 weights, not 'int4-unpacked'"):
        compress.convert_qat(compress.prepare_qat(tiny(), "int8-weight-only"), "int4-unpacked")


# --- issue 30: the cases mutation testing asks for (each layer's grid, torchao's own PTQ as the reference) -------

def _layers():
    """A width divisible by the int4 group (64 = 2 groups of 32), one that is not (40), and a norm."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.Linear(40, 8), torch.nn.LayerNorm(8))


def _grid(layer):
    config = layer.weight_fake_quantizer.config
    return str(config.dtype), str(config.granularity)


def test_int4_groups_of_32_where_the_width_allows_one_scale_per_row_elsewhere():
    model = compress.prepare_qat(_layers())  # the default method: int4-unpacked
    assert _grid(model[0]) == ("torch.int4", "PerGroup(group_size=32)")
    assert _grid(model[1]) == ("torch.int4", "PerAxis(axis=0)")
    assert type(model[2]) is torch.nn.LayerNorm  # only nn.Linear layers are fake-quantized
    int8 = compress.prepare_qat(_layers(), "int8-weight-only")
    assert _grid(int8[0]) == _grid(int8[1]) == ("torch.int8", "PerAxis(axis=0)")


@pytest.mark.parametrize("method", compress.QAT_METHODS)
def test_convert_stores_what_torchaos_ptq_stores_for_the_same_weights(method):
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    model = compress.prepare_qat(_layers(), method)
    with torch.no_grad():  # "training" moved the weights: convert must quantize these, not the initial ones
        for layer in model[:2]:
            layer.weight.mul_(3.0)
    reference = _layers()
    with torch.no_grad():
        for ours, theirs in zip(model[:2], reference[:2], strict=True):
            theirs.weight.copy_(ours.weight)
    dtype = torch.int8 if method == "int8-weight-only" else torch.int4
    grouped = PerAxis(0) if dtype == torch.int8 else PerGroup(32)
    quantize_(reference[0], IntxWeightOnlyConfig(weight_dtype=dtype, granularity=grouped))
    quantize_(reference[1], IntxWeightOnlyConfig(weight_dtype=dtype, granularity=PerAxis(0)))
    converted = compress.convert_qat(model, method)  # experts=True on a model without experts: nothing to do
    for ours, theirs, scales in zip(converted[:2], reference[:2], [1 if dtype == torch.int8 else 2, 1], strict=True):
        assert type(ours) is torch.nn.Linear and ours.weight.target_dtype == dtype
        assert torch.equal(ours.weight.qdata, theirs.weight.qdata) and ours.weight.scale.shape == (8, scales)
        assert torch.equal(ours.weight.scale, theirs.weight.scale)
    assert not converted.training and type(converted[2]) is torch.nn.LayerNorm


def test_convert_makes_the_experts_int8_only_when_asked(batches):
    kept = compress.convert_qat(compress.prepare_qat(tiny()), experts=False)
    assert compress.is_fused_experts(kept.model.layers[1].mlp.experts)
    assert type(kept.model.layers[1].mlp.experts.gate_up_proj) is torch.nn.Parameter
    int8 = compress.convert_qat(compress.prepare_qat(tiny()))
    assert isinstance(int8.model.layers[1].mlp.experts, compress.Int8Experts)


def test_qat_inplace_trains_and_converts_the_model_given():
    config = train.TrainConfig(steps=1, lr=1e-3, log_interval=1, progress=False, device="cpu")
    model = tiny()
    before = model.lm_head.weight.detach().clone()
    quantized, history = compress.qat(model, loader(), config, "int8-weight-only", experts=False, inplace=True)
    assert quantized is model and list(history["step"]) == [1]
    assert type(model.lm_head.weight).__name__ == "IntxUnpackedToInt8Tensor" and model.lm_head.weight.target_dtype == (
        torch.int8)
    assert not torch.equal(model.lm_head.weight.dequantize(), before)  # trained, then stored
    assert compress.is_fused_experts(model.model.layers[1].mlp.experts)  # experts=False: left in full precision
    assert not any(m._forward_hooks for m in model.modules())  # the Trainer's load-balancing hooks are removed
    default, _ = compress.qat(tiny(), loader(), config, experts=False)
    assert default.lm_head.weight.target_dtype == torch.int4  # the default method: int4-unpacked


def test_qat_messages_in_full():
    with pytest.raises(ValueError, match="^" + re.escape(
            "no QAT path for 'int8-dynamic' (torchao 0.18's QATConfig rejects its base config); QAT methods: "
            "int8-weight-only, int4-unpacked") + "$"):
        compress.prepare_qat(tiny(), "int8-dynamic")
    with pytest.raises(ValueError, match="^" + re.escape(
            "no QAT path for 'int4-weight-only' (torchao 0.18's QATConfig does not fake-quantize tinygemm's packing; "
            "'int4-unpacked' trains int4 weights on any device); QAT methods: int8-weight-only, int4-unpacked") + "$"):
        compress.prepare_qat(tiny(), "int4-weight-only")
    with pytest.raises(ValueError, match="^no QAT path for 'fp8'; QAT methods: int8-weight-only, int4-unpacked$"):
        compress.convert_qat(tiny(), "fp8")
    with pytest.raises(ValueError, match="^the model has no fake-quantized layers: call prepare_qat\\(model, method\\) "
                                         "before training$"):
        compress.convert_qat(tiny())
    with pytest.raises(ValueError, match="^" + re.escape(
            "the model was prepared for int4 weights, not 'int8-weight-only': convert with the method given to "
            "prepare_qat") + "$"):
        compress.convert_qat(compress.prepare_qat(tiny()), "int8-weight-only")


def test_convert_names_every_grid_a_mixed_model_was_prepared_for():
    model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(64, 8)), torch.nn.Sequential(torch.nn.Linear(64, 8)))
    compress.prepare_qat(model[0], "int8-weight-only")
    compress.prepare_qat(model[1], "int4-unpacked")
    with pytest.raises(ValueError, match="^the model was prepared for int4, int8 weights, not 'int4-unpacked': "):
        compress.convert_qat(model, "int4-unpacked")
