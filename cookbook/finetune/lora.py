"""LoRA fine-tuning with peft on DeepSeek-V3 (MLA, dense MLP, shared and routed experts) and Llama-style models.

LoRA (Hu et al. 2021, arXiv:2106.09685) freezes a weight W and learns a low-rank update: W + (alpha/r)·B·A,
A of r×in, B of out×r, B starting at zero so training starts from the base model. peft applies it to `nn.Linear`
modules (`target_modules`) and to raw 2-D/3-D parameters (`target_parameters`), which is how the
routed experts of a transformers-5 MoE are reached: they are one 3-D tensor per projection, and each expert gets
its own rank-r pair.

    model = apply_lora(base, r=16, alpha=32, targets=["attention", "shared_experts"])
    trainable_report(model)                 # trainable vs total parameters, by part of the model
    merged, gap = merge(model, batch)       # merge_and_unload, checked against the adapter's logits

**The peft trap this module works around (peft 0.21 with transformers 5, huggingface/peft#3711):** on a model
whose experts are fused (DeepSeek-V3, Qwen-MoE ...), peft's v4→v5 conversion reads any `target_modules` entry
named `gate_proj`/`up_proj`/`down_proj` (`shared_experts.gate_proj` too) as the *routed* experts of transformers
4: it drops the entry, targets the fused expert tensors instead, with r and alpha doubled for `gate_up_proj`, and
only warns that the doubled rank pattern matched nothing (it was applied). The dense first layers and the shared
experts get no adapter. `apply_lora` names those `nn.Linear`
layers by their weight in `target_parameters`, which the conversion leaves alone, and checks after wrapping that
exactly the requested weights carry an adapter of rank r. The fix lives in the saved adapter config itself, so
`PeftModel.from_pretrained` (and `load_adapter`) rebuild the same adapters: save and load stay symmetric.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import pandas as pd
import safetensors.torch
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer

from cookbook import train
from cookbook.checks import positive_int

__all__ = ["GROUPS", "adapted", "apply_lora", "completion_loader", "group_of", "load_adapter", "lora_targets", "merge",
           "trainable_report", "training_memory"]

GROUPS = ("attention", "dense_mlp", "shared_experts", "routed_experts")  # what `targets` can name, besides modules
_REPORT_ORDER = (*GROUPS, "router", "embeddings", "other")
# Name fragments of each part of the model; the first match wins (shared experts before routed, routed before
# the dense MLP, the router `mlp.gate` before the dense MLP).
_MARKERS = (((".embed_tokens.", ".lm_head."), "embeddings"), ((".shared_experts.",), "shared_experts"),
            ((".experts.",), "routed_experts"), ((".mlp.gate.", ".router."), "router"),
            ((".self_attn.",), "attention"), ((".mlp.",), "dense_mlp"))
# Leaf names peft 0.21's MoE conversion rewrites into the fused routed experts (its _MOE_TARGET_MODULE_MAPPING).
_REWRITTEN_BY_PEFT = ("gate_proj", "up_proj", "down_proj")


@contextlib.contextmanager
def _quiet_peft():
    """peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` when it wraps a model: a
    FutureWarning about library internals the user can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def group_of(name: str) -> str:
    """The part of a DeepSeek-V3 / Llama-style model a parameter or module name belongs to.

    One of `GROUPS`, "router", "embeddings" or "other" (norms). Works on peft-wrapped names too
    (`...self_attn.q_a_proj.lora_A.default.weight` is attention).
    """
    name = f".{name}."
    return next((group for markers, group in _MARKERS if any(m in name for m in markers)), "other")


def _candidates(model) -> list[str]:
    """Weights LoRA can adapt: every nn.Linear but the LM head and the routers, and the 3-D expert tensors."""
    if adapted(model):
        raise ValueError("the model already carries LoRA adapters; start from the base model")
    names = [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    names += [name for name, p in model.named_parameters() if p.ndim == 3]
    return [n for n in names if group_of(n) in GROUPS]


def _matches(weight: str, target: str) -> bool:
    """peft's rule for list targets (the name or a dotted suffix of it), on the weight or its module."""
    owner = weight.rsplit(".", 1)[0]
    return any(n == target or n.endswith(f".{target}") for n in (weight, owner))


def lora_targets(model, targets="auto") -> list[str]:
    """The weights `apply_lora` adapts for `targets`, as sorted parameter names.

    `targets` is "auto" (every group the model has: DeepSeek-V3's MLA projections, dense MLP, shared and routed
    experts; a Llama's q/k/v/o and MLP), a group name of `GROUPS`, or a list mixing group names and module or
    parameter names (peft's rule: the full name or a dotted suffix, e.g. "q_a_proj", "mlp.experts.down_proj"; a
    bare "down_proj" also matches the routed experts' `experts.down_proj`, "mlp.down_proj" only the dense MLP's).
    Anything that matches nothing raises, listing the names that would.
    """
    candidates = _candidates(model)
    items = list(GROUPS) if targets == "auto" else [targets] if isinstance(targets, str) else list(targets)
    if not items:
        raise ValueError("targets is empty; pass 'auto', a group or module names")
    chosen: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"targets must be names (str), got {item!r}")
        found = {n for n in candidates if (group_of(n) == item if item in GROUPS else _matches(n, item))}
        if not found and not (targets == "auto" and item in GROUPS):  # "auto" takes the groups the model has
            leaves = sorted({n.rsplit(".", 2)[-2] if n.endswith(".weight") else n.rsplit(".", 1)[-1]
                             for n in candidates})
            present = [g for g in GROUPS if any(group_of(n) == g for n in candidates)]
            raise ValueError(f"target {item!r} matches nothing in {type(model).__name__}; groups: "
                             f"{', '.join(present)}; module and parameter names: {', '.join(leaves)}")
        chosen |= found
    if not chosen:
        raise ValueError(f"{type(model).__name__} has no layer LoRA can adapt (no nn.Linear, no expert tensor)")
    return sorted(chosen)


def _by_parameter(model, weights: list[str]) -> set[str]:
    """Weights that must go through `target_parameters`: 3-D expert tensors, and on a model with fused experts
    the nn.Linear layers that peft's MoE conversion would silently re-target (huggingface/peft#3711)."""
    params = dict(model.named_parameters())
    fused = any(p.ndim == 3 for p in params.values())
    return {w for w in weights
            if params[w].ndim == 3 or (fused and w.rsplit(".", 2)[-2] in _REWRITTEN_BY_PEFT)}


def adapted(model) -> dict[str, int]:
    """{weight name: LoRA rank} for every weight that carries an adapter (names as in the base model)."""
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or not module.r:
            continue
        base = name.removeprefix("base_model.model.")
        while base.endswith(".base_layer"):  # a ParamWrapper nests the wrappers of a module's other parameters
            base = base[: -len(".base_layer")]
        for rank in module.r.values():
            out[f"{base}.{getattr(module, 'parameter_name', 'weight')}"] = rank
    return out


def _check_adapters(model, want: dict[str, int]) -> None:
    got = adapted(model)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(n for n in set(want) & set(got) if got[n] != want[n])
    if missing or extra or wrong:
        raise RuntimeError(f"peft did not adapt what was asked: without adapter {missing[:6]}"
                           f"{' ...' if len(missing) > 6 else ''}; not requested {extra[:6]}; other rank "
                           f"{[(n, got[n]) for n in wrong[:6]]}")


def apply_lora(model, r: int = 16, alpha: float = 32, dropout: float = 0.0, targets="auto") -> PeftModel:
    """Wrap `model` with peft LoRA adapters of rank `r` (per expert for routed experts) on `targets`.

    `targets` as in `lora_targets`. Only the adapters train; the base weights are frozen in place. Verifies after
    wrapping that exactly the requested weights carry an adapter of rank `r`. peft cannot apply dropout to
    weights reached through `target_parameters` (on DeepSeek-V3: every MLP and expert), so `dropout > 0` with
    those raises. Shown in notebooks/07 §2.
    """
    positive_int("r", r)
    if alpha <= 0 or not 0 <= dropout < 1:
        raise ValueError(f"need alpha > 0 and 0 <= dropout < 1, got alpha={alpha}, dropout={dropout}")
    weights = lora_targets(model, targets)
    by_parameter = _by_parameter(model, weights)
    if dropout and by_parameter:
        groups = sorted({group_of(w) for w in by_parameter})
        raise ValueError(f"dropout={dropout}: peft applies no dropout to weights adapted as parameters "
                         f"({', '.join(groups)} here); use dropout=0.0 or leave them out of targets")
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
        target_modules=[w.removesuffix(".weight") for w in weights if w not in by_parameter],
        target_parameters=sorted(by_parameter))
    with _quiet_peft():
        wrapped = get_peft_model(model, config)
    _check_adapters(wrapped, dict.fromkeys(weights, r))
    return wrapped


def load_adapter(base, folder: str | Path, *, is_trainable: bool = False) -> PeftModel:
    """`PeftModel.from_pretrained(base, folder)`, checked: every saved adapter tensor loaded, unchanged.

    Works for adapters saved by `apply_lora` models and by plain peft. Shown in notebooks/07 §4.
    """
    folder = Path(folder)
    saved = safetensors.torch.load_file(str(folder / "adapter_model.safetensors"))
    with _quiet_peft():
        model = PeftModel.from_pretrained(base, str(folder), is_trainable=is_trainable)
    loaded = get_peft_model_state_dict(model)
    lost, unknown = sorted(set(saved) - set(loaded)), sorted(set(loaded) - set(saved))
    changed = sorted(k for k in set(saved) & set(loaded) if not torch.equal(saved[k], loaded[k].cpu()))
    if lost or unknown or changed:
        raise RuntimeError(f"adapter in {folder.name} did not load as saved: not loaded {lost[:4]}, not in the "
                           f"file {unknown[:4]}, different values {changed[:4]}")
    return model


@torch.no_grad()
def merge(model: PeftModel, batch: dict[str, torch.Tensor], atol: float = 1e-4):
    """Merge the adapters into the base weights (peft's `merge_and_unload`), checking parity on `batch`.

    Returns (merged base model, largest |logit difference|). When the merged logits differ from the adapter's by
    more than `atol` the merge is undone and a RuntimeError raised. Shown in notebooks/07 §4.
    """
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
    model.eval()
    with_adapters = model(**inputs).logits
    model.merge_adapter()
    gap = (model(**inputs).logits - with_adapters).abs().max().item()
    if not gap <= atol:
        model.unmerge_adapter()
        raise RuntimeError(f"merged logits differ from the adapter's by {gap:.3g} > atol={atol}")
    return model.unload(), gap  # unload after merge_adapter = merge_and_unload, checked


def trainable_report(model) -> pd.DataFrame:
    """Trainable vs total parameters by part of the model (`group_of`), with a total row.

    Columns: parameters, trainable, trainable_% (of the group) and trainable_mb (what an adapter file holds,
    before its small header). Works for peft models (adapters count in their group) and plain ones.
    Shown in notebooks/07 §2.
    """
    rows = {g: dict(parameters=0, trainable=0, trainable_mb=0.0) for g in _REPORT_ORDER}
    for name, p in model.named_parameters():
        row = rows[group_of(name)]
        row["parameters"] += p.numel()
        if p.requires_grad:
            row["trainable"] += p.numel()
            row["trainable_mb"] += p.numel() * p.element_size() / 2**20
    table = pd.DataFrame.from_dict(rows, orient="index")
    table = table[table["parameters"] > 0]
    table.loc["total"] = table.sum()
    table["trainable_%"] = 100 * table["trainable"] / table["parameters"]
    return table[["parameters", "trainable", "trainable_%", "trainable_mb"]].astype(
        {"parameters": int, "trainable": int})


def training_memory(model, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Memory of one training step in MiB, measured where it can be and counted where it cannot.

    weights (all parameters), gradients (trainable ones), adamw (two fp32 moments per trainable parameter) and
    activations (the bytes autograd keeps for backward on `batch`, counted with saved-tensor hooks: frozen
    layers save less, since no weight gradient needs their inputs). Shown in notebooks/07 §3.
    """
    params = list(model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    model.train()
    try:
        loss, saved = train.saved_activation_bytes(lambda: train.token_loss(model, batch), exclude=params)
        del loss
    finally:
        model.zero_grad(set_to_none=True)
    out = dict(weights=sum(p.numel() * p.element_size() for p in params), gradients=trainable,
               adamw=2 * sum(p.numel() * 4 for p in params if p.requires_grad), activations=saved)
    out = {k: v / 2**20 for k, v in out.items()}
    out["total"] = math.fsum(out.values())
    return out


def completion_loader(examples, batch_size: int, pad_id: int, *, shuffle: bool = True, seed: int = 0):
    """A DataLoader of padded prompt → completion batches whose loss counts only the completion tokens.

    `examples` are (prompt_ids, completion_ids) pairs. Labels are -100 on the prompt and the padding, so
    `train.token_loss` (and the Trainer) learn to write the completion given the prompt. Shown in notebooks/07 §1.
    """
    positive_int("batch_size", batch_size)
    examples = [(list(p), list(c)) for p, c in examples]
    if not examples or any(not c for _, c in examples):
        raise ValueError("completion_loader needs examples, each with a non-empty completion")

    def collate(pairs):
        batch = train.pad_batch([p + c for p, c in pairs], pad_id)
        for row, (prompt, _) in enumerate(pairs):
            batch["labels"][row, : len(prompt)] = -100
        return batch

    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(examples, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                       collate_fn=collate)
