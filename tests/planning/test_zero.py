"""cookbook.planning.zero: DeepSpeed configs (checked by DeepSpeed's own models when installed) and min_gpus."""

import json

import pytest

from cookbook import planning


def test_zero_config():
    cfg = planning.zero_config(3, offload_optimizer=True, offload_params=True, hidden_size=4096,
                               micro_batch_size=2, gradient_accumulation_steps=4)
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"] == zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert zero["reduce_bucket_size"] == 4096**2 and zero["stage3_param_persistence_threshold"] == 40960
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert "train_batch_size" not in cfg  # DeepSpeed derives it from micro x accumulation x world size
    assert json.loads(json.dumps(cfg)) == cfg  # plain JSON, ready for a ds_config.json file
    stage0 = planning.zero_config(0, precision="fp16-mixed")
    assert stage0["zero_optimization"] == {"stage": 0} and stage0["fp16"]["enabled"]
    assert stage0["train_batch_size"] == "auto"


@pytest.mark.parametrize("kwargs, match", [
    (dict(stage=2, offload_params=True), "stage 3"),
    (dict(stage=0, offload_optimizer=True), "stage 1, 2 or 3"),
    (dict(stage=5), "stage must be"),
    (dict(stage=1, precision="bf16"), "bf16-mixed"),
    (dict(stage=1, micro_batch_size=0), "micro_batch_size"),
    (dict(stage=1, gradient_clipping=-1.0), "gradient_clipping"),
])
def test_zero_config_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        planning.zero_config(**kwargs)


def test_zero_config_passes_deepspeed_validation():
    # DeepSpeed's own pydantic models forbid unknown keys, so they catch any misspelt option.
    zero_model = pytest.importorskip("deepspeed.runtime.zero.config").DeepSpeedZeroConfig
    precision = pytest.importorskip("deepspeed.runtime.precision_config")
    for stage, oo, op in [(0, False, False), (1, True, False), (2, True, False), (3, True, True), (3, False, True)]:
        cfg = planning.zero_config(stage, offload_optimizer=oo, offload_params=op, hidden_size=1024)
        zero = zero_model(**cfg["zero_optimization"])
        assert zero.stage == stage and (zero.offload_optimizer is not None) == oo
        assert (zero.offload_param is not None) == op
    assert precision.get_bfloat16_config(planning.zero_config(1)).enabled
    assert precision.get_float16_config(planning.zero_config(1, precision="fp16-mixed")).loss_scale == 0


def test_min_gpus():
    assert planning.min_gpus(lambda n: 100 / n, 80, usable=1.0) == 2
    assert planning.min_gpus(lambda n: 100 / n, 80, usable=0.5) == 3
    assert planning.min_gpus(lambda n: 100.0, 80) is None  # no sharding: more GPUs never help
    with pytest.raises(ValueError, match="usable"):
        planning.min_gpus(lambda n: 1.0, 80, usable=0)
