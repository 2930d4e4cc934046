"""Mixture-of-experts load balancing the DeepSeek-V3 way, for transformers' DeepseekV3 models.

DeepSeek-V3 (arXiv:2412.19437, section 2.1.2) keeps experts evenly loaded mainly *without* an auxiliary
loss: each router adds a per-expert bias to its scores when choosing the top-k experts (never when
weighting their outputs), and after every training step the bias of an overloaded expert goes down by
γ and that of an underloaded expert up by γ:  b_i += γ · sign(mean load − load_i).  A tiny
*sequence-wise* auxiliary loss (α ≈ 1e-4) guards against extreme imbalance inside single sequences.

transformers' `DeepseekV3TopkRouter` already has the bias (`e_score_correction_bias`, used for the
choice only) but nothing ever updates it and the model returns no auxiliary loss; `LoadBalancer`
adds both with forward hooks, so the model code stays untouched.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["LoadBalancer", "bias_disabled", "max_violation", "routers", "sequence_aux_loss"]


def routers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The (name, module) of every top-k router with a score-correction bias (empty for a dense model)."""
    return [(name, m) for name, m in model.named_modules()
            if hasattr(m, "e_score_correction_bias") and hasattr(m, "top_k")]


def sequence_aux_loss(router_logits: torch.Tensor, topk_indices: torch.Tensor, batch: int, seq_len: int,
                      top_k: int) -> torch.Tensor:
    """DeepSeek-V3's sequence-wise balance loss of one MoE layer (without α), averaged over sequences.

    Per sequence of T tokens: f_i = N/(K·T) · #tokens choosing expert i, P_i = mean over tokens of the
    token's sigmoid score for i normalised over all N experts, loss = Σ_i f_i·P_i. It is 1 when
    every expert gets the same share and grows with imbalance; only P carries gradient.
    """
    n_experts = router_logits.shape[-1]
    scores = router_logits.float().sigmoid().view(batch, seq_len, n_experts)
    p = (scores / scores.sum(-1, keepdim=True)).mean(1)  # (batch, experts)
    chosen = topk_indices.view(batch, seq_len * top_k)
    counts = torch.zeros(batch, n_experts, device=p.device).scatter_add_(1, chosen, torch.ones_like(chosen, dtype=p.dtype))
    f = counts * n_experts / (top_k * seq_len)
    return (f * p).sum(-1).mean()


def max_violation(load) -> torch.Tensor:
    """MaxVio, the paper's imbalance measure: (max load − mean load) / mean load, per layer (row).

    `load` is a tensor, an array or a DataFrame such as `models.expert_load(...)` (layers x experts).
    """
    load = torch.tensor(load.to_numpy(dtype=float)) if hasattr(load, "to_numpy") else torch.as_tensor(load)
    load = load.float()
    mean = load.mean(-1)
    return (load.max(-1).values - mean) / mean.clamp_min(1e-12)


@contextlib.contextmanager
def bias_disabled(model: torch.nn.Module):
    """Temporarily zero every router's correction bias, to see how the router alone would route."""
    saved = [(router, router.e_score_correction_bias.clone()) for _, router in routers(model)]
    try:
        for router, _ in saved:
            router.e_score_correction_bias.zero_()
        yield model
    finally:
        for router, bias in saved:
            router.e_score_correction_bias.copy_(bias)


class LoadBalancer:
    """Auxiliary-loss-free bias balancing plus the optional sequence-wise auxiliary loss.

    Usage in a training loop (the `cookbook.train.Trainer` does exactly this when the model has routers)::

        balancer = LoadBalancer(model, gamma=1e-3, alpha=1e-4)
        with balancer.recording():                 # count routed tokens, collect the aux loss
            loss = lm_loss(model(...)) + balancer.aux_loss()
        loss.backward(); optimizer.step()
        balancer.update_bias()                     # b_i += γ·sign(mean − load_i), then reset the counts

    Tokens are counted only inside `recording()`, so evaluation passes and the recomputation of
    gradient checkpointing (which happens during backward) never count twice. Counting stays on the
    device (`index_add_`, no host sync); read `last_load` (layers x experts, tokens) after a step.
    """

    def __init__(self, model: torch.nn.Module, gamma: float = 1e-3, alpha: float = 0.0):
        if gamma < 0 or alpha < 0:
            raise ValueError(f"gamma and alpha must be >= 0, got gamma={gamma}, alpha={alpha}")
        self.routers = routers(model)
        if not self.routers:
            raise ValueError("the model has no DeepSeek-style router (e_score_correction_bias); is it dense?")
        self.gamma, self.alpha = gamma, alpha
        self.names = [name.split(".mlp.")[0].replace("model.layers.", "layer ") for name, _ in self.routers]
        bias = self.routers[0][1].e_score_correction_bias
        self.counts = torch.zeros(len(self.routers), bias.numel(), device=bias.device)
        self.last_load = torch.zeros_like(self.counts)
        self._recording = False
        self._aux: list[torch.Tensor] = []
        self._handles = [m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(self.routers)]

    def _hook(self, layer: int):
        def record(module, inputs, output):
            if not self._recording:
                return
            router_logits, _, topk_indices = output  # transformers' router returns (logits, weights, indices)
            flat = topk_indices.reshape(-1)
            if self.counts.device != flat.device:  # the model moved after the balancer was made
                self.counts, self.last_load = self.counts.to(flat.device), self.last_load.to(flat.device)
            self.counts[layer].index_add_(0, flat, torch.ones_like(flat, dtype=self.counts.dtype))
            if self.alpha > 0 and torch.is_grad_enabled():
                batch, seq_len = inputs[0].shape[:2]
                self._aux.append(sequence_aux_loss(router_logits, topk_indices, batch, seq_len, module.top_k))

        return record

    @contextlib.contextmanager
    def recording(self):
        """Count routed tokens (and collect aux losses) for the forward passes inside the block."""
        self._recording, self._aux = True, []
        try:
            yield self
        finally:
            self._recording = False

    def aux_loss(self) -> torch.Tensor:
        """α x the sum over MoE layers of the sequence-wise loss of the last recorded forward (0 if α = 0)."""
        if self.alpha == 0 or not self._aux:
            return torch.zeros((), device=self.counts.device)
        return self.alpha * torch.stack(self._aux).sum()

    @torch.no_grad()
    def update_bias(self) -> None:
        """One balancing step from the tokens counted since the last one: b_i += γ·sign(mean − load_i)."""
        error = self.counts.mean(-1, keepdim=True) - self.counts
        for (_, router), delta in zip(self.routers, error.sign() * self.gamma, strict=True):
            router.e_score_correction_bias.add_(delta.to(router.e_score_correction_bias))
        self.last_load.copy_(self.counts)
        self.counts.zero_()

    def load_fraction(self) -> torch.Tensor:
        """Share of routed token slots each expert got in the last step (layers x experts; rows sum to 1)."""
        return self.last_load / self.last_load.sum(-1, keepdim=True).clamp_min(1)

    def biases(self) -> torch.Tensor:
        """The current correction biases (layers x experts)."""
        return torch.stack([r.e_score_correction_bias.detach().float() for _, r in self.routers])

    def remove(self) -> None:
        """Detach the hooks; the biases the balancer learned stay in the model."""
        for h in self._handles:
            h.remove()
        self._handles = []
