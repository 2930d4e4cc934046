"""PGD adversarial training of a classifier; embedding-space attacks and adversarial training of a causal LM."""

import functools
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cookbook import models, robust, train
from cookbook.robust import adversarial
from cookbook.train.batches import as_batch
from tests.blocks import VOCAB, counting_ids


def test_pgd_trained_model_is_more_robust_at_the_trained_eps(digits_loaders):
    train_loader, test_loader = digits_loaders
    eps, attack = 0.15, functools.partial(robust.pgd, steps=2)
    standard = robust.cnn(0.3, 0.37, channels=(8, 16), seed=0)
    robust.adversarial_training(standard, train_loader, epochs=4, lr=3e-3)
    hardened = robust.cnn(0.3, 0.37, channels=(8, 16), seed=0)
    history = robust.adversarial_training(hardened, train_loader, attack, eps, epochs=4, lr=3e-3)
    assert list(history.index) == [1, 2, 3, 4] and history["loss"].iloc[-1] < history["loss"].iloc[0]
    evaluate = functools.partial(robust.robust_accuracy, loader=test_loader,
                                 attack=functools.partial(robust.pgd, steps=5), eps_list=[eps], max_examples=128)
    torch.manual_seed(0)
    standard_acc = evaluate(standard).loc[eps, "robust_accuracy"]
    torch.manual_seed(0)
    hardened_acc = evaluate(hardened).loc[eps, "robust_accuracy"]
    assert hardened_acc > standard_acc + 0.1, (standard_acc, hardened_acc)


def test_clean_fraction_keeps_the_first_examples_of_each_batch_clean():
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 10
    attacked = []

    def record(model, inputs, labels, eps):
        attacked.append(len(inputs))
        return inputs

    model = robust.cnn(seed=0)
    robust.adversarial_training(model, [(x, y)] * 2, record, 0.1, epochs=1, clean_fraction=0.25)
    assert attacked == [6, 6]  # 2 of 8 stay clean
    attacked.clear()
    robust.adversarial_training(model, [(x, y)], record, 0.1, clean_fraction=1.0)
    assert attacked == []


