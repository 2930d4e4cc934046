"""Images for the robustness notebook: scikit-learn's bundled handwritten digits, a small CNN, an input layer
that normalises inside the model (so attacks work in [0, 1] pixel space).

The digits ship inside scikit-learn (1,797 8×8 grey images, 17 grey levels): nothing is downloaded. The
training helpers take any `(inputs, labels)` loader, so MNIST or CIFAR loaders work the same way.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from torch import nn

from cookbook import plots
from cookbook.checks import positive_int
from cookbook.robust.attacks import eval_mode

__all__ = ["Normalize", "cnn", "digits", "example_grid"]


class Normalize(nn.Module):
    """`(x - mean) / std` per channel as the model's first layer.

    Attacks then perturb and clamp raw [0, 1] pixels, the space where ε means something ("8/255 of the
    intensity range"), while the layers behind it see normalised inputs. Shown in notebooks/10 §1.
    """

    def __init__(self, mean, std):
        super().__init__()
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.shape != std.shape or mean.dim() > 1:
            raise ValueError(f"mean and std must be numbers or per-channel lists of one length, got {mean.tolist()} "
                             f"and {std.tolist()}")
        if not (std > 0).all():
            raise ValueError(f"std must be > 0, got {std.tolist()}")
        # buffers: they move with .to(device) and are saved, but are not trained
        self.register_buffer("mean", mean.reshape(-1, 1, 1))
        self.register_buffer("std", std.reshape(-1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def digits(batch_size: int = 64, *, test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 8×8 digits as `(train_loader, test_loader)` of `(x, y)`: x (N, 1, 8, 8) in [0, 1], y in 0-9.

    A seeded split (`test_fraction` of the images for testing); the train loader reshuffles each epoch from
    its own seeded generator, the test loader keeps its order. Shown in notebooks/10 §1.
    """
    positive_int("batch_size", batch_size)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    from sklearn.datasets import load_digits  # optional, heavy: only the image notebooks need scikit-learn

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # grey levels 0..16 -> [0, 1]
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(x))
    test, train = order[:n_test], order[n_test:]
    train_set = torch.utils.data.TensorDataset(x[train], y[train])
    test_set = torch.utils.data.TensorDataset(x[test], y[test])
    return (torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True,
                                        generator=torch.Generator().manual_seed(seed)),
            torch.utils.data.DataLoader(test_set, batch_size=batch_size, shuffle=False))


def cnn(mean=0.0, std=1.0, *, in_channels: int = 1, channels: tuple[int, int] = (16, 32),
        side: int = 8, classes: int = 10, seed: int | None = 0) -> nn.Sequential:
    """A two-conv-layer CNN for small images, with `Normalize(mean, std)` (numbers or per channel) first.

    Only layers Opacus computes per-example gradients for (Conv2d, Linear; no BatchNorm), so the same model
    trains with DP-SGD. Seeded when `seed` is set. Shown in notebooks/10 §1.
    """
    for name, value in (("in_channels", in_channels), ("classes", classes), ("side", side), *zip(
            ("channels[0]", "channels[1]"), channels, strict=True)):
        positive_int(name, value)
    if side % 4:
        raise ValueError(f"side (the image height = width) must be a multiple of 4 (two 2x2 poolings), got {side}")
    if seed is not None:
        torch.manual_seed(seed)
    c1, c2 = channels
    return nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * (side // 4) ** 2, classes),
    )


@torch.no_grad()
def example_grid(model, rows: dict[str, torch.Tensor], labels: torch.Tensor):
    """Images (one row per name: clean, attacked ...) titled with the model's prediction, red where it is wrong.

    `rows` maps a row name to a batch of single-channel images in [0, 1], all of the same examples. Returns
    the matplotlib Figure. Shown in notebooks/10 §2.
    """
    if not rows:
        raise ValueError("example_grid() needs at least one row of images")
    n = len(labels)
    if any(len(images) != n or images.dim() != 4 for images in rows.values()):
        raise ValueError(f"every row must hold {n} images (one per label) shaped (N, 1, H, W)")
    fig, axes = plots.figure(ncols=n, nrows=len(rows), width=0.95, height=1.1)
    with eval_mode(model):
        for r, (name, images) in enumerate(rows.items()):
            predictions = model(images).argmax(-1).cpu()
            for c in range(n):
                ax = axes[r * n + c]
                ax.imshow(images[c, 0].cpu().numpy(), cmap="gray_r", vmin=0, vmax=1)
                ax.set(xticks=[], yticks=[])
                ax.grid(False)
                right = bool(predictions[c] == labels[c].cpu())
                ax.set_title(str(int(predictions[c])), color="C2" if right else "C3", fontsize=9)
            axes[r * n].set_ylabel(name, fontsize=8)
    plt.close(fig)  # shown once, by the notebook's display of the returned figure
    return fig
