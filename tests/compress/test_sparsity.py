"""Sparsity: exact zero counts per tensor and per expert, the smallest weights go, 2:4 by hand, nothing saved."""

import re

import pytest
import torch
from torch import nn

from cookbook import compress
from tests.compress.tiny import tiny


def _matrices(model):
    """{name: weight} of every nn.Linear weight and fused-expert matrix (per expert)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            out[f"{name}.weight"] = module.weight.detach()
        elif compress.is_fused_experts(module):
            for leaf in ("gate_up_proj", "down_proj"):
                for e, w in enumerate(getattr(module, leaf).detach()):
                    out[f"{name}.{leaf}[{e}]"] = w
    return out


@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.8])
def test_magnitude_pruning_zeroes_exactly_the_smallest_fraction_of_each_matrix(sparsity):
    model = tiny()
    pruned = compress.prune_magnitude(model, sparsity)
    before, after = _matrices(model), _matrices(pruned)
    assert before.keys() == after.keys() and any("experts" in k for k in after)  # experts included, per expert
    for name, w in after.items():
        zeros = w == 0
        assert int(zeros.sum()) == round(sparsity * w.numel()), name  # torch.nn.utils.prune's count
        original = before[name].abs()
        assert original[zeros].max() <= original[~zeros].min(), name  # the smallest magnitudes went
        assert torch.equal(w[~zeros], before[name][~zeros])  # the rest is untouched
    assert torch.equal(pruned.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert torch.equal(pruned.model.layers[1].mlp.gate.weight, model.model.layers[1].mlp.gate.weight)
    assert not any("_orig" in n for n, _ in pruned.named_parameters())  # permanent: no masks or hooks left
    assert not any(m._forward_pre_hooks for m in pruned.modules())


def test_sparsity_report_counts_the_zeros():
    pruned = compress.prune_magnitude(tiny(), 0.5)
    report = compress.sparsity_report(pruned)
    assert set(report["kind"]) == {"linear", "routed experts"}
    assert report["sparsity"].between(0.499, 0.501).all()  # round(0.5 x n) / n for even and odd n
    assert report.loc["lm_head.weight", "zeros"] == 96 * 64 // 2


def test_experts_false_leaves_the_routed_experts_dense():
    model = tiny()
    pruned = compress.prune_magnitude(model, 0.5, experts=False)
    assert torch.equal(pruned.model.layers[1].mlp.experts.gate_up_proj, model.model.layers[1].mlp.experts.gate_up_proj)
    assert (pruned.lm_head.weight == 0).float().mean() == 0.5


@pytest.mark.parametrize("bad", [1.0, -0.1, True, "0.5"])
def test_bad_sparsity_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"^sparsity is the fraction of weights zeroed, in \[0, 1\); got "
                                         + re.escape(repr(bad)) + "$"):
        compress.prune_magnitude(tiny(), bad)


def test_2_4_keeps_the_two_largest_of_every_four_inputs():
    model = tiny()
    pruned = compress.prune_2_4(model)
    for name, w in _matrices(pruned).items():
        groups, original = w.reshape(-1, 4), _matrices(model)[name].reshape(-1, 4)
        assert ((groups == 0).sum(1) == 2).all(), name  # exactly 2 zeros in every group of 4
        kept = original.abs().topk(2, dim=1).indices  # by hand: the two largest magnitudes survive
        assert torch.equal(groups.gather(1, kept), original.gather(1, kept)), name
    with pytest.raises(ValueError, match=r"divisible by 4; not: Linear.weight \(2, 6\)"):
        compress.prune_2_4(nn.Sequential(nn.Linear(6, 2)))


def test_unstructured_zeros_save_no_bytes():
    model = tiny()
    assert compress.state_bytes(compress.prune_magnitude(model, 0.5)) == compress.state_bytes(model)


def test_semi_structured_kernels_need_a_recent_gpu():
    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0):
        pytest.skip("this machine has 2:4 kernels (the GPU test covers it)")
    with pytest.raises(ValueError, match="compute capability >= 8.0.*prune_2_4"):
        compress.to_semi_structured(compress.prune_2_4(tiny()))


@pytest.mark.gpu
def test_semi_structured_on_a_gpu_keeps_the_outputs():
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("2:4 kernels need compute capability >= 8.0")
    model = nn.Sequential(nn.Linear(128, 128)).cuda().half()
    dense = compress.prune_2_4(model)
    sparse = compress.to_semi_structured(compress.prune_2_4(model))
    assert type(sparse[0].weight).__name__.startswith("SparseSemiStructuredTensor")
    x = torch.randn(64, 128, device="cuda", dtype=torch.half)
    with torch.no_grad():
        assert torch.allclose(sparse(x), dense(x), atol=1e-2, rtol=1e-2)


# --- issue 30: the cases mutation testing asks for (limits, copies, counts by hand, the GPU branch's logic) ------

@pytest.mark.parametrize("sparsity", [0, 0.0, 0.999])
def test_sparsity_limits_that_are_allowed(sparsity):
    model = nn.Sequential(nn.Linear(1000, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1, 1001.0))
    pruned = compress.prune_magnitude(model, sparsity)
    assert int((pruned[0].weight == 0).sum()) == round(sparsity * 1000)  # 0 or 999: all but the largest
    assert torch.equal(pruned[0].weight[pruned[0].weight != 0], torch.arange(round(sparsity * 1000) + 1, 1001.0))


def test_pruning_copies_unless_inplace():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for prune in (lambda m: compress.prune_magnitude(m, 0.5), compress.prune_2_4):
        copy = prune(model)
        assert copy is not model and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        assert (copy.lm_head.weight == 0).float().mean() == 0.5
    assert compress.prune_2_4(model, inplace=True) is model and (model.lm_head.weight == 0).float().mean() == 0.5
    model = tiny()
    assert compress.prune_magnitude(model, 0.25, inplace=True) is model
    assert (model.lm_head.weight == 0).float().mean() == 0.25


def test_magnitude_pruning_of_experts_is_per_expert_by_hand():
    # expert 0 holds the 4 small weights, expert 1 the 4 large: per tensor, 50% would empty expert 0
    model = nn.Module()
    model.experts = nn.Module()
    model.experts.gate_up_proj = nn.Parameter(torch.tensor([[[1.0, -2.0], [3.0, -4.0]], [[10.0, 20.0], [-40, 30]]]))
    model.experts.down_proj = nn.Parameter(torch.tensor([[[5.0, 6.0]], [[-8.0, 7.0]]]))
    pruned = compress.prune_magnitude(model, 0.5)
    assert pruned.experts.gate_up_proj.tolist() == [[[0.0, 0.0], [3.0, -4.0]], [[0.0, 0.0], [-40.0, 30.0]]]
    assert pruned.experts.down_proj.tolist() == [[[0.0, 6.0]], [[-8.0, 0.0]]]
    assert isinstance(pruned.experts.gate_up_proj, nn.Parameter) and not pruned.experts._forward_pre_hooks
    assert torch.equal(compress.prune_magnitude(model, 0.5, experts=False).experts.gate_up_proj,
                       model.experts.gate_up_proj)


def test_2_4_by_hand_and_experts_false():
    model = nn.Sequential(nn.Linear(8, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -5.0, 3.0, 2.0, -0.5, 0.125, 0.25, -0.375]]))
    assert compress.prune_2_4(model)[0].weight.tolist() == [[0.0, -5.0, 3.0, 0.0, -0.5, 0.0, 0.0, -0.375]]
    moe = tiny()
    pruned = compress.prune_2_4(moe, experts=False)
    assert torch.equal(pruned.model.layers[1].mlp.experts.down_proj, moe.model.layers[1].mlp.experts.down_proj)
    assert (pruned.lm_head.weight == 0).float().mean() == 0.5


def test_2_4_names_every_layer_whose_width_is_not_a_multiple_of_4():
    model = nn.Sequential(nn.Linear(6, 2), nn.Linear(2, 8), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"^2:4 sparsity needs input widths divisible by 4; not: "
                                         r"Linear.weight \(2, 6\), Linear.weight \(8, 2\)$"):
        compress.prune_2_4(model)


def test_sparsity_report_columns_and_what_it_leaves_out():
    model = nn.Sequential(nn.Embedding(3, 4), nn.Linear(4, 3, bias=False), nn.LayerNorm(3))
    with torch.no_grad():
        model[0].weight.zero_()
        model[1].weight.copy_(torch.tensor([[0.0, 1.0, 2.0, 0.0], [0.0, 3.0, 4.0, 5.0], [1.0, 1.0, 1.0, 1.0]]))
    report = compress.sparsity_report(model)
    assert list(report.columns) == ["kind", "shape", "numel", "zeros", "sparsity"]
    assert report.to_dict("index") == {"1.weight": dict(kind="linear", shape=(3, 4), numel=12, zeros=3,
                                                        sparsity=0.25)}
    quantized = compress.quantize(tiny(), "legacy-dynamic", experts=False)
    assert set(compress.sparsity_report(quantized)["kind"]) == {"routed experts"}  # quantized layers are not listed


class _OnGpu(nn.Sequential):
    """Layers on the CPU whose parameters say they are on a CUDA GPU: the checks and the loop of
    to_semi_structured without the kernel (a recorder stands in for torch.sparse.to_sparse_semi_structured)."""

    def parameters(self, recurse=True):
        for p in super().parameters(recurse):
            yield type("OnGpu", (), {"device": torch.device("cuda", 0), "dtype": p.dtype})()


@pytest.mark.parametrize("capability, dtype, message", [
    ((7, 5), torch.half, "^" + re.escape("2:4 semi-structured kernels need a CUDA GPU of compute capability >= 8.0 "
                                         "(the model is on cuda:0); elsewhere prune_2_4 gives the 2:4 pattern on "
                                         "dense weights: the quality is measurable, the speed is not") + "$"),
    ((8, 0), torch.float32, r"^2:4 kernels take fp16/bf16 weights, the model holds \['torch.float32'\]: "
                            r"model.to\(torch.bfloat16\) first$"),
    ((8, 0), None, r"\['torch.bfloat16', 'torch.float16'\]"),  # one fp16 and one bf16 layer: fine
])
def test_semi_structured_checks_capability_then_dtype(monkeypatch, capability, dtype, message):
    asked, stored = [], []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: asked.append(device) or capability)
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda w: stored.append(w) or w * 2)
    model = _OnGpu(nn.Linear(4, 2).to(dtype or torch.half), nn.Linear(4, 2).to(dtype or torch.bfloat16))
    if dtype is None:
        assert compress.to_semi_structured(model) is model and len(stored) == 2
        return
    with pytest.raises(ValueError, match=message):
        compress.to_semi_structured(model)
    assert asked == [torch.device("cuda", 0)] and stored == []


def test_semi_structured_keeps_layers_the_kernel_rejects_dense(monkeypatch):
    def kernel(weight):  # as the real one: some shapes are outside its rules
        if weight.shape[0] == 3:
            raise RuntimeError("shape not supported")
        if weight.shape[0] == 5:
            raise ValueError("shape not supported")
        return weight * 2

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", kernel)
    model = _OnGpu(nn.Linear(4, 3), nn.Linear(4, 2), nn.Linear(4, 5), nn.Linear(4, 6), nn.LayerNorm(4)).half()
    dense = [layer.weight for layer in model]
    compress.to_semi_structured(model)
    for k in (1, 3):  # the layers after a rejected one are still converted
        assert torch.equal(model[k].weight, 2 * dense[k]) and not model[k].weight.requires_grad
        assert isinstance(model[k].weight, nn.Parameter)
    assert model[0].weight is dense[0] and model[2].weight is dense[2] and model[4].weight is dense[4]


def test_2_4_checks_the_input_width_of_fused_experts():
    # experts x out x in: the input is the last dimension (6 here for gate_up_proj, 4 for down_proj)
    model = nn.Module()
    model.experts = nn.Module()
    model.experts.gate_up_proj = nn.Parameter(torch.ones(2, 4, 6))
    model.experts.down_proj = nn.Parameter(torch.ones(2, 6, 4))
    with pytest.raises(ValueError, match=r"not: Module.gate_up_proj \(2, 4, 6\)$"):
        compress.prune_2_4(model)
