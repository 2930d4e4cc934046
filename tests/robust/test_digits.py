"""The digits loaders, the in-model Normalize layer and the small CNN."""

import re

import pytest
import torch

from cookbook import robust


def test_digits_are_a_seeded_split_in_pixel_range(digits_loaders):
    train_loader, test_loader = digits_loaders
    x_train, y_train = train_loader.dataset.tensors
    x_test, y_test = test_loader.dataset.tensors
    assert len(x_train) + len(x_test) == 1797 and len(x_test) == round(0.2 * 1797)  # scikit-learn's bundled set
    assert x_train.shape[1:] == (1, 8, 8) and x_train.dtype == torch.float32
    assert x_train.min() == 0 and x_train.max() == 1 and set(y_train.unique().tolist()) == set(range(10))
    again = robust.digits(64, seed=0)[1].dataset.tensors[0]
    other = robust.digits(64, seed=1)[1].dataset.tensors[0]
    assert torch.equal(again, x_test) and not torch.equal(other, x_test)
    x, y = next(iter(train_loader))
    assert x.shape == (64, 1, 8, 8) and y.dtype == torch.long


def test_normalize_is_the_formula_per_channel():
    x = torch.rand(2, 3, 4, 4)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.25, 0.5]
    expected = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(robust.Normalize(mean, std)(x), expected)
    torch.testing.assert_close(robust.Normalize(0.5, 0.25)(x), (x - 0.5) / 0.25)
    assert not list(robust.Normalize(0.5, 0.25).parameters())  # buffers, not trained
    with pytest.raises(ValueError, match=r"std must be > 0, got \[0.0\]"):
        robust.Normalize([0.5], [0.0])
    with pytest.raises(ValueError, match="one length"):
        robust.Normalize([0.5, 0.5], [1.0])


def test_cnn_shapes_seed_and_bad_sizes():
    x = torch.rand(5, 3, 16, 16)
    model = robust.cnn([0.5] * 3, [0.25] * 3, in_channels=3, side=16, classes=7, seed=0)
    assert model(x).shape == (5, 7)
    same = robust.cnn([0.5] * 3, [0.25] * 3, in_channels=3, side=16, classes=7, seed=0)
    assert torch.equal(model(x), same(x))
    with pytest.raises(ValueError, match="multiple of 4"):
        robust.cnn(side=10)
    with pytest.raises(ValueError, match=r"channels\[1\] must be a positive int, got 0"):
        robust.cnn(channels=(8, 0))


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="test_fraction must be in"):
        robust.digits(32, test_fraction=1.0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        robust.digits(0)


def test_example_grid_titles_predictions_and_colours_mistakes():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10, bias=False))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[3] = 1.0  # predicts 3 for any non-blank image
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([3, 3, 1, 2])
    fig = robust.example_grid(model, {"clean": images, "blank": torch.zeros_like(images)}, labels)
    axes = fig.axes
    assert len(axes) == 8 and axes[0].get_ylabel() == "clean" and axes[4].get_ylabel() == "blank"
    assert [ax.get_title() for ax in axes[:4]] == ["3", "3", "3", "3"]
    colours = [ax.title.get_color() for ax in axes[:4]]
    assert colours[0] == colours[1] == "C2" and colours[2] == colours[3] == "C3"
    with pytest.raises(ValueError, match="every row must hold 4 images"):
        robust.example_grid(model, {"clean": images[:2]}, labels)


# ----------------------------------------------------------------------------- defaults, references, exact messages
def test_cnn_defaults_are_the_documented_layers_seeded_with_0():
    model = robust.cnn()
    torch.manual_seed(0)  # the same layers built by hand from the same seed
    expected = torch.nn.Sequential(
        robust.Normalize(0.0, 1.0),
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 2 * 2, 10),
    )
    assert str(model) == str(expected)
    for (name, p), q in zip(model.state_dict().items(), expected.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(model(x), expected(x)) and model(x).shape == (3, 10)
    assert robust.cnn(side=12)(torch.rand(2, 1, 12, 12)).shape == (2, 10)  # 12 = 3 x 4: two poolings leave 3 x 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(in_channels=0), "in_channels must be a positive int, got 0"),
    (dict(classes=0), "classes must be a positive int, got 0"),
    (dict(side=0), "side must be a positive int, got 0"),
    (dict(channels=(0, 8)), "channels[0] must be a positive int, got 0"),
    (dict(channels=(8, 0)), "channels[1] must be a positive int, got 0"),
    (dict(side=10), "side (the image height = width) must be a multiple of 4 (two 2x2 poolings), got 10"),
])
def test_cnn_messages_in_full(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        robust.cnn(**kwargs)


def test_normalize_buffers_are_float32_per_channel():
    layer = robust.Normalize([1, 2], [4, 8])  # ints in, float32 buffers out
    assert set(layer.state_dict()) == {"mean", "std"}
    assert layer.mean.dtype == layer.std.dtype == torch.float32 and layer.mean.shape == layer.std.shape == (2, 1, 1)
    x = torch.ones(1, 2, 1, 1)
    assert layer(x).flatten().tolist() == [(1 - 1) / 4, (1 - 2) / 8]
    assert repr(layer) == "Normalize(mean=[1.0, 2.0], std=[4.0, 8.0])"
    message = "mean and std must be numbers or per-channel lists of one length, got [[0.5]] and [[1.0]]"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        robust.Normalize([[0.5]], [[1.0]])
    with pytest.raises(ValueError, match=r"^std must be > 0, got \[0.5, -1.0\]$"):
        robust.Normalize([0.5, 0.5], [0.5, -1.0])


def test_digits_defaults_and_loaders():
    train_loader, test_loader = robust.digits()
    assert train_loader.batch_size == test_loader.batch_size == 64
    assert len(test_loader.dataset) == round(0.2 * 1797)  # the default test_fraction
    seeded = robust.digits(seed=0)[1].dataset.tensors[0]
    assert torch.equal(test_loader.dataset.tensors[0], seeded)  # seed 0 by default
    assert test_loader.dataset.tensors[1].dtype == torch.long
    x_test, y_test = test_loader.dataset.tensors
    x, y = next(iter(test_loader))
    assert torch.equal(x, x_test[:64]) and torch.equal(y, y_test[:64])  # the test loader keeps its order
    torch.manual_seed(123)  # the train loader's shuffle comes from its own seeded generator, not the global one
    first = next(iter(robust.digits(16, seed=0)[0]))[1]
    torch.manual_seed(456)
    assert torch.equal(next(iter(robust.digits(16, seed=0)[0]))[1], first)
    x_train, y_train = robust.digits(16, seed=0)[0].dataset.tensors
    assert not torch.equal(first, y_train[:16])  # shuffled


@pytest.mark.parametrize("kwargs, message", [
    (dict(test_fraction=0), "test_fraction must be in (0, 1), got 0"),
    (dict(test_fraction=1), "test_fraction must be in (0, 1), got 1"),
    (dict(batch_size=0), "batch_size must be a positive int, got 0"),
])
def test_digits_messages_in_full(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        robust.digits(**kwargs)


def test_digits_pixels_are_the_grey_levels_over_16():
    from sklearn.datasets import load_digits

    data = load_digits()
    x_test, y_test = robust.digits(64, test_fraction=0.5, seed=0)[1].dataset.tensors
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0))[:round(0.5 * 1797)]
    assert torch.equal(x_test[:, 0] * 16, torch.tensor(data.images, dtype=torch.float32)[order])
    assert torch.equal(y_test, torch.tensor(data.target)[order])
