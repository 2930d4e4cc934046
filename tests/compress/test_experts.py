"""Int8 routed experts: the round-trip bound by hand, the same forward (and kernel) as transformers' experts."""

import copy
import re
import threading

import pytest
import torch

from cookbook import compress, models
from tests.compress.tiny import VOCAB, needs_torchao, tiny


def test_int8_rows_round_trip_is_within_half_a_step():
    w = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(0))
    w[0, 1] = 0.0  # an all-zero row
    q, scale = compress.int8_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (3, 5, 1)
    step = w.abs().amax(-1, keepdim=True) / 127.5  # hand-computed scale
    assert torch.allclose(scale[step > 0], step[step > 0])
    assert ((q.float() * scale - w).abs() <= step / 2 + 1e-6).all()  # the nearest step (a row max: half of one)
    assert (q[0, 1] == 0).all()
    assert (q.int().abs().amax(-1)[step.squeeze(-1) > 0] >= 127).all()  # each row's largest |w| uses the full range


@needs_torchao
def test_int8_rows_is_torchaos_int8_weight_only_recipe():
    linear = torch.nn.Sequential(torch.nn.Linear(64, 24, bias=False))
    codes, scale = compress.int8_rows(linear[0].weight)
    stored = compress.quantize(linear, "int8-weight-only")[0].weight
    assert torch.equal(codes, stored.qdata) and torch.allclose(scale, stored.scale)


def test_int8_rows_refuses_integer_weights():
    with pytest.raises(TypeError, match="floating-point"):
        compress.int8_rows(torch.ones(2, 2, dtype=torch.int64))


def _moe_inputs(experts, n=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, experts.gate_up_proj.shape[-1], generator=gen)
    index = torch.stack([torch.randperm(experts.num_experts, generator=gen)[:2] for _ in range(n)])
    weights = torch.rand(n, 2, generator=gen)
    return hidden, index, weights


@pytest.mark.parametrize("implementation", ["grouped_mm", "eager"])
def test_int8_experts_run_the_original_forward_on_the_dequantized_weights(implementation):
    model = tiny()
    model.config._experts_implementation = implementation  # transformers' dispatch: Int8Experts follows it
    original = model.model.layers[1].mlp.experts
    quantized = compress.Int8Experts(original)
    reference = copy.deepcopy(original)  # transformers' own experts module, holding the dequantized weights
    with torch.no_grad():
        reference.gate_up_proj.copy_(quantized.dequantized("gate_up_proj"))
        reference.down_proj.copy_(quantized.dequantized("down_proj"))
    args = _moe_inputs(original)
    with torch.no_grad():
        assert torch.equal(quantized(*args), reference(*args))  # the same kernel on the same weights
        full = original(*args)
        error = (quantized(*args) - full).norm() / full.norm()
    assert 0 < error < 0.02  # int8 per row: well under 2% relative error on the layer output
    assert set(quantized.state_dict()) == {"gate_up_proj_int8", "gate_up_proj_scale", "down_proj_int8",
                                           "down_proj_scale"}  # no float weights left behind
    assert type(original.gate_up_proj) is torch.nn.Parameter  # the module it was built from is untouched


def test_quantize_experts_replaces_every_moe_layer_and_nothing_in_a_dense_model():
    model = tiny()
    assert compress.quantize_experts(model) == ["model.layers.1.mlp.experts"]
    assert isinstance(model.model.layers[1].mlp.experts, compress.Int8Experts)
    assert model.model.layers[1].mlp.experts.gate_up_proj_int8.dtype == torch.int8
    dense_twin = models.build_dense(models.config("tiny", VOCAB))
    assert compress.quantize_experts(dense_twin) == []


