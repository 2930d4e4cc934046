"""cookbook.compress.quantize: the device checks and messages that mutation testing found unchecked (issue 30).

The CUDA branches run on a CPU machine with the device's capability stubbed, as tests/train/test_precision does."""

import re

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
