"""Figures in one consistent style; every function shows its figure in a notebook and returns it to save.

base (figure, bar, hist, lines, smoothing) · training (loss, gradients, lr, throughput, heatmaps, dashboard).
"""

from cookbook.plots.base import STYLE, bar, figure, hidden, hist, lines, show, smooth
from cookbook.plots.training import (
    dashboard,
    expert_load_heatmap,
    grad_norm_heatmap,
    grad_norms,
    loss_curves,
    lr_schedule,
    throughput,
)

__all__ = ["STYLE", "bar", "dashboard", "expert_load_heatmap", "figure", "grad_norm_heatmap", "grad_norms", "hidden", "hist",
           "lines", "loss_curves", "lr_schedule", "show", "smooth", "throughput"]
