"""LoRA with peft: targets per architecture, every requested weight adapted, hand counts, merge, adapter round trip."""

import re

import pytest
import safetensors.torch
import torch
from peft import PeftModel

from cookbook import models, train
from cookbook.finetune import lora

VOCAB = 96
R = 4
ATTENTION = ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")  # MLA with q_lora_rank set
MLP = ("gate_proj", "up_proj", "down_proj")


def _deepseek(seed=0):
    return models.build("tiny", VOCAB, seed=seed)  # layer 0 dense, layer 1 MoE (8 experts + 1 shared)


def _llama():
    return models.build_dense(models.config("tiny", VOCAB), seed=0)


def _batch(seed=0, n=2, seq_len=12):
    gen = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, VOCAB, (n, seq_len), generator=gen)}


def _randomize_adapters(model, seed=1):
    """LoRA's B starts at zero (the adapter is the identity); give A and B values so the adapters matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


# the hand-written expectation of what "auto" covers on the tiny DeepSeek-V3 (2 layers, first one dense)
DEEPSEEK_GROUPS = {
    "attention": [f"model.layers.{i}.self_attn.{m}.weight" for i in (0, 1) for m in ATTENTION],
    "dense_mlp": [f"model.layers.0.mlp.{m}.weight" for m in MLP],
    "shared_experts": [f"model.layers.1.mlp.shared_experts.{m}.weight" for m in MLP],
    "routed_experts": ["model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj"],
}


def test_auto_targets_of_deepseek_v3_cover_mla_dense_shared_and_routed_experts():
    model = _deepseek()
    assert lora.lora_targets(model) == sorted(sum(DEEPSEEK_GROUPS.values(), []))
    for group, names in DEEPSEEK_GROUPS.items():
        assert lora.lora_targets(model, group) == sorted(names)
    assert lora.lora_targets(model, "mlp.down_proj") == ["model.layers.0.mlp.down_proj.weight"]
    assert lora.lora_targets(model, "down_proj") == [  # peft's suffix rule: the routed experts' tensor too
        "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.experts.down_proj",
        "model.layers.1.mlp.shared_experts.down_proj.weight"]
    assert lora.lora_targets(model, ["q_a_proj", "experts.down_proj"]) == [
        "model.layers.0.self_attn.q_a_proj.weight", "model.layers.1.mlp.experts.down_proj",
        "model.layers.1.self_attn.q_a_proj.weight"]


def test_auto_targets_of_llama_are_qkvo_and_mlp():
    expected = [f"model.layers.{i}.self_attn.{m}_proj.weight" for i in (0, 1) for m in "qkvo"]
    expected += [f"model.layers.{i}.mlp.{m}.weight" for i in (0, 1) for m in MLP]
    model = _llama()
    assert lora.lora_targets(model) == sorted(expected)
    wrapped = lora.apply_lora(model, r=R, alpha=2 * R, dropout=0.1)  # plain nn.Linear adapters take dropout
    assert lora.adapted(wrapped) == dict.fromkeys(expected, R)


@pytest.mark.parametrize("targets", ["auto", "dense_mlp", "shared_experts", "routed_experts",
                                     ["attention", "shared_experts"], ["mlp.gate_proj", "shared_experts.up_proj"],
                                     ["gate_proj", "up_proj", "down_proj"]])
def test_every_requested_weight_carries_an_adapter_and_nothing_else(targets):
    """peft 0.21 alone turns gate/up/down_proj targets into the routed experts (huggingface/peft#3711)."""
    want = lora.lora_targets(_deepseek(), targets)
    model = lora.apply_lora(_deepseek(), r=R, alpha=2 * R, targets=targets)
    assert lora.adapted(model) == dict.fromkeys(want, R)
    assert not model.peft_config["default"].rank_pattern  # no rank doubled behind the user's back


def test_each_adapter_is_in_the_forward_path():
    """Perturbing only one adapter's B changes the logits, for every weight "auto" adapts."""
    want = lora.lora_targets(_deepseek())
    model = lora.apply_lora(_deepseek(), r=R, alpha=2 * R)
    batch, base = _batch(), _logits(model, _batch())
    for weight in want:
        owner = model.get_submodule("base_model.model." + weight.rsplit(".", 1)[0])
        layer = next(m for m in [owner, *owner.modules()] if getattr(m, "parameter_name", "weight") ==
                     weight.rsplit(".", 1)[1] and hasattr(m, "lora_B"))
        with torch.no_grad():
            layer.lora_B["default"].weight.fill_(0.05)
            changed = not torch.allclose(_logits(model, batch), base)
            layer.lora_B["default"].weight.zero_()
        assert changed, weight


def test_trainable_fraction_matches_a_hand_count():
    # tiny: hidden 64, q_lora_rank 32, 4 heads x (16 nope + 8 rope) = 96 query dims, kv_lora_rank 32 + 8 rope,
    # 4 x (16 + 16) = 128 key/value dims, o_proj 64 -> 64; dense MLP 64 <-> 192; shared expert 64 <-> 32;
    # 8 routed experts: gate_up 64 -> 2 x 32, down 32 -> 64. A LoRA pair on in -> out has r x (in + out).
    attention = (64 + 32) + (32 + 96) + (64 + 40) + (32 + 128) + (64 + 64)
    per_rank = 2 * attention + 3 * (64 + 192) + 3 * (64 + 32) + 8 * ((64 + 64) + (32 + 64))
    base = sum(p.numel() for p in _deepseek().parameters())
    report = lora.trainable_report(lora.apply_lora(_deepseek(), r=R, alpha=2 * R))
    assert report.loc["total", "trainable"] == R * per_rank == 16320
    assert report.loc["total", "parameters"] == base + R * per_rank
    assert report.loc["routed_experts", "trainable"] == R * 8 * (128 + 96)
    assert report.loc["embeddings", "trainable"] == 0 and report.loc["router", "trainable"] == 0
    assert report.loc["total", "trainable_%"] == pytest.approx(100 * R * per_rank / (base + R * per_rank))
    assert report.loc["total", "trainable_mb"] == pytest.approx(4 * R * per_rank / 2**20)  # float32


def test_a_fresh_adapter_is_the_identity_and_training_moves_only_adapters():
    batch = {**_batch(n=4, seq_len=16)}
    base_loss = train.token_loss(_deepseek(), {**batch, "labels": batch["input_ids"]}).item() / (4 * 15)
    model = lora.apply_lora(_deepseek(), r=R, alpha=2 * R)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    config = train.TrainConfig(steps=2, lr=1e-2, log_interval=1, progress=False, device="cpu", moe_gamma=0.0)
    history = train.Trainer(model, [batch], config=config).fit()
    assert history["loss"].iloc[0] == pytest.approx(base_loss, rel=1e-6)  # B = 0: the base model's loss
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if not p.requires_grad)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_merge_keeps_the_logits_and_returns_the_plain_model():
    model = lora.apply_lora(_deepseek(), r=R, alpha=2 * R)
    _randomize_adapters(model)
    batch = _batch()
    adapted_logits = _logits(model, batch)
    assert not torch.allclose(adapted_logits, _logits(_deepseek(), batch))  # the adapters do something
    merged, gap = lora.merge(model, batch)
    assert gap <= 1e-4
    assert type(merged).__name__ == "DeepseekV3ForCausalLM" and not lora.adapted(merged)
    assert torch.allclose(_logits(merged, batch), adapted_logits, atol=1e-4)


