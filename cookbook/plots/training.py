"""Plots of a training run: loss, gradients, learning rate, throughput, heatmaps and the dashboard.

Each takes a run's history: a pandas DataFrame with a `step` column (TrainingMonitor.history,
Trainer.history), a TrainingMonitor itself, or a list of row dicts. A panel whose columns are missing
shows a short message instead of failing, so a partial history still gives a figure.
"""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm

from cookbook.plots.base import figure, show, smooth

__all__ = ["dashboard", "expert_load_heatmap", "grad_norm_heatmap", "grad_norms", "loss_curves", "lr_schedule",
           "throughput"]

ALERT_COLORS = {"nan": "black", "vanishing": "C4", "exploding": "C3", "loss_spike": "C1", "diverging": "C9",
                "overflow": "C5", "stalled": "C2", "imbalance": "C6"}


def _history(run):
    if hasattr(run, "history") and not isinstance(run, pd.DataFrame):
        run = run.history
    frame = pd.DataFrame(run) if not isinstance(run, pd.DataFrame) else run
    if "step" not in frame.columns:
        frame = frame.reset_index().rename(columns={frame.index.name or "index": "step"})
    return frame.sort_values("step")


def _column(frame, *names):
    """The first of `names` that the history has with at least one finite value, else None."""
    for name in names:
        if name in frame.columns:
            values = np.asarray(frame[name], dtype=float)
            if np.isfinite(values).any():
                return name
    return None


def _missing(ax, what: str, have) -> None:
    """Draw a clear 'nothing to plot' note in place of a panel (and warn), instead of raising."""
    message = f"no {what} in this history"
    columns = ", ".join(map(str, list(have)[:8])) or "none"
    warnings.warn(f"{message} (columns: {columns}); that panel is left empty", UserWarning, stacklevel=3)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])



def _draw_loss(ax, frame, *, weight=0.8, threshold=None, early_stop=None, alerts=None, logy=False) -> None:
    train, val = _column(frame, "loss"), _column(frame, "val_loss")
    if train is None and val is None:
        return _missing(ax, "'loss' or 'val_loss' column", frame.columns)
    if train:
        rows = frame[np.isfinite(frame[train].astype(float))]
        ax.plot(rows["step"], rows[train], color="C0", alpha=0.25, linewidth=1)
        ax.plot(rows["step"], smooth(rows[train], weight), color="C0", label="train (smoothed)")
    if val:
        rows = frame[np.isfinite(frame[val].astype(float))]
        ax.plot(rows["step"], rows[val], color="C1", marker="o", markersize=4, label="validation")
    if threshold is not None:
        ax.axhline(threshold, color="C3", linestyle="--", linewidth=1, label=f"threshold {threshold:.4g}")
    if early_stop is not None:
        ax.axvline(early_stop, color="C2", linestyle=":", linewidth=1.5, label=f"early stop (step {early_stop})")
    for kind, steps in _alert_steps(alerts).items():
        for i, step in enumerate(steps):
            ax.axvline(step, color=ALERT_COLORS.get(kind, "0.5"), alpha=0.6, linewidth=1.2, linestyle="-.",
                       label=f"alert: {kind}" if i == 0 else None)
    if logy:
        ax.set_yscale("log")
    ax.set(title="loss", xlabel="step", ylabel="cross-entropy")
    ax.legend(fontsize=8)


def _alert_steps(alerts) -> dict[str, list[int]]:
    if alerts is None:
        return {}
    rows = alerts.to_dict("records") if hasattr(alerts, "to_dict") else [vars(a) for a in alerts]
    out: dict[str, list[int]] = {}
    for row in rows:
        out.setdefault(row["kind"], []).append(row["step"])
    return out


def loss_curves(run, *, smoothing: float = 0.8, threshold: float | None = None, early_stop: int | None = None,
                alerts=None, logy: bool = False, title: str = "loss"):
    """Training loss (raw + smoothed) and validation loss, with a threshold line, early-stop and alert markers.

    `alerts` takes `TrainingMonitor.alerts` or its `alerts_frame()`; passing the monitor as `run` uses both.
    """
    if alerts is None and hasattr(run, "alerts_frame"):
        alerts = run.alerts_frame()
    fig, (ax,) = figure()
    _draw_loss(ax, _history(run), weight=smoothing, threshold=threshold, early_stop=early_stop, alerts=alerts,
               logy=logy)
    ax.set_title(title)
    return show(fig)


