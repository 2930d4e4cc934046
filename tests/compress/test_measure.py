"""Measurements: bytes on disk, a coverage report that accounts for every byte, honest timing, perplexity by hand."""

import math
import re
import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cookbook import compress
from cookbook.compress import measure
from tests.compress.tiny import needs_torchao, tiny


def _tensor_bytes(model):
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def test_state_bytes_grows_by_the_bytes_of_the_weights():
    small, large = nn.Linear(64, 64, bias=False), nn.Linear(64, 128, bias=False)
    # torch.save's archive aligns each tensor to 64 bytes: the difference is the 64 x 64 extra fp32 weights
    assert compress.state_bytes(large) - compress.state_bytes(small) == pytest.approx(64 * 64 * 4, abs=64)


@pytest.mark.parametrize("method", [None, "legacy-dynamic", *[pytest.param(m, marks=needs_torchao)
                                                                for m in compress.methods_for("cpu") if m != "legacy-dynamic"]])
def test_coverage_accounts_for_every_byte(method, batches):
    model = tiny()
    q = model if method is None else compress.quantize(model, method, calibration=batches)
    report = compress.coverage(q)
    assert report["bytes_before"].sum() == _tensor_bytes(model)  # every weight of the fp32 model, once
    assert report["bytes"].sum() <= compress.state_bytes(q)  # what is stored fits in the file ...
    # ... and is most of it (the rest: the archive's record and 64-byte alignment per tensor, ~10% here)
    assert report["bytes"].sum() > 0.8 * compress.state_bytes(q)
    if method is None:
        assert compress.quantized_share(report) == 0 and (report["bytes"] == report["bytes_before"]).all()
    else:  # everything but embeddings, router and norms
        kept = report.loc[~report["quantized"], "kind"]
        assert set(kept) == {"embedding", "router", "norm"}
        assert compress.quantized_share(report) == pytest.approx(
            1 - report.loc[~report["quantized"], "bytes_before"].sum() / _tensor_bytes(model))


@needs_torchao
def test_coverage_names_formats_and_kernels():
    report = compress.coverage(compress.quantize(tiny(), "int8-dynamic"))
    assert report.loc["lm_head.weight", "format"] == "int8 + dynamic int8 act"
    assert "torch._int_mm" in report.loc["lm_head.weight", "kernel"]
    assert report.loc["model.layers.1.mlp.experts.down_proj", "kernel"].startswith("cookbook Int8Experts")
    assert report.loc["model.embed_tokens.weight", "format"] == "fp32"


class _Counted(nn.Module):
    """Counts forwards (and logs them in `log`); raises when asked to, like a format without a kernel here."""

    def __init__(self, fail=False, log=None, name=""):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.calls, self.fail, self.log, self.name = 0, fail, log if log is not None else [], name

    def forward(self, input_ids):
        if self.fail:
            raise NotImplementedError("no kernel for this format here")
        self.calls += 1
        self.log.append(self.name)


def test_latency_runs_warmup_plus_repeats_and_reports_per_token(monkeypatch):
    model = _Counted()
    monkeypatch.setattr(time, "perf_counter", _Clock([4.0, 1.0, 2.0]))  # the warm-up forwards are not timed; mean 7/3
    seconds = compress.latency(model, torch.zeros(2, 8, dtype=torch.long), repeats=3, warmup=2)
    assert model.calls == 5 and seconds == 2.0 / 16  # the median forward, per token: 16 tokens share each forward
    with pytest.raises(ValueError, match="repeats >= 1"):
        compress.latency(model, torch.zeros(1, 4, dtype=torch.long), repeats=0)
    with pytest.raises(ValueError, match=r"\(batch, seq_len\)"):
        compress.latency(model, torch.zeros(4, dtype=torch.long))


def test_latencies_warm_each_model_then_time_them_round_robin():
    log = []
    models_ = {name: _Counted(log=log, name=name) for name in ("a", "b")}
    result = compress.latencies(models_, torch.zeros(1, 4, dtype=torch.long), repeats=3, warmup=2)
    assert log == ["a", "a", "b", "b"] + ["a", "b"] * 3  # a slow-down midway hits both alike
    assert result.keys() == {"a", "b"} and all(v > 0 for v in result.values())


