"""Compression fixtures: held-out batches, and one short seeded training run so perplexities mean something (an
untrained model's are all about the vocabulary size)."""

import pytest

from cookbook import train
from tests.compress.tiny import loader, tiny


@pytest.fixture
def batches():
    """Two held-out batches of 4 sequences (a list: re-iterable)."""
    return list(loader(seed=1, n=8, batch=4, shuffle=False))


@pytest.fixture(scope="session")
def trained():
    """The tiny MoE after 40 seeded Trainer steps on the counting blocks (loss far below log(VOCAB))."""
    config = train.TrainConfig(steps=40, lr=3e-3, log_interval=40, progress=False, device="cpu")
    trainer = train.Trainer(tiny(), loader(), config=config)
    trainer.fit()
    trainer.balancer.remove()
    return trainer.model.eval()