def test_merge_without_parity_is_undone():
    model = lora.apply_lora(_deepseek(), r=R, alpha=2 * R)
    _randomize_adapters(model)
    before = _logits(model, _batch())
    with pytest.raises(RuntimeError, match="atol"):
        lora.merge(model, _batch(), atol=-1.0)
    assert lora.adapted(model) and torch.allclose(_logits(model, _batch()), before, atol=1e-6)


def test_adapter_round_trip_onto_a_fresh_base(tmp_path):
    model = lora.apply_lora(_deepseek(), r=R, alpha=2 * R, targets=["attention", "dense_mlp", "shared_experts",
                                                                       "routed_experts"])
    _randomize_adapters(model)
    batch, want = _batch(), _logits(model, _batch())
    model.save_pretrained(str(tmp_path))
    loaded = lora.load_adapter(_deepseek(), tmp_path)
    assert lora.adapted(loaded) == lora.adapted(model)
    assert torch.equal(_logits(loaded, batch), want)
    # the fix lives in the saved config, so plain peft rebuilds the same adapters (no size mismatch)
    plain = PeftModel.from_pretrained(_deepseek(), str(tmp_path))
    assert lora.adapted(plain) == lora.adapted(model) and torch.equal(_logits(plain, batch), want)


def test_load_adapter_reports_tensors_that_did_not_load(tmp_path):
    model = lora.apply_lora(_deepseek(), r=R, alpha=2 * R, targets="attention")
    model.save_pretrained(str(tmp_path))
    file = tmp_path / "adapter_model.safetensors"
    tensors = safetensors.torch.load_file(str(file))
    key = next(k for k in tensors if "q_a_proj.lora_A" in k)
    tensors[key.replace("q_a_proj", "q_z_proj")] = tensors.pop(key)  # a weight the base model does not have
    safetensors.torch.save_file(tensors, str(file))
    with pytest.raises(RuntimeError, match="not loaded"):
        lora.load_adapter(_deepseek(), tmp_path)


