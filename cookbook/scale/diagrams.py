"""Diagrams of the four ways to spread training over GPUs: data, tensor, pipeline and expert parallelism."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, Rectangle

from cookbook import plots
from cookbook.checks import positive_int

__all__ = ["parallelism_figure"]


def _box(ax, x, y, w, h, color, text="", size=7):
    ax.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor="0.2", linewidth=0.8))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def _arrow(ax, start, end, color="0.3", style="-|>"):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=8, color=color, linewidth=0.8))


def _data(ax, n, colors):
    for g in range(n):  # every GPU: the whole model (all layers), its own slice of the batch
        x = g * 1.2
        for layer in range(3):
            _box(ax, x, 1 + layer * 0.5, 1, 0.45, "0.85", f"layer {layer}", 6)
        _box(ax, x, 0, 1, 0.5, colors[g], f"batch {g + 1}/{n}", 6)
    _arrow(ax, (0, 2.65), (n * 1.2 - 0.2, 2.65), color="C3", style="<|-|>")
    ax.text(n * 0.6 - 0.1, 2.8, "all-reduce the gradients (2Ψ per step)", ha="center", fontsize=7, color="C3")
    ax.set(xlim=(-0.1, n * 1.2), ylim=(-0.1, 3.1))
    ax.set_title("data parallel: same model, different data", fontsize=9)


def _tensor(ax, n, colors):
    _box(ax, 0, 1, 0.6, 1.2, "0.85", "x")
    for g in range(n):  # W split by columns: GPU g computes x @ W[:, g]
        _box(ax, 1 + g * 0.5, 0.6, 0.45, 2, colors[g], f"W{g + 1}", 7)
        _box(ax, 1.4 + n * 0.5 + g * 0.5, 1, 0.45, 1.2, colors[g], f"y{g + 1}", 7)
    _arrow(ax, (0.6, 1.6), (1, 1.6))
    ax.text(1 + n * 0.5 + 0.2, 2.75, "each GPU: one slice of every matrix; all-reduce inside every layer",
            ha="center", fontsize=7, color="C3")
    ax.set(xlim=(-0.1, 1.5 + n), ylim=(0.5, 3.0))
    ax.set_title("tensor parallel: every layer split across GPUs", fontsize=9)


def _pipeline(ax, n, colors, micro=4):
    for stage in range(n):  # GPipe: stage s runs micro-batch m forward at time s + m, backward mirrored
        y = n - 1 - stage
        ax.text(-0.3, y + 0.4, f"GPU {stage}\nlayers {stage}", ha="right", va="center", fontsize=6)
        for m in range(micro):
            _box(ax, stage + m, y, 1, 0.8, colors[m], f"F{m + 1}", 6)
            _box(ax, (n - 1) + micro + (n - 1 - stage) + m, y, 1, 0.8, colors[m], f"B{m + 1}", 6)
    ax.set(xlim=(-1.3, 2 * (n - 1) + 2 * micro + 0.1), ylim=(-0.8, n))
    ax.text(n - 1 + micro, -0.6, "time →   (white: the pipeline bubble, (n−1)/(m+n−1) of the step)", ha="center",
            fontsize=7, color="C3")
    ax.set_title("pipeline parallel: layers split, micro-batches flow", fontsize=9)


def _expert(ax, n, colors):
    for t in range(6):  # tokens on the left, each routed to its top-k experts wherever they live
        _box(ax, 0, t * 0.5, 0.4, 0.4, "0.85", f"t{t + 1}", 6)
    for g in range(n):
        _box(ax, 2.5, g * (3 / n), 1.4, 3 / n - 0.1, colors[g], f"GPU {g}: experts {2 * g}-{2 * g + 1}", 6)
    for t, g in ((0, 0), (0, 2), (1, 1), (2, 3 % n), (3, 0), (4, 2 % n), (5, 1)):
        _arrow(ax, (0.4, t * 0.5 + 0.2), (2.5, g * (3 / n) + (3 / n) / 2), color=colors[g])
    ax.set(xlim=(-0.1, 4.0), ylim=(-0.1, 3.45))
    ax.text(1.9, 3.2, "all-to-all: send tokens to their experts and back", ha="center", fontsize=7, color="C3")
    ax.set_title("expert parallel: experts spread, tokens travel", fontsize=9)


def parallelism_figure(n_gpus: int = 4):
    """Four panels: data, tensor, pipeline and expert parallelism on `n_gpus` GPUs. Shown in notebooks/11 §1."""
    n = positive_int("n_gpus", n_gpus)
    if n > 8:
        raise ValueError(f"the diagram draws up to 8 GPUs, got n_gpus={n}")
    fig, axes = plots.figure(2, width=5.0, height=2.6, nrows=2)
    colors = [f"C{i}" for i in range(10)]
    colors = [plt.matplotlib.colors.to_rgba(c, 0.45) for c in colors]
    for ax, draw in zip(axes, (_data, _tensor, _pipeline, _expert), strict=True):
        draw(ax, n, colors)
        ax.set_axis_off()
    plt.close(fig)  # the notebook shows the returned figure once
    return fig
