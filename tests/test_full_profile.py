"""The `full` profile checked without a GPU: every model and optimizer steps once, and fits an H200."""

import math

import pytest
import torch

from cookbook import models, planning, profiles, train
from cookbook.train import memory

FULL = profiles.PROFILES["full"]
H200_GB = planning.GPUS["H200 SXM"]["memory_gb"]
HEADROOM = 0.5  # a full run may use at most half the card: the estimate is a first estimate for MoE layers
# The planner's precision names for the series' formats (autocast keeps fp32 weights and grads: same bytes).
PLANNER_PRECISION = {"fp32": "fp32", "tf32": "fp32", "bf16": "bf16-mixed", "fp16": "fp16-mixed"}


def test_scale_multiplies_steps_evaluations_and_the_token_cap(monkeypatch):
    big = profiles.scaled(FULL, 4)
    assert (big.train.steps, big.train.eval_interval) == (4 * FULL.train.steps, 4 * FULL.train.eval_interval)
    assert big.data.max_train_tokens == 4 * FULL.data.max_train_tokens and big.scale == 4
    assert big.train.steps // big.train.eval_interval == FULL.train.steps // FULL.train.eval_interval
    assert (big.model, big.precision, big.data.seq_len) == (FULL.model, FULL.precision, FULL.data.seq_len)
    assert profiles.scaled(FULL, 1) is FULL
    assert profiles.scaled(profiles.PROFILES["smoke"], 2).data.max_train_tokens is None  # no cap stays no cap
    monkeypatch.setenv("COOKBOOK_SCALE", "0.5")
    half = profiles.profile("full")
    assert half.train.steps == FULL.train.steps // 2 and half.scale == 0.5
    monkeypatch.delenv("COOKBOOK_SCALE")
    assert profiles.profile("full") is FULL


@pytest.mark.parametrize("bad", ["abc", "0", "-2", "inf", "nan"])
def test_bad_scale_is_a_clear_error(monkeypatch, bad):
    monkeypatch.setenv("COOKBOOK_SCALE", bad)
    with pytest.raises(ValueError, match="COOKBOOK_SCALE|scale must be a positive number"):
        profiles.profile("full")


@pytest.mark.parametrize("factor", [1, 4])
def test_full_pretraining_sees_each_token_at_most_once(factor):
    P = profiles.scaled(FULL, factor)
    assert P.data.corpus == "environment"
    assert P.train.steps * P.train.batch_size * P.data.seq_len <= P.data.max_train_tokens


def runs(P):
    """(model, micro-batch, precision) of every training run the series does in profile P."""
    out = {(P.model.name, P.train.batch_size, P.train.precision)}  # notebook 04's pretraining
    out |= {(P.model.name, P.train.batch_size, f) for f in P.precision.formats}  # 04's precision comparison
    out |= {(P.model.name, b, "fp32") for b in P.memory.micro_batches}  # 05's memory sweep
    out |= {(P.monitor.model, P.train.batch_size, P.train.precision)}  # 06's diagnostic runs
    return sorted(out)


def test_planner_puts_every_full_run_under_an_h200_with_headroom():
    for name, batch, precision in runs(FULL):
        config = models.config(name, FULL.data.vocab_size)
        for cfg in (config, models.dense_config(config)):
            gb = planning.training_memory(cfg, precision=PLANNER_PRECISION[precision], micro_batch=batch,
                                          seq_len=FULL.data.seq_len, checkpointing=False)["gpu_total"]
            assert gb < HEADROOM * H200_GB, (name, batch, precision, type(cfg).__name__, gb)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["moe", "dense twin"])
def test_full_model_and_optimizer_step_once_and_fit_an_h200_when_measured(kind):
    """One real step at batch 1 on the CPU through the Trainer with the profile's settings, and the memory
    it measures scaled to the largest batch of the series: the planner's independent check."""
    torch.manual_seed(0)
    model = models.build(FULL.model.name, FULL.data.vocab_size)
    if kind == "dense twin":
        model = models.build_dense(model.config)
    ids = torch.randint(0, FULL.data.vocab_size, (1, FULL.data.seq_len))
    # fp32: the series' most memory-hungry format, and fast on any CPU; the profile's own is checked to be valid.
    config = train.TrainConfig.from_profile(FULL, steps=1, eval_interval=0, log_interval=1, progress=False,
                                            precision="fp32", device="cpu")
    assert train.TrainConfig.from_profile(FULL).precision == FULL.train.precision
    trainer = train.Trainer(model, train.loader([{"input_ids": ids[0]}], 1), config=config)
    history, saved = memory.saved_activation_bytes(trainer.fit, exclude=list(model.parameters()))
    loss = history["loss"].iloc[-1]
    assert abs(loss - math.log(FULL.data.vocab_size)) < 0.5  # an untrained model: about ln V
    states = sum(t.numel() * t.element_size() for s in trainer.optimizer.state.values() for t in s.values()
                 if torch.is_tensor(t) and t.dim() > 0)
    weights = sum(2 * p.numel() * p.element_size() for p in model.parameters())  # + their gradients
    largest = max(b for _, b, _ in runs(FULL))
    measured_gb = (weights + states + largest * saved) / 1e9
    planned_gb = planning.training_memory(model.config, precision="fp32", micro_batch=largest,
                                          seq_len=FULL.data.seq_len, checkpointing=False)["gpu_total"]
    assert max(measured_gb, planned_gb) < HEADROOM * H200_GB, (measured_gb, planned_gb)
    assert states == 2 * sum(p.numel() * 4 for p in model.parameters())  # AdamW: momentum + variance in fp32