def test_evaluate_is_the_mean_next_token_cross_entropy_and_accuracy_by_hand(batches):
    model = tiny()
    with torch.no_grad():
        logits = [model(input_ids=b["input_ids"]).logits[:, :-1].flatten(0, 1) for b in batches]
    targets = [b["input_ids"][:, 1:].flatten() for b in batches]
    expected = torch.cat([F.cross_entropy(x, t, reduction="none") for x, t in zip(logits, targets, strict=True)]).mean().item()
    accuracy = torch.cat([x.argmax(-1) == t for x, t in zip(logits, targets, strict=True)]).float().mean().item()
    result = compress.evaluate(model, batches)
    assert result["loss"] == pytest.approx(expected, rel=1e-6) and result["ppl"] == pytest.approx(math.exp(expected))
    assert result["accuracy"] == pytest.approx(accuracy) and 0 < accuracy < 0.5  # untrained: a few right by chance
    assert not model._forward_hooks  # the logits hook is gone
    with pytest.raises(ValueError, match="no target tokens"):
        compress.evaluate(model, [{"input_ids": torch.zeros(2, 1, dtype=torch.long)}])


@needs_torchao
def test_compare_on_a_toy_model(batches):
    model = tiny()
    ids = batches[0]["input_ids"]
    table = compress.compare({"fp32": model, "int8": compress.quantize(model, "int8-weight-only")}, batches, ids,
                             repeats=2, warmup=1)
    fp32, int8 = table.loc["fp32"], table.loc["int8"]
    assert fp32["size_ratio"] == 1 and fp32["ppl_delta_pct"] == 0 and fp32["speedup_cpu"] == 1
    assert 0.3 < int8["size_ratio"] < 0.5  # embeddings stay fp32: not the 0.25 of int8 alone
    assert int8["covered_ratio"] == pytest.approx(0.25, rel=0.10) and fp32["covered_ratio"] == 1  # ... the matrices
    assert int8["quantized_share"] > 0.75 and abs(int8["ppl_delta_pct"]) < 2 and fp32["accuracy_delta_pts"] == 0
    assert int8["accuracy_delta_pts"] == pytest.approx(100 * (int8["accuracy"] - fp32["accuracy"]))
    assert int8["us_per_token_cpu"] > 0 and "Int8Tensor" in int8["path"] and fp32["path"] == "dense fp32"
    assert fp32["ppl"] == pytest.approx(compress.evaluate(model, batches)["ppl"])


def test_compare_reports_a_variant_that_cannot_run_instead_of_failing():
    table = compress.compare({"ok": _Counted(), "broken": _Counted(fail=True)},
                             latency_ids=torch.zeros(1, 4, dtype=torch.long), repeats=1, warmup=0)
    assert math.isnan(table.loc["broken", "us_per_token_cpu"])
    assert "no kernel for this format here" in table.loc["broken", "notes"]
    assert table.loc["ok", "notes"] == ""


def test_compare_times_a_copy_on_each_device_asked_for():
    model = _Counted()
    table = compress.compare({"m": model}, latency_ids=torch.zeros(1, 4, dtype=torch.long), devices=["cpu"],
                             repeats=2, warmup=1)
    assert list(table.columns[table.columns.str.startswith(("us_per_token", "speedup"))]) == [
        "us_per_token_cpu", "speedup_cpu"]
    assert table.loc["m", "speedup_cpu"] == 1 and model.calls == 1 + 1 + 2  # trial run, warm-up, repeats


def test_compare_bad_input():
    with pytest.raises(ValueError, match=r"^compare\(\) needs at least one variant$"):
        compress.compare({})
    with pytest.raises(ValueError, match="^baseline 'bf16' is not a variant; variants: fp32, int8$"):
        compress.compare({"fp32": tiny(), "int8": tiny()}, baseline="bf16")


# --- issue 30: the cases mutation testing asks for (bytes by hand, a scripted clock, a bigram model's loss) -----

_INT8 = "torchao Int8Tensor: "
_INTX = "torchao IntxUnpackedToInt8Tensor: dequantized to float, float matmul"


