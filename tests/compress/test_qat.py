"""QAT: prepare swaps in fake quantization that trains, convert stores exactly what training simulated."""

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
