"""Where monitoring goes: JSONL/CSV/TensorBoard sinks, and hardware sampling.

Used by `cookbook.monitor.TrainingMonitor`; each sink has `write(row, layers)`, `alert(alert)`, `close()`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path

import torch

__all__ = ["CsvSink", "JsonlSink", "TensorBoardSink", "sample_hardware"]


def _clean(row: dict) -> dict:
    """JSON-safe scalars: bools stay bools, non-finite floats become null (JSON has no NaN)."""
    out = {}
    for key, value in row.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


class JsonlSink:
    """One JSON object per line: `{"type": "step", ...}` rows and `{"type": "alert", ...}` events."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, row: dict, layers: dict[str, float]) -> None:
        record = {"type": "step", **_clean(row)}
        if layers:
            record["layer_grad_norm"] = _clean(layers)
        self._append(record)

    def alert(self, alert) -> None:
        self._append({"type": "alert", **_clean(vars(alert))})

    def _append(self, record: dict) -> None:
        if self._file.closed:  # training resumed after close(): keep appending to the same log
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class CsvSink:
    """Step rows as CSV (alerts go to `<stem>.alerts.csv`); new columns rewrite the header once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.alerts_path = self.path.with_name(self.path.stem + ".alerts.csv")
        self.columns: list[str] = []
        self.rows: list[dict] = []
        for p in (self.path, self.alerts_path):
            p.unlink(missing_ok=True)

    def write(self, row: dict, layers: dict[str, float]) -> None:
        row = _clean(row)
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:  # rare (e.g. the first validation): rewrite the whole file with the wider header
            self.columns += new
            with self.path.open("w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, self.columns)
                writer.writeheader()
                writer.writerows(self.rows)
        else:
            with self.path.open("a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, self.columns).writerow(row)

    def alert(self, alert) -> None:
        fields = ["step", "kind", "value", "threshold", "message"]
        first = not self.alerts_path.exists()
        with self.alerts_path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fields)
            if first:
                writer.writeheader()
            writer.writerow(_clean(vars(alert)))

    def close(self) -> None:
        pass


class TensorBoardSink:
    """Scalars under train/, val/, hw/ and grad_norm/<layer>; alerts as text. Needs the `tensorboard` package."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError(
                "TensorBoard logging needs the `tensorboard` package: pip install tensorboard "
                f"(or leave tensorboard=False and use the JSONL/CSV logs) [{exc}]"
            ) from None
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(str(self.log_dir))

    def write(self, row: dict, layers: dict[str, float]) -> None:
        step = int(row["step"])
        for key, value in _clean(row).items():
            if key == "step" or value is None or isinstance(value, str):
                continue
            prefix = "val" if key.startswith("val_") else "hw" if key in _HARDWARE_KEYS else "train"
            self._writer.add_scalar(f"{prefix}/{key}", float(value), step)
        for layer, value in layers.items():
            if math.isfinite(value):
                self._writer.add_scalar(f"grad_norm/{layer}", value, step)

    def alert(self, alert) -> None:
        self._writer.add_text(f"alerts/{alert.kind}", alert.message, alert.step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


_HARDWARE_KEYS = {"cuda_mem_gb", "cuda_reserved_gb", "cuda_peak_gb", "gpu_util", "gpu_mem_used_gb", "rss_gb",
                  "cpu_percent", "read_mb_s", "tokens_per_s", "mfu", "peak_mem_gb"}

_nvml = None  # None: not tried yet; False: unavailable; else (module, handle)
_proc = None
_io_last: tuple[float, int] | None = None


def _nvml_handle():
    global _nvml
    if _nvml is None:
        _nvml = False
        try:
            import pynvml  # provided by the nvidia-ml-py package

            pynvml.nvmlInit()
            index = torch.cuda.current_device() if torch.cuda.is_available() else 0
            _nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(index))
        except Exception:  # not installed, no driver, no GPU: GPU utilisation is simply not reported
            _nvml = False
    return _nvml


def sample_hardware() -> dict[str, float]:
    """What the hardware is doing now, where it can be read.

    CUDA memory (allocated / reserved / peak, GiB) whenever CUDA is in use; GPU utilisation (%) and
    used memory through NVML when `nvidia-ml-py` is installed; process RSS, CPU % and disk read MB/s
    (input pipeline I/O) through `psutil` when installed. Missing sources are left out, never faked.
    """
    global _proc, _io_last
    out: dict[str, float] = {}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_mem_gb"] = torch.cuda.memory_allocated() / 2**30
        out["cuda_reserved_gb"] = torch.cuda.memory_reserved() / 2**30
        out["cuda_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        nvml = _nvml_handle()
        if nvml:
            module, handle = nvml
            out["gpu_util"] = float(module.nvmlDeviceGetUtilizationRates(handle).gpu)
            out["gpu_mem_used_gb"] = module.nvmlDeviceGetMemoryInfo(handle).used / 2**30
    try:
        import psutil  # optional: the `monitor` extra
    except ImportError:
        return out
    if _proc is None:
        _proc = psutil.Process(os.getpid())
        _proc.cpu_percent()  # the first call only starts the measurement
    out["rss_gb"] = _proc.memory_info().rss / 2**30
    out["cpu_percent"] = _proc.cpu_percent()
    try:
        now, read = time.perf_counter(), _proc.io_counters().read_bytes
        if _io_last is not None and now > _io_last[0]:
            out["read_mb_s"] = (read - _io_last[1]) / 2**20 / (now - _io_last[0])
        _io_last = (now, read)
    except (AttributeError, psutil.Error):  # io_counters is not available on every platform
        pass
    return out