@pytest.mark.parametrize("method, lm_head", [
    (None, ("fp32", "", 96 * 64 * 4, False)),
    ("legacy-dynamic", ("qint8", f"torch.ao dynamic Linear: {torch.backends.quantized.engine} int8 GEMM",
                        96 * 64 + 8 + 8, True)),  # one float64 scale and one int64 zero point per tensor
    pytest.param("int8-weight-only", ("int8", _INT8 + "int8 weights cast to float, float matmul",
                                      96 * 64 + 96 * 4 + 96, True), marks=needs_torchao),  # fp32 scale, int8 zero
    pytest.param("int8-dynamic", ("int8 + dynamic int8 act", _INT8 + "per-token int8 activations, torch._int_mm",
                                  96 * 64 + 96 * 4 + 96, True), marks=needs_torchao),  # per row
    pytest.param("int8-static", ("int8 + static int8 act", _INT8 + "calibrated int8 activations, torch._int_mm",
                                 96 * 64 + 96 * 4 + 96 + 4, True), marks=needs_torchao),  # + an activation scale
    pytest.param("int4-unpacked", ("int4 (one per byte)", _INTX, 96 * 64 + 96 * 2 * (4 + 1), True),  # 2 groups
                 marks=needs_torchao),
])
def test_coverage_bytes_of_one_weight_by_hand(method, lm_head, batches):
    model = tiny()
    q = model if method is None else compress.quantize(model, method, calibration=batches)
    report = compress.coverage(q)
    row = report.loc["lm_head.weight"]
    assert (row["format"], row["kernel"], row["bytes"], row["quantized"]) == lm_head
    assert row["bytes_before"] == 96 * 64 * 4 and row["shape"] == (96, 64) and row["kind"] == "linear"
    experts = report.loc["model.layers.1.mlp.experts.gate_up_proj"]  # 8 experts x 64 x 64
    if method is None:
        assert (experts["kind"], experts["bytes_before"], experts["bytes"]) == ("routed experts", 8 * 64 * 64 * 4,
                                                                              8 * 64 * 64 * 4)
    else:  # int8 values + one fp32 scale per row, run by transformers' kernel of the tiny model's config
        assert (experts["kind"], experts["bytes_before"], experts["bytes"]) == ("routed experts", 8 * 64 * 64 * 4,
                                                                              8 * 64 * 64 + 8 * 64 * 4)
        assert experts["kernel"] == ("cookbook Int8Experts: int8 expert weights cast to float, transformers' "
                                     "grouped_mm experts")
    assert report.loc["model.layers.1.mlp.gate.weight", "kind"] == "router"
    assert report.loc["model.embed_tokens.weight", "kind"] == "embedding"
    assert report.loc["model.norm.weight", "kind"] == "norm"


def test_tensor_bytes_of_torch_ao_qint8_by_hand():
    from cookbook.compress.measure import _tensor_bytes

    x = torch.randn(6, 5)
    assert _tensor_bytes(torch.quantize_per_tensor(x, 0.1, 0, torch.qint8)) == 30 + 16  # one scale + zero point
    per_row = torch.quantize_per_channel(x, torch.full((6,), 0.1), torch.zeros(6, dtype=torch.long), 0, torch.qint8)
    assert _tensor_bytes(per_row) == 30 + 6 * 16  # a float64 scale and an int64 zero point per row
    assert _tensor_bytes(torch.zeros(3, 2, dtype=torch.bfloat16)) == 12
    wide = _tensor_bytes(torch.quantize_per_tensor(x, 0.1, 0, torch.qint32))  # 4 bytes per value (a bias's type)
    assert wide == 30 * 4 + 16 and isinstance(wide, int)


