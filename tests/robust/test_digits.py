"""The digits loaders, the in-model Normalize layer and the small CNN."""

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
