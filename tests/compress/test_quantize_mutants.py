"""cookbook.compress.quantize: the device checks and messages that mutation testing found unchecked (issue 30).

The CUDA branches run on a CPU machine with the device's capability stubbed, as tests/train/test_precision does."""

import importlib
import re
import sys
import warnings

import pytest
import torch

from cookbook import compress
from cookbook.compress.quantize import _unsupported


@pytest.mark.parametrize("capability, int4", [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_int4_needs_compute_capability_8_0(monkeypatch, capability, int4):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: asked.append(device) or capability)
    methods = compress.methods_for("cuda:1")
    assert ("int4-weight-only" in methods) is int4 and "legacy-dynamic" not in methods
    assert asked == [torch.device("cuda:1")]
    assert "int4-weight-only" not in compress.methods_for("cpu")  # a CPU never has tinygemm, whatever CUDA says


def test_unsupported_messages_in_full():
    assert _unsupported("legacy-dynamic", torch.device("cuda", 0)) == (
        "legacy-dynamic runs torch.ao's quantized CPU kernels (fbgemm/x86) only; the model is on cuda:0: "
        "move it to the CPU, or use int8-weight-only")
    assert _unsupported("int4-weight-only", torch.device("cpu")) == (
        "int4-weight-only packs int4 for torchao's tinygemm kernel, which needs a CUDA GPU of compute capability "
        "8.0+; the model is on cpu: use 'int4-unpacked' (int4 values stored one per byte: runs anywhere, "
        "no smaller than int8), or move the model to such a GPU")


def test_quantize_refuses_int4_on_a_cpu_with_the_message():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="^" + re.escape(_unsupported("int4-weight-only", torch.device("cpu"))) + "$"):
        compress.quantize(model, "int4-weight-only")


# --- the survivors of the 2026-12-06 run (issue 30) -------------------------------------------------------------

class _Recorder:
    """Stands in for the torchao module: records each quantize_(model, config, filter_fn) call."""

    def __init__(self):
        self.calls = []
        self.quantization = self

    def quantize_(self, model, config, filter_fn=None):
        self.calls.append((model, config, filter_fn))


def test_int4_asks_torchao_for_tinygemm_tiles_of_32_on_divisible_widths():
    # the tinygemm kernel itself needs CUDA; what is checked here is the request (torchao's own config fields)
    from torchao.quantization import Int4WeightOnlyConfig

    from cookbook.compress.quantize import _int4

    ao, model = _Recorder(), torch.nn.Sequential(torch.nn.Linear(64, 8))
    _int4(model, ao)
    [(target, config, keep)] = ao.calls
    assert target is model and isinstance(config, Int4WeightOnlyConfig)
    assert config.group_size == 32 and str(config.int4_packing_format).endswith("tile_packed_to_4d")
    # only nn.Linear layers whose input width is a multiple of 32 (64 = 2 groups; 40, 8 are not; a norm is no Linear)
    assert [keep(m, "x") for m in (torch.nn.Linear(64, 3), torch.nn.Linear(40, 3), torch.nn.Linear(8, 3),
                                   torch.nn.LayerNorm(64))] == [True, False, False, False]


def test_int4_weight_only_casts_the_copy_to_bf16_and_hands_it_with_torchao_to_int4(monkeypatch):
    module = importlib.import_module("cookbook.compress.quantize")  # the module (compress.quantize is the function)

    seen = []
    monkeypatch.setattr(module, "methods_for", lambda device: compress.METHODS)  # as on a CUDA GPU of sm 8.0+
    monkeypatch.setattr(module, "_int4", lambda model, ao: seen.append((model, ao)))
    model = torch.nn.Sequential(torch.nn.Linear(64, 8))
    q = compress.quantize(model, "int4-weight-only", experts=False)
    [(given, ao)] = seen
    assert given is q and q is not model and ao is module.require_torchao()
    assert q[0].weight.dtype == torch.bfloat16 and model[0].weight.dtype == torch.float32  # tinygemm's input dtype


