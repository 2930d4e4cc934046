"""Mixture of experts: finding the routers, counting their load, MaxVio, and DeepSeek-V3's load balancing.

The one home of these ideas: `routers` finds the top-k routers, `LoadCounter` counts the tokens each expert
gets (one forward hook per router, padding left out), `max_violation` measures imbalance; the balancer, the
Trainer, `expert_load` and the TrainingMonitor all use them. MoE layers are named `layers.N`, as in the
monitor's per-layer statistics.

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
import re

import pandas as pd
import torch

__all__ = ["LoadBalancer", "LoadCounter", "bias_disabled", "expert_load", "max_violation", "routers",
           "sequence_aux_loss"]

_LAYER = re.compile(r"(?:^|\.)((?:layers|layer|h|blocks)\.\d+)\.")
# -1 outside backward; during backward it names the running graph task. Activation checkpointing re-runs
# the forward inside backward, and that recomputation must not count the tokens a second time.
_graph_task = getattr(torch._C, "_current_graph_task_id", lambda: -1)


def routers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The (name, module) of every top-k router with a score-correction bias (empty for a dense model)."""
    return [(name, m) for name, m in model.named_modules()
            if hasattr(m, "e_score_correction_bias") and hasattr(m, "top_k")]


def _layer_label(router_name: str) -> str:
    """`model.layers.3.mlp.gate` -> `layers.3` (the monitor's `layer_of` names the block the same way)."""
    match = _LAYER.search(router_name + ".")
    return match.group(1) if match else router_name


