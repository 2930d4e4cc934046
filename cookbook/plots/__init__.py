"""Figures in one consistent style; every function returns the matplotlib Figure so you can save it.

base (figure, bar, hist, lines, smoothing) · training (loss, gradients, lr, throughput, heatmaps, dashboard).
"""

from cookbook.plots.base import STYLE, bar, figure, hist, lines, smooth
from cookbook.plots.training import (
    dashboard,
    expert_load_heatmap,
    grad_norm_heatmap,
    grad_norms,
    loss_curves,
    lr_schedule,
    throughput,
)

__all__ = ["STYLE", "bar", "dashboard", "expert_load_heatmap", "figure", "grad_norm_heatmap", "grad_norms", "hist",
           "lines", "loss_curves", "lr_schedule", "smooth", "throughput"]
