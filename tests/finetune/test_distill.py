"""Distillation losses against hand-written formulas and torch's KLDivLoss, and `distill` on the Trainer."""

import warnings

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


# ---------------------------------------------------------------- added for mutation testing (issue 30)
def test_defaults_are_the_documented_ones_by_hand():
    """soft targets at T = 2, reverse KL at T = 1, distillation_loss at alpha = 0.5, T = 2, forward KL, mean."""
    s, t, labels = _logits(0), _logits(1), _labels()
    p2, q2 = F.softmax(t / 2, -1), F.softmax(s / 2, -1)
    assert finetune.soft_target_loss(s, t).item() == pytest.approx((4 * _kl_by_hand(p2, q2)).mean().item(), rel=1e-9)
    p1, q1 = F.softmax(t, -1), F.softmax(s, -1)
    assert finetune.reverse_kl_loss(s, t).item() == pytest.approx(_kl_by_hand(q1, p1).mean().item(), rel=1e-9)
    soft = 4 * _kl_by_hand(_kept(p2, labels), _kept(q2, labels))
    hard = F.cross_entropy(s[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), reduction="none")
    hard = hard[labels[:, 1:].reshape(-1) != -100]
    want = (0.5 * soft + 0.5 * hard).mean()
    assert finetune.distillation_loss(s, t, labels).item() == pytest.approx(want.item(), rel=1e-9)


def test_reductions_by_hand():
    s, t, labels = _logits(0), _logits(1), _labels()
    for loss, forward in ((finetune.soft_target_loss, True), (finetune.reverse_kl_loss, False)):
        p, q = F.softmax(_kept(t, labels) / 3, -1), F.softmax(_kept(s, labels) / 3, -1)
        per = 9 * _kl_by_hand(*((p, q) if forward else (q, p)))
        assert torch.allclose(loss(s, t, 3.0, labels, reduction="none"), per, rtol=1e-9)
        assert loss(s, t, 3.0, labels, reduction="sum").item() == pytest.approx(per.sum().item(), rel=1e-9)
    x, y = _logits(0, (2, 5, 8)), _logits(1, (2, 5, 8))
    per = ((_kept(x, labels) - _kept(y, labels)) ** 2).mean(-1)
    assert torch.allclose(finetune.feature_loss(x, y, labels=labels, reduction="none"), per, rtol=1e-9)
    assert finetune.feature_loss(x, y, labels=labels, reduction="sum").item() == pytest.approx(per.sum().item(),
                                                                                               rel=1e-9)
    assert finetune.feature_loss(x, y).item() == pytest.approx(F.mse_loss(x, y).item(), rel=1e-9)


def test_the_teacher_side_gets_no_gradient():
    """The teacher's outputs are targets (constants): only the student's side is differentiated."""
    for loss in (finetune.soft_target_loss, finetune.reverse_kl_loss, finetune.feature_loss):
        s, t = _logits(0).requires_grad_(), _logits(1).requires_grad_()
        loss(s, t).backward()
        assert t.grad is None and s.grad is not None


def test_losses_are_computed_in_float32_from_bf16_logits():
    """bf16 logits (autocast) are widened before the softmax: the loss is float32's on the same bf16 values."""
    s, t, labels = _logits(0).bfloat16(), _logits(1).bfloat16(), _labels()
    for loss in (finetune.soft_target_loss, finetune.reverse_kl_loss, finetune.feature_loss):
        got = loss(s, t, labels=labels)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(loss(s.double(), t.double(), labels=labels).item(), rel=1e-5)
    got = finetune.distillation_loss(s, t, labels)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(finetune.distillation_loss(s.double(), t.double(), labels).item(), rel=1e-5)


def test_layer_map_edges_and_settings_errors():
    assert finetune.layer_map(1, 1) == [(1, 1)]
    assert finetune.layer_map(1, 6) == [(1, 6)]  # one student layer meets the teacher's last
    with pytest.raises(ValueError, match="student layers <= teacher layers"):
        finetune.layer_map(0, 3)
    teacher = models.build("tiny", VOCAB, seed=1)
    for weight, layers in ((-0.5, [(1, 1)]), (0.5, []), (2.0, ())):
        with pytest.raises(ValueError, match="feature_weight must be >= 0 and needs layer pairs"):
            finetune.DistillationObjective(teacher, feature_weight=weight, layers=layers)
    finetune.DistillationObjective(teacher, feature_weight=0.0)  # no features: no layers needed
    finetune.DistillationObjective(teacher, alpha=0.0)
    finetune.DistillationObjective(teacher, alpha=1.0)
    for bad in (dict(alpha=-0.1), dict(alpha=1.1), dict(temperature=0.0), dict(kind="backward")):
        with pytest.raises(ValueError):
            finetune.DistillationObjective(teacher, **bad)
    with pytest.raises(ValueError, match="unknown precision"):
        finetune.DistillationObjective(teacher, teacher_precision="fp8")


