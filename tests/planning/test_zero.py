"""cookbook.planning.zero: DeepSpeed configs (checked by DeepSpeed's own models when installed) and min_gpus."""

import copy
import json
import os
import re
import sys
import types

import pytest
import torch

from cookbook import planning
from cookbook.planning import zero as zero_module


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


# ----------------------------------------------------------------------------- plans from a memory budget
def test_communication_volume_matches_the_zero_paper():
    # Ψ = 1e9 bf16 values on 8 GPUs: a ring moves 7/8 of them per reduce-scatter or all-gather, 2 bytes each
    one_pass = 1e9 * 7 / 8 * 2 / 1e9
    assert planning.communication_volume(1e9, 8, 0) == pytest.approx(2 * one_pass)  # DDP all-reduce: 2Ψ
    assert planning.communication_volume(1e9, 8, 1) == pytest.approx(2 * one_pass)  # ZeRO-1: same as DDP
    assert planning.communication_volume(1e9, 8, 3) == pytest.approx(3 * one_pass)  # ZeRO-3: 1.5x DDP
    assert planning.communication_volume(1e9, 8, 2, grad_accum=4) == pytest.approx(5 * one_pass)  # per micro-step
    assert planning.communication_volume(1e9, 8, 0, precision="fp32") == pytest.approx(4 * one_pass)
    assert planning.communication_volume(1e9, 1, 3) == 0  # one GPU talks to no one
    with pytest.raises(ValueError, match="stage must be"):
        planning.communication_volume(1e9, 8, 4)
    with pytest.raises(ValueError, match="precision 'int8'"):
        planning.communication_volume(1e9, 8, 1, precision="int8")


def test_zero_options_take_their_memory_from_the_planner():
    config = planning.llama1_config("7B")
    table = planning.zero_options(config, 8, 80, seq_len=2048)
    assert list(table.index) == [name for name, *_ in planning.ZERO_OPTIONS]
    for name, stage, offload_optimizer, offload_params in planning.ZERO_OPTIONS:
        expected = planning.training_memory(config, zero_stage=stage, n_gpus=8, seq_len=2048,
                                            offload_optimizer=offload_optimizer, offload_params=offload_params)
        assert table.loc[name, "gpu_gb"] == expected["gpu_total"] and table.loc[name, "cpu_gb"] == expected["cpu_total"]
        assert table.loc[name, "fits"] == (expected["gpu_total"] <= 0.9 * 80)


@pytest.mark.parametrize("size, option", [("7B", "ZeRO-1"), ("13B", "ZeRO-2"), ("65B", "ZeRO-3 + offload optimizer")])
def test_zero_plan_picks_the_fastest_option_that_fits(size, option):
    """Hand check for 7B (6.74B params) on 8 x 80 GB: ZeRO-0 needs 16 bytes x 6.74B = 108 GB; ZeRO-1 needs
    2 + 2 bytes plus 12 / 8 bytes per parameter = 37 GB (+ activations) and is the first that fits."""
    config = planning.llama1_config(size)
    plan = planning.zero_plan(config, 8, 80, seq_len=2048, micro_batch=2, grad_accum=4)
    assert plan["option"] == option
    table = planning.zero_options(config, 8, 80, seq_len=2048, micro_batch=2, grad_accum=4)
    assert not table.loc[: option, "fits"].iloc[:-1].any()  # every faster option is too big
    zero = plan["config"]["zero_optimization"]
    assert (zero["stage"], "offload_optimizer" in zero, "offload_param" in zero) == (
        plan["stage"], plan["offload_optimizer"], plan["offload_params"])
    assert plan["config"]["train_micro_batch_size_per_gpu"] == 2 and plan["config"]["gradient_accumulation_steps"] == 4
    assert planning.validate_zero_config(plan["config"]) in ("deepspeed", "documented")
    if size == "7B":
        assert 37.0 < plan["gpu_gb"] < 0.9 * 80 and 6.74e9 * 16 / 1e9 > 0.9 * 80


def test_zero_plan_says_how_many_gpus_would_do_when_nothing_fits():
    with pytest.raises(ValueError, match=r"no ZeRO option fits on 8 x 80 GB GPUs with 100 GB of CPU RAM; "
                                         r"ZeRO-3 without offload fits from \d+ GPUs"):
        planning.zero_plan(planning.llama1_config("65B"), 8, 80, seq_len=2048, cpu_memory_gb=100)


