"""What a TrainingMonitor recorded: one row per step, per-layer gradient norms and update ratios, expert load.

Rows are written to the sinks once they are complete (a step's row can still gain values until the next
step starts: the trainer's logs, a validation loss).
"""

from __future__ import annotations

import math

import pandas as pd
import torch

__all__ = ["History"]


class History:
    """The monitor's records and their DataFrames; finished rows go to `sinks` (each has `write(row, layers)`)."""

    def __init__(self, sinks: list):
        self.sinks = sinks
        self.rows: dict[int, dict] = {}
        self.layer_rows: dict[int, dict[str, float]] = {}  # per-layer gradient norms
        self.ratio_rows: dict[int, dict[str, float]] = {}  # per-layer update ratios
        self.load_rows: list[dict] = []  # expert load, long format
        self._pending: list[int] = []  # steps whose rows are not yet written to the sinks

    def row(self, step: int) -> dict:
        """The row of `step` (created on first use)."""
        if step not in self.rows:
            self.rows[step] = {"step": step}
            self._pending.append(step)
        return self.rows[step]

    def add(self, step: int, values: dict, *, overwrite: bool = True) -> None:
        """Put the scalar `values` into the row of `step` (non-scalars are left out; see `scalar`)."""
        row = self.row(step)
        for key, value in values.items():
            value = scalar(value)
            if value is not None and (overwrite or key not in row):
                row[key] = value

    def add_load(self, step: int, loads: dict[str, list[int]]) -> None:
        """Tokens per expert for each MoE layer, routed since the previous logged step."""
        for layer, tokens in loads.items():
            self.load_rows += [dict(step=step, layer=layer, expert=e, tokens=t) for e, t in enumerate(tokens)]

    def flush(self, final: bool = False) -> None:
        """Write finished rows (every step before the newest; all of them when `final`) to the sinks."""
        keep = [] if final or not self._pending else [self._pending[-1]]
        for step in self._pending:
            if step not in keep:
                for sink in self.sinks:
                    sink.write(self.rows[step], self.layer_rows.get(step, {}))
        self._pending = keep

    def train_trend(self, start: int | None, end: int) -> float:
        """Mean training loss near `end` minus near `start` (negative: still falling)."""
        losses = [(s, r["loss"]) for s, r in self.rows.items() if "loss" in r and math.isfinite(r["loss"])]
        if start is None or len(losses) < 4:
            return 0.0
        span = max(2, (end - start) // 4)
        a = [v for s, v in losses if abs(s - start) <= span]
        b = [v for s, v in losses if abs(s - end) <= span]
        return (sum(b) / len(b) - sum(a) / len(a)) if a and b else 0.0

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame([self.rows[s] for s in sorted(self.rows)])
        return frame if len(frame) else pd.DataFrame(columns=["step", "loss", "grad_norm"])

    def load_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.load_rows, columns=["step", "layer", "expert", "tokens"])

    @staticmethod
    def wide(rows: dict[int, dict[str, float]]) -> pd.DataFrame:
        """Steps x layers."""
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index.name = "step"
        return frame.sort_index()


def scalar(value):
    """A plain Python number for one-element tensors / numpy scalars / numbers; None for anything else."""
    if isinstance(value, (bool, int, float)):
        return value
    if (torch.is_tensor(value) and value.numel() == 1) or (hasattr(value, "item") and getattr(value, "size", 0) == 1):
        return value.item()
    return None
