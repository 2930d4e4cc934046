"""Measurements: bytes on disk, a coverage report that accounts for every byte, honest timing, perplexity by hand."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cookbook import compress
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


def test_latency_runs_warmup_plus_repeats_and_reports_per_token():
    model = _Counted()
    seconds = compress.latency(model, torch.zeros(2, 8, dtype=torch.long), repeats=3, warmup=2)
    assert model.calls == 5 and 0 < seconds < 1e-2  # per token: 16 tokens share each forward
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
    with pytest.raises(ValueError, match="at least one variant"):
        compress.compare({})
    with pytest.raises(ValueError, match="baseline 'bf16' is not a variant; variants: fp32"):
        compress.compare({"fp32": tiny()}, baseline="bf16")
