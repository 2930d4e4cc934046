"""A live view of a training run: in Jupyter the loss plot and key numbers refresh in place; elsewhere text.

    monitor = TrainingMonitor(live=True, total=steps)   # or LiveView(monitor) as a callback of its own

In a notebook one output area is updated through an IPython display handle (so the saved notebook keeps only
the last picture, not one per refresh), with a tqdm.auto progress bar in user loops. Outside Jupyter the
same numbers are printed as one plain text line every `text_every_s` seconds.
"""

from __future__ import annotations

import math
import sys
import time

from IPython.display import HTML, display

from cookbook import plots

__all__ = ["LiveView", "in_notebook", "key_numbers"]


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where rich display works), False in a terminal or plain script."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _last(frame, column):
    if column not in frame.columns:
        return None
    values = frame[column].dropna()
    return values.iloc[-1] if len(values) else None


def key_numbers(monitor) -> dict[str, object]:
    """The handful of numbers worth watching: step, loss, val loss, grad norm, lr, tokens/s, memory, alerts."""
    frame = monitor.history
    out: dict[str, object] = {"step": _last(frame, "step")}
    for column, label in [("loss", "loss"), ("val_loss", "val loss"), ("grad_norm", "grad norm"), ("lr", "lr"),
                          ("tokens_per_s", "tokens/s"), ("update_ratio", "update ratio")]:
        value = _last(frame, column)
        if value is not None:
            out[label] = value
    memory = next((c for c in ("peak_mem_gb", "cuda_peak_gb", "rss_gb") if _last(frame, c) is not None), None)
    if memory:
        out["memory GiB"] = _last(frame, memory)
    if "gpu_util" in frame.columns:
        out["GPU %"] = _last(frame, "gpu_util")
    out["alerts"] = len(monitor.alerts)
    if monitor.alerts:
        out["last alert"] = f"{monitor.alerts[-1].kind} @ {monitor.alerts[-1].step}"
    return out


def _fmt(value) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


class LiveView:
    """Refreshes a loss plot + key numbers during training; also a Trainer callback (`callbacks=[mon, view]`).

    `every_s` bounds how often the figure is redrawn (drawing costs more than a small training step);
    the final state is always drawn at `close()`. `notebook=None` detects Jupyter.
    """

    def __init__(self, monitor=None, *, total: int | None = None, every_s: float = 5.0, text_every_s: float = 10.0,
                 notebook: bool | None = None, progress: bool | None = None):
        self.monitor, self.total = monitor, total
        self.every_s, self.text_every_s = every_s, text_every_s
        self.notebook = in_notebook() if notebook is None else notebook
        self.progress = progress  # None: a bar in your own loop, none under the Trainer (it has one)
        self._bar = None
        self._handle = None
        self._last_draw = -math.inf
        self._done = 0
        self.lines: list[str] = []  # what the text mode printed (handy in tests and logs)

    # Trainer callback protocol: the trainer shows its own progress bar, so ours stays off.
    def on_train_begin(self, trainer) -> None:
        self.progress = False if self.progress is None else self.progress

    def on_step_end(self, trainer, logs) -> None:
        self.update(self.monitor)

    def on_evaluate(self, trainer, logs) -> None:
        self.update(self.monitor, force=True)

    def on_train_end(self, trainer) -> None:
        self.close(self.monitor)

    def update(self, monitor=None, force: bool = False) -> None:
        """Refresh the bar every call and the picture/text at most every `every_s`/`text_every_s` seconds."""
        monitor = monitor or self.monitor
        if monitor is None:
            raise ValueError("LiveView needs a TrainingMonitor: LiveView(monitor) or TrainingMonitor(live=True)")
        self.monitor = monitor
        numbers = key_numbers(monitor)
        self._advance(numbers)
        now = time.perf_counter()
        period = self.every_s if self.notebook else self.text_every_s
        if force or now - self._last_draw >= period:
            self._last_draw = now
            self._draw(monitor, numbers)

    def close(self, monitor=None) -> None:
        """Draw the final state and close the progress bar."""
        monitor = monitor or self.monitor
        if monitor is not None and len(monitor.history):
            self._draw(monitor, key_numbers(monitor))
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _advance(self, numbers) -> None:
        if self.progress is False:
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc="training", unit="step", leave=True)
        step = numbers.get("step")
        done = int(step) + 1 if step is not None else self._done + 1
        if done > self._done:
            self._bar.update(done - self._done)
            self._done = done
        self._bar.set_postfix({k: _fmt(v) for k, v in numbers.items() if k in ("loss", "val loss", "grad norm")},
                              refresh=False)

    def _draw(self, monitor, numbers) -> None:
        if not self.notebook:
            line = "  ".join(f"{k}={_fmt(v)}" for k, v in numbers.items())
            self.lines.append(line)
            print(line, flush=True)
            return
        with plots.hidden():  # shown below, in the one output this view updates in place
            figure = plots.loss_curves(monitor, title="loss (live)")
        table = "".join(f"<td style='padding:0 8px'><b>{k}</b><br>{_fmt(v)}</td>" for k, v in numbers.items())
        html = HTML(f"<table><tr>{table}</tr></table>")
        if self._handle is None:
            self._handle = display(figure, display_id=True)
            self._numbers = display(html, display_id=True)
        else:
            self._handle.update(figure)
            self._numbers.update(html)