# ----------------------------------------------------------------------------- validation
def test_validate_against_the_documented_keys():
    for stage in (0, 1, 2, 3):
        assert planning.validate_zero_config(planning.zero_config(stage), use_deepspeed=False) == "documented"
    config = planning.zero_config(3, offload_params=True)
    config["zero_optimization"]["stage3_prefetch_bucket"] = 10  # misspelt: ..._bucket_size
    with pytest.raises(ValueError, match="'stage3_prefetch_bucket' in zero_optimization"):
        planning.validate_zero_config(config, use_deepspeed=False)
    with pytest.raises(ValueError, match="'train_batchsize' in the top level"):
        planning.validate_zero_config({**planning.zero_config(1), "train_batchsize": 8}, use_deepspeed=False)
    bad = planning.zero_config(1, micro_batch_size=2, gradient_accumulation_steps=3)
    with pytest.raises(ValueError, match="train_batch_size 16 is not micro batch 2 x accumulation 3"):
        planning.validate_zero_config({**bad, "train_batch_size": 16}, use_deepspeed=False)
    with pytest.raises(ValueError, match="'zero_optimization' dict"):
        planning.validate_zero_config({"stage": 2})


def test_validate_with_deepspeed_and_the_documented_keys_are_deepspeeds():
    zero = pytest.importorskip("deepspeed.runtime.zero.config")
    offload = pytest.importorskip("deepspeed.runtime.zero.offload_config")
    from cookbook.planning import zero as module

    def fields(model):
        return {name for key, f in model.model_fields.items() for name in (key, f.alias) if name}

    assert module._ZERO_KEYS <= fields(zero.DeepSpeedZeroConfig)
    assert module._OFFLOAD_KEYS <= fields(offload.DeepSpeedZeroOffloadOptimizerConfig) | fields(
        offload.DeepSpeedZeroOffloadParamConfig)
    config = planning.zero_config(2, offload_optimizer=True, micro_batch_size=4, gradient_accumulation_steps=2)
    assert planning.validate_zero_config(config) == "deepspeed"
    config["zero_optimization"]["offload_optimizer"]["devices"] = "cpu"  # misspelt
    with pytest.raises(ValueError, match="(?s)DeepSpeed rejects the config.*offload_optimizer.devices"):
        planning.validate_zero_config(config)


# ----------------------------------------------------------------------------- exact configs and counts by hand
def test_zero_config_stage3_everything_written_out():
    h = 64
    config = planning.zero_config(3, offload_optimizer=True, offload_params=True, precision="fp16-mixed",
                                  micro_batch_size=2, gradient_accumulation_steps=4, gradient_clipping=0.5,
                                  hidden_size=h, pin_memory=False)
    assert config == {
        "zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True,
                              "reduce_bucket_size": h * h, "stage3_prefetch_bucket_size": int(0.9 * h * h),
                              "stage3_param_persistence_threshold": 10 * h,
                              "stage3_gather_16bit_weights_on_model_save": True,
                              "offload_optimizer": {"device": "cpu", "pin_memory": False},
                              "offload_param": {"device": "cpu", "pin_memory": False}},
        "bf16": {"enabled": False},
        "fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                 "hysteresis": 2, "min_loss_scale": 1},
        "gradient_clipping": 0.5, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4,
    }  # no train_batch_size: DeepSpeed computes it from concrete sizes


def test_zero_config_stage0_and_stage2_defaults_written_out():
    config = planning.zero_config(0)
    assert config["zero_optimization"] == {"stage": 0} and config["bf16"] == {"enabled": True}
    assert config["fp16"]["enabled"] is False and config["gradient_clipping"] == 1.0
    assert config["train_batch_size"] == config["train_micro_batch_size_per_gpu"] == "auto"
    two = planning.zero_config(2, offload_optimizer=True, hidden_size=8, gradient_accumulation_steps=2)
    assert two["zero_optimization"] == {"stage": 2, "overlap_comm": True, "contiguous_gradients": True,
                                        "reduce_bucket_size": 64,
                                        "offload_optimizer": {"device": "cpu", "pin_memory": True}}
    assert two["train_batch_size"] == "auto"  # one "auto" size is enough to leave the total to the integration
    assert planning.zero_config(1, gradient_clipping=0)["gradient_clipping"] == 0  # 0 (off) is allowed
    fp32 = planning.zero_config(1, precision="fp32")
    assert fp32["bf16"]["enabled"] is False and fp32["fp16"]["enabled"] is False