def _sharp(model):
    """A freshly initialised model's logits are nearly uniform, so every soft term is ~0 and the temperature or
    the KL's direction would hardly show: scale its output head (x30) to give it confident, distinct logits."""
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    return model


def _batch():
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (2, 8), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: the later positions of row 1 must not attend to it
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, 1] = -100  # a masked prompt token
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _objective_by_hand(teacher, student, projections, batch, alpha, temperature, kind, weight, layers, precision):
    """Summed loss over target positions, one position at a time, from the models' own outputs."""
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    with torch.no_grad(), (torch.autocast("cpu", torch.bfloat16) if precision else torch.autocast("cpu",
                                                                                                   enabled=False)):
        tout = teacher(**inputs)
    sout = student(**inputs)
    labels, total = batch["labels"], 0.0
    for b in range(labels.shape[0]):
        for i in range(labels.shape[1] - 1):
            target = labels[b, i + 1].item()
            if target == -100:
                continue
            s, t = sout.logits[b, i].double(), tout.logits[b, i].double()
            q, p = F.softmax(s / temperature, -1), F.softmax(t / temperature, -1)
            kl = (p * (p.log() - q.log())).sum() if kind == "forward" else (q * (q.log() - p.log())).sum()
            ce = -F.log_softmax(s, -1)[target]
            total = total + alpha * temperature**2 * kl + (1 - alpha) * ce
            for projection, (si, ti) in zip(projections, layers, strict=True):
                gap = projection(sout.hidden_states[si][b, i]).double() - tout.hidden_states[ti][b, i].double()
                total = total + weight * (gap**2).mean()
    return total


def _run_setup(teacher_name, student_name):
    """Sharpened teacher and student, a copy of the student, and the loader's first batch with its labels."""
    teacher = _sharp(models.build(teacher_name, VOCAB, seed=1))
    student = _sharp(models.build(student_name, VOCAB, seed=0))
    reference = student.__class__(student.config)
    reference.load_state_dict(student.state_dict())
    first = next(iter(_loader()))["input_ids"]
    batch = {"input_ids": first, "attention_mask": torch.ones_like(first), "labels": first}
    return teacher, student, reference, batch, first[:, 1:].numel()


@pytest.mark.parametrize("kind,precision", [("forward", None), ("reverse", "bf16")])
def test_objective_is_the_summed_loss_by_hand(kind, precision):
    teacher = _sharp(models.build("smoke", VOCAB, seed=1)).eval()  # 4 layers of 128; the student 2 of 64
    student = _sharp(models.build("tiny", VOCAB, seed=0))
    torch.manual_seed(0)
    projections = torch.nn.ModuleList(torch.nn.Linear(64, 128, bias=False) for _ in range(2))
    layers, batch = finetune.layer_map(2, 4), _batch()
    settings = dict(alpha=0.3, temperature=1.5, kind=kind)
    objective = finetune.DistillationObjective(teacher, **settings, feature_weight=0.5, layers=layers,
                                               teacher_precision=precision)
    got = objective(finetune.Distiller(student, projections), batch)
    want = _objective_by_hand(teacher, student, projections, batch, 0.3, 1.5, kind, 0.5, layers, precision)
    assert got.item() == pytest.approx(want.item(), rel=1e-4)
    if precision:  # the teacher really ran in bf16: its float32 outputs give another loss
        fp32 = _objective_by_hand(teacher, student, projections, batch, 0.3, 1.5, kind, 0.5, layers, None)
        assert got.item() != pytest.approx(fp32.item(), rel=1e-4)
    unmasked = objective(finetune.Distiller(student, projections), {**batch, "attention_mask": None})
    assert unmasked.item() != pytest.approx(got.item(), rel=1e-4)  # the mask reached both models
    got.backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher ran without gradients
    assert all(p.grad is not None for p in projections.parameters())


def test_distill_passes_its_settings_to_the_objective():
    """Non-default alpha, temperature, kind, feature weight and teacher precision: the first logged loss is the
    hand-computed one."""
    teacher, student, reference, batch, targets = _run_setup("smoke", "tiny")
    torch.manual_seed(0)
    projections = torch.nn.ModuleList(torch.nn.Linear(64, 128, bias=False) for _ in range(2))
    want = _objective_by_hand(teacher.eval(), reference, projections, batch, 0.2, 3.0, "reverse", 0.25,
                              [(1, 2), (2, 4)], "bf16").item() / targets
    teacher.train()
    torch.manual_seed(0)
    history = finetune.distill(teacher, student, _loader(), config=_config(steps=1), alpha=0.2, temperature=3.0,
                               kind="reverse", feature_weight=0.25, teacher_precision="bf16")
    assert history["loss"].iloc[0] == pytest.approx(want, rel=1e-4)
    assert not teacher.training


