"""Fine-tuning: LoRA with peft (MLA, dense MLP, shared and routed experts) and knowledge distillation.

lora (targets per architecture with peft's MoE trap avoided and checked, trainable report, merge with a parity
check, adapter round trip, prompt → completion batches) · distill (soft targets, reverse KL, feature loss, layer
map, `distill` on the Trainer). Shown in notebooks/07 and 08.
"""

from cookbook.finetune.distill import (
    DistillationObjective,
    Distiller,
    distill,
    distillation_loss,
    feature_loss,
    layer_map,
    reverse_kl_loss,
    soft_target_loss,
)
from cookbook.finetune.lora import (
    GROUPS,
    adapted,
    apply_lora,
    completion_loader,
    group_of,
    load_adapter,
    lora_targets,
    merge,
    trainable_report,
    training_memory,
)

__all__ = [
    "GROUPS", "DistillationObjective", "Distiller", "adapted", "apply_lora", "completion_loader", "distill",
    "distillation_loss", "feature_loss", "group_of", "layer_map", "load_adapter", "lora_targets", "merge",
    "reverse_kl_loss", "soft_target_loss", "trainable_report", "training_memory",
]