@pytest.mark.parametrize("stage, rounds", [(0, 2), (1, 2), (2, 3 + 1), (3, 3 * 3)])
def test_communication_volume_by_hand(stage, rounds):
    # 1e9 values, 4 GPUs (each sends 3/4 of a ring collective), 3 micro-steps, 2-byte values
    assert planning.communication_volume(1e9, 4, stage, grad_accum=3) == pytest.approx(rounds * 1e9 * 3 / 4 * 2 / 1e9)
    assert planning.communication_volume(1e9, 4, stage, grad_accum=3, precision="fp32") == pytest.approx(
        rounds * 1e9 * 3 / 4 * 4 / 1e9)
    assert planning.communication_volume(1e9, 1, stage) == 0  # one GPU sends nothing


@pytest.mark.parametrize("kwargs, message", [
    (dict(stage=4), "stage must be 0, 1, 2 or 3, got 4"),
    (dict(stage=True), "stage must be 0, 1, 2 or 3, got True"),
    (dict(precision="int8"), "unknown precision 'int8'; valid: fp32, bf16-mixed, fp16-mixed, bf16"),
    (dict(n_gpus=0), "n_gpus must be a positive int, got 0"),
    (dict(grad_accum=0), "grad_accum must be a positive int, got 0"),
])
def test_communication_volume_messages(kwargs, message):
    args = {"params": 1e9, "n_gpus": 2, "stage": 1, **kwargs}
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        planning.communication_volume(**args)


def test_min_gpus_boundaries():
    def per_gpu(n):
        return 100 / n

    assert planning.min_gpus(per_gpu, 10, usable=1.0) == 10  # exactly at the limit fits (<=), usable 1 allowed
    assert planning.min_gpus(per_gpu, 10) == 12  # 0.9 x 10 = 9 GB: 100/11 = 9.09 does not fit, 100/12 does
    assert planning.min_gpus(per_gpu, 10, usable=1.0, max_gpus=10) == 10 and planning.min_gpus(
        per_gpu, 10, usable=1.0, max_gpus=9) is None
    assert planning.min_gpus(lambda n: 5.0, 10) == 1
    for kwargs, message in [(dict(usable=0), "usable must be in (0, 1], got 0"),
                            (dict(usable=1.01), "usable must be in (0, 1], got 1.01"),
                            (dict(capacity_gb=0), "capacity_gb must be positive, got 0"),
                            (dict(max_gpus=0), "max_gpus must be a positive int, got 0")]:
        args = {"per_gpu_gb": per_gpu, "capacity_gb": 10, **kwargs}
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            planning.min_gpus(**args)


def _documented(config):
    return planning.validate_zero_config(config, use_deepspeed=False)


def test_validate_documented_checks_each_part():
    config = planning.zero_config(3, offload_optimizer=True, offload_params=True, micro_batch_size=2,
                                  gradient_accumulation_steps=3)
    assert _documented({**config, "train_batch_size": 12}) == "documented"  # 12 = 2 x 3 x 2 GPUs: fine
    assert _documented({**config, "train_batch_size": 6}) == "documented"  # one GPU
    assert "train_batch_size" not in config  # the caller's dict is not changed
    for change, message in [
        (lambda c: c["zero_optimization"].update(stage=4), "zero_optimization.stage must be 0, 1, 2 or 3, got 4"),
        (lambda c: c["zero_optimization"]["offload_param"].update(device="gpu"),
         "zero_optimization.offload_param.device must be none, cpu or nvme, got 'gpu'"),
        (lambda c: c["zero_optimization"]["offload_optimizer"].update(device="disk"),
         "zero_optimization.offload_optimizer.device must be none, cpu or nvme, got 'disk'"),
        (lambda c: c["zero_optimization"]["offload_optimizer"].update(pinned=True),
         "unknown DeepSpeed key(s) 'pinned' in zero_optimization.offload_optimizer; documented keys: "),
        (lambda c: c["fp16"].update(scale=8), "unknown DeepSpeed key(s) 'scale' in fp16; documented keys: "),
        (lambda c: c["bf16"].update(on=True), "unknown DeepSpeed key(s) 'on' in bf16; documented keys: "),
        (lambda c: c.update(train_batch_size=10),
         "train_batch_size 10 is not micro batch 2 x accumulation 3 x the number of GPUs"),
    ]:
        bad = copy.deepcopy(config)
        change(bad)
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            _documented(bad)
    for device in ("none", "cpu", "nvme"):
        ok = copy.deepcopy(config)
        ok["zero_optimization"]["offload_param"]["device"] = device
        assert _documented(ok) == "documented"


