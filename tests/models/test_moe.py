"""Mixture of experts: router discovery, load counting (padding left out), MaxVio, DeepSeek-V3's balancing."""

import pandas as pd
import pytest
import torch
import transformers

from cookbook import models, train
from cookbook.models import moe
from cookbook.monitor import layer_of
from cookbook.train.memory import set_checkpointing

VOCAB = 128


@pytest.fixture
def tiny():
    return models.build("tiny", VOCAB, seed=0)


def _reference_aux(logits, indices, mask):
    """The paper's formula with explicit loops over each sequence's real tokens (independent of the vectorised code)."""
    batch, seq_len = mask.shape
    n, top_k = logits.shape[-1], indices.shape[-1]
    scores = torch.sigmoid(logits.double()).view(batch, seq_len, n)
    chosen = indices.view(batch, seq_len, top_k)
    total = 0.0
    for b in range(batch):
        real = [t for t in range(seq_len) if mask[b, t]]
        loss = 0.0
        for i in range(n):
            f_i = n / (top_k * len(real)) * sum(int(i in chosen[b, t].tolist()) for t in real)
            p_i = sum(float(scores[b, t, i] / scores[b, t].sum()) for t in real) / len(real)
            loss += f_i * p_i
        total += loss
    return total / batch


def _padded_pair():
    """The issue's batch: a 3-token and a 30-token sequence, right-padded to 30 (33 real tokens, 27 pads)."""
    gen = torch.Generator().manual_seed(2)
    return train.pad_batch([torch.randint(2, VOCAB, (n,), generator=gen).tolist() for n in (3, 30)])


# ----------------------------------------------------------------------------- routers and labels
def test_routers_found_only_in_moe_layers(tiny):
    found = moe.routers(tiny)
    assert [name for name, _ in found] == ["model.layers.1.mlp.gate"]  # first_k_dense_replace=1: layer 0 is dense
    dense = models.build_dense(tiny.config)
    assert moe.routers(dense) == []
    for make in (moe.LoadCounter, moe.LoadBalancer):
        with pytest.raises(ValueError, match="no MoE router"):
            make(dense)


def test_layers_are_named_as_in_the_monitor(tiny):
    counter = moe.LoadCounter(tiny)
    assert counter.layers == ["layers.1"]
    # the monitor's per-layer statistics name the router's weights after the same block
    assert layer_of("model.layers.1.mlp.gate.weight") == "layers.1.mlp"
    smoke = models.build("smoke", VOCAB)
    assert moe.LoadCounter(smoke).layers == ["layers.1", "layers.2", "layers.3"]


def test_bad_hyperparameters_rejected(tiny):
    with pytest.raises(ValueError, match="gamma and alpha"):
        moe.LoadBalancer(tiny, gamma=-1.0)
    with pytest.raises(ValueError, match="gamma and alpha"):
        moe.LoadBalancer(tiny, alpha=-1e-4)


# ----------------------------------------------------------------------------- MaxVio
def test_max_violation_by_hand():
    load = torch.tensor([[10.0, 10, 10, 10], [40.0, 0, 0, 0], [0.0, 0, 0, 0]])
    assert moe.max_violation(load).tolist() == [0.0, 3.0, 0.0]  # (max - mean) / mean; no tokens: 0
    one = moe.max_violation([70, 10, 10, 10])  # one layer: a 0-d tensor, the same type
    assert torch.is_tensor(one) and one.dim() == 0 and one.item() == pytest.approx(1.8)


# ----------------------------------------------------------------------------- sequence-wise auxiliary loss
def test_sequence_aux_loss_matches_the_formula():
    torch.manual_seed(0)
    batch, seq_len, n, k = 3, 5, 8, 2
    logits = torch.randn(batch * seq_len, n)
    indices = torch.stack([torch.randperm(n)[:k] for _ in range(batch * seq_len)])
    full = torch.ones(batch, seq_len)
    got = moe.sequence_aux_loss(logits, indices, full)
    assert got.item() == pytest.approx(_reference_aux(logits, indices, full), rel=1e-6)
    padded = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    got = moe.sequence_aux_loss(logits, indices, padded)
    assert got.item() == pytest.approx(_reference_aux(logits, indices, padded), rel=1e-6)


