"""Figures in one consistent style. Every function shows its figure in a notebook and returns it so you can save it."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from IPython import get_ipython
from IPython.core.pylabtools import print_figure
from IPython.display import Image, display

__all__ = ["STYLE", "bar", "figure", "hidden", "hist", "lines", "show", "smooth"]

STYLE = {
    "figure.dpi": 80,  # small PNGs keep committed notebooks light
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titleweight": "bold",
    "legend.frameon": False,
}


def figure(ncols: int = 1, width: float = 6.0, height: float = 3.6, nrows: int = 1):
    """A figure with `nrows` x `ncols` axes (each width x height inches) in the cookbook style: (fig, axes list).

    The axes list is flat, row by row.
    """
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    axes = [ax for row in axes for ax in row]
    for ax in axes:  # rc_context styles only apply while it is open, so set the lasting bits here
        ax.grid(True, alpha=STYLE["grid.alpha"])
        ax.spines[["top", "right"]].set_visible(False)
    fig.set_layout_engine("constrained")
    return fig, axes


_HIDDEN = contextvars.ContextVar("cookbook_plots_hidden", default=False)


@contextlib.contextmanager
def hidden() -> Iterator[None]:
    """Inside it, `plots.*` make and return their figures without showing them: for a caller that displays a
    figure itself, as the live training view does in one output updated in place (notebooks/06 §5)."""
    token = _HIDDEN.set(True)
    try:
        yield
    finally:
        _HIDDEN.reset(token)


def show(fig):
    """Show `fig` where it is made (in a notebook kernel; nowhere else), close it, and return it.

    A figure returned by a call that is not the cell's last expression (a trailing `;`, an assignment, a loop)
    would otherwise be lost. Returned as the last expression of the same cell it is not shown a second time;
    displayed again in a later cell, it is. Inside `hidden()` it only closes the figure. Every `plots.*`
    function ends with it. Shown in notebooks/04 on.
    """
    plt.close(fig)  # pyplot forgets it: no second copy when the cell ends
    shell = get_ipython()
    if getattr(shell, "kernel", None) is None or _HIDDEN.get():
        return fig
    display(fig)
    shown_in = shell.execution_count

    def _ipython_display_():  # IPython calls this instead of rendering the figure (IPython.core.formatters)
        if get_ipython().execution_count != shown_in:
            display(Image(print_figure(fig, "png", bbox_inches="tight")))

    fig._ipython_display_ = _ipython_display_
    return fig


def bar(values: Mapping[str, float], *, title: str = "", ylabel: str = "", log: bool = False,
        annotate: bool = True, horizontal: bool = False):
    """Bar chart of named values (a dict or pandas Series), annotated with the values."""
    if len(values) == 0:
        raise ValueError("bar() needs at least one value")
    pairs = list(values.items())  # a dict or a Series (whose `.values` is an array, not a method)
    names, heights = [str(k) for k, _ in pairs], np.asarray([v for _, v in pairs], dtype=float)
    fig, (ax,) = figure()
    bars = ax.barh(names, heights) if horizontal else ax.bar(names, heights)
    if log:
        ax.set_xscale("log") if horizontal else ax.set_yscale("log")
    if annotate:
        ax.bar_label(bars, labels=[f"{h:.3g}" for h in heights], fontsize=8, padding=2)
    ax.set_title(title)
    ax.set_xlabel(ylabel) if horizontal else ax.set_ylabel(ylabel)
    if not horizontal and max(len(n) for n in names) > 6:
        ax.tick_params(axis="x", labelrotation=30)
    return show(fig)


def hist(values: Sequence[float], *, bins: int = 50, title: str = "", xlabel: str = "", log: bool = False,
         vline: float | None = None, vline_label: str = ""):
    """Histogram of values, optionally with log-spaced bins and a vertical marker (a threshold, a median)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("hist() needs at least one value")
    if log and (values <= 0).any():
        raise ValueError("log bins need positive values")
    edges = np.geomspace(values.min(), values.max(), bins + 1) if log else bins
    fig, (ax,) = figure()
    ax.hist(values, bins=edges, color="C0", alpha=0.85)
    if log:
        ax.set_xscale("log")
    if vline is not None:
        ax.axvline(vline, color="C3", linestyle="--", label=vline_label or None)
        if vline_label:
            ax.legend()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    return show(fig)


def lines(x: Sequence[float], series: Mapping[str, Sequence[float]], *, title: str = "", xlabel: str = "",
          ylabel: str = "", logx: bool = False, logy: bool = False, hline: float | None = None,
          hline_label: str = ""):
    """Several named curves over one x axis, optionally with a horizontal reference line."""
    if not series:
        raise ValueError("lines() needs at least one series")
    fig, (ax,) = figure()
    for name, ys in series.items():
        if len(ys) != len(x):
            raise ValueError(f"series {name!r} has {len(ys)} points but x has {len(x)}")
        ax.plot(x, ys, marker="o", markersize=3, label=name)
    if hline is not None:
        ax.axhline(hline, color="C3", linestyle="--", label=hline_label or None)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.legend()
    return show(fig)


def smooth(values, weight: float = 0.8) -> np.ndarray:
    """Exponential moving average with TensorBoard's bias correction (NaNs are carried over, not spread)."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    values = np.asarray(values, dtype=float)
    out, avg, norm = np.full_like(values, np.nan), 0.0, 0.0
    for i, v in enumerate(values):
        if np.isfinite(v):
            avg, norm = weight * avg + (1 - weight) * v, weight * norm + (1 - weight)
            out[i] = avg / norm
    return out
