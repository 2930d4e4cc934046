"""Distillation losses against hand-written formulas and torch's KLDivLoss, and `distill` on the Trainer."""

import pytest
import torch
import torch.nn.functional as F

from cookbook import finetune, models, train

VOCAB = 64


def _logits(seed, shape=(2, 5, VOCAB), scale=3.0):
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _labels():
    labels = torch.arange(10).reshape(2, 5) % VOCAB
    labels[0, 3:] = -100  # padding: positions 2 and 3 of row 0 predict nothing
    labels[1, 1] = -100  # a masked prompt token: position 0 of row 1 predicts nothing
    return labels


def _kept(x, labels):
    """The hand-written selection: position t counts when labels[t + 1] is a target."""
    return torch.stack([x[b, t] for b in range(labels.shape[0]) for t in range(labels.shape[1] - 1)
                        if labels[b, t + 1] != -100])


def _kl_by_hand(p, q):
    return (p * (p.log() - q.log())).sum(-1)


def test_soft_target_loss_equals_hintons_formula_and_the_guides_kldivloss():
    s, t, temperature = _logits(0), _logits(1), 2.0
    p, q = F.softmax(t / temperature, -1), F.softmax(s / temperature, -1)
    by_hand = (_kl_by_hand(p, q) * temperature**2).mean()
    guide = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s.reshape(-1, VOCAB) / temperature, -1),
                                                      p.reshape(-1, VOCAB)) * temperature**2
    got = finetune.soft_target_loss(s, t, temperature)
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert got.item() == pytest.approx(guide.item(), rel=1e-6)


def test_reverse_kl_equals_its_formula():
    s, t, temperature = _logits(0), _logits(1), 1.5
    p, q = F.softmax(t / temperature, -1), F.softmax(s / temperature, -1)
    got = finetune.reverse_kl_loss(s, t, temperature, reduction="none")
    assert torch.allclose(got, (_kl_by_hand(q, p) * temperature**2).reshape(-1), rtol=1e-9)
    assert not torch.allclose(got, finetune.soft_target_loss(s, t, temperature, reduction="none"))  # KL is asymmetric