def test_sequence_aux_loss_uses_each_sequences_real_length():
    """A sequence's loss does not depend on how much padding follows it (the big-batch vs micro-batch case)."""
    torch.manual_seed(1)
    n, k = 8, 2
    logits, indices = torch.randn(4, n), torch.stack([torch.randperm(n)[:k] for _ in range(4)])
    alone = moe.sequence_aux_loss(logits, indices, torch.ones(1, 4))
    pad_logits = torch.cat([logits, torch.randn(6, n)])  # 6 pad positions, routed to anything
    pad_indices = torch.cat([indices, torch.zeros(6, k, dtype=torch.long)])
    padded = moe.sequence_aux_loss(pad_logits, pad_indices, torch.tensor([[1] * 4 + [0] * 6]))
    assert padded.item() == pytest.approx(alone.item(), rel=1e-6)


def test_sequence_aux_loss_is_one_when_perfectly_balanced():
    # 4 experts, top-1, 4 tokens each sent to a different expert, all scores equal -> f_i = 1, P_i = 1/4.
    logits = torch.zeros(4, 4)
    indices = torch.arange(4).view(4, 1)
    assert moe.sequence_aux_loss(logits, indices, torch.ones(1, 4)).item() == pytest.approx(1.0)
    # Every token to expert 0 with equal scores: f_0 = 4, P = 1/4 -> loss = 1 as well (P carries the signal),
    # but with the score skewed toward the chosen expert the loss grows above 1.
    skewed = torch.tensor([[4.0, 0, 0, 0]]).repeat(4, 1)
    assert moe.sequence_aux_loss(skewed, torch.zeros(4, 1, dtype=torch.long), torch.ones(1, 4)).item() > 1.5