def test_validate_unknown_keys_message_lists_the_documented_ones_sorted():
    with pytest.raises(ValueError) as info:
        _documented({**planning.zero_config(0), "zz": 1, "aa": 2})
    head, _, keys = str(info.value).partition("; documented keys: ")
    assert head == "unknown DeepSpeed key(s) 'aa', 'zz' in the top level"
    assert keys.split(", ") == sorted(keys.split(", ")) and "zero_optimization" in keys.split(", ")
    with pytest.raises(ValueError, match=r"^a ZeRO config is a dict with a 'zero_optimization' dict, got list$"):
        _documented([])


def test_zero_options_pass_every_setting_on_and_fit_inclusively():
    # 1e9 parameters in fp32 with SGD: 4 + 4 + 4 bytes (no master copy, one momentum buffer), on 4 GPUs
    kwargs = dict(precision="fp32", grad_accum=3, optimizer="sgd", trainable=5 * 10**8)
    table = planning.zero_options(10**9, 4, 10, usable=1.0, **kwargs)
    for name, stage, offload_optimizer, offload_params in planning.ZERO_OPTIONS:
        memory = planning.training_memory(10**9, precision="fp32", optimizer="sgd", trainable=5 * 10**8,
                                          zero_stage=stage, n_gpus=4, offload_optimizer=offload_optimizer,
                                          offload_params=offload_params)
        assert (table.loc[name, "gpu_gb"], table.loc[name, "cpu_gb"]) == (memory["gpu_total"], memory["cpu_total"])
        assert table.loc[name, "comm_gb_per_step"] == planning.communication_volume(10**9, 4, stage, precision="fp32",
                                                                                   grad_accum=3)
    # ZeRO-1 by hand: 4 GB weights + 2 GB gradients (half trainable) + 2 GB / 4 of momentum = 6.5 GB
    assert table.loc["ZeRO-1", "gpu_gb"] == 6.5
    assert planning.zero_options(10**9, 4, 6.5, usable=1.0, **kwargs).loc["ZeRO-1", "fits"]  # equal fits
    assert not planning.zero_options(10**9, 4, 6.49, usable=1.0, **kwargs).loc["ZeRO-1", "fits"]
    cpu = table.loc["ZeRO-2 + offload optimizer", "cpu_gb"]
    assert planning.zero_options(10**9, 4, 10, usable=1.0, cpu_memory_gb=cpu, **kwargs).loc[
        "ZeRO-2 + offload optimizer", "fits"]  # CPU RAM exactly enough fits too
    activations = planning.zero_options(planning.llama1_config("7B"), 8, 80, seq_len=512, micro_batch=3)
    assert activations.loc["ZeRO-1", "gpu_gb"] == planning.training_memory(
        planning.llama1_config("7B"), zero_stage=1, n_gpus=8, seq_len=512, micro_batch=3)["gpu_total"]
    for bad in (dict(capacity_gb=0), dict(usable=0), dict(usable=1.5)):
        args = {"capacity_gb": 10, "usable": 0.9, **bad}
        with pytest.raises(ValueError, match=r"^need capacity_gb > 0 and usable in \(0, 1\], got "
                                             f"{args['capacity_gb']!r} and {args['usable']!r}$"):
            planning.zero_options(10**9, 4, args["capacity_gb"], usable=args["usable"])