def sequence_aux_loss(router_logits: torch.Tensor, topk_indices: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3's sequence-wise balance loss of one MoE layer (without α), averaged over sequences.

    `router_logits` (batch·seq_len, experts) and `topk_indices` (batch·seq_len, k) are what the router returns;
    `attention_mask` (batch, seq_len) marks the real tokens (1) and the padding (0). Per sequence of T real
    tokens: f_i = N/(K·T) · #tokens choosing expert i, P_i = mean over its tokens of the token's sigmoid score
    for i normalised over all N experts, loss = Σ_i f_i·P_i. It is 1 when every expert gets the same share and
    grows with imbalance; only P carries gradient. Padding takes no part, so a sequence's loss does not depend
    on how much it is padded; a sequence without real tokens adds 0 (the mean is over all `batch` rows).
    """
    batch, seq_len = attention_mask.shape
    n_experts, top_k = router_logits.shape[-1], topk_indices.shape[-1]
    scores = router_logits.float().sigmoid().view(batch, seq_len, n_experts)
    real = attention_mask.to(scores.dtype)
    lengths = real.sum(1, keepdim=True).clamp_min(1)  # T of each sequence
    p = ((scores / scores.sum(-1, keepdim=True)) * real[..., None]).sum(1) / lengths  # (batch, experts)
    chosen = topk_indices.view(batch, seq_len * top_k)
    counts = torch.zeros_like(p).scatter_add_(1, chosen, real.repeat_interleave(top_k, dim=1))
    f = counts * n_experts / (top_k * lengths)
    return (f * p).sum() / batch


def max_violation(load) -> torch.Tensor:
    """MaxVio, the paper's imbalance measure: (max load − mean load) / mean load, per layer (row).

    `load` is a tensor, an array, a list or a DataFrame such as `models.expert_load(...)` (layers x experts);
    one row (a 1-D load) gives a 0-d tensor. A layer that got no tokens has MaxVio 0. Shown in notebooks/04 §5.
    """
    load = torch.tensor(load.to_numpy(dtype=float)) if hasattr(load, "to_numpy") else torch.as_tensor(load)
    load = load.double()
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


class LoadCounter:
    """Tokens routed to each expert of every MoE layer, counted by one forward hook per router.

    Only real tokens count: the `attention_mask` of the model's forward call is captured (a pre-hook on
    `model`), and positions where it is 0 are padding. Counting happens inside `recording()`, or with
    `auto=True` in every forward of a model in training mode (a monitor on your own loop); never in the
    recomputation that activation checkpointing runs inside backward, which would count each token twice.
    `counts` (layers x experts, int64) stays on the model's device (no host sync); rows are `layers`
    ("layers.1", ...). Each token counts once for each of its top-k experts.
    """

    def __init__(self, model: torch.nn.Module, *, auto: bool = False):
        self.routers = routers(model)
        if not self.routers:
            raise ValueError("the model has no MoE router (a top-k router with `e_score_correction_bias`, as in "
                             "DeepSeek-V3); is it a dense model?")
        self.layers = [_layer_label(name) for name, _ in self.routers]
        self.auto = auto
        bias = self.routers[0][1].e_score_correction_bias
        self.counts = torch.zeros(len(self.routers), bias.numel(), dtype=torch.long, device=bias.device)
        self._recording, self._mask = False, None
        self._handles = [model.register_forward_pre_hook(self._capture_mask, with_kwargs=True),
                         model.register_forward_hook(self._release_mask, always_call=True)]
        self._handles += [m.register_forward_hook(self._hook(i)) for i, (_, m) in enumerate(self.routers)]

    def _capture_mask(self, _module, args, kwargs) -> None:
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)  # forward(input_ids, attention_mask)
        self._mask = mask if torch.is_tensor(mask) and mask.dim() == 2 else None

    def _release_mask(self, *_) -> None:
        self._mask = None  # a router called outside a forward of the model must not see a stale mask

    def _real_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """1 for each real token of this router call, 0 for padding: (sequences, tokens)."""
        if hidden.dim() != 3:  # already flat: one run of tokens
            return torch.ones(1, hidden.shape[0], dtype=torch.long, device=hidden.device)
        batch, seq_len = hidden.shape[:2]
        mask = self._mask
        if mask is None or mask.shape[0] != batch or mask.shape[1] < seq_len:
            return torch.ones(batch, seq_len, dtype=torch.long, device=hidden.device)
        # with a KV cache the mask also covers the cached positions; the tokens routed now are the last ones
        return mask[:, -seq_len:].ne(0).to(device=hidden.device, dtype=torch.long)

    def _hook(self, layer: int):
        def hook(module, inputs, output):
            if _graph_task() != -1 or not (self._recording or (self.auto and module.training)):
                return
            router_logits, _, topk_indices = output  # transformers' router returns (logits, weights, indices)
            real = self._real_tokens(inputs[0])
            if self.counts.device != topk_indices.device:  # the model moved after the counter was made
                self.counts = self.counts.to(topk_indices.device)
            weights = real.reshape(-1, 1).expand(topk_indices.shape).reshape(-1)
            self.counts[layer].index_add_(0, topk_indices.reshape(-1), weights)
            self._routed(module, router_logits, topk_indices, real)

        return hook

    def _routed(self, module, router_logits, topk_indices, real) -> None:
        """Called after each counted router call (the balancer collects its auxiliary loss here)."""

    @contextlib.contextmanager
    def recording(self):
        """Count routed tokens for the forward passes inside the block."""
        self._recording = True
        try:
            yield self
        finally:
            self._recording = False

    def take(self) -> torch.Tensor:
        """The counts since the last `take` (layers x experts), and start again from zero."""
        counts, self.counts = self.counts, torch.zeros_like(self.counts)
        return counts

    def frame(self, counts: torch.Tensor | None = None) -> pd.DataFrame:
        """`counts` (default: the current ones) as a DataFrame, layers x experts."""
        counts = self.counts if counts is None else counts
        return pd.DataFrame(counts.cpu().numpy(), index=pd.Index(self.layers, name="layer"),
                            columns=pd.Index(range(counts.shape[-1]), name="expert"))

    def remove(self) -> None:
        """Detach the hooks (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []


@torch.no_grad()
def expert_load(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> pd.DataFrame:
    """Tokens routed to each expert, per MoE layer, for one batch in eval mode: a DataFrame (layers x experts).

    Each real token counts once for each of its top-k experts, so every row sums to tokens x k; positions
    where `attention_mask` is 0 are padding and not counted. Shown in notebooks/03 §5 and notebooks/04 §5.
    """
    counter = LoadCounter(model)
    was_training = model.training
    try:
        model.eval()
        with counter.recording():
            model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        model.train(was_training)
        counter.remove()
    return counter.frame()


class LoadBalancer(LoadCounter):
    """Auxiliary-loss-free bias balancing plus the optional sequence-wise auxiliary loss.

    Usage in a training loop (the `cookbook.train.Trainer` does exactly this when the model has routers)::

        balancer = LoadBalancer(model, gamma=1e-3, alpha=1e-4)
        with balancer.recording():                 # count routed tokens, collect the aux loss
            loss = lm_loss(model(...)) + balancer.aux_loss()
        loss.backward(); optimizer.step()
        balancer.update_bias()                     # b_i += γ·sign(mean − load_i), then reset the counts

    Tokens are counted (as `LoadCounter` does: real tokens only) inside `recording()`, so evaluation passes
    and the recomputation of activation checkpointing never count. Read `last_load` (layers x experts,
    tokens) after a step.
    """

    def __init__(self, model: torch.nn.Module, gamma: float = 1e-3, alpha: float = 0.0):
        if gamma < 0 or alpha < 0:
            raise ValueError(f"gamma and alpha must be >= 0, got gamma={gamma}, alpha={alpha}")
        super().__init__(model)
        self.gamma, self.alpha = gamma, alpha
        self.last_load = torch.zeros_like(self.counts)
        self._aux: list[torch.Tensor] = []

    def _routed(self, module, router_logits, topk_indices, real) -> None:
        if self.alpha > 0 and torch.is_grad_enabled():
            self._aux.append(sequence_aux_loss(router_logits, topk_indices, real))

    @contextlib.contextmanager
    def recording(self):
        """Count routed tokens (and collect aux losses) for the forward passes inside the block."""
        self._aux = []
        with super().recording():
            yield self

    def aux_loss(self) -> torch.Tensor:
        """α x the sum over MoE layers of the sequence-wise loss of the last recorded forward (0 if α = 0)."""
        if self.alpha == 0 or not self._aux:
            return torch.zeros((), device=self.counts.device)
        return self.alpha * torch.stack(self._aux).sum()

    @torch.no_grad()
    def update_bias(self) -> None:
        """One balancing step from the tokens counted since the last one: b_i += γ·sign(mean − load_i)."""
        self.last_load = self.take()
        load = self.last_load.float()
        error = load.mean(-1, keepdim=True) - load
        for (_, router), delta in zip(self.routers, error.sign() * self.gamma, strict=True):
            router.e_score_correction_bias.add_(delta.to(router.e_score_correction_bias))

    def load_fraction(self) -> torch.Tensor:
        """Share of routed token slots each expert got in the last step (layers x experts; rows sum to 1)."""
        load = self.last_load.float()
        return load / load.sum(-1, keepdim=True).clamp_min(1)

    def biases(self) -> torch.Tensor:
        """The current correction biases (layers x experts)."""
        return torch.stack([r.e_score_correction_bias.detach().float() for _, r in self.routers])
