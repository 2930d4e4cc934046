"""PGD adversarial training of a classifier; embedding-space attacks and adversarial training of a causal LM."""

import functools
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cookbook import models, robust, train
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
