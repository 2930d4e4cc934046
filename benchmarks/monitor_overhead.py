"""What TrainingMonitor costs per training step: the Trainer alone vs with the monitor in its settings.

Runs are interleaved, in a rotating order, and the median per step is kept, so a busy
machine slows every configuration alike. On the CPU the process CPU time is reported next to the wall
time: other processes on a shared machine inflate wall time much more than this process's CPU time.
Prints one table: setting, wall s/step, CPU s/step, and their ratios to no monitor.

    python benchmarks/monitor_overhead.py [--model tiny] [--steps 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import pandas as pd
import torch

from cookbook import env, models, profiles, train
from cookbook.monitor import TrainingAlertWarning, TrainingMonitor

SETTINGS = {
    "no monitor": lambda: [],
    "monitor (every step: norms, per-layer, update ratio)": lambda: [TrainingMonitor(hardware=False)],
    "monitor, per-layer stats every 10 steps": lambda: [TrainingMonitor(hardware=False, layer_every=10)],
    "monitor + hardware + JSONL/CSV/TensorBoard": lambda: [TrainingMonitor(log_dir=tempfile.mkdtemp(),
                                                                           tensorboard=True)],
}


def seconds_per_step(model_name: str, vocab: int, steps: int, batch: int, seq: int, callbacks) -> tuple[float, float]:
    ids = torch.randint(0, vocab, (batch * 4, seq), generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids), batch_size=batch, shuffle=False,
                                         collate_fn=lambda rows: {"input_ids": torch.stack([r[0] for r in rows])})
    config = train.TrainConfig(steps=steps + 2, lr=1e-3, log_interval=1, progress=False)
    trainer = train.Trainer(models.build(model_name, vocab), loader, None, config, callbacks=callbacks)
    trainer.config.steps = 2  # warm-up steps (allocations, lazy imports) are not timed
    trainer.fit()
    trainer.config.steps = steps + 2
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def main() -> None:
    P = profiles.profile()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=P.monitor.model)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore", TrainingAlertWarning)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in SETTINGS}
    names = list(SETTINGS)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate: no setting always goes first
            make = SETTINGS[name]
            times[name].append(seconds_per_step(args.model, P.data.vocab_size, args.steps, P.train.batch_size, P.data.seq_len, make()))
    table = pd.DataFrame({"wall s/step": {n: statistics.median(w for w, _ in t) for n, t in times.items()},
                          "cpu s/step": {n: statistics.median(c for _, c in t) for n, t in times.items()}})
    table["wall ratio"] = table["wall s/step"] / table.loc["no monitor", "wall s/step"]
    table["cpu ratio"] = table["cpu s/step"] / table.loc["no monitor", "cpu s/step"]
    print(f"model {args.model} · {P.train.batch_size} x {P.data.seq_len} tokens · device {env.device()} · "
          f"median of {args.repeats} interleaved runs of {args.steps} steps")
    print(table.round(4).to_string())


if __name__ == "__main__":
    main()
