"""A digits CNN trained for two seeded epochs, shared by the attack and adversarial-training tests."""

import pytest

from cookbook import robust


@pytest.fixture(scope="module")
def digits_loaders():
    return robust.digits(64, seed=0)


@pytest.fixture(scope="module")
def trained_cnn(digits_loaders):
    train_loader, _ = digits_loaders
    model = robust.cnn(0.3, 0.37, channels=(8, 16), seed=0)
    robust.adversarial_training(model, train_loader, epochs=2, lr=3e-3)
    return model.eval()


@pytest.fixture(scope="module")
def test_batch(digits_loaders):
    return next(iter(digits_loaders[1]))