def test_zero_plan_passes_every_setting_on_and_returns_plain_python_values():
    kwargs = dict(precision="fp32", grad_accum=3, optimizer="sgd", trainable=5 * 10**8, micro_batch=2)
    plan = planning.zero_plan(10**9, 4, 6.5, usable=1.0, **kwargs)  # ZeRO-1 fits exactly (see above)
    assert (plan["option"], plan["gpu_gb"]) == ("ZeRO-1", 6.5)
    assert plan["comm_gb_per_step"] == planning.communication_volume(10**9, 4, 1, precision="fp32", grad_accum=3)
    assert [type(plan[k]) for k in ("stage", "offload_optimizer", "gpu_gb")] == [int, bool, float]
    assert plan["config"]["bf16"]["enabled"] is False and plan["config"]["gradient_accumulation_steps"] == 3
    assert plan["config"]["train_micro_batch_size_per_gpu"] == 2
    with pytest.raises(ValueError, match=r"^no ZeRO option fits on 1 x 4 GB GPUs with 1 GB of CPU RAM; "
                                         r"ZeRO-3 without offload fits from 2 GPUs$"):
        # ZeRO-3 of fp32 SGD, half trainable: (4 + 2 + 2) / n GB: 4 GB on 2 GPUs fits 4 x 1.0, 8 GB on one does not
        planning.zero_plan(10**9, 1, 4, usable=1.0, cpu_memory_gb=1, **kwargs)


@pytest.mark.parametrize("n", [1, 2, 8])
def test_every_stage_and_offload_on_one_two_and_eight_gpus_by_hand(n):
    """1e9 parameters, mixed-precision AdamW (the ZeRO paper's 2 + 2 + 12 bytes each), 3 micro-steps, 5 GB GPUs
    (4.5 usable) and 15 GB of CPU RAM: GPU and CPU GB, GB sent per step and fit of each option, written out."""
    k, wire = 3, 2 * (n - 1) / n  # one ring pass over 1e9 bf16 values sends 2 x (n-1)/n GB per GPU
    by_hand = {  # option: (GPU GB, CPU GB, passes over the values per step)
        "DDP (ZeRO-0)": (2 + 2 + 12, 0, 2),
        "ZeRO-1": (2 + 2 + 12 / n, 0, 2),
        "ZeRO-2": (2 + (2 + 12) / n, 0, k + 1),
        "ZeRO-2 + offload optimizer": (2, 12 + 2, k + 1),  # the CPU keeps the states and the gradients they update from
        "ZeRO-3": ((2 + 2 + 12) / n, 0, 3 * k),
        "ZeRO-3 + offload optimizer": (2 / n, 12 + 2, 3 * k),
        "ZeRO-3 + offload optimizer and params": (0, 12 + 2 + 2, 3 * k),
    }
    table = planning.zero_options(10**9, n, 5, grad_accum=k, cpu_memory_gb=15)
    assert list(table.index) == list(by_hand)
    for option, (gpu, cpu, passes) in by_hand.items():
        row = table.loc[option]
        assert (row["gpu_gb"], row["cpu_gb"]) == (pytest.approx(gpu), pytest.approx(cpu))
        assert row["comm_gb_per_step"] == pytest.approx(passes * wire)
        assert row["fits"] == (gpu <= 4.5 and cpu <= 15)
    # the fastest that fits: on 8 GPUs ZeRO-2 (3.75 GB), on 1 or 2 the optimizer must leave the GPU
    plan = planning.zero_plan(10**9, n, 5, grad_accum=k, cpu_memory_gb=15)
    assert plan["option"] == ("ZeRO-2" if n == 8 else "ZeRO-2 + offload optimizer")
    assert plan["comm_gb_per_step"] == pytest.approx((k + 1) * wire)  # ZeRO-2's k + 1 passes: k reaches the plan


def test_zero_plan_defaults_and_limits():
    """The defaults (one micro-batch of one sequence, no accumulation) reach the table and the config; a GPU of 1 GB
    or less is still a GPU (capacity must be > 0, not > 1)."""
    table = planning.zero_options(10**9, 2, 5)
    assert table.loc["ZeRO-3", "comm_gb_per_step"] == pytest.approx(3 * 1 * 2 * 1 / 2)  # 3k passes, k = 1
    plan = planning.zero_plan(10**9, 8, 5)
    assert plan["config"]["train_micro_batch_size_per_gpu"] == plan["config"]["gradient_accumulation_steps"] == 1
    small = planning.zero_options(10**8, 4, 1, usable=1.0)  # 0.1 B parameters, 16 bytes each over 4 GPUs: 0.4 GB
    assert small.loc["ZeRO-3", "gpu_gb"] == pytest.approx(0.4) and small.loc["ZeRO-3", "fits"]
    assert planning.min_gpus(lambda n: 0.4 / n, 0.5, usable=1.0) == 1 and planning.min_gpus(
        lambda n: 2 / n, 0.5, usable=1.0) == 4


