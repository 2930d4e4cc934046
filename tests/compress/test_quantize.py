"""Quantization by name: stored dtypes, bytes counted by hand, outputs close to fp32, calibration, clear errors."""

import copy

import pytest
import torch
from torch import nn

from cookbook import compress, models
from cookbook.compress.quantize import GROUP_SIZE
from tests.compress.tiny import VOCAB, needs_torchao, tiny

pytestmark = needs_torchao


def _ids(seed=0, n=2, seq_len=16):
    return torch.randint(0, VOCAB, (n, seq_len), generator=torch.Generator().manual_seed(seed))


def _relative_error(model, reference, ids):
    with torch.no_grad():
        out, ref = model(input_ids=ids).logits, reference(input_ids=ids).logits
    return ((out - ref).norm() / ref.norm()).item()


# what each method stores for an nn.Linear weight: (tensor class, qdata dtype, smallest and largest value)
STORED = {
    "int8-weight-only": ("Int8Tensor", torch.int8, -128, 127),
    "int8-dynamic": ("Int8Tensor", torch.int8, -128, 127),
    "int8-static": ("Int8Tensor", torch.int8, -128, 127),
    "int4-unpacked": ("IntxUnpackedToInt8Tensor", torch.int8, -8, 7),  # one int4 value per byte
}


# Tolerances on the trained tiny model's logits (relative L2 error), from the rounding step of each format:
# int8 weights alone ~0.5%; int8 activations add a per-token rounding (~2-3%); int4 has 16 levels (~8%).
TOLERANCE = {"int8-weight-only": 0.01, "int8-dynamic": 0.05, "int8-static": 0.05, "int4-unpacked": 0.15,
             "int4-weight-only": 0.15, "legacy-dynamic": 0.05}


def test_methods_for_each_device():
    assert compress.methods_for("cpu") == tuple(m for m in compress.METHODS if m != "int4-weight-only")
    if not torch.cuda.is_available():  # "cuda" on a machine without one: the methods a GPU would lack, asked anyway
        assert compress.methods_for("cuda") == tuple(m for m in compress.METHODS
                                                     if m not in ("int4-weight-only", "legacy-dynamic"))


@pytest.mark.parametrize("method", compress.methods_for("cpu"))
def test_each_method_stores_quantized_weights_and_stays_close_to_fp32(method, trained, batches):
    q = compress.quantize(trained, method, calibration=batches if method == "int8-static" else None)
    weight = q.lm_head.weight() if method == "legacy-dynamic" else q.lm_head.weight
    if method == "legacy-dynamic":
        assert weight.dtype == torch.qint8
        values = weight.int_repr()
    else:
        kind, dtype, low, high = STORED[method]
        assert type(weight).__name__ == kind and weight.qdata.dtype == dtype
        values = weight.qdata
    assert len(values.unique()) > 8 and values.abs().max() > 0  # real integer codes, not a cast
    if method != "legacy-dynamic":
        assert low <= int(values.min()) and int(values.max()) <= high
    assert isinstance(q.model.layers[1].mlp.experts, compress.Int8Experts)  # experts=True is the default
    ids = batches[0]["input_ids"]
    assert _relative_error(q, trained, ids) < TOLERANCE[method]
    with torch.no_grad():
        same = q(input_ids=ids).logits.argmax(-1) == trained(input_ids=ids).logits.argmax(-1)
    assert same.float().mean() >= 0.97  # the same next-token predictions


def test_int8_weight_only_bytes_by_hand_and_about_a_quarter():
    # smoke widths (128-384 inputs per row): the per-row scale and zero point are a small overhead
    model = models.build("smoke", VOCAB, seed=0).eval()
    report = compress.coverage(compress.quantize(model, "int8-weight-only", experts=False))
    linear = report[report["kind"] == "linear"]
    assert linear["quantized"].all()
    rows = torch.tensor([s[0] for s in linear["shape"]])
    elements = torch.tensor([s[0] * s[1] for s in linear["shape"]])
    # one int8 per weight + per output row an fp32 scale and an int8 zero point
    assert linear["bytes"].tolist() == (elements + 5 * rows).tolist()
    assert linear["bytes_before"].tolist() == (4 * elements).tolist()
    assert linear["bytes"].sum() / linear["bytes_before"].sum() == pytest.approx(0.25, rel=0.10)


def test_without_experts_the_routed_experts_stay_fp32_and_the_report_says_so():
    q = compress.quantize(tiny(), "int8-weight-only", experts=False)
    report = compress.coverage(q)
    experts = report[report["kind"] == "routed experts"]
    assert len(experts) == 2 and (experts["format"] == "fp32").all() and not experts["quantized"].any()
    assert compress.quantized_share(report) < compress.quantized_share(compress.coverage(
        compress.quantize(tiny(), "int8-weight-only")))