def test_bad_targets_and_settings_are_named():
    with pytest.raises(ValueError, match=r"'q_proj' matches nothing.*q_a_proj"):
        lora.lora_targets(_deepseek(), ["q_proj"])  # MLA with q_lora_rank has no q_proj
    with pytest.raises(ValueError, match="targets is empty"):
        lora.lora_targets(_deepseek(), [])
    with pytest.raises(ValueError, match=r"dropout=0.1.*dense_mlp.*routed_experts.*shared_experts"):
        lora.apply_lora(_deepseek(), dropout=0.1)
    assert lora.adapted(lora.apply_lora(_deepseek(), dropout=0.1, targets="attention"))  # fine on nn.Linear
    with pytest.raises(ValueError, match="r must be"):
        lora.apply_lora(_deepseek(), r=0)
    with pytest.raises(ValueError, match="already carries LoRA"):
        lora.apply_lora(lora.apply_lora(_deepseek(), r=R))


def test_group_of_reads_base_and_peft_names():
    assert lora.group_of("model.layers.1.mlp.shared_experts.up_proj.weight") == "shared_experts"
    assert lora.group_of("base_model.model.model.layers.1.mlp.experts.base_layer.lora_A.default.weight") == \
        "routed_experts"
    assert lora.group_of("model.layers.1.mlp.gate.weight") == "router"
    assert lora.group_of("model.layers.0.mlp.gate_proj.weight") == "dense_mlp"
    assert lora.group_of("base_model.model.model.layers.0.self_attn.o_proj.lora_B.default.weight") == "attention"
    assert lora.group_of("lm_head.weight") == "embeddings" and lora.group_of("model.norm.weight") == "other"