def test_int4_unpacked_keeps_int4_codes_in_the_per_row_fallback_too():
    model = torch.nn.Sequential(torch.nn.Linear(8, 40))  # 8 inputs: no group of 32, one scale per row
    torch.nn.init.normal_(model[0].weight, generator=torch.Generator().manual_seed(0))
    codes = compress.quantize(model, "int4-unpacked")[0].weight.qdata
    assert -8 <= int(codes.min()) and int(codes.max()) <= 7  # a signed 4-bit value: [-2^3, 2^3 - 1]
    assert int(codes.min()) == -8 or int(codes.max()) == 7  # symmetric per-row scale: the row's max hits an end


def test_legacy_dynamic_quantizes_only_the_linear_layers_without_warnings():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.lstm = torch.nn.Linear(4, 4), torch.nn.LSTM(4, 4)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # torch warns (deprecation, quantized tensors) on every call; quantize hides it
        q = compress.quantize(Net(), "legacy-dynamic")
    assert [str(w.message)[:60] for w in caught] == []
    # quantize_dynamic's default set would also take the LSTM (torch.ao.nn.quantized.dynamic.LSTM)
    assert type(q.lstm) is torch.nn.LSTM and type(q.linear).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert q.linear.weight().dtype == torch.qint8


def test_legacy_dynamic_needs_no_torchao_and_the_others_say_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if the quant extra were not installed
    q = compress.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)), "legacy-dynamic")
    assert q[0].weight().dtype == torch.qint8
    message = (r"^the torchao methods need torchao: pip install 'cookbook\[quant\]' \(or torchao>=0\.13\); "
               r"'legacy-dynamic' and the sparsity helpers run without it$")
    with pytest.raises(ImportError, match=message):
        compress.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)), "int8-weight-only")


def test_int8_static_without_calibration_names_the_dynamic_alternative_in_full():
    with pytest.raises(ValueError, match=r"^int8-static needs calibration=batches \(a few batches like the ones "
                                         r"served\) to fix the activation scales; int8-dynamic measures them at run "
                                         r"time instead$"):
        compress.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)), "int8-static")


def test_legacy_dynamic_on_a_cuda_model_gets_its_own_message(monkeypatch):
    module = importlib.import_module("cookbook.compress.quantize")  # the module (compress.quantize is the function)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(module, "_device", lambda model: torch.device("cuda", 0))  # a model placed on a GPU
    expected = _unsupported("legacy-dynamic", torch.device("cuda", 0))
    with pytest.raises(ValueError, match="^" + re.escape(expected) + "$"):
        compress.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)), "legacy-dynamic")


class _Masked(torch.nn.Module):
    """One linear layer behind the language-model call; records the attention masks it was given."""

    def __init__(self):
        super().__init__()
        self.proj, self.masks = torch.nn.Linear(4, 2), []

    def forward(self, input_ids, attention_mask=None):
        self.masks.append(attention_mask)
        return self.proj(input_ids)


def test_int8_static_scale_is_the_calibrated_amax_over_127_and_masks_reach_the_model():
    net = _Masked()
    x = 0.1 * torch.randn(3, 4, generator=torch.Generator().manual_seed(0))  # amax < 1: a floor of 1 would show
    mask = torch.tensor([[1], [1], [0]])  # broadcasts over the 4 features like a (batch, seq) mask
    q = compress.quantize(net, "int8-static", calibration=[{"input_ids": x, "attention_mask": mask}], inplace=True)
    assert torch.equal(net.masks[0], mask)  # the calibration batch's mask, as the served model gets it
    scale = q.proj.weight.act_quant_scale
    assert scale.shape == (1, 1)  # one scale per layer, with the 2-D input's number of dims
    # symmetric int8 maps [-amax, amax] onto [-127, 127]: scale = amax / 127, computed here in float64
    assert float(scale) == pytest.approx(float(x.abs().max()) / 127, rel=1e-6)