def test_min_gpus_upper_limit():
    """max_gpus defaults to 4096: a job that needs 4096 GPUs gets them, one that needs 4097 gets None."""
    assert planning.min_gpus(lambda n: 4096 / n, 1, usable=1.0) == 4096
    assert planning.min_gpus(lambda n: 4097 / n, 1, usable=1.0) is None
    assert planning.min_gpus(lambda n: 4097 / n, 1, usable=1.0, max_gpus=4097) == 4097


def test_zero_plan_bucket_sizes_follow_the_models_hidden_size():
    """The Trainer's rule of thumb from the config's hidden size (7B: 4096) unless hidden_size= says otherwise."""
    config = planning.llama1_config("7B")
    plan = planning.zero_plan(config, 8, 80, seq_len=2048)  # ZeRO-1 (see above)
    assert plan["config"]["zero_optimization"]["reduce_bucket_size"] == 4096 * 4096
    three = planning.zero_plan(config, 8, 12, seq_len=512, hidden_size=1024)["config"]["zero_optimization"]  # ZeRO-3
    assert (three["stage"], three["reduce_bucket_size"], three["stage3_prefetch_bucket_size"],
            three["stage3_param_persistence_threshold"]) == (3, 1024 * 1024, int(0.9 * 1024 * 1024), 10 * 1024)
    assert "reduce_bucket_size" not in planning.zero_plan(10**9, 8, 80)["config"]["zero_optimization"]  # a count


def test_zero_plan_when_the_activations_alone_overflow_the_gpu():
    """80 sequences of 2048 tokens of the 7B model: 86.7 GB of activations per GPU (planning.activation_memory),
    more than 0.9 x 80 GB whatever ZeRO-3 splits, so no GPU count helps; no CPU limit given, none named."""
    config = planning.llama1_config("7B")
    assert planning.activation_memory(config, 80, 2048) > 0.9 * 80
    with pytest.raises(ValueError, match=r"^no ZeRO option fits on 8 x 80 GB GPUs; nor ZeRO-3 on any number of them$"):
        planning.zero_plan(config, 8, 80, seq_len=2048, micro_batch=80)


def test_validate_reads_auto_as_one_and_an_offload_without_device_as_none():
    """"auto" sizes count as 1 in the batch check, on both paths; an offload block without `device` is DeepSpeed's
    default, "none" (DeepSpeedZeroOffloadOptimizerConfig().device)."""
    auto_micro = {**planning.zero_config(1, gradient_accumulation_steps=5), "train_batch_size": 12}
    for use_deepspeed in (False, True):
        with pytest.raises(ValueError, match="^train_batch_size 12 is not micro batch 1 x accumulation 5 x the"):
            planning.validate_zero_config(auto_micro, use_deepspeed=use_deepspeed)
    no_device = planning.zero_config(3, offload_optimizer=True, offload_params=True)
    for key in ("offload_optimizer", "offload_param"):
        del no_device["zero_optimization"][key]["device"]
    assert _documented(no_device) == "documented"
    offload = pytest.importorskip("deepspeed.runtime.zero.offload_config")
    assert offload.DeepSpeedZeroOffloadOptimizerConfig().device == offload.DeepSpeedZeroOffloadParamConfig().device
    assert planning.validate_zero_config(no_device) == "deepspeed"
    assert planning.validate_zero_config(planning.zero_config(2)) == "deepspeed"  # every size "auto"


def test_deepspeeds_rejection_names_pydantics_error():
    pytest.importorskip("deepspeed")
    config = planning.zero_config(2, offload_optimizer=True, micro_batch_size=4, gradient_accumulation_steps=2)
    config["zero_optimization"]["offload_optimizer"]["devices"] = "cpu"
    with pytest.raises(ValueError, match=r"^DeepSpeed rejects the config: ValidationError: 1 validation error"):
        planning.validate_zero_config(config)


