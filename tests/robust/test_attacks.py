"""FGSM and PGD: a hand computation, torchattacks, the ε-ball and valid range, side effects, the robust table."""

import functools
import re

import numpy as np
import pytest
import torch
from torch import nn

from cookbook import robust
from cookbook.robust.attacks import eval_mode


def _linear(seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    return model


def _batch(n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def test_fgsm_equals_hand_computation_on_a_linear_model():
    model, (x, y) = _linear(), _batch()
    W, b = model.weight.detach().double().numpy(), model.bias.detach().double().numpy()
    xs = x.double().numpy()
    logits = xs @ W.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(3)[y.numpy()]) @ W / len(xs)  # d mean-CE / dx of softmax regression
    assert np.abs(grad).min() > 1e-6  # no sign too close to zero to trust
    for eps in (0.05, 0.3):
        expected = torch.clamp(x + eps * torch.from_numpy(np.sign(grad)).float(), 0, 1)
        assert torch.equal(robust.fgsm(model, x, y, eps), expected)


def test_fgsm_and_pgd_match_torchattacks(trained_cnn, test_batch):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = test_batch
    for eps in (0.05, 0.2):
        assert torch.equal(robust.fgsm(trained_cnn, x, y, eps), torchattacks.FGSM(trained_cnn, eps=eps)(x, y))
        ours = robust.pgd(trained_cnn, x, y, eps, alpha=eps / 4, steps=5, random_start=False)
        theirs = torchattacks.PGD(trained_cnn, eps=eps, alpha=eps / 4, steps=5, random_start=False)(x, y)
        assert torch.equal(ours, theirs)
        ours = robust.pgd(trained_cnn, x, y, 10 * eps, alpha=3 * eps, steps=5, random_start=False, norm="l2")
        theirs = torchattacks.PGDL2(trained_cnn, eps=10 * eps, alpha=3 * eps, steps=5, random_start=False)(x, y)
        assert torch.equal(ours, theirs)
    target = (y + 1) % 10
    attack = torchattacks.PGD(trained_cnn, eps=0.1, alpha=0.025, steps=5, random_start=False)
    attack.set_mode_targeted_by_label(quiet=True)
    ours = robust.pgd(trained_cnn, x, target, 0.1, alpha=0.025, steps=5, random_start=False, targeted=True)
    assert torch.equal(ours, attack(x, target))


def test_one_pgd_step_of_size_eps_without_random_start_is_fgsm(trained_cnn, test_batch):
    x, y = test_batch
    for eps in (0.03, 0.1, 0.3):
        pgd = robust.pgd(trained_cnn, x, y, eps, alpha=eps, steps=1, random_start=False)
        assert torch.equal(pgd, robust.fgsm(trained_cnn, x, y, eps))


ATTACKS = {
    "fgsm": lambda m, x, y, eps, targeted: robust.fgsm(m, x, y, eps, targeted=targeted),
    "pgd-linf": lambda m, x, y, eps, targeted: robust.pgd(m, x, y, eps, steps=4, targeted=targeted),
    "pgd-linf-no-start": lambda m, x, y, eps, targeted: robust.pgd(m, x, y, eps, alpha=eps, steps=4,
                                                                   random_start=False, targeted=targeted),
    "pgd-l2": lambda m, x, y, eps, targeted: robust.pgd(m, x, y, eps, steps=4, norm="l2", targeted=targeted),
}


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_perturbation_inside_the_ball_and_the_valid_range(trained_cnn, test_batch, name, targeted):
    x, y = test_batch
    torch.manual_seed(0)
    for eps in (0.02, 0.1, 0.5, 2.0):
        adv = ATTACKS[name](trained_cnn, x, y, eps, targeted)
        assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
        assert adv.min() >= 0 and adv.max() <= 1
        delta = (adv - x).flatten(1)
        if name == "pgd-l2":
            assert (delta.norm(dim=1) <= eps * (1 + 1e-5)).all()
        else:
            assert delta.abs().max() <= eps + 1e-6
        assert delta.abs().max() > 0  # it did move


def test_pgd_is_at_least_as_strong_as_fgsm(trained_cnn, test_batch):
    x, y = test_batch
    ce = nn.functional.cross_entropy
    for eps in (0.1, 0.2):
        with torch.no_grad():
            fgsm_out, pgd_out = (trained_cnn(robust.fgsm(trained_cnn, x, y, eps)),
                                 trained_cnn(robust.pgd(trained_cnn, x, y, eps, alpha=eps / 4, steps=20,
                                                        random_start=False)))
        assert ce(pgd_out, y) >= ce(fgsm_out, y)
        assert (pgd_out.argmax(1) == y).sum() <= (fgsm_out.argmax(1) == y).sum()


def test_targeted_attack_moves_predictions_to_the_target(trained_cnn, test_batch):
    x, y = test_batch
    target = (y + 3) % 10
    before = (trained_cnn(x).argmax(1) == target).float().mean()
    adv = robust.pgd(trained_cnn, x, target, 0.3, steps=20, targeted=True)
    after = (trained_cnn(adv).argmax(1) == target).float().mean()
    assert before < 0.1 and after > 0.8
    # the untargeted attack with the same labels pushes away from them instead
    away = robust.pgd(trained_cnn, x, target, 0.3, steps=20)
    assert (trained_cnn(away).argmax(1) == target).float().mean() <= before


def test_attacks_leave_model_modes_gradients_and_inputs_as_they_were(trained_cnn, test_batch):
    model = robust.cnn(0.3, 0.37, channels=(8, 16), seed=1)
    model.load_state_dict(trained_cnn.state_dict())
    model.train()
    model[1].eval()  # a submodule frozen in eval mode by its owner must stay so
    params = list(model.parameters())
    params[0].grad = torch.randn_like(params[0])
    grads = [None if p.grad is None else p.grad.clone() for p in params]
    seen_modes = []
    hook = model[2].register_forward_pre_hook(lambda m, _: seen_modes.append(m.training))
    x, y = test_batch
    x_leaf = x.clone().requires_grad_(True)
    for attack in (functools.partial(robust.fgsm, eps=0.1), functools.partial(robust.pgd, eps=0.1, steps=2),
                   functools.partial(robust.pgd, eps=1.0, steps=2, norm="l2")):
        for inputs in (x, x_leaf):
            before = inputs.detach().clone()
            attack(model, inputs, y)
            assert torch.equal(inputs.detach(), before) and inputs.grad is None
    hook.remove()
    assert seen_modes and not any(seen_modes)  # attacked in eval mode (dropout and batch-norm statistics off)
    assert model.training and not model[1].training and all(m.training for i, m in enumerate(model) if i != 1)
    assert x_leaf.requires_grad and not x.requires_grad
    for p, g in zip(params, grads, strict=True):
        assert (p.grad is None) if g is None else torch.equal(p.grad, g)


def test_attacks_work_under_no_grad(trained_cnn, test_batch):
    x, y = test_batch
    with torch.no_grad():
        adv = robust.pgd(trained_cnn, x, y, 0.1, steps=2, random_start=False)
    assert torch.equal(adv, robust.pgd(trained_cnn, x, y, 0.1, steps=2, random_start=False))


def test_perturb_finds_the_known_optimum_of_a_linear_loss():
    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(2, 5, 8, generator=gen), torch.randn(2, 5, 8, generator=gen)
    loss = lambda v: (v * g).sum()  # noqa: E731  maximised over a ball at x + eps * (direction of g)
    per_token = robust.perturb(loss, x, 0.5, alpha=1.0, steps=1, norm="l2", random_start=False, clamp=None,
                               norm_dims=(-1,))
    torch.testing.assert_close(per_token, x + 0.5 * g / g.norm(dim=-1, keepdim=True))
    per_example = robust.perturb(loss, x, 0.5, alpha=1.0, steps=1, norm="l2", random_start=False, clamp=None)
    torch.testing.assert_close(per_example, x + 0.5 * g / g.flatten(1).norm(dim=1).view(2, 1, 1))
    linf = robust.perturb(loss, x, 0.5, alpha=0.2, steps=5, random_start=False, clamp=None)
    torch.testing.assert_close(linf, x + 0.5 * g.sign())
    assert torch.equal(robust.perturb(loss, x, 0.0, clamp=None), x)


def test_robust_accuracy_table_by_hand():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))  # predicts the larger coordinate
    x = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    y = torch.tensor([0, 1, 1, 0])  # clean: right, right, wrong, wrong
    loader = [(x[:2], y[:2]), (x[2:], y[2:])]

    def swap_above_0_2(m, inputs, labels, eps):  # a stand-in attack: flips every prediction from eps 0.2 on
        return inputs.flip(-1) if eps >= 0.2 else inputs

    table = robust.robust_accuracy(model, loader, swap_above_0_2, [0, 0.1, 0.3])
    assert list(table.columns) == ["clean_accuracy", "robust_accuracy", "attack_success_rate", "examples"]
    assert table["clean_accuracy"].tolist() == [0.5, 0.5, 0.5] and table["examples"].tolist() == [4, 4, 4]
    # at 0.3 the third example becomes right, but it was wrong clean: robust accuracy counts it as wrong
    assert table["robust_accuracy"].tolist() == [0.5, 0.5, 0.0]
    assert table["attack_success_rate"].tolist() == [0.0, 0.0, 1.0]
    first3 = robust.robust_accuracy(model, loader, swap_above_0_2, [0.3], max_examples=3)
    assert first3.loc[0.3, "examples"] == 3 and first3.loc[0.3, "clean_accuracy"] == pytest.approx(2 / 3)
    assert robust.accuracy(model, loader) == 0.5


