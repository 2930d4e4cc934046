"""Knowledge distillation: soft targets, reverse KL, feature matching, and `distill` on the cookbook Trainer.

- Soft targets (Hinton, Vinyals & Dean 2015, arXiv:1503.02531, §2): the student matches the teacher's softened
  distribution softmax(z/T). The gradient of that term shrinks as 1/T², so it is multiplied by T² to keep its
  weight against the hard-label loss the same whatever T.
- Reverse KL (MiniLLM, Gu et al. 2023, arXiv:2306.08543): KL(student ‖ teacher) is mode-seeking; a small
  student puts its mass on what the teacher finds likely instead of spreading it over everything the teacher
  allows. MiniLLM optimises it on the student's own samples with policy gradients; here it is the token-level
  form on the training data's prefixes (as in GKD / DistiLLM's supervised variants).
- Feature distillation (FitNets, Romero et al. 2014, arXiv:1412.6550): the student's intermediate hidden states
  regress onto the teacher's through a learned projection when the widths differ; `layer_map` pairs layers
  when the depths differ.

Every loss takes causal-LM logits (batch, seq, vocab) and, optionally, labels (batch, seq) as `train.token_loss`
does: position t predicts token t+1, and positions whose next label is -100 (padding, a masked prompt) take no
part. `distill` runs on `train.Trainer` with `DistillationObjective` as its loss.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from cookbook import train
from cookbook.train import precision as amp

__all__ = ["DistillationObjective", "Distiller", "distill", "distillation_loss", "feature_loss", "layer_map",
           "reverse_kl_loss", "soft_target_loss"]

_KINDS = ("forward", "reverse")
_REDUCTIONS = ("mean", "sum", "none")


def _positions(labels: torch.Tensor | None, *tensors: torch.Tensor, ignore_index: int = -100) -> list[torch.Tensor]:
    """The rows of each (batch, seq, ...) tensor that predict a real target, flattened to (n, ...).

    Without labels every position counts. With labels, position t counts when labels[t + 1] != ignore_index.
    """
    if labels is None:
        return [t.reshape(-1, t.shape[-1]) for t in tensors]
    if any(t.shape[:2] != labels.shape for t in tensors):
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match tensors of shapes "
                         f"{[tuple(t.shape) for t in tensors]} (need the same batch and sequence length)")
    keep = labels[:, 1:] != ignore_index
    return [t[:, :-1][keep] for t in tensors]


def _reduce(per_position: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        if per_position.numel() == 0:
            raise ValueError("no target positions: every label is -100")
        return per_position.mean()
    if reduction == "sum":
        return per_position.sum()
    if reduction == "none":
        return per_position
    raise ValueError(f"reduction must be one of {', '.join(_REDUCTIONS)}; got {reduction!r}")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _wide(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16/fp16 logits under autocast), float64 kept: losses are computed wide."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check(alpha: float, temperature: float, kind: str) -> None:
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha is the weight of the soft term, in [0, 1]; got {alpha}")
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(_KINDS)}; got {kind!r}")
    _check_temperature(temperature)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row from log-probabilities: torch's KLDivLoss takes (input=log q, target=log p)."""
    return F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)


def soft_target_loss(student_logits, teacher_logits, temperature: float = 2.0, labels=None,
                     reduction: str = "mean", *, ignore_index: int = -100) -> torch.Tensor:
    """Hinton's soft-target loss T²·KL(teacher_T ‖ student_T), per predicted position.

    `labels` (optional, as for `train.token_loss`) leaves out the positions whose next token is `ignore_index`.
    Shown in notebooks/08 §1.
    """
    _check_temperature(temperature)
    s, t = _positions(labels, student_logits, teacher_logits, ignore_index=ignore_index)
    s, t = _wide(s) / temperature, _wide(t.detach()) / temperature
    return _reduce(_kl(F.log_softmax(t, -1), F.log_softmax(s, -1)) * temperature**2, reduction)


def reverse_kl_loss(student_logits, teacher_logits, temperature: float = 1.0, labels=None,
                    reduction: str = "mean", *, ignore_index: int = -100) -> torch.Tensor:
    """Reverse KL T²·KL(student_T ‖ teacher_T) per predicted position (MiniLLM's objective, token level).

    Shown in notebooks/08 §3 (`distill(..., kind="reverse")`).
    """
    _check_temperature(temperature)
    s, t = _positions(labels, student_logits, teacher_logits, ignore_index=ignore_index)
    s, t = _wide(s) / temperature, _wide(t.detach()) / temperature
    return _reduce(_kl(F.log_softmax(s, -1), F.log_softmax(t, -1)) * temperature**2, reduction)


def distillation_loss(student_logits, teacher_logits, labels, *, alpha: float = 0.5, temperature: float = 2.0,
                      kind: str = "forward", reduction: str = "mean", ignore_index: int = -100) -> torch.Tensor:
    """alpha · soft-target loss + (1 − alpha) · cross-entropy on the labels, over the target positions.

    `kind` "forward" is Hinton's KL(teacher ‖ student), "reverse" MiniLLM's KL(student ‖ teacher). Positions
    whose next label is `ignore_index` (-100, Hugging Face's and PyTorch's default) count in neither term.
    Shown in notebooks/08 §3.
    """
    _check(alpha, temperature, kind)
    soft_loss = soft_target_loss if kind == "forward" else reverse_kl_loss
    soft = soft_loss(student_logits, teacher_logits, temperature, labels, reduction="none", ignore_index=ignore_index)
    (s,) = _positions(labels, student_logits, ignore_index=ignore_index)
    targets = labels[:, 1:]
    hard = F.cross_entropy(_wide(s), targets[targets != ignore_index], reduction="none")
    return _reduce(alpha * soft + (1 - alpha) * hard, reduction)