def test_int4_unpacked_falls_back_to_one_scale_per_row_for_widths_not_divisible_by_the_group():
    model = nn.Sequential(nn.Linear(2 * GROUP_SIZE, 8), nn.Linear(8, 40))  # 8 inputs: no group of 32 fits
    q = compress.quantize(model, "int4-unpacked")
    assert q[0].weight.block_size == (1, GROUP_SIZE) and q[1].weight.block_size == (1, 8)
    x = torch.randn(3, 2 * GROUP_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(q(x), model(x), atol=0.2)


def test_quantize_copies_unless_inplace():
    model = tiny()
    q = compress.quantize(model, "int8-weight-only")
    assert type(model.lm_head.weight) is nn.Parameter and q is not model
    same = compress.quantize(model, "int8-weight-only", inplace=True)
    assert same is model and type(model.lm_head.weight).__name__ == "Int8Tensor"


class _Net(nn.Module):
    """Two linear layers behind the language-model call signature calibrate() uses."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, input_ids, attention_mask=None):
        return self.second(torch.relu(self.first(input_ids)))


def test_calibrate_records_the_largest_input_of_each_linear_by_hand():
    net = _Net()
    xs = [torch.randn(5, 4, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    with torch.no_grad():
        expected = {"first": max(float(x.abs().max()) for x in xs),
                    "second": max(float(torch.relu(net.first(x)).abs().max()) for x in xs)}
    ranges = compress.calibrate(net, [{"input_ids": x} for x in xs])
    assert {n: amax for n, (amax, _) in ranges.items()} == pytest.approx(expected)
    assert {ndim for _, ndim in ranges.values()} == {2}


@pytest.mark.parametrize(("call", "match"), [
    (lambda m: compress.quantize(m, "int3"), "valid methods: int8-weight-only, int8-dynamic"),
    (lambda m: compress.quantize(m, "int8-static"), "needs calibration=batches"),
    (lambda m: compress.quantize(m.to(torch.bfloat16), "legacy-dynamic"), "float32 models"),
    (lambda m: compress.calibrate(m, []), "calibration saw no nn.Linear input"),
    # the GPU path on a CPU: the message names the path that runs here
    *([] if torch.cuda.is_available() else [
        (lambda m: compress.quantize(m, "int4-weight-only"), "tinygemm.*on cpu: use 'int4-unpacked'")]),
])
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny())


def test_int8_weight_only_perplexity_within_2_percent_of_fp32(trained, batches):
    fp32 = compress.evaluate(trained, batches)
    assert fp32["ppl"] < VOCAB / 4  # trained: far from uniform, so a 2% band is a real constraint
    for method in ("int8-weight-only", "legacy-dynamic"):
        q = compress.evaluate(compress.quantize(trained, method), batches)
        assert abs(q["ppl"] / fp32["ppl"] - 1) < 0.02, method


@pytest.mark.gpu
def test_int4_on_cuda_runs_tinygemm_in_bf16(trained, batches):
    assert compress.methods_for("cuda") == tuple(m for m in compress.METHODS if m != "legacy-dynamic")  # sm >= 8.0
    model = copy.deepcopy(trained).cuda()
    q = compress.quantize(model, "int4-weight-only")
    weight = q.lm_head.weight
    assert type(weight).__name__ == "Int4TilePackedTo4dTensor" and q.model.norm.weight.dtype == torch.bfloat16
    assert weight.qdata.dtype == torch.int32  # tinygemm's tiles: eight int4 values per int32
    assert next(model.parameters()).dtype == torch.float32  # the copy was cast, not the model
    report = compress.coverage(q)
    assert report.loc["lm_head.weight", "format"] == "int4 packed" and report.loc["lm_head.weight", "quantized"]
    assert _relative_error(q, model, batches[0]["input_ids"].cuda()) < TOLERANCE["int4-weight-only"] + 0.02


@pytest.mark.gpu
@pytest.mark.parametrize("method", [m for m in compress.METHODS if m != "legacy-dynamic"])
def test_each_method_but_legacy_runs_on_cuda(method, trained, batches):
    model = copy.deepcopy(trained).cuda()
    q = compress.quantize(model, method, calibration=[{"input_ids": b["input_ids"].cuda()} for b in batches])
    ids = batches[0]["input_ids"].cuda()
    assert _relative_error(q, model, ids) < TOLERANCE[method] + 0.02  # bf16 (int4-weight-only) adds its rounding
    assert compress.quantized_share(compress.coverage(q)) > 0.5


@pytest.mark.gpu
def test_legacy_dynamic_on_cuda_names_the_alternative(trained):
    with pytest.raises(ValueError, match="CPU kernels .* on cuda:0: move it to the CPU, or use int8-weight-only"):
        compress.quantize(copy.deepcopy(trained).cuda(), "legacy-dynamic")