def test_robust_accuracy_of_a_trained_model_falls_with_eps(trained_cnn, digits_loaders):
    table = robust.robust_accuracy(trained_cnn, digits_loaders[1], functools.partial(robust.pgd, steps=5),
                                   [0, 0.1, 0.3], max_examples=128)
    assert table.loc[0.0, "robust_accuracy"] == table.loc[0.0, "clean_accuracy"] > 0.8
    assert table.loc[0.3, "robust_accuracy"] < table.loc[0.1, "robust_accuracy"] < table.loc[0.0, "robust_accuracy"]


@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: robust.fgsm(m, x, y, -0.1), "eps must be a finite number >= 0, got -0.1"),
    (lambda m, x, y: robust.pgd(m, x, y, float("nan")), "eps must be"),
    (lambda m, x, y: robust.pgd(m, x, y, 0.1, norm="l3"), "norm must be one of linf, l2, got 'l3'"),
    (lambda m, x, y: robust.pgd(m, x, y, 0.1, steps=0), "steps must be a positive int, got 0"),
    (lambda m, x, y: robust.pgd(m, x, y, 0.1, alpha=-1.0), "alpha .* must be a number > 0, got -1.0"),
    (lambda m, x, y: robust.fgsm(m, x * 4 - 1, y, 0.1), r"valid range \[0.0, 1.0\].*Normalize"),
    (lambda m, x, y: robust.fgsm(m, x, y[:3], 0.1), "one per example"),
    (lambda m, x, y: robust.fgsm(m, x, y.float(), 0.1), "integer class labels"),
    (lambda m, x, y: robust.fgsm(m, x, y, 0.1, clamp=(1, 0)), "low < high"),
    (lambda m, x, y: robust.robust_accuracy(m, [(x, y)], robust.fgsm, []), "at least one radius"),
    (lambda m, x, y: robust.robust_accuracy(m, [x], robust.fgsm, [0.1]), r"\(inputs, labels\) batches"),
])
def test_bad_input_is_a_clear_error(call, match):
    model, (x, y) = _linear(), _batch()
    with pytest.raises(ValueError, match=match):
        call(model, x, y)