def test_standard_training_is_the_same_loop_without_the_attack():
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    a, b = robust.cnn(seed=0), robust.cnn(seed=0)
    robust.adversarial_training(a, [(x, y)] * 3, epochs=2, lr=1e-2)
    identity = lambda m, inputs, labels, eps: inputs  # noqa: E731
    robust.adversarial_training(b, [(x, y)] * 3, identity, 0.1, epochs=2, lr=1e-2)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_adversarial_training_bad_arguments():
    model, batches = robust.cnn(seed=0), [(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(ValueError, match="eps=0 is standard training"):
        robust.adversarial_training(model, batches, robust.fgsm, 0.0)
    with pytest.raises(ValueError, match="either lr .* or an optimizer"):
        robust.adversarial_training(model, batches, lr=1e-3, optimizer=torch.optim.SGD(model.parameters(), 0.1))
    with pytest.raises(ValueError, match=r"clean_fraction must be in \[0, 1\], got 1.5"):
        robust.adversarial_training(model, batches, robust.fgsm, 0.1, clean_fraction=1.5)
    with pytest.raises(ValueError, match="no examples"):
        robust.adversarial_training(model, [])


# ----------------------------------------------------------------------------- language models
def _lm(seed=0):
    return models.build("tiny", VOCAB, seed=seed)


def _mean_token_loss(model, ids):
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).item()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_embedding_pgd_stays_in_the_ball_raises_the_loss_and_leaves_the_model_alone(norm):
    model, ids = _lm(), counting_ids(8, 16)
    model.train()
    params = list(model.parameters())
    params[0].grad = torch.ones_like(params[0])
    delta = robust.embedding_pgd(model, {"input_ids": ids}, 0.05, steps=3, norm=norm)
    assert delta.shape == (*ids.shape, model.config.hidden_size)
    if norm == "l2":
        assert (delta.norm(dim=-1) <= 0.05 * (1 + 1e-5)).all() and delta.norm(dim=-1).max() > 0.04
    else:
        assert delta.abs().max() <= 0.05 + 1e-6
    assert model.training and torch.equal(params[0].grad, torch.ones_like(params[0]))
    assert all(p.grad is None for p in params[1:])
    model.eval()
    embeds = model.get_input_embeddings()(ids)
    with torch.no_grad():
        attacked = model(inputs_embeds=embeds + delta).logits
    attacked_loss = F.cross_entropy(attacked[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).item()
    assert attacked_loss > _mean_token_loss(model, ids) + 0.01


def test_lm_robustness_clean_row_is_the_mean_token_loss():
    model, ids = _lm().eval(), counting_ids(8, 16)
    loader = [{"input_ids": ids[:4]}, {"input_ids": ids[4:]}]
    table = robust.lm_robustness(model, loader, [0, 0.05, 0.2], steps=2)
    assert table.loc[0.0, "loss"] == pytest.approx(_mean_token_loss(model, ids), rel=1e-5)
    assert table.loc[0.0, "loss"] < table.loc[0.05, "loss"] < table.loc[0.2, "loss"]
    assert table.loc[0.2, "perplexity"] == pytest.approx(math.exp(table.loc[0.2, "loss"]))
    again = robust.lm_robustness(model, loader, [0, 0.05, 0.2], steps=2)
    assert again.equals(table)  # no random start: the table repeats exactly
    only_first = robust.lm_robustness(model, loader, [0], max_batches=1)
    assert only_first.loc[0.0, "loss"] == pytest.approx(_mean_token_loss(model, ids[:4]), rel=1e-5)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_lm_sequence_losses_attack_each_sequence_as_if_alone(norm):
    model, ids = _lm().eval(), counting_ids(8, 16)
    mask = torch.ones_like(ids)
    mask[5, 11:] = 0  # a padded sequence: its last 5 positions are neither inputs nor targets
    batches = [{"input_ids": ids[i:i + 4], "attention_mask": mask[i:i + 4]} for i in (0, 4)]
    together = robust.lm_sequence_losses(model, batches, [0, 0.1], steps=2, norm=norm)
    alone = robust.lm_sequence_losses(model, [{"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1]}
                                              for i in range(8)], [0, 0.1], steps=2, norm=norm)
    assert together["tokens"].tolist() == [15] * 5 + [10] + [15] * 2  # targets after the first position, unpadded
    assert list(together.columns) == [0.0, 0.1, "tokens"] and together.index.name == "sequence"
    pd.testing.assert_frame_equal(together, alone, rtol=1e-5)  # the batch changes no sequence's attack
    with torch.no_grad():  # the clean column by hand, one sequence at a time
        for i in range(8):
            n = int(mask[i].sum())
            logits = model(input_ids=ids[i:i + 1, :n]).logits[0, :-1]
            expected = F.cross_entropy(logits, ids[i, 1:n], reduction="sum").item()
            assert together.loc[i, 0.0] == pytest.approx(expected, rel=1e-5)
    assert (together[0.1] > together[0.0]).all()  # the attack raises every sequence's loss
    table = robust.lm_robustness(model, batches, [0, 0.1], steps=2, norm=norm)
    for eps in (0.0, 0.1):  # the table is the token-weighted mean of the sequences
        assert table.loc[eps, "loss"] == pytest.approx(together[eps].sum() / together["tokens"].sum(), rel=1e-12)


def test_lm_sequence_losses_bad_input():
    model, ids = _lm().eval(), counting_ids(2, 8)
    with pytest.raises(ValueError, match="no target tokens"):
        robust.lm_sequence_losses(model, [{"input_ids": ids, "labels": torch.full_like(ids, -100)}], [0])
    with pytest.raises(ValueError, match="at least one radius"):
        robust.lm_sequence_losses(model, [{"input_ids": ids}], [])
    with pytest.raises(ValueError):
        robust.lm_sequence_losses(model, [{"input_ids": ids}], [-0.1])


class _Loader:
    def __init__(self, ids, batch=4):
        self.ids, self.batch = ids, batch

    def __iter__(self):
        return iter([{"input_ids": self.ids[i:i + self.batch]} for i in range(0, len(self.ids), self.batch)])


def _fit(model, steps=3):
    config = train.TrainConfig(steps=steps, lr=3e-3, log_interval=1, progress=False, device="cpu", moe_gamma=0.0)
    return train.Trainer(model, _Loader(counting_ids(12, 16)), None, config).fit()["loss"].tolist()


def test_embedding_adversary_on_the_trainer():
    plain = _fit(_lm())
    # every sequence kept clean: the inputs_embeds path trains exactly like the token path
    kept_clean = _fit(robust.EmbeddingAdversary(_lm(), 0.5, clean_fraction=1.0))
    assert kept_clean == pytest.approx(plain, rel=1e-5)
    wrapped = robust.EmbeddingAdversary(_lm(), 0.5, steps=2)
    torch.manual_seed(0)
    adversarial = _fit(wrapped)
    assert adversarial[0] > plain[0] + 0.01  # the same weights and batch, a perturbed input: a higher loss
    lm = wrapped.model
    assert any(p.grad is None for p in lm.parameters())  # the Trainer zeroed them: nothing left by the attack
    ids = counting_ids(2, 16)
    wrapped.eval()
    with torch.no_grad():
        assert torch.equal(wrapped(input_ids=ids).logits, lm(input_ids=ids).logits)  # eval: the plain model
    assert wrapped.config is lm.config


def test_embedding_attacks_need_an_lm_with_embeddings():
    with pytest.raises(TypeError, match="get_input_embeddings"):
        robust.EmbeddingAdversary(torch.nn.Linear(2, 2), 0.1)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        robust.EmbeddingAdversary(_lm(), -1.0)
    with pytest.raises(ValueError, match="no target tokens"):
        robust.embedding_pgd(_lm(), {"input_ids": torch.zeros(2, 1, dtype=torch.long)}, 0.1)


# ----------------------------------------------------------------------------- against hand computations
def _two_batches_with_an_empty_one_first():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 8, 8, generator=gen)
    empty = (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    return x, [empty, (x[:5], None), (x[5:], None)]


def test_history_is_the_example_weighted_loss_and_accuracy_by_hand():
    model = robust.cnn(seed=0)
    x, batches = _two_batches_with_an_empty_one_first()
    with torch.no_grad():
        predicted = model(x).argmax(-1)
    y = torch.where(torch.arange(8) % 3 == 0, predicted, (predicted + 1) % 10)  # right on examples 0, 3, 6
    batches = [batches[0], (x[:5], y[:5]), (x[5:], y[5:])]  # 5 + 3 examples, after an empty (Poisson) batch
    with torch.no_grad():
        loss = F.cross_entropy(model(x), y).item()  # the mean over all 8 examples, not of the two batch means
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay as they are, so each epoch repeats
    history = robust.adversarial_training(model, batches, epochs=2, optimizer=frozen)
    assert list(history.columns) == ["loss", "accuracy", "seconds"] and history.index.name == "epoch"
    assert list(history.index) == [1, 2]
    assert history["loss"].tolist() == pytest.approx([loss, loss], rel=1e-6)
    assert history["accuracy"].tolist() == [3 / 8, 3 / 8]
    assert ((history["seconds"] > 0) & (history["seconds"] < 60)).all()
    assert len(robust.adversarial_training(model, batches, optimizer=frozen)) == 1  # one epoch by default


def test_default_optimizer_is_adamw_without_decay_at_lr_1e_3():
    x, y = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 10
    batches = [(x[:8], y[:8]), (x[8:], y[8:])] * 2
    ours, reference = robust.cnn(seed=0), robust.cnn(seed=0)
    robust.adversarial_training(ours, batches)
    torch_adamw = torch.optim.AdamW(reference.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    robust.adversarial_training(reference, batches, optimizer=torch_adamw)
    for p, q in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    # lr and weight_decay reach AdamW, which decays matrices only (the cookbook's adamw)
    ours, reference = robust.cnn(seed=0), robust.cnn(seed=0)
    robust.adversarial_training(ours, batches, lr=1e-2, weight_decay=0.5)
    groups = [dict(params=[p for p in reference.parameters() if p.ndim >= 2], weight_decay=0.5),
              dict(params=[p for p in reference.parameters() if p.ndim < 2], weight_decay=0.0)]
    robust.adversarial_training(reference, batches, optimizer=torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95)))
    for p, q in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_parameter_the_loss_never_reaches_is_not_decayed():
    model = robust.cnn(seed=0)
    model.unused = torch.nn.Parameter(torch.ones(2, 2))  # registered, but not part of the forward
    model.unused.grad = torch.ones(2, 2)  # a gradient left over from elsewhere: dropped, not stepped on
    batches = [(torch.rand(4, 1, 8, 8), torch.arange(4))]
    robust.adversarial_training(model, batches, epochs=2, lr=0.1, weight_decay=0.5)
    assert torch.equal(model.unused.detach(), torch.ones(2, 2))


@pytest.mark.parametrize("kwargs, message", [
    (dict(attack=robust.fgsm), "an attack needs eps > 0 (eps=0 is standard training: pass attack=None)"),
    (dict(lr=1e-3, optimizer=True), "pass either lr (for the default AdamW) or an optimizer, not both"),
    (dict(epochs=0), "epochs must be a positive int, got 0"),
    (dict(attack=robust.fgsm, eps=0.1, clean_fraction=True), "clean_fraction must be in [0, 1], got True"),
    (dict(attack=robust.fgsm, eps=0.1, clean_fraction="0.5"), "clean_fraction must be in [0, 1], got '0.5'"),
    (dict(attack=robust.fgsm, eps=0.1, clean_fraction=-0.01), "clean_fraction must be in [0, 1], got -0.01"),
    (dict(attack=robust.fgsm, eps=0.1, clean_fraction=1.01), "clean_fraction must be in [0, 1], got 1.01"),
    (dict(eps=-1e-9), "eps must be a finite number >= 0, got -1e-09"),
    (dict(eps=math.inf), "eps must be a finite number >= 0, got inf"),
])
def test_adversarial_training_messages(kwargs, message):
    model, batches = robust.cnn(seed=0), [(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))]
    if kwargs.get("optimizer") is True:
        kwargs["optimizer"] = torch.optim.SGD(model.parameters(), 0.1)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        robust.adversarial_training(model, batches, **kwargs)


def test_adversarial_training_accepts_the_ends_of_its_ranges():
    batches = [(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))]
    identity = lambda m, inputs, labels, eps: inputs  # noqa: E731
    for clean_fraction in (0, 1, 0.0, 1.0):
        robust.adversarial_training(robust.cnn(seed=0), batches, identity, 1e-9, clean_fraction=clean_fraction)
    with pytest.raises(ValueError, match="^the loader yielded no examples$"):
        robust.adversarial_training(robust.cnn(seed=0), [])


