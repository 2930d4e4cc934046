"""LoRA with peft: targets per architecture, every requested weight adapted, hand counts, merge, adapter round trip."""

import re
import shutil

import pandas as pd
import pytest
import safetensors.torch
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

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
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.mlp.experts.down_proj",
        "model.layers.1.mlp.shared_experts.down_proj.weight",
    ]
    assert lora.lora_targets(model, ["q_a_proj", "experts.down_proj"]) == [
        "model.layers.0.self_attn.q_a_proj.weight",
        "model.layers.1.mlp.experts.down_proj",
        "model.layers.1.self_attn.q_a_proj.weight",
    ]


def test_auto_targets_of_llama_are_qkvo_and_mlp():
    expected = [f"model.layers.{i}.self_attn.{m}_proj.weight" for i in (0, 1) for m in "qkvo"]
    expected += [f"model.layers.{i}.mlp.{m}.weight" for i in (0, 1) for m in MLP]
    model = _llama()
    assert lora.lora_targets(model) == sorted(expected)
    wrapped = lora.apply_lora(model, r=R, alpha=2 * R, dropout=0.1)  # plain nn.Linear adapters take dropout
    assert lora.adapted(wrapped) == dict.fromkeys(expected, R)


@pytest.mark.parametrize(
    "targets",
    [
        "auto",
        "dense_mlp",
        "shared_experts",
        "routed_experts",
        ["attention", "shared_experts"],
        ["mlp.gate_proj", "shared_experts.up_proj"],
        ["gate_proj", "up_proj", "down_proj"],
    ],
)
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
        layer = next(
            m
            for m in [owner, *owner.modules()]
            if getattr(m, "parameter_name", "weight") == weight.rsplit(".", 1)[1] and hasattr(m, "lora_B")
        )
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
    model = lora.apply_lora(
        _deepseek(), r=R, alpha=2 * R, targets=["attention", "dense_mlp", "shared_experts", "routed_experts"]
    )
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
    assert (
        lora.group_of("base_model.model.model.layers.1.mlp.experts.base_layer.lora_A.default.weight")
        == "routed_experts"
    )
    assert lora.group_of("model.layers.1.mlp.gate.weight") == "router"
    assert lora.group_of("model.layers.0.mlp.gate_proj.weight") == "dense_mlp"
    assert (
        lora.group_of("base_model.model.model.layers.0.self_attn.o_proj.lora_B.default.weight") == "attention"
    )
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
        return [
            row[0]
            for b in lora.completion_loader(examples, 4, pad_id=0, **kwargs)
            for row in b["input_ids"].tolist()
        ]

    assert order(shuffle=False) == list(range(1, 9))
    shuffled = order()  # shuffle=True, seed=0 by default
    assert sorted(shuffled) == list(range(1, 9)) and shuffled != list(range(1, 9))
    assert shuffled == order(seed=0) == order(shuffle=True, seed=0)  # the same seed, the same order
    assert order(seed=1) != shuffled
    with pytest.raises(ValueError, match="^batch_size must be a positive int, got 0$"):
        lora.completion_loader(examples, 0, pad_id=0)
    with pytest.raises(
        ValueError, match="^completion_loader needs examples, each with a non-empty completion$"
    ):
        lora.completion_loader([], 1, pad_id=0)


def test_apply_lora_defaults_and_the_bounds_of_alpha_and_dropout():
    model = lora.apply_lora(_deepseek(), targets="attention")
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout, config.task_type) == (16, 32, 0.0, "CAUSAL_LM")
    assert set(lora.adapted(model).values()) == {16}
    assert (
        lora.apply_lora(_deepseek(), r=R, alpha=0.5, dropout=0.99, targets="attention")
        .peft_config["default"]
        .lora_alpha
        == 0.5
    )  # small positive alpha and dropout just below 1 are allowed
    for alpha, dropout in [(0, 0.0), (-1, 0.0), (8, 1.0), (8, -0.1)]:
        with pytest.raises(
            ValueError, match=f"^need alpha > 0 and 0 <= dropout < 1, got alpha={alpha}, dropout={dropout}$"
        ):
            lora.apply_lora(_deepseek(), r=R, alpha=alpha, dropout=dropout)


