"""The grouped experts path: the same function as transformers' per-expert loop, bf16 compute over fp32 weights."""

import copy

import pytest
import torch

from cookbook import models
from cookbook.models import experts

VOCAB = 128


def _loss_and_grads(model, implementation, ids, autocast=False):
    model = copy.deepcopy(model)
    model.set_experts_implementation(implementation)
    context = torch.autocast(ids.device.type, dtype=torch.bfloat16) if autocast else torch.enable_grad()
    with context:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss, grads, model


def _relative(a: dict, b: dict) -> float:
    flat = [torch.cat([g.double().flatten() for g in d.values()]) for d in (a, b)]
    return ((flat[0] - flat[1]).norm() / flat[1].norm()).item()


@pytest.fixture
def tiny():
    return models.build("tiny", VOCAB, seed=0)


def _ids(seed=0, shape=(3, 19)):
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def test_float32_matches_transformers_per_expert_loop(tiny):
    """Outside autocast the grouped path computes in the weights' dtype: transformers' "eager" loop (one
    nn.functional.linear per expert) is the independent reference, to float32 rounding."""
    ref_loss, ref_grads, _ = _loss_and_grads(tiny, "eager", _ids())
    loss, grads, _ = _loss_and_grads(tiny, experts.GROUPED, _ids())
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    assert grads.keys() == ref_grads.keys()
    assert _relative(grads, ref_grads) < 1e-5


def test_bf16_autocast_computes_in_bf16_and_keeps_float32_master_weights(tiny, monkeypatch):
    """Under bf16 autocast the grouped products run on bf16 copies; the parameters and their gradients stay
    float32, and the result agrees with transformers' loop under the same autocast to bf16 tolerance."""
    ref_loss, ref_grads, _ = _loss_and_grads(tiny, "eager", _ids(1), autocast=True)
    loss, grads, model = _loss_and_grads(tiny, experts.GROUPED, _ids(1), autocast=True)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-2)
    assert _relative(grads, ref_grads) < 3e-2
    for module in models.experts_modules(model):
        assert module.gate_up_proj.dtype == module.down_proj.dtype == torch.float32
        assert module.gate_up_proj.grad.dtype == torch.float32
    seen, grouped_mm = [], torch.nn.functional.grouped_mm  # record the dtypes the grouped products see
    monkeypatch.setattr(torch.nn.functional, "grouped_mm",
                        lambda a, b, **kw: seen.append((a.dtype, b.dtype)) or grouped_mm(a, b, **kw))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=_ids(2))
    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}


def test_one_layer_against_a_token_by_token_reference(tiny):
    """One experts module on hand-chosen routing (expert 3 gets three rows, several experts none): each token's
    output is Σ_k weight_k · down_e(act(gate_e x) · up_e x), computed one token at a time in float64."""
    module = models.experts_modules(tiny)[0]
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, module.hidden_dim, generator=gen)
    index = torch.tensor([[3, 0], [3, 5], [1, 3], [5, 0]])
    weights = torch.rand(4, 2, generator=gen)
    out = experts.grouped_experts_forward(module, x, index, weights)
    expected = torch.zeros(4, module.hidden_dim, dtype=torch.float64)
    for t in range(4):
        for k in range(2):
            e = index[t, k]
            gate, up = (module.gate_up_proj[e].double() @ x[t].double()).chunk(2)
            expected[t] += weights[t, k] * (module.down_proj[e].double() @ (module.act_fn(gate) * up))
    assert torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-6)


def test_switching_and_refusing(tiny):
    assert models.use_grouped_experts(tiny) == experts.GROUPED
    assert models.use_grouped_experts(tiny, enabled=False) == "grouped_mm"
    dense = models.build_dense(tiny.config, seed=0)
    assert models.experts_modules(dense) == []
    with pytest.raises(ValueError, match="no routed experts"):
        models.use_grouped_experts(dense)


@pytest.mark.gpu
def test_cuda_bf16_grouped_gemm_matches_the_per_expert_loop(tiny):
    """The same comparison as on the CPU, on a GPU: torch's CUDA grouped GEMM under bf16 autocast."""
    ids = _ids(3).cuda()
    ref_loss, ref_grads, _ = _loss_and_grads(tiny.cuda(), "eager", ids, autocast=True)
    loss, grads, _ = _loss_and_grads(tiny, experts.GROUPED, ids, autocast=True)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-2)
    assert _relative(grads, ref_grads) < 3e-2