def _draw_grad(ax, frame, clip=None) -> None:
    col = _column(frame, "grad_norm")
    if col is None:
        return _missing(ax, "'grad_norm' column", frame.columns)
    rows = frame[np.isfinite(frame[col].astype(float)) & (frame[col].astype(float) > 0)]
    ax.plot(rows["step"], rows[col], color="C0", label="global grad norm")
    if clip is not None:
        ax.axhline(clip, color="C3", linestyle="--", linewidth=1, label=f"clip max-norm {clip:g}")
    ax.set_yscale("log")
    ax.set(title="gradient norm", xlabel="step", ylabel="L2 norm (pre-clip)")
    ax.legend(fontsize=8)


def grad_norms(run, *, clip: float | None = 1.0):
    """Global gradient norm over steps (log scale) with the clipping threshold."""
    fig, (ax,) = figure()
    _draw_grad(ax, _history(run), clip)
    return show(fig)


def _draw_lr(ax, frame) -> None:
    col = _column(frame, "lr")
    if col is None:
        return _missing(ax, "'lr' column", frame.columns)
    ax.plot(frame["step"], frame[col], color="C2")
    ax.set(title="learning rate", xlabel="step", ylabel="lr")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))


def lr_schedule(run):
    """The learning rate over steps (warm-up then decay, as the scheduler actually applied it)."""
    fig, (ax,) = figure()
    _draw_lr(ax, _history(run))
    return show(fig)


def _draw_throughput(ax, frame) -> None:
    speed = _column(frame, "tokens_per_s")
    memory = _column(frame, "peak_mem_gb", "cuda_peak_gb", "cuda_mem_gb", "rss_gb")
    if speed is None and memory is None:
        return _missing(ax, "'tokens_per_s' or memory column", frame.columns)
    handles = []
    if speed:
        rows = frame[np.isfinite(frame[speed].astype(float))]
        handles += ax.plot(rows["step"], rows[speed], color="C0", label="tokens/s")
        ax.set_ylabel("tokens/s")
    if memory:
        mem_ax = ax.twinx() if speed else ax
        rows = frame[np.isfinite(frame[memory].astype(float))]
        handles += mem_ax.plot(rows["step"], rows[memory], color="C1", linestyle="--", label=f"{memory} (GiB)")
        mem_ax.set_ylabel("GiB")
        mem_ax.set_ylim(bottom=0)
    ax.set(title="throughput and memory", xlabel="step")
    ax.legend(handles=handles, fontsize=8, loc="lower right")


def throughput(run):
    """Tokens/s (left axis) and memory (right axis: peak CUDA memory, else process RSS) over steps."""
    fig, (ax,) = figure()
    _draw_throughput(ax, _history(run))
    return show(fig)


def _draw_heatmap(fig, ax, table, *, title, xlabel, ylabel, label, log=False, center=None, under=None):
    values = np.asarray(table, dtype=float)
    shown = np.log10(np.where(values > 0, values, np.nan)) if log else values
    cmap = plt.get_cmap("RdBu_r" if center is not None else "viridis").copy()
    kwargs = {}
    if center is not None:  # white at `center`; blue below it down to 0, red above it
        top = np.nanmax(shown) if np.isfinite(shown).any() else 2 * center
        kwargs["norm"] = TwoSlopeNorm(vcenter=center, vmin=min(0.0, center * 0.999), vmax=max(top, center * 2))
    if under is not None:
        cmap = cmap.with_extremes(under="red")
        kwargs["vmin"] = np.log10(under) if log else under
    image = ax.imshow(shown, aspect="auto", interpolation="nearest", cmap=cmap, **kwargs)
    fig.colorbar(image, ax=ax, label=label, extend="min" if under is not None else "neither")
    ax.grid(False)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return image