def test_integer_images_are_rejected():
    model, (x, y) = _linear(), _batch()
    with pytest.raises(TypeError, match="floating-point"):
        robust.fgsm(model, (x * 255).long(), y, 0.1)


def test_eval_mode_restores_each_modules_own_flag():
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Sequential(torch.nn.BatchNorm1d(2)))
    model[1].eval()  # a mix: the outer model and the dropout train, the inner block does not
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(model) as inside:
            assert inside is model and not any(m.training for m in model.modules())
            raise RuntimeError("inside")
    assert [m.training for m in model.modules()] == [True, True, False, False]


def test_perturb_default_step_is_2_5_eps_over_steps():
    """Ascent on -(x - 0.53)^2 from 0.5 with eps 0.1: the optimum is inside the ball, so the walk oscillates
    around it in steps of alpha = 2.5 x 0.1 / 10 = 0.025: 0.525, 0.55, 0.525, ... ending at 0.55 after 10 steps."""
    x = torch.full((1, 1), 0.5, dtype=torch.float64)

    def loss(adv):
        return -((adv - 0.53) ** 2).sum()

    adv = robust.perturb(loss, x, 0.1, steps=10, random_start=False)
    assert adv.item() == pytest.approx(0.55, abs=1e-12)
    assert robust.perturb(loss, x, 0.1, steps=10, random_start=False, alpha=0.025).item() == adv.item()
    torch.manual_seed(0)
    assert robust.perturb(loss, x, 0.1, steps=10).item() != pytest.approx(0.55, abs=1e-6)  # random start by default