def _left_padded():
    ids = counting_ids(4, 10)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: every later position of sequence 1 attends to fewer tokens
    return ids, mask


def _pgd_by_hand(model, ids, mask, eps, alpha, steps, norm):
    """Per-token PGD on the embeddings written out: ascent on the mean next-token loss, no random start."""
    labels = ids.masked_fill(mask == 0, -100)[:, 1:]
    clean = model.get_input_embeddings()(ids).detach()
    adv = clean
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        logits = model(inputs_embeds=adv, attention_mask=mask).logits[:, :-1]
        (g,) = torch.autograd.grad(F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100), adv)
        if norm == "l2":
            delta = adv + alpha * g / (g.norm(dim=-1, keepdim=True) + 1e-10) - clean
            delta = delta * (eps / delta.norm(dim=-1, keepdim=True)).clamp(max=1.0)
        else:
            delta = (adv + alpha * g.sign() - clean).clamp(-eps, eps)
        adv = clean + delta
    return (adv - clean).detach()


def _sequence_losses_by_hand(model, ids, mask, delta):
    labels = ids.masked_fill(mask == 0, -100)[:, 1:]
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids) + delta
        logits = model(inputs_embeds=embeds, attention_mask=mask).logits[:, :-1]
        return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").sum(1)


@pytest.mark.parametrize("eps, kwargs, hand", [
    (0.1, {}, dict(alpha=0.25, steps=1, norm="l2")),  # the defaults: one L2 step of 2.5 eps
    (0.1, dict(alpha=0.03, steps=2), dict(alpha=0.03, steps=2, norm="l2")),
    (0.05, dict(alpha=0.02, steps=3, norm="linf"), dict(alpha=0.02, steps=3, norm="linf")),
])
def test_embedding_pgd_is_pgd_on_the_mean_token_loss_by_hand(eps, kwargs, hand):
    model = _lm().eval()
    ids, mask = _left_padded()
    delta = robust.embedding_pgd(model, {"input_ids": ids, "attention_mask": mask}, eps, random_start=False,
                                 **kwargs)
    torch.testing.assert_close(delta, _pgd_by_hand(model, ids, mask, eps, **hand), rtol=1e-4, atol=1e-6)