# ----------------------------------------------------------------------------- counting
def test_padding_is_not_counted(tiny):
    """The issue's figure: 3 + 30 real tokens x top-2 = 66 routing slots, not 2 x 30 x 2 = 120."""
    batch = _padded_pair()
    balancer = moe.LoadBalancer(tiny)
    with balancer.recording():
        tiny(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert balancer.counts.sum().item() == 66
    balancer.update_bias()
    assert balancer.last_load.sum().item() == 66
    load = models.expert_load(tiny, batch["input_ids"], batch["attention_mask"])
    assert load.to_numpy().sum() == 66
    # an independent count: the router's choices for the real positions only, read off a plain hook
    captured = {}
    handle = tiny.model.layers[1].mlp.gate.register_forward_hook(lambda m, i, out: captured.update(idx=out[2]))
    tiny.eval()
    with torch.no_grad():
        tiny(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    handle.remove()
    real = captured["idx"][batch["attention_mask"].reshape(-1).bool()]
    assert load.loc["layers.1"].tolist() == torch.bincount(real.reshape(-1), minlength=8).tolist()


def test_mask_passed_positionally_is_found(tiny):
    batch = _padded_pair()
    counter = moe.LoadCounter(tiny)
    with torch.no_grad(), counter.recording():
        tiny(batch["input_ids"], batch["attention_mask"])  # forward(input_ids, attention_mask)
    assert counter.counts.sum().item() == 66
    with torch.no_grad(), counter.recording():
        tiny(input_ids=batch["input_ids"])  # no mask: every position is a token
    assert counter.counts.sum().item() == 66 + 120


def test_decoding_with_a_cache_counts_the_new_tokens(tiny):
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, 0] = 0  # a left-padded prompt
    counter = moe.LoadCounter(tiny)
    tiny.eval()
    with torch.no_grad():
        out = tiny(input_ids=ids[:, :5], attention_mask=mask[:, :5], use_cache=True)
        with counter.recording():  # one new token per sequence; the mask spans the cached positions too
            tiny(input_ids=ids[:, 5:], attention_mask=mask, past_key_values=out.past_key_values, use_cache=True)
    assert counter.counts.sum().item() == 2 * 2


def test_counts_only_inside_recording(tiny):
    balancer = moe.LoadBalancer(tiny)
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        tiny(input_ids=ids)  # outside recording: evaluation passes are not counted
        assert balancer.counts.sum() == 0
        with balancer.recording():
            tiny(input_ids=ids)
    assert balancer.counts.sum(-1).tolist() == [2 * 16 * tiny.config.num_experts_per_tok] * len(balancer.routers)
    balancer.remove()
    with torch.no_grad(), balancer.recording():
        tiny(input_ids=ids)
    assert balancer.counts.sum(-1).tolist() == [64]  # hooks removed: nothing more counted


def test_auto_counter_counts_training_forwards_once_under_activation_checkpointing(tiny):
    counter = moe.LoadCounter(tiny, auto=True)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    tiny.eval()
    with torch.no_grad():
        tiny(input_ids=ids)  # evaluation: not counted
    assert counter.counts.sum() == 0
    set_checkpointing(tiny, True)  # the cookbook's switch: transformers 5.17-5.20 name the method differently
    tiny.train()
    tiny(input_ids=ids, labels=ids).loss.backward()  # recomputes the MoE layer's forward inside backward
    assert counter.counts.sum().item() == 2 * 16 * 2
    assert counter.take().sum().item() == 64 and counter.counts.sum() == 0  # take() starts again from zero
    assert counter.frame(torch.ones(1, 8, dtype=torch.long)).index.tolist() == ["layers.1"]


# ----------------------------------------------------------------------------- bias balancing
def test_update_bias_is_gamma_times_sign(tiny):
    balancer = moe.LoadBalancer(tiny, gamma=0.01)
    balancer.counts[0] = torch.tensor([8, 2, 5, 5, 5, 5, 5, 5])  # mean 5: expert 0 over, 1 under, rest even
    balancer.update_bias()
    expected = torch.tensor([-0.01, 0.01, 0, 0, 0, 0, 0, 0])
    assert torch.equal(balancer.biases()[0], expected)
    assert balancer.last_load[0, 0] == 8 and balancer.counts.sum() == 0  # counts reset for the next step
    assert balancer.load_fraction()[0].tolist() == pytest.approx([8 / 40, 2 / 40] + [5 / 40] * 6)


def test_aux_loss_has_gradient_and_scales_with_alpha(tiny):
    ids = torch.randint(0, VOCAB, (2, 16))
    balancer = moe.LoadBalancer(tiny, alpha=1e-2)
    with balancer.recording():
        tiny(input_ids=ids)
    aux = balancer.aux_loss()
    assert aux.requires_grad and aux.item() >= 1e-2 * 0.99  # >= alpha x 1 per layer (1 = perfect balance)
    aux.backward()
    router = balancer.routers[0][1]
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    assert moe.LoadBalancer(tiny, alpha=0.0).aux_loss().item() == 0.0


def test_aux_loss_of_a_padded_batch_is_that_of_its_sequences():
    model = models.build("tiny", VOCAB, seed=0, experts_implementation="eager").double()  # grouped_mm: no float64
    batch = _padded_pair()
    balancer = moe.LoadBalancer(model, alpha=1.0)
    with balancer.recording():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    both = balancer.aux_loss().item()
    alone = []
    for i, n in enumerate((3, 30)):
        with balancer.recording():
            model(input_ids=batch["input_ids"][i : i + 1, :n])
        alone.append(balancer.aux_loss().item())
    assert both == pytest.approx(sum(alone) / 2, rel=1e-6)


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
    ids = torch.randint(0, VOCAB, (8, 32))
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
    ids = torch.randint(0, VOCAB, (2, 16))
    with moe.bias_disabled(tiny):
        assert router.e_score_correction_bias.abs().sum() == 0
        plain = models.expert_load(tiny, ids)
    assert torch.equal(router.e_score_correction_bias, torch.arange(8.0))
    assert not models.expert_load(tiny, ids).equals(plain)  # a large bias changes the routing
    assert moe.max_violation(plain).shape == (1,)  # DataFrames are accepted too


# ----------------------------------------------------------------------------- expert_load
def test_expert_load_counts_every_routed_token(tiny):
    x = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(1))
    load = models.expert_load(tiny, x)
    assert list(load.index) == ["layers.1"] and load.shape == (1, 8)
    assert (load.sum(axis=1) == 3 * 20 * tiny.config.num_experts_per_tok).all()
    # Cross-check against the router called directly on the same hidden states.
    captured = {}
    handle = tiny.model.layers[1].mlp.gate.register_forward_hook(lambda m, i, out: captured.update(idx=out[2]))
    tiny.eval()
    with torch.no_grad():
        tiny(input_ids=x)
    handle.remove()
    assert load.loc["layers.1"].tolist() == torch.bincount(captured["idx"].flatten(), minlength=8).tolist()


def test_expert_load_respects_mask_and_training_mode(tiny):
    x = torch.randint(0, VOCAB, (2, 10))
    mask = torch.ones_like(x)
    mask[1, 5:] = 0
    tiny.train()
    load = models.expert_load(tiny, x, attention_mask=mask)
    assert tiny.training and not tiny._forward_hooks and not tiny._forward_pre_hooks  # mode restored, hooks gone
    assert load.to_numpy().sum() == 15 * tiny.config.num_experts_per_tok


