"""Models: the DeepSeek-V3 family (configs tiny → smoke → full, a dense twin) and its mixture of experts.

deepseek (configs, build, dense twin) · moe (router discovery, load counting with `LoadCounter` and
`expert_load`, MaxVio, DeepSeek-V3's bias balancing and sequence-wise auxiliary loss) · experts (routed experts
as grouped GEMMs in the autocast dtype over float32 weights) · reference (the shipped reference model, loaded
offline with its checksums verified). Shown in notebooks/03 and 04 §9; the reference model from 07 on.
"""

from cookbook.models.deepseek import CONFIGS, build, build_dense, config, dense_config
from cookbook.models.experts import experts_modules, use_grouped_experts
from cookbook.models.moe import (
    LoadBalancer,
    LoadCounter,
    bias_disabled,
    expert_load,
    max_violation,
    routers,
    sequence_aux_loss,
)
from cookbook.models.reference import REFERENCE_FILES, reference, reference_heldout, reference_receipt

__all__ = ["CONFIGS", "REFERENCE_FILES", "LoadBalancer", "LoadCounter", "bias_disabled", "build", "build_dense",
           "config", "dense_config", "expert_load", "experts_modules", "max_violation", "reference",
           "reference_heldout", "reference_receipt", "routers", "sequence_aux_loss", "use_grouped_experts"]
