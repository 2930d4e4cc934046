"""Quantization-aware training with torchao: prepare (fake-quantize) → fine-tune with the cookbook Trainer → convert.

    model, history = qat(model, train_loader, TrainConfig(steps=200, lr=1e-4), "int4-unpacked")

Prepare swaps each `nn.Linear` for torchao's `FakeQuantizedLinear`: the forward rounds the weights to the target
grid, the backward passes gradients straight through, so training learns weights that survive rounding. Convert
then stores them quantized, exactly as post-training quantization would. torchao 0.18's `QATConfig` accepts a few
base configs only: int8 weight-only goes through `IntxWeightOnlyConfig(torch.int8)` (the same per-row symmetric
int8 as `Int8WeightOnlyConfig`); `Int8DynamicActivationInt8WeightConfig` is rejected ("Unexpected base config");
`Int4WeightOnlyConfig` only with the packings of the mslk kernels, not tinygemm's, so int4 QAT trains and stores
on `IntxWeightOnlyConfig(torch.int4)`'s grid (`int4-unpacked`, on any device).
The routed experts of a MoE train in full precision and become int8 at convert (`Int8Experts`): torchao's QAT,
like its PTQ, only swaps `nn.Linear`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from cookbook.compress.experts import quantize_experts
from cookbook.compress.quantize import GROUP_SIZE, require_torchao
from cookbook.train import Trainer

__all__ = ["QAT_METHODS", "convert_qat", "prepare_qat", "qat"]

QAT_METHODS = ("int8-weight-only", "int4-unpacked")
_WHY = {"int8-dynamic": "torchao 0.18's QATConfig rejects its base config",
        "int4-weight-only": "torchao 0.18's QATConfig does not fake-quantize tinygemm's packing; 'int4-unpacked' "
                            "trains int4 weights on any device"}


def _passes(method: str):
    """[(base config, filter_fn)]: the PTQ config QAT simulates, per group of layers (`quantize`'s recipes)."""
    from torchao.quantization import IntxWeightOnlyConfig  # the optional extra
    from torchao.quantization.granularity import PerAxis, PerGroup

    if method not in QAT_METHODS:
        why = f" ({_WHY[method]})" if method in _WHY else ""
        raise ValueError(f"no QAT path for {method!r}{why}; QAT methods: {', '.join(QAT_METHODS)}")

    def linear(module, _name=""):
        return isinstance(module, nn.Linear)

    if method == "int8-weight-only":
        return [(IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)), linear)]

    def grouped(module, _name=""):
        return linear(module) and module.in_features % GROUP_SIZE == 0

    return [(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(GROUP_SIZE)), grouped),
            (IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerAxis(0)),
             lambda m, _name="": linear(m) and not grouped(m))]


def prepare_qat(model: nn.Module, method: str = "int4-unpacked") -> nn.Module:
    """Fake-quantize every `nn.Linear` of `model` for `method` (in place): the model to fine-tune."""
    ao = require_torchao()
    for base, keep in _passes(method):
        ao.quantization.quantize_(model, ao.quantization.qat.QATConfig(base, step="prepare"), filter_fn=keep)
    return model


def convert_qat(model: nn.Module, method: str = "int4-unpacked", *, experts: bool = True) -> nn.Module:
    """Store the fine-tuned fake-quantized layers quantized (in place, eval mode).

    `experts=True` also makes the routed experts int8 weight-only (`Int8Experts`).
    """
    ao = require_torchao()
    passes = _passes(method)  # an unknown method fails here, first
    fake = ao.quantization.qat.FakeQuantizedLinear
    trained = {str(m.weight_fake_quantizer.config.dtype).split(".")[-1] for m in model.modules() if isinstance(m, fake)}
    if not trained:
        raise ValueError("the model has no fake-quantized layers: call prepare_qat(model, method) before training")
    if trained != {"int8" if method == "int8-weight-only" else "int4"}:  # converting to another grid would undo what training learned
        raise ValueError(f"the model was prepared for {', '.join(sorted(trained))} weights, not {method!r}: convert "
                         "with the method given to prepare_qat")
    for base, keep in passes:
        # convert swaps each FakeQuantizedLinear back to nn.Linear, then quantizes it with the base config
        ao.quantization.quantize_(model, ao.quantization.qat.QATConfig(base, step="convert"),
                                  filter_fn=lambda m, _name="", keep=keep: isinstance(m, fake) and keep(m))
    if experts:
        quantize_experts(model)
    return model.eval()


def qat(model: nn.Module, train_loader, config, method: str = "int4-unpacked", *, val_loader=None,
        experts: bool = True, inplace: bool = False):
    """Prepare, fine-tune with `cookbook.train.Trainer(config)`, convert: (quantized model, training history).

    A copy of `model` unless `inplace`. Compare against the same fine-tuning without fake quantization followed
    by `quantize(..., method)`: otherwise the extra training steps, not QAT, may explain the gain.
    Shown in notebooks/09 §6.
    """
    model = model if inplace else copy.deepcopy(model)
    prepare_qat(model, method)
    trainer = Trainer(model, train_loader, val_loader, config)
    try:
        history = trainer.fit()
    finally:
        if trainer.balancer is not None:
            trainer.balancer.remove()
    return convert_qat(trainer.model, method, experts=experts), history
