"""Sparsity: exact zero counts per tensor and per expert, the smallest weights go, 2:4 by hand, nothing saved."""

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
    with pytest.raises(ValueError, match=r"fraction of weights zeroed, in \[0, 1\)"):
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