def _ticks(ax, labels, axis: str, most: int = 12) -> None:
    labels = [str(x) for x in labels]
    every = max(1, len(labels) // most)
    positions = list(range(0, len(labels), every))
    getattr(ax, f"set_{axis}ticks")(positions, [labels[i] for i in positions], fontsize=7)


def _not_numeric(frame) -> list:
    return [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]


def grad_norm_heatmap(layer_norms, *, vanish: float | None = 1e-6, title: str = "gradient norm per layer"):
    """Per-layer gradient norms (log10 colour) over steps; cells below `vanish` are painted red.

    Takes `TrainingMonitor.layer_grad_norms` (steps x layers) or the monitor itself. A run history (a Trainer's
    or a monitor's `history`) holds only the global norm: plot that with `grad_norms`. Shown in notebooks/06.
    """
    if hasattr(layer_norms, "layer_grad_norms"):
        layer_norms = layer_norms.layer_grad_norms
    _check_layer_norms(layer_norms)
    fig, (ax,) = figure(height=max(3.0, 0.22 * max(1, layer_norms.shape[1]) + 1.2))
    _draw_layers(fig, ax, layer_norms, vanish, title)
    return show(fig)


def _check_layer_norms(layer_norms) -> None:
    """A steps x layers frame of numbers, else a TypeError that says what to pass instead."""
    expected = ("grad_norm_heatmap needs per-layer gradient norms, a steps x layers DataFrame: "
                "TrainingMonitor.layer_grad_norms, or the TrainingMonitor itself")
    if not isinstance(layer_norms, pd.DataFrame):
        history = " A Trainer keeps only the global norm: plots.grad_norms(trainer.history)." if hasattr(
            layer_norms, "history") else ""
        raise TypeError(f"{expected}; got a {type(layer_norms).__name__}.{history}")
    history_columns = {"step", "loss", "lr", "grad_norm"} & set(layer_norms.columns)
    if history_columns or _not_numeric(layer_norms):
        shown = ", ".join(map(str, list(layer_norms.columns)[:8]))
        raise TypeError(f"{expected}; got a run history (columns {shown}). It has only the global norm: plot it "
                        "with plots.grad_norms(history), or train with a TrainingMonitor callback and pass the "
                        "monitor here for the per-layer view")


def _draw_layers(fig, ax, layer_norms, vanish, title) -> None:
    if layer_norms is None or layer_norms.size == 0:
        return _missing(ax, "per-layer gradient norms", getattr(layer_norms, "columns", []))
    _draw_heatmap(fig, ax, layer_norms.T, title=title, xlabel="step", ylabel="", label="log10 grad norm",
                  log=True, under=vanish)
    _ticks(ax, layer_norms.index, "x")
    _ticks(ax, layer_norms.columns, "y", most=30)


_LONG = ["step", "layer", "expert", "tokens"]


def _load_of_history(frame) -> pd.DataFrame:
    """A Trainer history's `expert_load` column (per step, a layers x experts array of token shares) in the long
    form of `TrainingMonitor.expert_load`. The arrays carry no layer names: rows are MoE layers in model order."""
    rows = frame[[isinstance(v, (np.ndarray, list, tuple)) for v in frame["expert_load"]]]
    if rows.empty:
        return pd.DataFrame(columns=_LONG)
    loads = np.stack([np.atleast_2d(np.asarray(v, dtype=float)) for v in rows["expert_load"]])
    steps, layers, experts = np.meshgrid(rows["step"].to_numpy(), np.arange(loads.shape[1]),
                                         np.arange(loads.shape[2]), indexing="ij")
    return pd.DataFrame({"step": steps.ravel(), "layer": [f"MoE layer {i}" for i in layers.ravel()],
                         "expert": experts.ravel(), "tokens": loads.ravel()})


def expert_load_heatmap(load, *, layer: str | None = None, title: str = "expert load"):
    """Expert load as a share of the fair load (1.0 = perfectly balanced; blue: idle, red: overloaded).

    `load` is `models.expert_load(...)` (layers x experts); `TrainingMonitor.expert_load` (long: step, layer,
    expert, tokens) or the monitor; or a Trainer's `history` (its `expert_load` column) or the Trainer. From a
    run, one `layer` is shown over steps (default: the most imbalanced). Shown in notebooks/03 §5 and 04 §5.
    """
    if hasattr(load, "history") and not isinstance(load, pd.DataFrame):
        load = load.expert_load if hasattr(load, "expert_load") else load.history  # a monitor, or a Trainer
    if isinstance(load, pd.DataFrame) and "expert_load" in load.columns:
        load = _load_of_history(load)
    elif isinstance(load, pd.DataFrame) and {"step", "loss"} & set(load.columns) and not set(_LONG) <= set(
            load.columns):
        load = pd.DataFrame(columns=_LONG)  # a dense model's history: nothing routed, say so in the panel
    elif load is not None and not isinstance(load, pd.DataFrame):
        raise TypeError("expert_load_heatmap needs models.expert_load(...) (layers x experts), "
                        "TrainingMonitor.expert_load or a Trainer history with an expert_load column; "
                        f"got a {type(load).__name__}")
    fig, (ax,) = figure()
    if load is None or len(load) == 0:
        _missing(ax, "expert load", getattr(load, "columns", []))
        return show(fig)
    if set(_LONG) <= set(load.columns):
        if layer is None:  # the layer whose busiest expert is furthest above fair over the run
            table = load.groupby(["layer", "expert"])["tokens"].sum().unstack()
            layer = (table.max(axis=1) / table.mean(axis=1)).idxmax()
        if layer not in set(load["layer"]):
            raise ValueError(f"no layer {layer!r} in the expert load; layers: {sorted(set(load['layer']))}")
        table = load[load["layer"] == layer].pivot(index="step", columns="expert", values="tokens")
        ylabel, title = "step", f"{title}: {layer}"
    elif _not_numeric(load):
        raise TypeError(f"expert_load_heatmap: a layers x experts load must be numbers; columns "
                        f"{_not_numeric(load)} are not (long form needs the columns {', '.join(_LONG)})")
    else:
        table, ylabel = load, "layer"
    share = table.div(table.mean(axis=1), axis=0)
    _draw_heatmap(fig, ax, share, title=title, xlabel="expert", ylabel=ylabel, label="load / fair share", center=1.0)
    _ticks(ax, table.columns, "x", most=32)
    _ticks(ax, table.index, "y")
    return show(fig)


def _draw_ratio(ax, frame) -> None:
    col = _column(frame, "update_ratio")
    if col is None:
        return _missing(ax, "'update_ratio' column", frame.columns)
    rows = frame[np.isfinite(frame[col].astype(float)) & (frame[col].astype(float) > 0)]
    ax.plot(rows["step"], rows[col], color="C4")
    ax.axhline(1e-3, color="0.5", linestyle=":", linewidth=1, label="1e-3 rule of thumb")
    ax.set_yscale("log")
    ax.set(title="update / weight ratio", xlabel="step", ylabel="||Δw|| / ||w||")
    ax.legend(fontsize=8)


def _draw_imbalance(ax, frame) -> None:
    col = _column(frame, "max_vio", "load_maxvio")
    if col is None:
        return _missing(ax, "'max_vio' column (MoE expert load)", frame.columns)
    rows = frame[np.isfinite(frame[col].astype(float))]
    ax.plot(rows["step"], rows[col], color="C6")
    ax.axhline(0.0, color="0.5", linestyle=":", linewidth=1, label="perfect balance")
    ax.set(title="MoE load imbalance", xlabel="step", ylabel="MaxVio (busiest / fair - 1)")
    ax.legend(fontsize=8)


def dashboard(run, *, clip: float | None = 1.0, threshold: float | None = None, early_stop: int | None = None,
              title: str = ""):
    """A run at a glance: loss, gradient norm, lr, update ratio, throughput/memory and per-layer gradients.

    `run` is a TrainingMonitor (uses its alerts and per-layer norms) or a history DataFrame (then the
    last panel shows the MoE load imbalance, when the history has it).
    """
    frame = _history(run)
    alerts = run.alerts_frame() if hasattr(run, "alerts_frame") else None
    layer_norms = getattr(run, "layer_grad_norms", None)
    fig, axes = figure(ncols=3, nrows=2, width=4.6, height=3.2)
    _draw_loss(axes[0], frame, threshold=threshold, early_stop=early_stop, alerts=alerts)
    _draw_grad(axes[1], frame, clip)
    _draw_lr(axes[2], frame)
    _draw_ratio(axes[3], frame)
    _draw_throughput(axes[4], frame)
    if layer_norms is not None and layer_norms.size or _column(frame, "max_vio", "load_maxvio") is None:
        _draw_layers(fig, axes[5], layer_norms, 1e-6, "grad norm per layer")
    else:  # a plain history has no per-layer norms; an MoE run's balance is the next most useful panel
        _draw_imbalance(axes[5], frame)
    if title:
        fig.suptitle(title, fontweight="bold")
    return show(fig)