class _Odd(nn.Module):
    """A weight of each kind coverage does not name, a legacy-quantized bias, buffers kept and not kept."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 1)
        self.register_buffer("kept", torch.tensor([0.0, 1.0, 0.0]))
        self.register_buffer("scratch", torch.zeros(5), persistent=False)


def test_coverage_of_other_modules_buffers_and_zeros():
    model = _Odd()
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.weight[0, 0, 0] = 1.0
    report = compress.coverage(model)
    assert list(report.index) == ["kept", "conv.weight", "conv.bias"]  # the non-persistent buffer is not stored
    assert list(report["kind"]) == ["other"] * 3 and list(report["format"]) == ["fp32"] * 3
    assert report.loc["kept", "zeros"] == 2 and report.loc["conv.weight", "zeros"] == 5  # 6 weights, one nonzero
    assert not report["quantized"].any() and compress.quantized_share(report) == 0
    with pytest.raises(ValueError, match="^ReLU stores no weights$"):
        compress.coverage(nn.ReLU())


def test_coverage_of_a_legacy_linear_with_its_bias():
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([0.0, 1.0, 0.0, 2.0]))
    report = compress.coverage(compress.quantize(model, "legacy-dynamic"))
    assert list(report.index) == ["0.weight", "0.bias", "1.weight"]
    engine = torch.backends.quantized.engine
    assert report.loc["0.weight"].to_dict() == dict(kind="linear", shape=(4, 8), format="qint8",
                                                    kernel=f"torch.ao dynamic Linear: {engine} int8 GEMM",
                                                    bytes_before=4 * 8 * 4, bytes=32 + 16, quantized=True, zeros=0)
    assert report.loc["0.bias"].to_dict() == dict(kind="linear", shape=(4,), format="fp32", kernel="",
                                                  bytes_before=16, bytes=16, quantized=False, zeros=2)
    assert compress.quantized_share(report) == pytest.approx((128 + 32) / (128 + 16 + 32))


def test_quantized_share_by_hand():
    import pandas as pd

    report = pd.DataFrame({"quantized": [True, False, True], "bytes_before": [30, 50, 20]})
    assert compress.quantized_share(report) == 0.5


class _Clock:
    """Stands in for time.perf_counter: each timed forward reads it twice and lasts the next scripted duration."""

    def __init__(self, durations):
        self.durations, self.now, self.started = list(durations), 0.0, False

    def __call__(self):
        if self.started:
            self.now += self.durations.pop(0)
        self.started = not self.started
        return self.now


def test_latencies_is_the_median_round_per_token(monkeypatch):
    # round-robin: a, b, a, b, a, b; a's durations 1, 2, 6 (median 2, mean 3), b's 5, 4, 9 (median 5)
    monkeypatch.setattr(time, "perf_counter", _Clock([1, 5, 2, 4, 6, 9]))
    result = compress.latencies({"a": _Counted(), "b": _Counted()}, torch.zeros(2, 4, dtype=torch.long), repeats=3,
                                warmup=0)
    assert result == {"a": 2 / 8, "b": 5 / 8}  # 8 tokens per forward


class _Mode(_Counted):
    def forward(self, input_ids):
        self.log.append(self.training)


def test_latencies_time_in_eval_mode_and_restore_each_models_mode():
    training, evaluating = _Mode().train(), _Mode().eval()
    compress.latencies({"t": training, "e": evaluating}, torch.zeros(1, 1, dtype=torch.long), repeats=1, warmup=1)
    assert training.log == [False, False] and evaluating.log == [False, False]
    assert training.training and not evaluating.training


@pytest.mark.parametrize("repeats, warmup, shape", [(1, 0, (1, 1)), (0, 0, (1, 1)), (1, -1, (1, 1)),
                                                    (1, 0, (1, 0)), (1, 0, (0, 3)), (1, 0, (1, 2, 3))])
def test_latency_limits(repeats, warmup, shape):
    model, ids = _Counted(), torch.zeros(shape, dtype=torch.long)
    if repeats >= 1 and warmup >= 0 and shape == (1, 1):
        assert compress.latency(model, ids, repeats=repeats, warmup=warmup) > 0 and model.calls == 1
        return
    message = (f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}" if repeats < 1 or warmup < 0 else
               f"input_ids must be a non-empty (batch, seq_len) tensor, got shape {shape}")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        compress.latency(model, ids, repeats=repeats, warmup=warmup)
    assert model.calls == 0


def test_sync_waits_for_a_cuda_device_only(monkeypatch):
    from cookbook.compress.measure import _sync

    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    _sync(torch.device("cpu"))
    _sync(torch.device("cuda", 1))
    assert waited == [torch.device("cuda", 1)]


class _Bigram(nn.Module):
    """logits[t] = table[token t]: the next-token loss is a sum of table rows' cross-entropies, by hand."""

    def __init__(self, table, pad=0):
        super().__init__()
        self.table, self.modes = nn.Parameter(torch.as_tensor(table, dtype=torch.float32)), []
        self.pad = nn.Parameter(torch.ones(pad))  # bytes on disk, nothing else

    def forward(self, input_ids, attention_mask=None):
        self.modes.append(self.training)
        return SimpleNamespace(logits=self.table[input_ids])