def test_check_adapters_names_what_is_missing_extra_or_of_another_rank():
    model = lora.apply_lora(_deepseek(), r=R, targets="attention")
    got = lora.adapted(model)
    lora._check_adapters(model, dict(got))  # exactly what was asked: no error
    names = sorted(got)
    fake = {f"model.fake.{i}.weight": R for i in range(7)}
    want = {**{n: R for n in names[1:]}, **fake, names[2]: 8}  # 7 missing, names[0] not requested, one rank 8
    message = (
        f"peft did not adapt what was asked: without adapter {sorted(fake)[:6]} ...; "
        f"not requested {[names[0]]}; other rank {[(names[2], R)]}"
    )
    with pytest.raises(RuntimeError, match=f"^{re.escape(message)}$"):
        lora._check_adapters(model, want)
    six = dict(list(fake.items())[:6])
    with pytest.raises(
        RuntimeError, match=re.escape(f"without adapter {sorted(six)}; not requested []; other rank []")
    ):
        lora._check_adapters(model, {**got, **six})  # only missing ones (six: no "...")
    with pytest.raises(RuntimeError, match=re.escape(f"not requested {[names[0]]}; other rank []")):
        lora._check_adapters(model, {n: R for n in names[1:]})  # only an extra one
    with pytest.raises(RuntimeError, match=re.escape(f"other rank {[(names[0], R)]}")):
        lora._check_adapters(model, {**got, names[0]: 2})  # only a wrong rank