def test_expert_load_on_dense_model_is_an_error():
    with pytest.raises(ValueError, match="no MoE router"):
        models.expert_load(models.build_dense(models.config("tiny", VOCAB)), torch.zeros(1, 4, dtype=torch.long))


# ----------------------------------------------------------------------------- edges found by mutation testing
def test_routers_need_both_a_bias_and_top_k():
    """Mixtral's router has a top_k but no correction bias: not a DeepSeek router, so not found."""
    mixtral = transformers.MixtralForCausalLM(transformers.MixtralConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2))
    assert any(hasattr(m, "top_k") for m in mixtral.modules()) and moe.routers(mixtral) == []
    with pytest.raises(ValueError, match=r"^the model has no MoE router \(a top-k router with `e_score_correction_"
                                         r"bias`, as in DeepSeek-V3\); is it a dense model\?$"):
        moe.LoadCounter(mixtral)


def test_layer_label_of_a_router_named_by_its_block_alone():
    assert moe._layer_label("model.layers.3") == "layers.3" and moe._layer_label("gate") == "gate"


def test_max_violation_of_shares_and_of_an_integer_frame():
    assert moe.max_violation([0.5, 0.25, 0.25, 0.0]).item() == pytest.approx(1.0)  # mean 0.25 < 1: no clamp
    frame = pd.DataFrame([[3, 1], [2, 2]])  # int64 counts, as expert_load returns them
    assert moe.max_violation(frame).tolist() == [0.5, 0.0]