def test_evaluate_counts_only_the_labelled_targets():
    # vocabulary of 2; from token 0 the model says 1 (log-odds ln 3: p = 3/4), from token 1 it says 0 (p = 3/4)
    model = _Bigram([[0.0, math.log(3)], [math.log(3), 0.0]]).train()
    ids = torch.tensor([[0, 1, 0, 0], [1, 1, 0, 1]])
    labels = ids.clone()
    labels[0, 2], labels[1, 0] = -100, -100  # the first label is never a target anyway: 6 - 1 = 5 targets
    # targets: (0->1 right), (1->0 masked), (0->0 wrong) | (1->1 wrong), (1->0 right), (0->1 right)
    result = compress.evaluate(model, [{"input_ids": ids, "labels": labels}])
    right, wrong = -math.log(3 / 4), -math.log(1 / 4)
    assert result["loss"] == pytest.approx((3 * right + 2 * wrong) / 5, rel=1e-6)
    assert result["ppl"] == pytest.approx(math.exp((3 * right + 2 * wrong) / 5), rel=1e-6)
    assert result["accuracy"] == 3 / 5
    assert model.modes == [False] and model.training  # evaluated in eval mode, its mode restored
    tensors = compress.evaluate(model, [ids[:1], ids[1:]])  # input_ids alone: every next token is a target
    assert tensors["loss"] == pytest.approx((4 * right + 2 * wrong) / 6, rel=1e-6) and tensors["accuracy"] == 4 / 6


def test_evaluate_perplexity_is_capped_instead_of_overflowing():
    model = _Bigram([[0.0, 1000.0], [0.0, 1000.0]])  # always says 1, by 1000 nats
    result = compress.evaluate(model, [torch.tensor([[0, 0, 0]])])  # two targets, both 0: loss 1000 each
    assert result["loss"] == pytest.approx(1000.0) and result["ppl"] == math.exp(700.0) and result["accuracy"] == 0


@pytest.mark.parametrize("error", [RuntimeError, NotImplementedError, AssertionError, ValueError, TypeError])
def test_compare_notes_the_first_80_characters_of_the_first_line(error):
    class Broken(_Counted):
        def forward(self, input_ids):
            raise error("x" * 100 + "\nsecond line")

    class Silent(_Counted):
        def forward(self, input_ids):
            raise error()

    table = compress.compare({"ok": _Counted(), "long": Broken(), "silent": Silent()},
                             latency_ids=torch.zeros(1, 1, dtype=torch.long), repeats=1, warmup=0)
    assert table.loc["long", "notes"] == "no cpu run: " + "x" * 80
    assert table.loc["silent", "notes"] == f"no cpu run: {error.__name__}"
    assert table["us_per_token_cpu"].notna().tolist() == [True, False, False]