def test_distillation_loss_per_position_by_hand():
    """reduction="none": each target position's alpha·T²·KL + (1 − alpha)·CE, for both kinds."""
    s, t, labels = _logits(0), _logits(1), _labels()
    ks, kt = _kept(s, labels), _kept(t, labels)
    q, p = F.softmax(ks / 2.5, -1), F.softmax(kt / 2.5, -1)
    hard = -torch.stack([F.log_softmax(s[b, i], -1)[labels[b, i + 1]] for b in range(2) for i in range(4)
                         if labels[b, i + 1] != -100])
    for kind, kl in (("forward", _kl_by_hand(p, q)), ("reverse", _kl_by_hand(q, p))):
        got = finetune.distillation_loss(s, t, labels, alpha=0.3, temperature=2.5, kind=kind, reduction="none")
        assert torch.allclose(got, 0.3 * 6.25 * kl + 0.7 * hard, rtol=1e-9)


def test_reverse_kl_ignore_index():
    s, t, labels = _logits(0), _logits(1), _labels()
    padded = labels.masked_fill(labels == -100, 0)
    want = finetune.reverse_kl_loss(_kept(s, labels), _kept(t, labels), 2.0)
    got = finetune.reverse_kl_loss(s, t, 2.0, padded, ignore_index=0)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)


def test_losses_raise_no_warning():
    """No implicit-dimension softmax (deprecated by torch) or other warning in the notebooks' calls."""
    s, t, labels = _logits(0), _logits(1), _labels()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        finetune.soft_target_loss(s, t, 2.0, labels)
        finetune.reverse_kl_loss(s, t, 2.0, labels)
        finetune.distillation_loss(s, t, labels)


def test_no_target_message_is_exact():
    s, t, labels = _logits(0), _logits(1), _labels()
    with pytest.raises(ValueError, match=r"^no target positions: every label is -100$"):
        finetune.soft_target_loss(s, t, labels=torch.full_like(labels, -100))


def test_objective_defaults_and_feature_weight_zero_by_hand():
    """Defaults alpha 0.5, T 2, forward KL; feature_weight 0 with layer pairs given adds nothing and needs no
    projections."""
    teacher = _sharp(models.build("smoke", VOCAB, seed=1)).eval()
    student = _sharp(models.build("tiny", VOCAB, seed=0))
    batch = _batch()
    want = _objective_by_hand(teacher, student, [], batch, 0.5, 2.0, "forward", 0.0, [], None)
    got = finetune.DistillationObjective(teacher)(finetune.Distiller(student), batch)
    assert got.item() == pytest.approx(want.item(), rel=1e-4)
    off = finetune.DistillationObjective(teacher, feature_weight=0.0, layers=finetune.layer_map(2, 4))
    assert off(finetune.Distiller(student), batch).item() == pytest.approx(want.item(), rel=1e-4)


def test_objective_refuses_layer_pairs_without_their_projections():
    """One projection per layer pair: a missing one would silently drop that pair's feature term."""
    teacher = models.build("smoke", VOCAB, seed=1).eval()
    distiller = finetune.Distiller(models.build("tiny", VOCAB, seed=0))
    assert isinstance(distiller.projections, torch.nn.ModuleList) and len(distiller.projections) == 0
    objective = finetune.DistillationObjective(teacher, feature_weight=0.5, layers=finetune.layer_map(2, 4))
    with pytest.raises(ValueError, match="zip"):
        objective(distiller, _batch())


class _Steps:
    def __init__(self):
        self.steps = []

    def on_step_end(self, trainer, row):
        self.steps.append(row["step"])


def test_distill_defaults_into_a_deeper_student_by_hand():
    """Born-again distillation (a student deeper than its teacher) with the defaults alpha 0.5, T 2, forward KL
    and no feature term: no layer pairs are needed; the callbacks run; the trainer's MoE hooks are removed."""
    teacher, student, reference, batch, targets = _run_setup("tiny", "smoke")  # 2 layers; the student has 4
    want = _objective_by_hand(teacher.eval(), reference, [], batch, 0.5, 2.0, "forward", 0.0, [], None).item()
    steps = _Steps()
    history = finetune.distill(teacher, student, _loader(), config=_config(steps=2), callbacks=[steps])
    assert history["loss"].iloc[0] == pytest.approx(want / targets, rel=1e-4)
    assert steps.steps == [1, 2]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in student.modules())


def test_distill_matches_equal_widths_without_a_projection():
    """Student and teacher of the same width: the hidden states are compared as they are (no learned map)."""
    teacher, student, reference, batch, targets = _run_setup("tiny", "tiny")
    identity = [torch.nn.Identity(), torch.nn.Identity()]
    want = _objective_by_hand(teacher.eval(), reference, identity, batch, 0.5, 2.0, "forward", 0.5,
                              [(1, 1), (2, 2)], None).item() / targets
    history = finetune.distill(teacher, student, _loader(), config=_config(steps=1), feature_weight=0.5)
    assert history["loss"].iloc[0] == pytest.approx(want, rel=1e-4)