def test_sequence_aux_loss_with_more_tokens_than_experts():
    """Shapes differ on every axis (2 sequences x 5 tokens, 3 experts, top-2), against the explicit loops."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 3, generator=gen)
    indices = logits.topk(2, dim=-1).indices
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert moe.sequence_aux_loss(logits, indices, mask).item() == pytest.approx(_reference_aux(logits, indices, mask))


def test_counter_frame_names_its_axes_and_takes_given_counts(tiny):
    counter = moe.LoadCounter(tiny)
    frame = counter.frame(torch.tensor([[4, 0, 1, 0, 0, 0, 0, 3]]))
    assert frame.index.name == "layer" and frame.columns.name == "expert"
    assert list(frame.index) == ["layers.1"] and list(frame.columns) == list(range(8))
    assert frame.loc["layers.1"].tolist() == [4, 0, 1, 0, 0, 0, 0, 3]
    counter.remove()
    counter.remove()  # idempotent


def test_a_router_called_on_flat_tokens_or_positionally_counts_every_token(tiny):
    counter = moe.LoadCounter(tiny)
    router = counter.routers[0][1]
    k = tiny.config.num_experts_per_tok
    with counter.recording():
        router(torch.randn(5, tiny.config.hidden_size))  # already flat: 5 tokens
    assert counter.take().sum().item() == 5 * k and counter.counts.dtype == torch.long
    with counter.recording():
        tiny(torch.randint(0, VOCAB, (2, 6)))  # input_ids only, positionally: no mask, every token real
    assert counter.take().sum().item() == 2 * 6 * k


def test_balancer_defaults_and_load_fraction_by_hand(tiny):
    balancer = moe.LoadBalancer(tiny)
    assert (balancer.gamma, balancer.alpha) == (1e-3, 0.0)  # DeepSeek-V3's bias update speed; no aux loss
    assert balancer.last_load.tolist() == [[0] * 8] and balancer.aux_loss().item() == 0.0
    balancer.counts = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0]])
    balancer.update_bias()
    assert balancer.load_fraction().tolist() == [[1.0] + [0.0] * 7]  # a single routed slot: the whole share
    balancer.counts = torch.tensor([[2, 2, 0, 0, 4, 0, 0, 0]])
    balancer.update_bias()
    assert balancer.load_fraction().tolist() == [[0.25, 0.25, 0, 0, 0.5, 0, 0, 0]]


def test_aux_loss_with_alpha_one_is_the_sum_of_layer_losses(tiny):
    balancer = moe.LoadBalancer(tiny, alpha=1.0)
    with balancer.recording():
        tiny(torch.randint(0, VOCAB, (2, 6)))
    aux = balancer.aux_loss()
    assert aux.item() > 0 and aux.item() == pytest.approx(torch.stack(balancer._aux).sum().item())


def test_load_fraction_is_per_layer():
    balancer = moe.LoadBalancer(models.build("tiny", VOCAB, seed=0))
    balancer.last_load = torch.tensor([[3, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])  # three layers' counts
    assert balancer.load_fraction().tolist() == [[0.75, 0.25, 0, 0], [0, 0, 0, 0], [0.25] * 4]


def test_flat_router_calls_give_the_aux_loss_one_sequence(tiny):
    balancer = moe.LoadBalancer(tiny, alpha=1.0)
    router = balancer.routers[0][1]
    flat = torch.randn(5, tiny.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with balancer.recording():
        logits, _, indices = router(flat)
    expected = moe.sequence_aux_loss(logits, indices, torch.ones(1, 5, dtype=torch.long))  # one run of 5 tokens
    assert balancer.aux_loss().item() == pytest.approx(expected.item())


def test_a_mask_that_does_not_fit_the_router_call_is_not_used(tiny):
    counter = moe.LoadCounter(tiny)
    router, k, h = counter.routers[0][1], tiny.config.num_experts_per_tok, tiny.config.hidden_size
    for stale in (torch.zeros(2, 6, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long)):  # other batch; shorter
        counter._mask = stale
        with counter.recording():
            router(torch.randn(3, 6, h))
        assert counter.take().sum().item() == 3 * 6 * k  # every token counted, none masked out by a stale mask
    counter._capture_mask(tiny, (torch.zeros(2, 6, dtype=torch.long), torch.ones(2, 1, 6, 6)), {})
    assert counter._mask is None  # a 4-D attention mask is not a padding mask


def test_the_mask_is_released_after_every_forward_even_a_failing_one(tiny):
    counter = moe.LoadCounter(tiny)
    mask = torch.tensor([[1, 1, 0, 0]])
    with pytest.raises(IndexError):
        tiny(input_ids=torch.full((1, 4), VOCAB + 5), attention_mask=mask)  # token ids outside the vocabulary
    assert counter._mask is None
    tiny(input_ids=torch.ones(1, 4, dtype=torch.long), attention_mask=mask)
    router = counter.routers[0][1]
    with counter.recording():  # a router called on its own afterwards sees no stale mask
        router(torch.randn(1, 4, tiny.config.hidden_size))
    assert counter.take().sum().item() == 4 * tiny.config.num_experts_per_tok


def test_no_aux_loss_without_gradients(tiny):
    """An evaluation forward under no_grad still counts tokens but collects no aux loss (nothing to train), so
    aux_loss() stays 0 with α > 0, as it is before any forward."""
    balancer = moe.LoadBalancer(tiny, alpha=1.0)
    assert balancer.aux_loss().item() == 0.0
    with torch.no_grad(), balancer.recording():
        tiny(input_ids=torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0)))
    assert balancer.counts.sum().item() == 2 * 6 * tiny.config.num_experts_per_tok
    assert balancer.aux_loss().item() == 0.0


def test_counts_and_losses_stay_on_the_models_device():
    """Counts, real-token masks and the zero aux loss live on the model's device (no host sync), also after the
    model moves; the meta device (shapes only) stands in for a GPU here."""
    meta = models.build("tiny", VOCAB, seed=0).to("meta")
    balancer = moe.LoadBalancer(meta)
    assert balancer.counts.device.type == balancer.aux_loss().device.type == "meta"  # α = 0: a zero, there
    assert moe.LoadBalancer(meta, alpha=1.0).aux_loss().device.type == "meta"  # nothing recorded yet
    for hidden, mask in [(torch.zeros(4, 8, device="meta"), None), (torch.zeros(2, 3, 8, device="meta"), None),
                         (torch.zeros(2, 3, 8, device="meta"), torch.ones(2, 3, dtype=torch.long))]:
        balancer._mask = mask  # flat tokens; no mask; a (CPU) mask of the forward call
        assert balancer._real_tokens(hidden).device.type == "meta"
    model = models.build("tiny", VOCAB, seed=0)
    moved = moe.LoadBalancer(model, alpha=1.0)  # made on the CPU, then the model moves
    model.to("meta")
    with moved.recording():
        moved.routers[0][1](torch.randn(5, model.config.hidden_size, device="meta"))
    assert moved.counts.device.type == moved.aux_loss().device.type == "meta"