def test_compare_on_two_devices_times_each_variant_where_it_is(monkeypatch):
    # the meta device runs a forward without data: a second device on a CPU-only machine (an integer weight:
    # coverage counts no zeros of it, which a meta tensor could not)
    on_cpu, on_meta = _Counted(), _Counted()
    on_meta.weight = nn.Parameter(torch.zeros(1, dtype=torch.long, device="meta"), requires_grad=False)
    ids = torch.zeros(1, 2, dtype=torch.long)
    monkeypatch.setattr(time, "perf_counter", _Clock([2, 3]))  # on_cpu 2 s on the cpu, then on_meta 3 s on meta
    table = compress.compare({"cpu": on_cpu, "meta": on_meta}, latency_ids=ids, repeats=1, warmup=0)
    assert table.loc["cpu", "us_per_token_cpu"] == 1e6 * 2 / 2 and math.isnan(table.loc["meta", "us_per_token_cpu"])
    assert math.isnan(table.loc["cpu", "us_per_token_meta"]) and table.loc["meta", "us_per_token_meta"] == 1e6 * 3 / 2
    assert on_cpu.calls == 2 and on_meta.calls == 2  # the trial run and one timed forward, each on its own device
    monkeypatch.setattr(time, "perf_counter", _Clock([2, 1, 4]))  # devices given: each variant timed on each
    table = compress.compare({"cpu": on_cpu}, latency_ids=ids, devices=["meta", "cpu"], repeats=1, warmup=0)
    assert table.loc["cpu", "us_per_token_meta"] == 1e6 * 2 / 2 and table.loc["cpu", "us_per_token_cpu"] == 1e6 / 2
    assert on_cpu.calls == 2 + 2  # on the cpu itself (the meta run went to a copy)


def test_compare_against_another_baseline_by_hand(monkeypatch):
    # two bigram models over a vocabulary of 2 with known losses; b is the baseline, with 4 kB more on disk
    a = _Bigram([[0.0, math.log(3)], [math.log(3), 0.0]])  # p = 3/4 on the alternating next token
    b = _Bigram([[0.0, 0.0], [0.0, 0.0]], pad=512).double()  # uniform: loss ln 2
    ids = torch.tensor([[0, 1, 0, 1, 0]])  # 4 targets, all alternating
    monkeypatch.setattr(time, "perf_counter", _Clock([4, 1]))  # a then b: a takes 4x as long
    table = compress.compare({"a": a, "b": b}, [ids], ids, repeats=1, warmup=0, baseline="b")
    loss_a = -math.log(3 / 4)
    assert table.loc["a", "loss"] == pytest.approx(loss_a) and table.loc["b", "loss"] == pytest.approx(math.log(2))
    assert table.loc["a", "ppl_delta_pct"] == pytest.approx(100 * ((4 / 3) / 2 - 1))  # ppl 4/3 against 2
    assert table.loc["b", "accuracy"] == 0.5 and table.loc["a", "accuracy_delta_pts"] == 50  # a tie's argmax: 0
    assert table.loc["a", "speedup_cpu"] == 1 / 4 and table.loc["b", "speedup_cpu"] == 1
    assert table.loc["a", "size_mb"] == compress.state_bytes(a) / 1e6
    assert table.loc["a", "size_ratio"] == pytest.approx(compress.state_bytes(a) / compress.state_bytes(b))
    assert table.loc["a", "size_ratio"] < 0.5  # 512 float64 = 4096 bytes more in b
    assert table.loc["b", "size_ratio"] == 1 and table.loc["b", "path"] == "dense float64"
    assert table.loc["a", "covered_ratio"] == 1.0 and table.loc["a", "zeros"] == 0
    assert list(table.columns[-2:]) == ["path", "notes"] and table.columns[:2].tolist() == ["size_mb", "size_ratio"]
    assert table.index.name == "variant"


def test_compare_zeros_are_the_share_of_matrix_weights_that_are_zero():
    model = nn.Sequential(nn.Embedding(4, 4), nn.Linear(4, 2, bias=False), nn.Linear(2, 3))
    with torch.no_grad():
        model[0].weight.zero_()  # not a matrix of the zeros column: embeddings are not pruned
        model[1].weight.copy_(torch.tensor([[0.0, 1.0, 0.0, 2.0], [3.0, 0.0, 4.0, 5.0]]))  # 3 zeros
        model[2].weight.fill_(1.0)
        model[2].bias.zero_()  # 3 zeros in a bias: counted, as the linear layer's own tensor
    table = compress.compare({"m": model})
    assert table.loc["m", "zeros"] == pytest.approx((3 + 3) / (8 + 6 + 3))
    assert table.loc["m", "path"] == "dense fp32" and table.loc["m", "notes"] == ""
    assert "us_per_token_cpu" not in table and "ppl" not in table


