"""The NaN guard: when a loss or gradient turns non-finite, save the last good state before anything changes.

`TrainingMonitor` calls it between backward and the optimizer step, so the weights it saves are those of the
last good step; then it stops the run with `NonFiniteError`, which names the saved checkpoint.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cookbook import checkpoint

__all__ = ["NonFiniteError", "save_last_good"]


class NonFiniteError(RuntimeError):
    """Training hit a NaN/inf loss or gradient; `checkpoint` is the last good state saved (or None)."""

    def __init__(self, message: str, checkpoint: Path | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint


def save_last_good(folder: Path | None, step: int, model, optimizer=None, trainer=None,
                   weights_finite: bool = True) -> tuple[Path | None, str]:
    """Save the state after `step` (the last good one) to `folder` (a temporary folder when None).

    Returns (the checkpoint's path, "") or (None, why nothing was saved). A Trainer's own checkpoint is used
    when there is one (it also holds the schedule, scaler and data position).
    """
    if not weights_finite:
        return None, "the weights were already non-finite (an earlier update), so nothing was saved"
    folder = folder if folder is not None else Path(tempfile.mkdtemp(prefix="cookbook-last-good-"))
    path = Path(folder) / f"last-good-step-{step}.safetensors"
    try:
        if trainer is not None:
            return Path(trainer.save_checkpoint(path)), ""
        return checkpoint.save(path, model, optimizer, state={"step": step}), ""
    except Exception as exc:  # the caller still stops: a failed save must not hide the NaN
        return None, f"saving the last good state failed: {exc!r}"