def test_losses_are_zero_when_the_logits_match():
    x = _logits(3)
    assert finetune.soft_target_loss(x, x.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-7)
    assert finetune.reverse_kl_loss(x, x.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-7)
    assert finetune.distillation_loss(x, x.clone(), _labels(), alpha=1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_gradient_is_t_times_the_softmax_gap_so_t_squared_keeps_its_scale():
    """d(T²·KL)/ds = T·(softmax(s/T) − softmax(t/T)) → (s − t)/V for zero-mean logits at high T (Hinton §2.1)."""
    t = _logits(1, (1, 1, VOCAB), scale=0.5)
    t = t - t.mean()
    grads = {}
    for temperature in (1.0, 3.0, 50.0, 100.0):
        s = _logits(0, (1, 1, VOCAB), scale=0.5)
        s = (s - s.mean()).requires_grad_()
        finetune.soft_target_loss(s, t, temperature, reduction="sum").backward()
        exact = temperature * (F.softmax(s.detach() / temperature, -1) - F.softmax(t / temperature, -1))
        assert torch.allclose(s.grad, exact, rtol=1e-5, atol=1e-9)
        grads[temperature] = s.grad
    limit = (s.detach() - t) / VOCAB
    assert torch.allclose(grads[100.0], limit, rtol=2e-2, atol=1e-5)
    assert (grads[100.0].norm() / grads[50.0].norm()).item() == pytest.approx(1.0, abs=0.01)  # with T²: no 1/T² fade


def test_masked_positions_are_ignored():
    s, t, labels = _logits(0), _logits(1), _labels()
    for loss in (finetune.soft_target_loss, finetune.reverse_kl_loss):
        got = loss(s, t, 2.0, labels)
        assert got.item() == pytest.approx(loss(_kept(s, labels), _kept(t, labels), 2.0).item(), rel=1e-6)
        noisy = s.clone()
        noisy[0, 2:] += 100.0  # positions whose next token is padding
        noisy[:, -1] += 100.0  # the last position predicts nothing
        assert loss(noisy, t, 2.0, labels).item() == pytest.approx(got.item(), rel=1e-9)
    assert finetune.soft_target_loss(s, t, 2.0, labels, reduction="none").shape == (int((labels[:, 1:] != -100).sum()),)


def test_distillation_loss_mixes_soft_and_hard_terms():
    s, t, labels, alpha, temperature = _logits(0), _logits(1), _labels(), 0.3, 2.0
    hard = F.cross_entropy(s[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    soft = finetune.soft_target_loss(s, t, temperature, labels)
    got = finetune.distillation_loss(s, t, labels, alpha=alpha, temperature=temperature)
    assert got.item() == pytest.approx((alpha * soft + (1 - alpha) * hard).item(), rel=1e-6)
    reverse = finetune.distillation_loss(s, t, labels, alpha=1.0, temperature=temperature, kind="reverse")
    assert reverse.item() == pytest.approx(finetune.reverse_kl_loss(s, t, temperature, labels).item(), rel=1e-6)
    summed = finetune.distillation_loss(s, t, labels, alpha=alpha, temperature=temperature, reduction="sum")
    assert summed.item() == pytest.approx(got.item() * int((labels[:, 1:] != -100).sum()), rel=1e-6)


def test_distillation_loss_ignore_index():
    # padding marked with the pad id 0 instead of -100: the same loss as the -100 labels, against torch's own
    s, t, labels, alpha = _logits(0), _logits(1), _labels(), 0.3
    padded = labels.masked_fill(labels == -100, 0)
    assert (labels[:, 1:] != 0).all()  # 0 is free to mean padding here
    want = finetune.distillation_loss(s, t, labels, alpha=alpha)
    got = finetune.distillation_loss(s, t, padded, alpha=alpha, ignore_index=0)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    hard = F.cross_entropy(s[:, :-1].reshape(-1, VOCAB), padded[:, 1:].reshape(-1), ignore_index=0)
    assert finetune.distillation_loss(s, t, padded, alpha=0.0, ignore_index=0).item() == pytest.approx(
        hard.item(), rel=1e-12)
    # left at its default, the 0s are targets and the loss changes
    assert finetune.distillation_loss(s, t, padded, alpha=alpha).item() != pytest.approx(want.item(), rel=1e-3)


def test_feature_loss_is_mse_through_the_projection():
    student, teacher = _logits(0, (2, 5, 8)), _logits(1, (2, 5, 16))
    projection = torch.nn.Linear(8, 16, bias=False).double()
    got = finetune.feature_loss(student, teacher, projection)
    assert got.item() == pytest.approx(F.mse_loss(projection(student), teacher).item(), rel=1e-6)
    labels = _labels()
    masked = finetune.feature_loss(student, teacher, projection, labels)
    by_hand = F.mse_loss(projection(_kept(student, labels)), _kept(teacher, labels))
    assert masked.item() == pytest.approx(by_hand.item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"student width 8 != teacher width 16.*nn.Linear\(8, 16\)"):
        finetune.feature_loss(student, teacher)


def test_layer_map_pairs_layers_uniformly():
    assert finetune.layer_map(2, 4) == [(1, 2), (2, 4)]
    assert finetune.layer_map(3, 8) == [(1, 3), (2, 5), (3, 8)]
    assert finetune.layer_map(4, 4) == [(1, 1), (2, 2), (3, 3), (4, 4)]
    with pytest.raises(ValueError, match="student layers <= teacher layers"):
        finetune.layer_map(4, 2)


def test_bad_settings_are_named():
    s, t, labels = _logits(0), _logits(1), _labels()
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        finetune.soft_target_loss(s, t, 0)
    with pytest.raises(ValueError, match=r"alpha .* \[0, 1\]; got 1.5"):
        finetune.distillation_loss(s, t, labels, alpha=1.5)
    with pytest.raises(ValueError, match="kind must be one of forward, reverse; got 'backward'"):
        finetune.distillation_loss(s, t, labels, kind="backward")
    with pytest.raises(ValueError, match="reduction must be one of mean, sum, none"):
        finetune.soft_target_loss(s, t, reduction="avg")
    with pytest.raises(ValueError, match="labels of shape"):
        finetune.soft_target_loss(s, t, labels=labels[:, :3])
    with pytest.raises(ValueError, match="every label is -100"):
        finetune.soft_target_loss(s, t, labels=torch.full_like(labels, -100))


# ---------------------------------------------------------------- distill() on the Trainer
def _blocks(n=16, seq_len=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": ids} for ids in torch.randint(0, VOCAB, (n, seq_len), generator=gen)]


def _loader(**kw):
    return train.loader(_blocks(**kw), 4, shuffle=False)


def _config(**kw):
    return train.TrainConfig(**{**dict(steps=3, lr=3e-3, log_interval=1, progress=False, device="cpu",
                                       moe_gamma=0.0), **kw})


def test_distill_without_soft_targets_is_plain_training():
    """alpha = 0 leaves only the labels' cross-entropy: the same run as the Trainer's own loss."""
    teacher = models.build("tiny", VOCAB, seed=1)
    history = finetune.distill(teacher, models.build("tiny", VOCAB, seed=0), _loader(), config=_config(), alpha=0.0)
    plain = train.Trainer(models.build("tiny", VOCAB, seed=0), _loader(), config=_config()).fit()
    assert torch.allclose(torch.tensor(history["loss"].values), torch.tensor(plain["loss"].values), rtol=1e-5)


def test_distill_trains_the_student_and_projections_against_a_frozen_teacher():
    teacher = models.build("smoke", VOCAB, seed=1)  # 4 layers of 128 -> a student of 2 layers of 64
    student = models.build("tiny", VOCAB, seed=0)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    first = next(iter(_loader()))
    first = {**first, "labels": first["input_ids"]}
    objective = finetune.DistillationObjective(teacher.eval(), alpha=0.5, temperature=2.0, feature_weight=1.0,
                                         layers=finetune.layer_map(2, 4))
    torch.manual_seed(0)
    projections = torch.nn.ModuleList(torch.nn.Linear(64, 128, bias=False) for _ in range(2))
    reference = student.__class__(student.config)
    reference.load_state_dict(student.state_dict())
    expected = objective(finetune.Distiller(reference, projections), first).item() / first["input_ids"][:, 1:].numel()
    torch.manual_seed(0)  # the same projection weights inside distill()
    history = finetune.distill(teacher, student, _loader(), _loader(seed=1), _config(), alpha=0.5, temperature=2.0,
                         feature_weight=1.0)
    assert history["loss"].iloc[0] == pytest.approx(expected, rel=1e-5)  # the Trainer ran this objective
    assert len(history) == 3 and history["val_loss"].notna().iloc[-1]
    assert all(torch.equal(teacher_state[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training
    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items())