def feature_loss(student_hidden, teacher_hidden, projection: nn.Module | None = None, labels=None,
                 reduction: str = "mean") -> torch.Tensor:
    """Mean squared error between the (projected) student hidden states and the teacher's, per position.

    `projection` maps the student's width onto the teacher's (e.g. `nn.Linear(d_student, d_teacher)`, trained
    with the student); it is required when the widths differ. Shown in notebooks/08 §3.
    """
    s, t = _positions(labels, student_hidden, teacher_hidden)
    if projection is not None:
        s = projection(s)
    if s.shape[-1] != t.shape[-1]:
        raise ValueError(f"student width {s.shape[-1]} != teacher width {t.shape[-1]}: pass a projection, e.g. "
                         f"nn.Linear({s.shape[-1]}, {t.shape[-1]})")
    return _reduce((_wide(s) - _wide(t.detach())).pow(2).mean(-1), reduction)


def layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """(student, teacher) indices into `hidden_states` pairing each student layer with a teacher layer.

    Uniform, as in DistilBERT / TinyBERT: student layer j of n_s (1-based, after its block) ↔ teacher layer
    round(j·n_t/n_s), so the last layers meet. Shown in notebooks/08 §2.
    """
    if student_layers < 1 or teacher_layers < student_layers:
        raise ValueError(f"need 1 <= student layers <= teacher layers, got {student_layers}, {teacher_layers}")
    return [(j, round(j * teacher_layers / student_layers)) for j in range(1, student_layers + 1)]


class Distiller(nn.Module):
    """The student and the projections of the feature loss, as one module the Trainer trains.

    Calling it calls the student, so `Trainer.evaluate` reports the student's own loss on the labels.
    """

    def __init__(self, student: nn.Module, projections: nn.ModuleList | None = None):
        super().__init__()
        self.student = student
        self.projections = projections if projections is not None else nn.ModuleList()

    def forward(self, **inputs):
        return self.student(**inputs)


class DistillationObjective:
    """The Trainer loss of distillation: (model, batch) → the loss summed over the batch's target tokens.

    The same contract as `train.token_loss`, so the Trainer's token-normalised accumulation stays exact. The
    teacher runs in eval mode without gradients (in `teacher_precision` when given, e.g. "bf16").
    """

    def __init__(self, teacher: nn.Module, *, alpha: float = 0.5, temperature: float = 2.0, kind: str = "forward",
                 feature_weight: float = 0.0, layers: list[tuple[int, int]] = (),
                 teacher_precision: str | None = None):
        if feature_weight < 0 or (feature_weight > 0 and not layers):
            raise ValueError(f"feature_weight must be >= 0 and needs layer pairs; got {feature_weight}, {layers}")
        _check(alpha, temperature, kind)
        self.teacher, self.alpha, self.temperature, self.kind = teacher, alpha, temperature, kind
        self.feature_weight, self.layers = feature_weight, list(layers)
        self.teacher_precision = None if teacher_precision is None else amp.check(teacher_precision)

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = dict(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
        features = self.feature_weight > 0
        context = (amp.autocast(self.teacher_precision, batch["input_ids"].device) if self.teacher_precision
                   else contextlib.nullcontext())
        with torch.no_grad(), context:
            teacher = self.teacher(**inputs, output_hidden_states=features)
        student = model(**inputs, output_hidden_states=features)
        labels = batch["labels"]
        loss = distillation_loss(student.logits, teacher.logits, labels, alpha=self.alpha,
                                 temperature=self.temperature, kind=self.kind, reduction="sum")
        if features:
            for projection, (i, j) in zip(model.projections, self.layers, strict=True):
                loss = loss + self.feature_weight * feature_loss(
                    student.hidden_states[i], teacher.hidden_states[j], projection, labels, reduction="sum")
        return loss


def distill(teacher, student, train_loader, val_loader=None, config: train.TrainConfig | None = None, *,
            alpha: float = 0.5, temperature: float = 2.0, kind: str = "forward", feature_weight: float = 0.0,
            teacher_precision: str | None = None, callbacks=()):
    """Train `student` to imitate `teacher` with `train.Trainer`; the training history (a DataFrame).

    The loss is `distillation_loss` (alpha on the soft term, 1 − alpha on the labels) plus, with
    `feature_weight > 0`, `feature_loss` on the layers of `layer_map`, through learned linear projections when
    the widths differ. `val_loss` in the history is the student's plain cross-entropy, comparable across runs.
    The teacher is put in eval mode and on the trainer's device; the student is trained in place.
    Shown in notebooks/08 §3.
    """
    layers, projections = [], nn.ModuleList()
    if feature_weight > 0:
        s_cfg, t_cfg = student.config, teacher.config
        layers = layer_map(s_cfg.num_hidden_layers, t_cfg.num_hidden_layers)
        width = (s_cfg.hidden_size, t_cfg.hidden_size)
        projections = nn.ModuleList(nn.Linear(*width, bias=False) if width[0] != width[1] else nn.Identity()
                                    for _ in layers)
    objective = DistillationObjective(teacher, alpha=alpha, temperature=temperature, kind=kind,
                                      feature_weight=feature_weight, layers=layers,
                                      teacher_precision=teacher_precision)
    trainer = train.Trainer(Distiller(student, projections), train_loader, val_loader, config, callbacks,
                            loss_fn=objective)
    teacher.eval().to(trainer.device)
    try:
        return trainer.fit()
    finally:
        if trainer.balancer is not None:
            trainer.balancer.remove()
