"""Models: the DeepSeek-V3 family (configs tiny → smoke → full, a dense twin) and its mixture of experts.

deepseek (configs, build, dense twin) · moe (router discovery, load counting with `LoadCounter` and
`expert_load`, MaxVio, DeepSeek-V3's bias balancing and sequence-wise auxiliary loss). Shown in notebooks/03.
"""

from cookbook.models.deepseek import CONFIGS, build, build_dense, config, dense_config
from cookbook.models.moe import (
    LoadBalancer,
    LoadCounter,
    bias_disabled,
    expert_load,
    max_violation,
    routers,
    sequence_aux_loss,
)

__all__ = ["CONFIGS", "LoadBalancer", "LoadCounter", "bias_disabled", "build", "build_dense", "config",
           "dense_config", "expert_load", "max_violation", "routers", "sequence_aux_loss"]