def test_deepspeed_is_imported_with_its_cpu_accelerator_named_only_without_cuda(monkeypatch):
    """A stand-in for deepspeed.runtime.config records DS_ACCELERATOR while it is imported: "cpu" without CUDA,
    unset with CUDA (DeepSpeed detects it), the caller's own choice kept; the environment is left as it was."""
    seen = []

    def lookup(name):  # the module's __getattr__: called by `from ... import DeepSpeedConfig`
        seen.append(os.environ.get("DS_ACCELERATOR"))
        return dict

    fake = types.ModuleType("deepspeed.runtime.config")
    fake.__getattr__ = lookup
    monkeypatch.setitem(sys.modules, "deepspeed.runtime.config", fake)
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    for cuda, preset, during in [(False, None, "cpu"), (True, None, None), (False, "cuda", "cuda")]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        if preset:
            monkeypatch.setenv("DS_ACCELERATOR", preset)
        seen.clear()
        assert zero_module._deepspeed_config() is dict
        assert seen and set(seen) == {during} and os.environ.get("DS_ACCELERATOR") == preset


def test_zero_config_messages_in_full_and_stage_one_written_out():
    for kwargs, message in [
        (dict(stage=True), "stage must be 0, 1, 2 or 3, got True"),  # a bool is not a stage, though True == 1
        (dict(stage=2, offload_params=True), "offload_params needs stage 3 (only stage 3 partitions the weights)"),
        (dict(stage=0, offload_optimizer=True), "offload_optimizer needs stage 1, 2 or 3"),
        (dict(stage=1, precision="bf16"), "precision must be fp32, bf16-mixed or fp16-mixed for DeepSpeed, got 'bf16' "
                                          "(DeepSpeed's bf16 mode keeps fp32 master weights: that is bf16-mixed)"),
        (dict(stage=1, micro_batch_size=0), "micro_batch_size must be a positive int, got 0"),
        (dict(stage=1, gradient_accumulation_steps=0), "gradient_accumulation_steps must be a positive int, got 0"),
        (dict(stage=1, hidden_size=0), "hidden_size must be a positive int, got 0"),
        (dict(stage=1, gradient_clipping=-0.5), "gradient_clipping must be >= 0 (0 turns it off), got -0.5"),
        (dict(stage=1, gradient_clipping="1.0"), "gradient_clipping must be >= 0 (0 turns it off), got '1.0'"),
    ]:
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            planning.zero_config(**kwargs)
    one = planning.zero_config(1, hidden_size=16, micro_batch_size=2, gradient_accumulation_steps=3)
    assert one["zero_optimization"] == {"stage": 1, "overlap_comm": True, "contiguous_gradients": True,
                                        "reduce_bucket_size": 16 * 16}


def test_validate_a_config_without_precision_blocks():
    """fp16 and bf16 blocks are optional: DeepSpeed's defaults leave both off."""
    minimal = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 1}
    assert _documented(minimal) == "documented"
    pytest.importorskip("deepspeed")
    assert planning.validate_zero_config(minimal) == "deepspeed"


def test_zero_plan_offloading_everything_and_counting_gpus_in_its_precision():
    """1e9 parameters, mixed-precision AdamW, 1 GB GPUs (0.9 usable): only ZeRO-3 with both offloads fits (0 GB on
    the GPU, 12 + 2 + 2 = 16 GB of CPU RAM), and its config offloads both."""
    plan = planning.zero_plan(10**9, 1, 1, cpu_memory_gb=16)
    assert (plan["option"], plan["gpu_gb"], plan["cpu_gb"]) == ("ZeRO-3 + offload optimizer and params", 0, 16)
    zero = plan["config"]["zero_optimization"]
    assert zero["offload_optimizer"] == zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    # Nothing fits on one 3.5 GB GPU with 1 GB of CPU RAM. ZeRO-3 of fp32 SGD, half trainable: (4 + 2 + 2) / n GB,
    # 4 on 2 GPUs, 2.67 on 3; in bf16-mixed (2 + 1 + 4) / n it would fit on 2: the count uses the plan's precision.
    with pytest.raises(ValueError, match=r"^no ZeRO option fits on 1 x 3.5 GB GPUs with 1 GB of CPU RAM; "
                                         r"ZeRO-3 without offload fits from 3 GPUs$"):
        planning.zero_plan(10**9, 1, 3.5, usable=1.0, cpu_memory_gb=1, precision="fp32", optimizer="sgd",
                           trainable=5 * 10**8)