def test_int8_experts_refuses_modules_it_cannot_read():
    with pytest.raises(TypeError, match="^Linear has no 3-D gate_up_proj/down_proj parameters to quantize$"):
        compress.Int8Experts(torch.nn.Linear(4, 4))
    experts = copy.deepcopy(tiny().model.layers[1].mlp.experts)
    experts.is_transposed = True
    with pytest.raises(NotImplementedError, match=re.escape(
            "DeepseekV3Experts stores its experts transposed (is_transposed=True): Int8Experts keeps one scale per "
            "output row of untransposed weights") + "$"):
        compress.Int8Experts(experts)
    with pytest.raises(ValueError, match="^quantize_experts replaces submodules: pass the model that holds the "
                                         "experts module$"):
        compress.quantize_experts(tiny().model.layers[1].mlp.experts)
    with pytest.raises(ValueError, match="valid: gate_up_proj, down_proj"):
        compress.Int8Experts(tiny().model.layers[1].mlp.experts).dequantized("up_proj")


def test_one_quantized_model_is_safe_to_share_between_threads():
    # two server threads on one int8 model: each call must see its own dequantized weights, never lose them to
    # the other thread (the old lend-and-delete forward raised AttributeError: no attribute 'gate_up_proj')
    model = tiny().eval()
    compress.quantize_experts(model)
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, VOCAB, (2, 12), generator=gen) for _ in range(2)]
    with torch.no_grad():
        expected = [model(input_ids=ids).logits for ids in inputs]
    start, errors, results = threading.Barrier(2), [], {0: [], 1: []}

    def work(k):
        start.wait()
        try:
            with torch.no_grad():
                for _ in range(30):
                    results[k].append(model(input_ids=inputs[k]).logits)
        except Exception as err:  # noqa: BLE001 - collected and reported by the main thread
            errors.append(repr(err))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and errors == []
    for k in range(2):
        assert len(results[k]) == 30 and all(torch.equal(r, expected[k]) for r in results[k])
    experts = model.model.layers[1].mlp.experts
    assert not {"gate_up_proj", "down_proj"} & set(experts.kernel.__dict__)  # no call left its weights behind


# --- issue 30: the cases mutation testing asks for (hand-computed codes, every dimension different) -------------

def test_int8_rows_codes_by_hand():
    # scale = 3 / 127.5, so 1 / scale = 42.5 exactly: 3 -> 127.5 rounds (half to even) to 128, clamped to 127;
    # -3 -> -127.5 -> -128 (kept: the int8 range's lower end); 0.3 -> 12.75 -> 13; an all-zero row keeps codes 0
    # with the smallest positive scale (float32's eps), never 0 (0 x 1/0 would be NaN)
    w = torch.tensor([[3.0, -1.5, 0.75, 0.0], [-3.0, 1.5, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0]])
    codes, scale = compress.int8_rows(w)
    assert codes.tolist() == [[127, -64, 32, 0], [-128, 64, 13, 0], [0, 0, 0, 0]]
    assert scale.shape == (3, 1) and scale.dtype == torch.float32
    assert scale.flatten().tolist() == pytest.approx([3 / 127.5, 3 / 127.5, torch.finfo(torch.float32).eps], rel=1e-6)


def test_int8_rows_of_bf16_weights_have_fp32_scales():
    w = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)).bfloat16()
    codes, scale = compress.int8_rows(w)
    assert scale.dtype == torch.float32 and codes.dtype == torch.int8
    expected_codes, expected_scale = compress.int8_rows(w.float())  # bf16 -> fp32 is exact: the same numbers
    assert torch.equal(codes, expected_codes) and torch.equal(scale, expected_scale)


class _Fused(torch.nn.Module):
    """Parameters named like fused experts, of the given dimensions (None: absent); a forward of its own."""

    def __init__(self, gate_up=(2, 4, 6), down=(2, 6, 2)):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        if gate_up:
            self.gate_up_proj = torch.nn.Parameter(torch.randn(gate_up, generator=gen))
        if down:
            self.down_proj = torch.nn.Parameter(torch.randn(down, generator=gen))

    def forward(self, hidden_states, top_k_index, top_k_weights):
        return hidden_states @ self.gate_up_proj[0].T @ self.gate_up_proj[1]