def test_compare_leaves_each_variants_mode_as_it_was():
    # the trial run of compare switched the caller's model to eval mode for good (issue 30's mutation run)
    training, evaluating = _Mode().train(), _Mode().eval()
    compress.compare({"t": training, "e": evaluating}, latency_ids=torch.zeros(1, 1, dtype=torch.long), repeats=1,
                     warmup=0)
    assert training.log == [False, False] and evaluating.log == [False, False]  # trial run, timed run: both eval
    assert training.training and not evaluating.training


@needs_torchao
def test_coverage_names_int4_weights_with_dynamic_int8_activations():
    # not one of quantize()'s methods, but torchao's: coverage must still say what it stores
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    model = nn.Sequential(nn.Linear(64, 8, bias=False))
    quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32)))
    row = compress.coverage(model).loc["0.weight"]
    assert row["format"] == "int4 (one per byte) + dynamic int8 act"
    assert row["bytes"] == 8 * 64 + 8 * 2 * (4 + 1) and row["quantized"]  # int8 values, fp32 scale + int8 zero


class _Wrapped(torch.Tensor):
    """Stands in for a tensor subclass of another library: its name is its format, `inner` holds its bytes."""

    def __tensor_flatten__(self):
        return ["inner", "absent"], None


def _wrapped(name, inner):
    t = torch.zeros(4, 8).as_subclass(type(name, (_Wrapped,), {}))
    t.inner, t.absent = inner, None
    return t


@pytest.mark.parametrize("name, fmt, kernel, quantized", [
    ("Int4TilePackedTo4dTensor", "int4 packed", "torchao Int4TilePackedTo4dTensor: tinygemm int4 kernel (CUDA, bf16)",
     True),
    ("SparseSemiStructuredTensor", "2:4 sparse", "2:4 semi-structured sparse matmul (CUDA)", False),
    ("SparseSemiStructuredTensorCUTLASS", "2:4 sparse", "2:4 semi-structured sparse matmul (CUDA)", False),
    ("Float8Tensor", "Float8Tensor", "torchao Float8Tensor", True),  # a format coverage does not know by name
])
def test_coverage_of_gpu_only_and_unknown_tensor_formats(name, fmt, kernel, quantized):
    holder = nn.Module()
    holder.register_buffer("weight", _wrapped(name, torch.zeros(16, dtype=torch.uint8)))
    row = compress.coverage(holder).loc["weight"]
    assert (row["format"], row["kernel"], row["quantized"]) == (fmt, kernel, quantized)
    assert row["bytes"] == 16 and row["bytes_before"] == 4 * 8 * 4 and row["zeros"] == 0  # the inner bytes only


def test_coverage_formats_of_float_widths_and_integer_buffers():
    from cookbook.compress.measure import _tensor_bytes

    model = nn.Module()
    model.register_buffer("counts", torch.tensor([0, 0, 3]))  # zeros of an integer buffer are not sparsity
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp64", torch.float64)):
        model.register_buffer(name, torch.zeros(2, dtype=dtype))
    report = compress.coverage(model)
    assert report["format"].to_dict() == dict(counts="int64", fp16="fp16", bf16="bf16", fp64="float64")
    assert report["zeros"].to_dict() == dict(counts=0, fp16=2, bf16=2, fp64=2)
    assert report["bytes"].to_dict() == dict(counts=24, fp16=4, bf16=4, fp64=16)
    plain = torch.zeros(3).as_subclass(type("Plain", (torch.Tensor,), {}))  # a subclass with no inner tensors
    assert _tensor_bytes(plain) == 12
    model.register_buffer("plain", plain)
    assert compress.coverage(model).loc["plain", ["format", "kernel", "quantized"]].tolist() == ["fp32", "", False]


def test_coverage_of_int8_experts_from_bf16_weights_without_an_implementation():
    model = tiny().to(torch.bfloat16)
    compress.quantize_experts(model)
    model.config._experts_implementation = None  # transformers' default when none is set: the eager loop
    row = compress.coverage(model).loc["model.layers.1.mlp.experts.down_proj"]
    assert row["kernel"] == "cookbook Int8Experts: int8 expert weights cast to float, transformers' eager experts"
    assert row["bytes_before"] == 8 * 64 * 32 * 2 and row["bytes"] == 8 * 64 * 32 + 8 * 64 * 4  # bf16 before
    assert row["shape"] == (8, 64, 32) and row["format"] == "int8" and row["zeros"] == 0


