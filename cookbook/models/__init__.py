"""Models: the DeepSeek-V3 family (configs tiny → smoke → full, a dense twin) and its mixture of experts.

deepseek (configs, build, dense twin, expert load of a batch) · moe (router discovery, load counting,
MaxVio, DeepSeek-V3's bias balancing and sequence-wise auxiliary loss). Shown in notebooks/03.
"""

from cookbook.models.deepseek import CONFIGS, build, build_dense, config, dense_config, expert_load
from cookbook.models.moe import LoadBalancer, bias_disabled, max_violation, routers, sequence_aux_loss

__all__ = ["CONFIGS", "LoadBalancer", "bias_disabled", "build", "build_dense", "config", "dense_config",
           "expert_load", "max_violation", "routers", "sequence_aux_loss"]