def test_target_errors_are_named_in_full():
    deepseek_leaves = "down_proj, gate_proj, gate_up_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj, q_a_proj, q_b_proj, up_proj"
    message = (
        f"target 'q_proj' matches nothing in DeepseekV3ForCausalLM; groups: attention, dense_mlp, "
        f"shared_experts, routed_experts; module and parameter names: {deepseek_leaves}"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        lora.lora_targets(_deepseek(), ["attention", "q_proj"])
    # a group the model lacks, asked for by name: "auto" skips it, a list does not
    message = (
        "target 'shared_experts' matches nothing in LlamaForCausalLM; groups: attention, dense_mlp; "
        "module and parameter names: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        lora.lora_targets(_llama(), ["attention", "shared_experts"])
    with pytest.raises(ValueError, match=r"^targets is empty; pass 'auto', a group or module names$"):
        lora.lora_targets(_deepseek(), [])
    with pytest.raises(TypeError, match=r"^targets must be names \(str\), got 3$"):
        lora.lora_targets(_deepseek(), ["attention", 3])
    with pytest.raises(
        ValueError, match="^the model already carries LoRA adapters; start from the base model$"
    ):
        lora.lora_targets(lora.apply_lora(_deepseek(), r=R, targets="attention"))
    # nothing LoRA can adapt: an embedding only, or a Linear outside every group (its name says no part of a model)
    for model, name in [
        (torch.nn.Embedding(4, 2), "Embedding"),
        (torch.nn.Sequential(torch.nn.Linear(2, 2)), "Sequential"),
    ]:
        with pytest.raises(
            ValueError, match=rf"^{name} has no layer LoRA can adapt \(no nn.Linear, no expert tensor\)$"
        ):
            lora.lora_targets(model)
    assert lora.lora_targets(_llama(), "attention") == lora.lora_targets(_llama(), ["attention"])
    assert set(lora.GROUPS) == {lora.group_of(n) for n in lora.lora_targets(_deepseek())}


def test_bounds_of_r_and_the_dropout_error_in_full():
    assert set(lora.adapted(lora.apply_lora(_deepseek(), r=1, targets="attention")).values()) == {
        1
    }  # the least r
    for r in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match=f"^r must be a positive int, got {r!r}$"):
            lora.apply_lora(_deepseek(), r=r, targets="attention")
    message = (
        "dropout=0.1: peft applies no dropout to weights adapted as parameters (dense_mlp, routed_experts, "
        "shared_experts here); use dropout=0.0 or leave them out of targets"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        lora.apply_lora(_deepseek(), dropout=0.1)
    message = message.replace("dense_mlp, routed_experts, shared_experts", "routed_experts")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        lora.apply_lora(_deepseek(), dropout=0.1, targets=["attention", "routed_experts"])


def test_dropout_reaches_every_nn_linear_adapter():
    """peft's LoRA layer holds its dropout per adapter: nn.Dropout(p) for p > 0, nn.Identity for 0."""
    for dropout, kind in [(0.1, torch.nn.Dropout), (0.0, torch.nn.Identity)]:
        model = lora.apply_lora(_llama(), r=R, alpha=2 * R, dropout=dropout)
        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        assert len(layers) == len(lora.adapted(model)) == 14
        assert model.peft_config["default"].lora_dropout == dropout
        for layer in layers:
            assert type(layer.lora_dropout["default"]) is kind
            assert getattr(layer.lora_dropout["default"], "p", 0.0) == dropout


def test_check_adapters_shows_six_of_each_list():
    model = lora.apply_lora(_deepseek(), r=R, targets="attention")
    names = sorted(lora.adapted(model))
    assert len(names) == 10
    with pytest.raises(
        RuntimeError, match=re.escape(f"without adapter []; not requested {names[:6]}; other rank []")
    ):
        lora._check_adapters(model, dict.fromkeys(names[7:], R))  # 7 not requested
    with pytest.raises(
        RuntimeError, match=re.escape(f"not requested []; other rank {[(n, R) for n in names[:6]]}")
    ):
        lora._check_adapters(model, dict.fromkeys(names, 8))  # 10 of another rank


@pytest.fixture(scope="module")
def saved_attention_adapter(tmp_path_factory):
    """An attention adapter (10 weights: 20 tensors) saved once; the tests copy and edit its file."""
    folder = tmp_path_factory.mktemp("adapter")
    model = lora.apply_lora(_deepseek(), r=R, alpha=2 * R, targets="attention")
    _randomize_adapters(model)
    model.save_pretrained(str(folder))
    return folder


def _edited_copy(source, folder, edit):
    shutil.copytree(source, folder)
    file = folder / "adapter_model.safetensors"
    tensors = safetensors.torch.load_file(str(file))
    edit(tensors)
    safetensors.torch.save_file(tensors, str(file))
    return folder


def test_load_adapter_is_for_inference_unless_asked(saved_attention_adapter):
    """peft's from_pretrained: inference mode (nothing trains) by default, the adapters train with is_trainable."""
    frozen = lora.load_adapter(_deepseek(), saved_attention_adapter)
    assert not any(p.requires_grad for p in frozen.parameters())
    trainable = lora.load_adapter(_deepseek(), saved_attention_adapter, is_trainable=True)
    names = sorted(n for n, p in trainable.named_parameters() if p.requires_grad)
    assert len(names) == 20 and all(".lora_A." in n or ".lora_B." in n for n in names)


@pytest.mark.filterwarnings("ignore:Found missing adapter keys")
def test_load_adapter_names_up_to_four_of_each_kind_of_loss(saved_attention_adapter, tmp_path, monkeypatch):
    keys = sorted(safetensors.torch.load_file(str(saved_attention_adapter / "adapter_model.safetensors")))
    bogus = [
        f"base_model.model.model.layers.0.self_attn.q_z{i}_proj.lora_A.weight" for i in range(5)
    ]  # no such modules

    def add_bogus(tensors):
        tensors.update({b: torch.zeros(1) for b in bogus})

    def drop_five(tensors):
        for k in keys[:5]:
            del tensors[k]

    cases = [("extra", add_bogus, sorted(bogus)[:4], [], []), ("short", drop_five, [], keys[:4], [])]
    for name, edit, lost, unknown, changed in cases:
        folder = _edited_copy(saved_attention_adapter, tmp_path / name, edit)
        message = (
            f"adapter in {name} did not load as saved: not loaded {lost}, not in the file {unknown}, "
            f"different values {changed}"
        )
        with pytest.raises(RuntimeError, match=f"^{re.escape(message)}$"):
            lora.load_adapter(_deepseek(), folder)
    # values peft changed while loading (it does not on this model: a stand-in state dict with five changed)
    real = lora.get_peft_model_state_dict
    monkeypatch.setattr(
        lora,
        "get_peft_model_state_dict",
        lambda model: {k: v + (k in keys[-5:]) for k, v in real(model).items()},
    )
    message = (
        f"adapter in {saved_attention_adapter.name} did not load as saved: not loaded [], not in the file [], "
        f"different values {keys[-5:-1]}"
    )
    with pytest.raises(RuntimeError, match=f"^{re.escape(message)}$"):
        lora.load_adapter(_deepseek(), saved_attention_adapter)


class _Toy(torch.nn.Module):
    """A hand-countable model: a bf16 embedding (10, trainable), attention 2 -> 3 (6 of 9 trainable), one scale."""

    def __init__(self):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(5, 2).to(torch.bfloat16)
        self.self_attn = torch.nn.Linear(2, 3)
        self.self_attn.bias.requires_grad_(False)
        self.scale = torch.nn.Parameter(
            torch.ones(1), requires_grad=False
        )  # "other", a group of one parameter


def test_trainable_report_of_a_hand_counted_model():
    want = pd.DataFrame(
        {
            "parameters": [9, 10, 1, 20],
            "trainable": [6, 10, 0, 16],
            "trainable_%": [100 * 6 / 9, 100.0, 0.0, 80.0],
            "trainable_mb": [6 * 4 / 2**20, 10 * 2 / 2**20, 0.0, 44 / 2**20],
        },
        index=["attention", "embeddings", "other", "total"],
    )  # groups without parameters left out
    pd.testing.assert_frame_equal(lora.trainable_report(_Toy()), want)
    assert lora.trainable_report(_llama()).index.tolist() == [
        "attention",
        "dense_mlp",
        "embeddings",
        "other",
        "total",
    ]


def test_training_memory_weights_activations_per_token_and_no_gradients_left():
    model = lora.apply_lora(_deepseek(), r=R, alpha=2 * R, targets="attention")
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    ids = _batch()["input_ids"]
    two = lora.training_memory(model, {"input_ids": ids, "labels": ids})
    assert all(p.grad is None for p in model.parameters())  # freed, not zero tensors that keep their memory
    assert two["weights"] == 4 * sum(p.numel() for p in model.parameters()) / 2**20  # float32
    four = lora.training_memory(model, {"input_ids": ids.repeat(2, 1), "labels": ids.repeat(2, 1)})
    # saved activations are per token: twice the rows, twice the bytes (within 1%: the rotary tables are shared);
    # counting the weights autograd keeps (more than the activations here) would break the ratio
    assert four["activations"] == pytest.approx(2 * two["activations"], rel=0.01)
    assert two["weights"] > two["activations"]


def test_merge_accepts_a_gap_equal_to_atol_and_refuses_nan():
    def adapted_model():
        model = lora.apply_lora(_deepseek(), r=R, alpha=2 * R, targets="attention")
        _randomize_adapters(model)
        return model

    _, gap = lora.merge(adapted_model(), _batch())
    assert lora.merge(adapted_model(), _batch(), atol=gap)[1] == gap  # deterministic on a CPU: the same gap
    with pytest.raises(RuntimeError, match=r"^merged logits differ from the adapter's by .* > atol=nan$"):
        lora.merge(adapted_model(), _batch(), atol=float("nan"))


def test_completion_loader_bounds_of_batch_size():
    examples = [([1], [2]), ([3], [4, 5])]
    assert [len(b["input_ids"]) for b in lora.completion_loader(examples, 1, pad_id=0, shuffle=False)] == [
        1,
        1,
    ]
    assert [len(b["input_ids"]) for b in lora.completion_loader(examples, 5, pad_id=0)] == [
        2
    ]  # above the size
    for bad in (True, 1.0, -1):
        with pytest.raises(ValueError, match=f"^batch_size must be a positive int, got {bad!r}$"):
            lora.completion_loader(examples, bad, pad_id=0)


def test_a_bare_expert_tensor_is_named_by_itself():
    """A top-level 3-D parameter "experts" (no dot in its name) is a routed-experts weight and its own leaf."""
    model = torch.nn.Module()
    model.experts = torch.nn.Parameter(torch.zeros(2, 3, 4))
    assert lora.lora_targets(model) == lora.lora_targets(model, "experts") == ["experts"]
    message = "target 'gate_proj' matches nothing in Module; groups: routed_experts; module and parameter names: experts"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        lora.lora_targets(model, "gate_proj")