def test_embedding_pgd_starts_at_a_random_point_by_default():
    model, ids = _lm().eval(), counting_ids(2, 8)
    torch.manual_seed(0)
    first = robust.embedding_pgd(model, ids, 0.1, alpha=1e-4)
    torch.manual_seed(1)
    second = robust.embedding_pgd(model, ids, 0.1, alpha=1e-4)
    still = robust.embedding_pgd(model, ids, 0.1, alpha=1e-4, random_start=False)
    assert not torch.allclose(first, second) and still.norm(dim=-1).max() <= 1e-4 * (1 + 1e-5)
    assert first.norm(dim=-1).max() > 1e-3  # a random radius in the ball, far beyond one small step


def test_the_attacked_loss_is_the_mean_over_a_known_count_of_targets():
    model = _lm().eval()
    ids, mask = _left_padded()
    batch = as_batch({"input_ids": ids, "attention_mask": mask})
    n = 4 * 9 - 2  # 9 targets per sequence of 10, less sequence 1's padded positions 1 and 2 (0 is no target)
    embeds = model.get_input_embeddings()(ids)
    with torch.no_grad():
        loss = adversarial._embeds_loss(model, batch, n)(embeds)
        logits = model(inputs_embeds=embeds, attention_mask=mask).logits[:, :-1]
    labels = ids.masked_fill(mask == 0, -100)[:, 1:]
    assert (labels != -100).sum() == n
    expected = F.cross_entropy(logits.transpose(1, 2), labels, reduction="sum") / n
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_lm_sequence_losses_by_hand_with_a_left_padded_sequence(norm):
    model = _lm().eval()
    ids, mask = _left_padded()
    loader = [{"input_ids": ids[:2], "attention_mask": mask[:2]}, {"input_ids": ids[2:], "attention_mask": mask[2:]}]
    table = robust.lm_sequence_losses(model, loader, [0, 0.1], steps=2, alpha=0.04, norm=norm)
    assert table["tokens"].tolist() == [9, 7, 9, 9]
    delta = torch.cat([_pgd_by_hand(model, ids[i:i + 2], mask[i:i + 2], 0.1, 0.04, 2, norm) for i in (0, 2)])
    np.testing.assert_allclose(table[0.0], _sequence_losses_by_hand(model, ids, mask, 0.0), rtol=1e-5)
    np.testing.assert_allclose(table[0.1], _sequence_losses_by_hand(model, ids, mask, delta), rtol=1e-5)
    robustness = robust.lm_robustness(model, loader, [0.1], steps=2, alpha=0.04, norm=norm)
    assert robustness.loc[0.1, "loss"] == pytest.approx(table[0.1].sum() / 34, rel=1e-12)


