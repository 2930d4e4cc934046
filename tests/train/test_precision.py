"""Mixed-precision helpers: formats, autocast, TF32 switch, loss scaler, activation-memory measure."""

import pytest
import torch

from cookbook.train import precision as amp


def test_dtype_table_exact_values():
    table = amp.dtype_table()
    assert list(table.index) == ["fp32", "tf32", "bf16", "fp16"]
    assert table.loc["fp16", "max"] == 65504.0
    assert table.loc["fp16", "epsilon"] == 2.0**-10 and table.loc["fp16", "smallest_normal"] == 2.0**-14
    assert table.loc["bf16", "epsilon"] == 2.0**-7 and table.loc["bf16", "smallest_normal"] == 2.0**-126
    assert table.loc["bf16", "max"] == pytest.approx(3.3895e38, rel=1e-4)
    assert table.loc["fp32", "epsilon"] == 2.0**-23
    # tf32: fp32's range with fp16's mantissa
    assert table.loc["tf32", "max"] == table.loc["fp32", "max"]
    assert table.loc["tf32", "epsilon"] == table.loc["fp16", "epsilon"]
    assert table[["exponent_bits", "mantissa_bits"]].to_dict("index") == {
        "fp32": {"exponent_bits": 8, "mantissa_bits": 23},
        "tf32": {"exponent_bits": 8, "mantissa_bits": 10},
        "bf16": {"exponent_bits": 8, "mantissa_bits": 7},
        "fp16": {"exponent_bits": 5, "mantissa_bits": 10},
    }
    assert (table["bits"] == 1 + table["exponent_bits"] + table["mantissa_bits"]).all()


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown precision 'fp8'; valid: fp32, tf32, bf16, fp16"):
        amp.autocast("fp8", "cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        amp.grad_scaler("int8", "cpu")


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("tf32", torch.float32),
                                               ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_runs_matmuls_in_the_right_dtype(precision, dtype):
    layer = torch.nn.Linear(8, 4)
    with amp.autocast(precision, "cpu"):
        out = layer(torch.randn(2, 8))
    assert out.dtype == dtype
    assert layer.weight.dtype == torch.float32  # weights stay fp32: autocast casts copies per op


def test_grad_scaler_only_for_fp16():
    assert amp.grad_scaler("bf16", "cpu") is None and amp.grad_scaler("fp32", "cpu") is None
    scaler = amp.grad_scaler("fp16", "cpu")
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.get_scale() == 2.0**16
    assert scaler.scale(torch.tensor(1.5)).item() == 1.5 * 2**16
    assert amp.grad_scaler("fp16", "cpu", init_scale=8.0).get_scale() == 8.0


def test_loss_scaling_rescues_gradients_that_fp16_flushes_to_zero():
    tiny_grad = torch.tensor(1e-8)
    assert tiny_grad.half().item() == 0.0  # below fp16's smallest subnormal (~6e-8): lost
    assert (tiny_grad * 2**16).half().float().item() / 2**16 == pytest.approx(1e-8, rel=1e-3)


def test_supported_explains_cpu_limits():
    assert amp.supported("fp32", "cpu") == (True, "")
    ok, why = amp.supported("tf32", "cpu")
    assert not ok and "plain fp32" in why
    assert amp.supported("bf16", "cpu")[0]


def test_tf32_switch_restores_previous_settings():
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    with amp.tf32(True):
        assert matmul.fp32_precision == "tf32"
        with amp.tf32(False):
            assert matmul.fp32_precision == "ieee"
        assert matmul.fp32_precision == "tf32"
    assert matmul.fp32_precision == before


def test_supported_reasons_in_full_on_cpu():
    assert amp.supported("tf32", "cpu") == (False, "TF32 is a CUDA tensor-core mode; on cpu it is plain fp32")
    assert amp.supported("fp16", "cpu") == (True, "") and amp.supported("bf16", torch.device("cpu")) == (True, "")
    assert amp.supported("fp16", "meta") == (False, "no autocast for meta")  # a device without autocast
    with pytest.raises(ValueError, match="^unknown precision 'int4'; valid: fp32, tf32, bf16, fp16$"):
        amp.supported("int4", "cpu")


def test_autocast_dtype_and_the_fp32_context_is_a_no_op():
    assert [amp.autocast_dtype(p) for p in amp.PRECISIONS] == [None, None, torch.bfloat16, torch.float16]
    assert amp.check("bf16") == "bf16"
    with amp.autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with amp.autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_tf32_switch_covers_convolutions_and_restores_after_an_error():
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    with pytest.raises(RuntimeError, match="inside"):
        with amp.tf32():  # enabled by default
            assert conv.fp32_precision == matmul.fp32_precision == "tf32"
            raise RuntimeError("inside")
    assert (conv.fp32_precision, matmul.fp32_precision) == before


def test_grad_scaler_follows_the_device():
    assert amp.grad_scaler("fp16", torch.device("cpu"))._device == "cpu"


@pytest.mark.parametrize("capability, bf16, expected", [
    ((7, 5), True, {"fp32": (True, ""), "fp16": (True, ""), "bf16": (True, ""),
                    "tf32": (False, "TF32 tensor cores need compute capability >= 8.0 (Ampere); this runs as fp32")}),
    ((8, 0), False, {"fp32": (True, ""), "fp16": (True, ""), "tf32": (True, ""),
                     "bf16": (False, "this GPU has no bf16 support")}),
    ((9, 0), True, {"fp32": (True, ""), "fp16": (True, ""), "tf32": (True, ""), "bf16": (True, "")}),
])
def test_supported_on_cuda_devices_of_each_generation(monkeypatch, capability, bf16, expected):
    """The CUDA branch on a CPU machine: the device's capability and bf16 support are stubbed (a T4 is 7.5,
    an A100 8.0, an H100 9.0); the stub also checks which device was asked about."""
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert {p: amp.supported(p, "cuda:1") for p in expected} == expected
    assert set(asked) == {torch.device("cuda:1")}


def test_tf32_row_has_fp32s_smallest_normal():
    table = amp.dtype_table()
    assert table.loc["tf32", "smallest_normal"] == torch.finfo(torch.float32).tiny == 2.0**-126
    assert amp.supported("bf16", "meta") == (False, "no autocast for meta")