def test_is_fused_experts_needs_both_weights_3d_on_the_module_itself():
    assert compress.is_fused_experts(_Fused())
    assert not compress.is_fused_experts(_Fused(down=None))  # one of the two is not enough
    assert not compress.is_fused_experts(_Fused(gate_up=None))
    assert not compress.is_fused_experts(_Fused(gate_up=(4, 6)))  # 2-D: an nn.Linear-like weight
    assert not compress.is_fused_experts(_Fused(down=(2, 2, 6, 2)))
    holder = torch.nn.Module()
    holder.experts = _Fused()
    assert not compress.is_fused_experts(holder)  # the parent of the experts holds no such parameters itself


def _experts(num=3, hidden=24, inter=8, dtype=torch.float32):
    """transformers' DeepSeek-V3 experts with every dimension different (the tiny model's are 8 x 64 x 64)."""
    config = copy.deepcopy(tiny().config)
    config.num_local_experts, config.hidden_size, config.moe_intermediate_size = num, hidden, inter
    experts = type(tiny().model.layers[1].mlp.experts)(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in (experts.gate_up_proj, experts.down_proj):
            weight.copy_(torch.randn(weight.shape, generator=gen))
    return experts.to(dtype)


def test_int8_experts_stores_per_row_codes_and_scales_of_each_weight():
    experts = _experts()
    quantized = compress.Int8Experts(experts)
    assert quantized.num_experts == 3 and quantized.dtype == torch.float32
    assert str(quantized).splitlines()[1].strip() == "experts=3, hidden=24, intermediate=8, int8 per-row weight-only"
    for name, shape in (("gate_up_proj", (3, 16, 24)), ("down_proj", (3, 24, 8))):
        codes, scale = compress.int8_rows(getattr(experts, name))
        assert torch.equal(getattr(quantized, f"{name}_int8"), codes) and codes.shape == shape
        assert torch.equal(getattr(quantized, f"{name}_scale"), scale) and scale.shape == (*shape[:2], 1)
        assert torch.equal(quantized.dequantized(name), codes.float() * scale)  # all experts by default
        assert torch.equal(quantized.dequantized(name, 1), codes[1].float() * scale[1])  # one expert
    assert compress.Int8Experts(_experts(dtype=torch.bfloat16)).dtype == torch.bfloat16  # the coverage's "before"
    assert not dict(quantized.kernel.named_parameters())  # the kernel holds no weights of its own


def test_int8_experts_of_a_module_without_is_transposed():
    quantized = compress.Int8Experts(_Fused())  # no is_transposed attribute: untransposed, like transformers'
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        w = quantized.dequantized("gate_up_proj")
        assert torch.equal(quantized(x, None, None), x @ w[0].T @ w[1])  # _Fused's forward on the int8 weights


def test_int8_experts_forward_follows_the_input_dtype():
    experts = _experts()
    quantized = compress.Int8Experts(experts)
    reference = copy.deepcopy(experts).bfloat16()  # the same experts module holding the dequantized weights in bf16
    with torch.no_grad():
        reference.gate_up_proj.copy_(quantized.dequantized("gate_up_proj"))
        reference.down_proj.copy_(quantized.dequantized("down_proj"))
        hidden, index, weights = _moe_inputs(experts, n=6)
        out = quantized(hidden.bfloat16(), index, weights.bfloat16())
        assert out.dtype == torch.bfloat16
        assert torch.equal(out, reference(hidden.bfloat16(), index, weights.bfloat16()))


def test_quantize_experts_replaces_a_direct_child_and_names_it():
    model = torch.nn.Module()
    model.experts, model.other = _Fused(), torch.nn.Linear(2, 2)
    assert compress.quantize_experts(model) == ["experts"]
    assert isinstance(model.experts, compress.Int8Experts) and isinstance(model.other, torch.nn.Linear)
    nested = torch.nn.Sequential(torch.nn.ModuleDict({"a": _Fused(), "b": _Fused()}))
    assert compress.quantize_experts(nested) == ["0.a", "0.b"]
    assert all(isinstance(m, compress.Int8Experts) for m in nested[0].values())