def test_completion_loader_masks_the_prompt_and_the_padding():
    examples = [([5, 6, 7], [8, 9]), ([5], [10, 11, 12, 13])]
    batch = next(iter(lora.completion_loader(examples, 2, pad_id=0, shuffle=False)))
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 10, 11, 12, 13]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 8, 9], [-100, 10, 11, 12, 13]]
    padded = next(iter(lora.completion_loader([([5], [6]), ([5, 6], [7, 8])], 2, pad_id=0, shuffle=False)))
    assert padded["labels"].tolist() == [[-100, 6, -100, -100], [-100, -100, 7, 8]]
    assert padded["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    with pytest.raises(ValueError, match="non-empty completion"):
        lora.completion_loader([([1], [])], 1, pad_id=0)


def test_training_memory_counts_gradients_and_adam_of_trainable_weights_only():
    batch = {**_batch(), "labels": _batch()["input_ids"]}
    full = lora.training_memory(_deepseek(), batch)
    model = lora.apply_lora(_deepseek(), r=R, alpha=2 * R, targets="attention")
    small = lora.training_memory(model, batch)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert small["gradients"] == pytest.approx(4 * trainable / 2**20)
    assert small["adamw"] == pytest.approx(8 * trainable / 2**20)
    assert full["gradients"] == pytest.approx(4 * sum(p.numel() for p in _deepseek().parameters()) / 2**20)
    assert 0 < small["activations"] < full["activations"]  # frozen layers keep no inputs for weight gradients
    assert small["total"] == pytest.approx(sum(v for k, v in small.items() if k != "total"))


def test_completion_loader_pads_with_pad_id_and_shuffles_by_seed():
    examples = [([i], [i + 50]) for i in range(1, 9)]
    padded = next(iter(lora.completion_loader([([5], [6]), ([5, 6], [7, 8])], 2, pad_id=3, shuffle=False)))
    assert padded["input_ids"].tolist() == [[5, 6, 3, 3], [5, 6, 7, 8]]
    def order(**kwargs):
        return [row[0] for b in lora.completion_loader(examples, 4, pad_id=0, **kwargs) for row in b["input_ids"].tolist()]

    assert order(shuffle=False) == list(range(1, 9))
    shuffled = order()  # shuffle=True, seed=0 by default
    assert sorted(shuffled) == list(range(1, 9)) and shuffled != list(range(1, 9))
    assert shuffled == order(seed=0) == order(shuffle=True, seed=0)  # the same seed, the same order
    assert order(seed=1) != shuffled
    with pytest.raises(ValueError, match="^batch_size must be a positive int, got 0$"):
        lora.completion_loader(examples, 0, pad_id=0)
    with pytest.raises(ValueError, match="^completion_loader needs examples, each with a non-empty completion$"):
        lora.completion_loader([], 1, pad_id=0)


def test_apply_lora_defaults_and_the_bounds_of_alpha_and_dropout():
    model = lora.apply_lora(_deepseek(), targets="attention")
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout, config.task_type) == (16, 32, 0.0, "CAUSAL_LM")
    assert set(lora.adapted(model).values()) == {16}
    assert lora.apply_lora(_deepseek(), r=R, alpha=0.5, dropout=0.99, targets="attention").peft_config[
        "default"].lora_alpha == 0.5  # small positive alpha and dropout just below 1 are allowed
    for alpha, dropout in [(0, 0.0), (-1, 0.0), (8, 1.0), (8, -0.1)]:
        with pytest.raises(ValueError, match=f"^need alpha > 0 and 0 <= dropout < 1, got alpha={alpha}, "
                                             f"dropout={dropout}$"):
            lora.apply_lora(_deepseek(), r=R, alpha=alpha, dropout=dropout)


def test_check_adapters_names_what_is_missing_extra_or_of_another_rank():
    model = lora.apply_lora(_deepseek(), r=R, targets="attention")
    got = lora.adapted(model)
    lora._check_adapters(model, dict(got))  # exactly what was asked: no error
    names = sorted(got)
    fake = {f"model.fake.{i}.weight": R for i in range(7)}
    want = {**{n: R for n in names[1:]}, **fake, names[2]: 8}  # 7 missing, names[0] not requested, one rank 8
    message = (f"peft did not adapt what was asked: without adapter {sorted(fake)[:6]} ...; "
               f"not requested {[names[0]]}; other rank {[(names[2], R)]}")
    with pytest.raises(RuntimeError, match=f"^{re.escape(message)}$"):
        lora._check_adapters(model, want)
    six = dict(list(fake.items())[:6])
    with pytest.raises(RuntimeError, match=re.escape(f"without adapter {sorted(six)}; not requested []; other rank []")):
        lora._check_adapters(model, {**got, **six})  # only missing ones (six: no "...")
    with pytest.raises(RuntimeError, match=re.escape(f"not requested {[names[0]]}; other rank []")):
        lora._check_adapters(model, {n: R for n in names[1:]})  # only an extra one
    with pytest.raises(RuntimeError, match=re.escape(f"other rank {[(names[0], R)]}")):
        lora._check_adapters(model, {**got, names[0]: 2})  # only a wrong rank
