"""DeepSeek-V3 load balancing: aux-loss-free bias updates and the sequence-wise auxiliary loss."""

import pytest
import torch

from cookbook import models
from cookbook.models import moe


@pytest.fixture
def tiny():
    return models.build("tiny", 128, seed=0)


def _reference_aux(logits, indices, batch, seq_len, top_k):
    """The paper's formula with explicit loops (independent of the vectorised implementation)."""
    n = logits.shape[-1]
    scores = torch.sigmoid(logits.double()).view(batch, seq_len, n)
    chosen = indices.view(batch, seq_len, top_k)
    total = 0.0
    for b in range(batch):
        loss = 0.0
        for i in range(n):
            f_i = n / (top_k * seq_len) * sum(int(i in chosen[b, t].tolist()) for t in range(seq_len))
            p_i = sum(float(scores[b, t, i] / scores[b, t].sum()) for t in range(seq_len)) / seq_len
            loss += f_i * p_i
        total += loss
    return total / batch


def test_routers_found_only_in_moe_layers(tiny):
    found = moe.routers(tiny)
    assert len(found) == tiny.config.num_hidden_layers - tiny.config.first_k_dense_replace
    dense = models.build_dense(tiny.config)
    assert moe.routers(dense) == []
    with pytest.raises(ValueError, match="no DeepSeek-style router"):
        moe.LoadBalancer(dense)


def test_bad_hyperparameters_rejected(tiny):
    with pytest.raises(ValueError, match="gamma and alpha"):
        moe.LoadBalancer(tiny, gamma=-1.0)


def test_sequence_aux_loss_matches_the_formula():
    torch.manual_seed(0)
    batch, seq_len, n, k = 3, 5, 8, 2
    logits = torch.randn(batch * seq_len, n)
    indices = torch.stack([torch.randperm(n)[:k] for _ in range(batch * seq_len)])
    got = moe.sequence_aux_loss(logits, indices, batch, seq_len, k)
    assert got.item() == pytest.approx(_reference_aux(logits, indices, batch, seq_len, k), rel=1e-6)


def test_sequence_aux_loss_is_one_when_perfectly_balanced():
    # 4 experts, top-1, 4 tokens each sent to a different expert, all scores equal -> f_i = 1, P_i = 1/4.
    logits = torch.zeros(4, 4)
    indices = torch.arange(4).view(4, 1)
    assert moe.sequence_aux_loss(logits, indices, 1, 4, 1).item() == pytest.approx(1.0)
    # Every token to expert 0 with equal scores: f_0 = 4, P = 1/4 -> loss = 1 as well (P carries the signal),
    # but with the score skewed toward the chosen expert the loss grows above 1.
    skewed = torch.tensor([[4.0, 0, 0, 0]]).repeat(4, 1)
    assert moe.sequence_aux_loss(skewed, torch.zeros(4, 1, dtype=torch.long), 1, 4, 1).item() > 1.5


def test_max_violation_by_hand():
    load = torch.tensor([[10.0, 10, 10, 10], [40.0, 0, 0, 0]])
    assert moe.max_violation(load).tolist() == [0.0, 3.0]


def test_update_bias_is_gamma_times_sign(tiny):
    balancer = moe.LoadBalancer(tiny, gamma=0.01)
    balancer.counts[0] = torch.tensor([8.0, 2, 5, 5, 5, 5, 5, 5])  # mean 5: expert 0 over, 1 under, rest even
    balancer.update_bias()
    expected = torch.tensor([-0.01, 0.01, 0, 0, 0, 0, 0, 0])
    assert torch.equal(balancer.biases()[0], expected)
    assert balancer.last_load[0, 0] == 8 and balancer.counts.sum() == 0  # counts reset for the next step
    assert balancer.load_fraction()[0].sum().item() == pytest.approx(1.0)


def test_counts_only_inside_recording(tiny):
    balancer = moe.LoadBalancer(tiny)
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        tiny(input_ids=ids)  # outside recording: evaluation passes are not counted
        assert balancer.counts.sum() == 0
        with balancer.recording():
            tiny(input_ids=ids)
    assert balancer.counts.sum(-1).tolist() == [2 * 16 * tiny.config.num_experts_per_tok] * len(balancer.routers)
    balancer.remove()
    with torch.no_grad(), balancer.recording():
        tiny(input_ids=ids)
    assert balancer.counts.sum(-1).tolist() == [64.0]  # hooks removed: nothing more counted


def test_aux_loss_has_gradient_and_scales_with_alpha(tiny):
    ids = torch.randint(0, 128, (2, 16))
    balancer = moe.LoadBalancer(tiny, alpha=1e-2)
    with balancer.recording():
        tiny(input_ids=ids)
    aux = balancer.aux_loss()
    assert aux.requires_grad and aux.item() >= 1e-2 * 0.99  # >= alpha x 1 per layer (1 = perfect balance)
    aux.backward()
    router = balancer.routers[0][1]
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    assert moe.LoadBalancer(tiny, alpha=0.0).aux_loss().item() == 0.0


def _skew(model, ids):
    """Point two experts' router rows along the mean router input, so they win most tokens."""
    router = moe.routers(model)[0][1]
    seen = []
    handle = router.register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(-1, m.hidden_dim)))
    with torch.no_grad():
        model(input_ids=ids)
        handle.remove()
        direction = seen[0].mean(0)
        router.weight[:2] = 4 * direction / direction.norm()


def test_bias_updates_move_a_skewed_router_toward_uniform(tiny):
    torch.manual_seed(0)
    ids = torch.randint(0, 128, (8, 32))
    _skew(tiny, ids)
    frozen = moe.LoadBalancer(tiny, gamma=0.0)
    with torch.no_grad(), frozen.recording():
        tiny(input_ids=ids)
    frozen.update_bias()
    start = moe.max_violation(frozen.last_load).item()
    frozen.remove()
    assert start > 1.0  # two of eight experts take most of the load

    balancer = moe.LoadBalancer(tiny, gamma=0.02)
    trace = []
    for _ in range(40):  # the router weights never change: only the bias does the balancing
        with torch.no_grad(), balancer.recording():
            tiny(input_ids=ids)
        balancer.update_bias()
        trace.append(moe.max_violation(balancer.last_load).item())
    assert trace[0] == pytest.approx(start)
    assert min(trace[-10:]) < 0.35 * start and sum(trace[-10:]) / 10 < 0.5 * start
    assert balancer.biases()[0, :2].max() < 0 < balancer.biases()[0, 2:].max()  # favourites pushed down
    steps = balancer.biases()[0] / 0.02  # every update moves a bias by exactly -γ, 0 or +γ
    assert (steps - steps.round()).abs().max() < 1e-3


def test_bias_disabled_zeroes_and_restores(tiny):
    router = moe.routers(tiny)[0][1]
    router.e_score_correction_bias.copy_(torch.arange(8.0))
    ids = torch.randint(0, 128, (2, 16))
    with moe.bias_disabled(tiny):
        assert router.e_score_correction_bias.abs().sum() == 0
        plain = models.expert_load(tiny, ids)
    assert torch.equal(router.e_score_correction_bias, torch.arange(8.0))
    assert not models.expert_load(tiny, ids).equals(plain)  # a large bias changes the routing
    assert moe.max_violation(plain).shape == (1,)  # DataFrames are accepted too