# ----------------------------------------------------------------------------- against references, exact messages
def _tiny_image_model(scale=1.0, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        model[1].weight.mul_(scale)
    return model


def _images(n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_matches_torchattacks_from_the_same_seed(norm):
    torchattacks = pytest.importorskip("torchattacks")
    assert robust.NORMS == ("linf", "l2")
    model, (x, y) = _tiny_image_model(), _images()
    attack = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    torch.manual_seed(1)
    ours = robust.pgd(model, x, y, 0.3, alpha=0.1, steps=3, norm=norm)
    torch.manual_seed(1)
    theirs = attack(model, eps=0.3, alpha=0.1, steps=3)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)  # L2: the start's norm rounds differently


def test_pgd_defaults_are_ten_steps_of_2_5_eps_over_10_from_a_random_start():
    torchattacks = pytest.importorskip("torchattacks")
    model, (x, y) = _tiny_image_model(), _images()
    torch.manual_seed(2)
    ours = robust.pgd(model, x, y, 0.2)
    torch.manual_seed(2)
    theirs = torchattacks.PGD(model, eps=0.2, alpha=0.05, steps=10, random_start=True)(x, y)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("targeted", [False, True])
def test_l2_step_guard_matches_torchattacks_on_tiny_gradients(targeted):
    """Gradients of norm ~1e-10: the step grad / (‖grad‖ + 1e-10) is then shorter than alpha, as in torchattacks."""
    torchattacks = pytest.importorskip("torchattacks")
    model, (x, y) = _tiny_image_model(scale=1e-9), _images()
    attack = torchattacks.PGDL2(model, eps=0.5, alpha=0.1, steps=2, random_start=False)
    if targeted:
        attack.set_mode_targeted_by_label(quiet=True)
        y = (y + 1) % 3
    ours = robust.pgd(model, x, y, 0.5, alpha=0.1, steps=2, norm="l2", random_start=False, targeted=targeted)
    assert torch.equal(ours, attack(x, y))
    assert (ours - x).flatten(1).norm(dim=1).max() < 0.15  # two steps of 0.1 would reach 0.2


def test_fgsm_without_clamp_and_pgd_in_another_range_by_hand():
    model, (x, y) = _linear(), _batch()
    inputs = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(inputs), y), inputs)
    expected = x + 0.7 * grad.sign()
    assert expected.max() > 1 and torch.equal(robust.fgsm(model, x, y, 0.7, clamp=None), expected)
    centred = 2 * x - 1  # inputs in [-1, 1]
    adv = robust.pgd(model, centred, y, 0.5, alpha=0.5, steps=1, random_start=False, clamp=(-1.0, 1.0))
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(centred.requires_grad_(True)), y), centred)
    torch.testing.assert_close(adv, (centred.detach() + 0.5 * grad.sign()).clamp(-1, 1))


def test_perturb_defaults_ten_steps_and_the_unit_range():
    x = torch.full((1, 1), 0.5, dtype=torch.float64)
    loss = lambda adv: -((adv - 0.53) ** 2).sum()  # noqa: E731  (see test_perturb_default_step_is_2_5_eps_over_steps)
    assert robust.perturb(loss, x, 0.1, random_start=False).item() == pytest.approx(0.55, abs=1e-12)
    up = lambda adv: adv.sum()  # noqa: E731
    near_one = torch.full((1, 1), 0.95, dtype=torch.float64)
    assert robust.perturb(up, near_one, 0.1, random_start=False).item() == 1.0  # clamped to [0, 1] by default
    assert robust.perturb(up, near_one, 0.1, random_start=False, clamp=None).item() == pytest.approx(1.05)
    assert robust.perturb(up, x, 1.0, random_start=False, alpha=0.2, steps=1).item() == pytest.approx(0.7)  # eps 1
    with pytest.raises(ValueError, match=r"valid range \[0.0, 1.0\]"):
        robust.perturb(up, near_one + 0.1, 0.1)