def test_lm_sequence_losses_and_lm_robustness_defaults_by_hand():
    """Three L2 steps of 2.5 eps / 3 each, no random start."""
    model = _lm().eval()
    ids, mask = _left_padded()
    loader = [{"input_ids": ids, "attention_mask": mask}]
    expected = _sequence_losses_by_hand(model, ids, mask, _pgd_by_hand(model, ids, mask, 0.1, 0.25 / 3, 3, "l2"))
    np.testing.assert_allclose(robust.lm_sequence_losses(model, loader, [0.1])[0.1], expected, rtol=1e-5)
    loss = robust.lm_robustness(model, loader, [0.1]).loc[0.1, "loss"]
    assert loss == pytest.approx(expected.sum().item() / 34, rel=1e-5)


def test_lm_sequence_losses_skip_sequences_and_batches_without_targets():
    model, ids = _lm().eval(), counting_ids(3, 8)
    labels = ids.clone()
    labels[0, 1:] = -100  # no target after the first position
    labels[1, :7] = -100  # one target: the last token
    loader = [{"input_ids": ids[:1], "labels": labels[:1]}, {"input_ids": ids, "labels": labels}]
    table = robust.lm_sequence_losses(model, loader, [0])
    assert table["tokens"].tolist() == [1, 7] and list(table.index) == [0, 1]
    with torch.no_grad():
        logits = model(input_ids=ids[1:2]).logits[0, -2]
    assert table.loc[0, 0.0] == pytest.approx(F.cross_entropy(logits, ids[1, 7]).item(), rel=1e-5)
    with pytest.raises(ValueError, match="^the loader yielded no target tokens$"):
        robust.lm_sequence_losses(model, loader[:1], [0])
    with pytest.raises(ValueError, match="^eps_list needs at least one radius$"):
        robust.lm_sequence_losses(model, loader, [])


