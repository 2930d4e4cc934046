"""Int8 routed experts: the round-trip bound by hand, the same forward (and kernel) as transformers' experts."""

import copy
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
    with pytest.raises(TypeError, match="no 3-D gate_up_proj"):
        compress.Int8Experts(torch.nn.Linear(4, 4))
    experts = copy.deepcopy(tiny().model.layers[1].mlp.experts)
    experts.is_transposed = True
    with pytest.raises(NotImplementedError, match="transposed"):
        compress.Int8Experts(experts)
    with pytest.raises(ValueError, match="pass the model that holds the experts"):
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