def test_latency_needs_a_parameter_or_a_buffer_and_syncs_each_forward(monkeypatch):
    with pytest.raises(ValueError, match="^ReLU has no parameters or buffers$"):
        compress.latency(nn.ReLU(), torch.zeros(1, 1, dtype=torch.long))
    synced = []
    monkeypatch.setattr(measure, "_sync", synced.append)
    buffered = _Counted()
    del buffered.weight
    buffered.register_buffer("step", torch.zeros(1))  # a buffer gives the device too
    compress.latencies({"a": buffered, "b": _Counted()}, torch.zeros(1, 1, dtype=torch.long), repeats=2, warmup=3)
    assert synced == [torch.device("cpu")] * (2 + 2 * 2)  # once after each model's warm-up, then after every forward


def test_compare_notes_every_device_a_variant_failed_on_and_times_nothing_if_none_runs(monkeypatch):
    timed = []
    monkeypatch.setattr(measure, "latencies", lambda *args, **kwargs: timed.append(args) or {})
    table = compress.compare({"broken": _Counted(fail=True)}, latency_ids=torch.zeros(1, 1, dtype=torch.long),
                             devices=["cpu", "meta"], repeats=1, warmup=0)
    assert table.loc["broken", "notes"] == ("no cpu run: no kernel for this format here; "
                                            "no meta run: no kernel for this format here")
    assert table[["us_per_token_cpu", "us_per_token_meta", "speedup_cpu", "speedup_meta"]].isna().all(axis=None)
    assert timed == []  # no warm-up, no clock: nothing to time


def test_compare_zeros_of_a_single_weight():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    assert compress.compare({"m": model}).loc["m", "zeros"] == 1.0  # 1 zero of 1 weight
    assert compress.compare({"m": nn.Embedding(2, 2)}).loc["m", "zeros"] == 0.0  # no matrices: 0, not 0 / 0


class _Experts(nn.Module):
    """Fused experts without a transformers config (their own forward): Int8Experts of them run eagerly."""

    def __init__(self):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.ones(2, 4, 3))
        self.down_proj = nn.Parameter(torch.ones(2, 3, 2))


def test_coverage_of_int8_experts_without_a_config_says_eager():
    holder = nn.Module()
    holder.experts = compress.Int8Experts(_Experts())
    report = compress.coverage(holder)
    assert report.loc["experts.gate_up_proj", "kernel"].endswith("transformers' eager experts")
    assert report["bytes"].to_dict() == {"experts.gate_up_proj": 24 + 8 * 4, "experts.down_proj": 12 + 6 * 4}


def test_latency_and_compare_default_to_2_warmup_and_5_timed_forwards():
    ids = torch.zeros(1, 1, dtype=torch.long)
    model = _Counted()
    compress.latency(model, ids)
    assert model.calls == 2 + 5
    compress.compare({"m": model}, latency_ids=ids)
    assert model.calls == 7 + 1 + 2 + 5  # the trial run, then the same warm-up and repeats


def test_compare_zeros_count_the_routed_experts():
    model = nn.Module()
    model.linear, model.experts = nn.Linear(4, 2, bias=False), _Experts()  # 8 + 24 + 12 matrix weights
    with torch.no_grad():
        model.linear.weight.fill_(1.0)
        model.experts.gate_up_proj.zero_()
    assert compress.compare({"m": model}).loc["m", "zeros"] == pytest.approx(24 / 44)


@needs_torchao
def test_compare_path_names_each_kernel_once_in_order():
    table = compress.compare({"int8": compress.quantize(tiny(), "int8-weight-only")})
    assert table.loc["int8", "path"] == (
        "torchao Int8Tensor: int8 weights cast to float, float matmul + "
        "cookbook Int8Experts: int8 expert weights cast to float, transformers' grouped_mm experts")