def test_attacks_accept_the_ends_of_the_valid_range_and_empty_batches():
    model, (x, y) = _linear(), _batch()
    x[0, 0], x[1, 1] = 0.0, 1.0  # the ends of [0, 1] are inside
    assert robust.fgsm(model, x, y.int(), 0.1).shape == x.shape  # int32 labels are labels too
    assert robust.pgd(model, x, y, 0.1, alpha=1e-12, steps=1).shape == x.shape
    assert torch.equal(robust.pgd(model, x, y, 0), x)
    assert robust.fgsm(model, x[:0], y[:0], 0.1).shape == (0, 4)


@pytest.mark.parametrize("call, message", [
    (lambda m, x, y: robust.fgsm(m, x, y, True), "eps must be a finite number >= 0, got True"),
    (lambda m, x, y: robust.fgsm(m, x, y, "0.1"), "eps must be a finite number >= 0, got '0.1'"),
    (lambda m, x, y: robust.fgsm(m, x, y, float("inf")), "eps must be a finite number >= 0, got inf"),
    (lambda m, x, y: robust.pgd(m, x, y, -1e-9), "eps must be a finite number >= 0, got -1e-09"),
    (lambda m, x, y: robust.pgd(m, x, y, 0.1, alpha=0), "alpha (the step size) must be a number > 0, got 0"),
    (lambda m, x, y: robust.pgd(m, x, y, 0.1, alpha=True), "alpha (the step size) must be a number > 0, got True"),
    (lambda m, x, y: robust.pgd(m, x, y, 0.1, alpha="0.1"),
     "alpha (the step size) must be a number > 0, got '0.1'"),
    (lambda m, x, y: robust.pgd(m, x, y, 0.1, steps=0), "steps must be a positive int, got 0"),
    (lambda m, x, y: robust.pgd(m, x, y, 0.1, norm="L2"), "norm must be one of linf, l2, got 'L2'"),
    (lambda m, x, y: robust.fgsm(m, x, y, 0.1, clamp=(0.5, 0.5)), "clamp must be (low, high) with low < high, got "
     "(0.5, 0.5)"),
    (lambda m, x, y: robust.fgsm(m, x + 0.5, y, 0.1), "x must lie in the valid range [0.0, 1.0], got values in "
     "[0.522, 1.42]: attacks work in pixel space, so put the normalisation inside the model (robust.Normalize) or "
     "pass clamp=None"),
    (lambda m, x, y: robust.pgd(m, x - 0.5, y[:2], 0.1), "x must lie in the valid range [0.0, 1.0], got values in "
     "[-0.478, 0.415]: attacks work in pixel space, so put the normalisation inside the model (robust.Normalize) or "
     "pass clamp=None"),  # the range is checked before the labels
    (lambda m, x, y: robust.fgsm(m, x, y[:3], 0.1), "y must be integer class labels, one per example of x ((6,)), "
     "got torch.int64 of shape (3,)"),
    (lambda m, x, y: robust.pgd(m, x, y.tolist(), 0.1), "y must be integer class labels, one per example of x "
     "((6,)), got list of shape ()"),
    (lambda m, x, y: robust.fgsm(m, x, y.short(), 0.1), "y must be integer class labels, one per example of x "
     "((6,)), got torch.int16 of shape (6,)"),
    (lambda m, x, y: robust.fgsm(m, x, y[:, None], 0.1), "y must be integer class labels, one per example of x "
     "((6,)), got torch.int64 of shape (6, 1)"),
    (lambda m, x, y: robust.robust_accuracy(m, [(x,)], robust.fgsm, [0.1]), "the loader must yield (inputs, labels) "
     "batches, like a TensorDataset or torchvision's"),
    (lambda m, x, y: robust.robust_accuracy(m, [x], robust.fgsm, [0.1]), "the loader must yield (inputs, labels) "
     "batches, like a TensorDataset or torchvision's"),
    (lambda m, x, y: robust.robust_accuracy(m, [], robust.fgsm, [0.1]), "the loader yielded no examples"),
    (lambda m, x, y: robust.robust_accuracy(m, [(x, y)], robust.fgsm, []), "eps_list needs at least one radius"),
])
def test_bad_input_messages_in_full(call, message):
    model, (x, y) = _linear(), _batch()
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        call(model, x, y)


