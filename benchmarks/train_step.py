"""Seconds per optimizer step of the cookbook Trainer for the current profile's model, switch by switch.

    python benchmarks/train_step.py            # profile from $COOKBOOK_PROFILE / the device
    python benchmarks/train_step.py --steps 20 --compile

Prints one row per configuration (precision, gradient checkpointing, torch.compile) with s/step, tokens/s
and the ratio to the first row, all measured in one run on random tokens (the data does not change speed).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from cookbook import env, models, profiles, train


def measure(P, precision: str, checkpointing: bool, compile_: bool, steps: int) -> dict:
    ids = torch.randint(0, P.data.vocab_size, (P.train.batch_size * (steps + 2), P.data.seq_len), generator=torch.Generator().manual_seed(0))
    loader = train.loader([{"input_ids": row} for row in ids], P.train.batch_size)
    config = train.TrainConfig(steps=steps + 2, lr=P.train.lr, precision=precision, activation_checkpointing=checkpointing,
                               compile=compile_, log_interval=1, progress=False)
    trainer = train.Trainer(models.build(P.model.name, P.data.vocab_size, seed=0), loader, config=config)
    start = time.perf_counter()
    history = trainer.fit()
    seconds = history["tokens_per_s"].iloc[2:].rdiv(P.train.batch_size * P.data.seq_len)  # skip two warm-up steps
    return dict(precision=precision, checkpointing=checkpointing, compile=compile_, s_per_step=seconds.median(),
                tokens_per_s=history["tokens_per_s"].iloc[2:].median(), peak_mem_gb=history["peak_mem_gb"].max(),
                wall_s=time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration (after 2 warm-up steps)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()
    P = profiles.profile()
    env.seed_everything(0)
    print(f"profile {P.name} · device {env.device()} · model {P.model.name} · {P.train.batch_size} x {P.data.seq_len} tokens/step · "
          f"{torch.get_num_threads()} CPU threads")
    rows = [measure(P, p, False, False, args.steps) for p in P.precision.formats]
    rows.append(measure(P, P.train.precision, True, False, args.steps))
    if args.compile:
        rows.append(measure(P, P.train.precision, False, True, args.steps))
    table = pd.DataFrame(rows)
    table["ratio"] = table["s_per_step"] / table["s_per_step"].iloc[0]
    print(table.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