def test_lm_sequence_losses_sum_in_float32_for_a_bfloat16_model():
    model, ids = _lm().eval().to(torch.bfloat16), counting_ids(2, 8)
    table = robust.lm_sequence_losses(model, [{"input_ids": ids}], [0])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
    expected = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").sum(1)
    np.testing.assert_allclose(table[0.0], expected, rtol=1e-6)


def test_lm_robustness_caps_the_perplexity_at_e_to_the_700():
    model, ids = _lm().eval(), counting_ids(2, 8)
    with torch.no_grad():
        model.lm_head.weight.mul_(3e4)  # a mean token loss in the thousands: e^loss overflows a float
    table = robust.lm_robustness(model, [{"input_ids": ids}], [0])
    assert table.loc[0.0, "loss"] > 1000 and table.loc[0.0, "perplexity"] == math.exp(700.0)


def test_embedding_adversary_forward_is_the_model_on_embedding_pgd():
    """Training mode: the model on embeddings + embedding_pgd (its alpha, steps, norm, mask); eval: the model."""
    ids, mask = _left_padded()
    lm = _lm()
    wrapped = robust.EmbeddingAdversary(lm, 1.0, alpha=0.3, steps=2, norm="linf").train()
    torch.manual_seed(0)
    out = wrapped(ids, attention_mask=mask, labels=ids)
    torch.manual_seed(0)
    delta = robust.embedding_pgd(lm, {"input_ids": ids, "attention_mask": mask}, 1.0, alpha=0.3, steps=2,
                                 norm="linf")
    expected = lm(inputs_embeds=lm.get_input_embeddings()(ids) + delta, attention_mask=mask, labels=ids)
    torch.testing.assert_close(out.logits, expected.logits)
    torch.testing.assert_close(out.loss, expected.loss)
    assert out.loss > lm(input_ids=ids, attention_mask=mask, labels=ids).loss + 0.01
    wrapped.eval()
    with torch.no_grad():
        plain, clean = wrapped(ids, attention_mask=mask, labels=ids), lm(input_ids=ids, attention_mask=mask, labels=ids)
    assert torch.equal(plain.logits, clean.logits) and torch.equal(plain.loss, clean.loss)


def test_embedding_adversary_defaults_and_messages():
    wrapped = robust.EmbeddingAdversary(_lm(), 0.5)
    assert (wrapped.eps, wrapped.alpha, wrapped.steps, wrapped.norm, wrapped.clean_fraction) == (0.5, None, 1, "l2", 0.0)
    with pytest.raises(ValueError, match="^steps must be a positive int, got 0$"):
        robust.EmbeddingAdversary(_lm(), 0.5, steps=0)
    with pytest.raises(ValueError, match=r"^clean_fraction must be in \[0, 1\], got 2$"):
        robust.EmbeddingAdversary(_lm(), 0.5, clean_fraction=2)
    message = ("Linear has no get_input_embeddings(): embedding-space attacks need a transformers-style causal LM "
               "that accepts inputs_embeds")
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        robust.EmbeddingAdversary(torch.nn.Linear(2, 2), 0.1)
    with pytest.raises(ValueError, match=r"^the batch holds no target tokens \(all labels are -100 or sequences "):
        robust.embedding_pgd(_lm(), {"input_ids": torch.zeros(2, 1, dtype=torch.long)}, 0.1)