@pytest.mark.parametrize("x, message", [
    ([[0.5]], "x must be a floating-point tensor, got list"),
    (torch.ones(1, 4, dtype=torch.long), "x must be a floating-point tensor, got Tensor torch.int64"),
])
def test_non_float_inputs_message_in_full(x, message):
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        robust.fgsm(_linear(), x, torch.zeros(1, dtype=torch.long), 0.1)


def test_robust_accuracy_counts_by_hand_across_batches():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))  # predicts the larger coordinate
    x = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])
    y = torch.tensor([0, 1, 1, 0, 0])  # clean: right, right, wrong, wrong, right
    sizes = []

    def swap(m, inputs, labels, eps):  # flips every prediction
        sizes.append(len(inputs))
        return inputs.flip(-1)

    loader = [(x[i:i + 2], y[i:i + 2]) for i in (0, 2, 4)] + [(x[:2], y[:2])]  # 2 + 2 + 1 (+ 2 not read)
    table = robust.robust_accuracy(model, loader, swap, [1.0], max_examples=5)
    assert sizes == [2, 2, 1]  # the attack never sees an empty batch, nor the batch past max_examples
    assert table.loc[1.0].tolist() == [3 / 5, 0.0, 1.0, 5]
    one = robust.robust_accuracy(model, [(x[2:3], y[2:3])], swap, [0.0, 1.0])  # one example, classified wrong
    assert one["clean_accuracy"].tolist() == [0.0, 0.0] and one["examples"].tolist() == [1, 1]
    assert one["attack_success_rate"].isna().all()  # nothing to flip: undefined, not a division by zero


def test_a_model_without_parameters_runs_on_the_cpu():
    picks_larger = nn.Identity()  # no parameters: the inputs' device is the CPU
    x, y = torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 0])
    table = robust.robust_accuracy(picks_larger, [(x, y)], lambda m, inputs, labels, eps: inputs, [0.1])
    assert table.loc[0.1, "clean_accuracy"] == 0.5 and robust.accuracy(picks_larger, [(x, y)]) == 0.5


def test_l2_norm_per_example_is_torchattacks_flattened_norm_to_the_last_bit():
    """torchattacks' PGDL2 takes each example's norm of its flattened gradient; on a channels-last tensor a norm
    over dims (1, 2, 3) sums in another order and rounds differently (torchattacks' own .view() refuses it)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=gen).contiguous(memory_format=torch.channels_last)
    g = torch.randn(4, 3, 8, 8, generator=gen).contiguous(memory_format=torch.channels_last)
    adv = robust.perturb(lambda v: (v * g).sum(), x, 100.0, alpha=1.0, steps=1, norm="l2", random_start=False,
                         clamp=None)
    flat_norm = g.reshape(4, -1).norm(p=2, dim=1).view(-1, 1, 1, 1)
    assert torch.equal(adv, x + 1.0 * (g / (flat_norm + 1e-10)))


def test_targeted_fgsm_and_a_dead_input_by_hand():
    """Targeted FGSM steps down the target's loss; an input the model ignores has gradient 0 and stays put."""
    model, (x, y) = _linear(), _batch()
    with torch.no_grad():
        model.weight[:, 0] = 0.0  # feature 0 is ignored: its gradient is exactly 0
    W, b = model.weight.detach().double().numpy(), model.bias.detach().double().numpy()
    target = (y + 1) % 3
    logits = x.double().numpy() @ W.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(3)[target.numpy()]) @ W / len(x)  # d mean-CE(target) / dx, 0 in column 0
    assert (grad[:, 0] == 0).all() and np.abs(grad[:, 1:]).min() > 1e-6
    expected = torch.clamp(x - 0.1 * torch.from_numpy(np.sign(grad)).float(), 0, 1)
    assert torch.equal(robust.fgsm(model, x, target, 0.1, targeted=True), expected)
    assert torch.equal(robust.fgsm(model, x, y, 0.1)[:, 0], x[:, 0])
    assert torch.equal(robust.pgd(model, x, y, 0.1, alpha=0.05, steps=2, random_start=False)[:, 0], x[:, 0])
