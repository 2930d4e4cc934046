"""Training throughput on one device: the plain Hugging Face loop against the cookbook loop at its best settings.

    python benchmarks/train_throughput.py              # profile from $COOKBOOK_PROFILE / the device
    python benchmarks/train_throughput.py --json runs/bench/train_throughput.json --markdown runs/bench/train_throughput.md

In one process, on the same model, batches and steps:
- the profile's MoE on its packed corpus blocks, trained `P.throughput.train_steps` steps three ways: the loop
  the Hugging Face docs teach (`model(input_ids, labels=...).loss` under autocast over float32 weights, AdamW),
  the cookbook Trainer without its fast paths, and the Trainer with every fast path the device has (fused AdamW,
  fused linear cross-entropy, grouped experts on bf16 copies, torch.compile where the profile allows). Each row:
  median tokens/s of the steps after `P.throughput.warmup`, MFU, peak memory, last training loss and the
  validation loss after training. The two Trainer runs share the schedule, so their validation losses differ
  only by the fast paths (target: within 2%); the plain loop has no warm-up or decay, its loss is for reference.
- a dense Llama of `P.throughput.dense` (hidden, layers, vocabulary, batch, sequence; GPT-2-small size in
  `full`) on random tokens, plain loop against the fast Trainer: MFU (target: 40% on an H100-class GPU).
On a CPU the MoE rows double as the smoke check that the fast paths do not slow the CPU path (seconds per step).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import pandas as pd
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cookbook import env, models, profiles, train
from cookbook.data import sources, tokenizer
from cookbook.train import throughput


def fast_config(base: train.TrainConfig, P, device: torch.device, *, moe: bool, compile_mode: str) -> train.TrainConfig:
    """Every fast path of notebooks/04 §9 that applies: the best settings the cookbook offers on `device`."""
    compile_ = P.throughput.compile and device.type == "cuda"
    return dataclasses.replace(base, fused_optimizer=True, fused_cross_entropy=True, grouped_experts=moe,
                               compile=compile_, compile_mode=compile_mode if compile_ else "default")


def moe_rows(P, device, compile_mode: str) -> pd.DataFrame:
    T = P.throughput
    ds = sources.for_profile(P)
    tok = tokenizer.for_profile(P, ds)
    blocks = tokenizer.blocks_for_profile(P, tok, ds)
    # one list of batches for every run: the same data in the same order
    batches = list(itertools.islice(itertools.cycle(train.loader(blocks["train"], T.batch_size, seed=0)), T.train_steps))
    val = train.loader(blocks["validation"], T.batch_size, shuffle=False, drop_last=False)
    precision = T.precision
    base = train.TrainConfig.from_profile(P, precision=precision, fused_optimizer=False, device=str(device))
    timed = dict(steps=T.train_steps - T.warmup, warmup=T.warmup)
    rows = {}
    for name in ("plain Hugging Face loop", "cookbook Trainer, no fast paths", "cookbook Trainer, fast paths"):
        model = models.build(P.model.name, len(tok), seed=0)
        if name.startswith("plain"):
            row = throughput.plain_hf(model, batches, precision=precision, lr=P.train.lr, device=device, **timed)
        else:
            config = base if "no fast" in name else fast_config(base, P, device, moe=True, compile_mode=compile_mode)
            row = throughput.measure(model, batches, config, **timed)
        row["val_loss"] = throughput.validation_loss(model, val, precision=precision, batches=T.eval_batches,
                                                     device=device)
        rows[name] = row
    return pd.DataFrame(rows).T


def dense_rows(P, device, compile_mode: str) -> pd.DataFrame:
    T = P.throughput
    hidden, layers, vocab, batch, seq_len = T.dense
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(8 / 3 * hidden) // 64 * 64,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         max_position_embeddings=seq_len, tie_word_embeddings=False)
    ids = torch.randint(0, vocab, (batch * (T.warmup + T.steps), seq_len), generator=torch.Generator().manual_seed(0))
    batches = [{"input_ids": chunk} for chunk in ids.split(batch)]  # speed does not depend on the tokens
    base = train.TrainConfig(precision=T.precision, lr=P.train.lr, device=str(device), moe_gamma=0.0)
    timed = dict(steps=T.steps, warmup=T.warmup)
    torch.manual_seed(0)
    plain = throughput.plain_hf(LlamaForCausalLM(config), batches, precision=T.precision, lr=P.train.lr,
                                device=device, **timed)
    torch.manual_seed(0)
    fast = throughput.measure(LlamaForCausalLM(config), batches,
                              fast_config(base, P, device, moe=False, compile_mode=compile_mode), **timed)
    return pd.DataFrame({"plain Hugging Face loop": plain, "cookbook Trainer, fast paths": fast}).T


def _markdown(table: pd.DataFrame) -> str:
    """A Markdown table without pandas' optional `tabulate` (not promised on the GPU image)."""
    rows = [["setting", *table.columns], ["---"] * (len(table.columns) + 1)]
    rows += [[name, *(f"{v:.4g}" for v in values)] for name, values in zip(table.index, table.to_numpy(float), strict=True)]
    return "\n".join("| " + " | ".join(map(str, row)) + " |" for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile-mode", default="default", choices=train.trainer.COMPILE_MODES,
                        help="torch.compile mode of the fast runs (reduce-overhead adds CUDA graphs)")
    parser.add_argument("--json", default=None, help="also write the tables as JSON to this file")
    parser.add_argument("--markdown", default=None, help="also write the tables as Markdown to this file")
    args = parser.parse_args()
    P = profiles.profile()
    env.seed_everything(0)
    device = env.device()
    T = P.throughput
    print(f"profile {P.name} · device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}) · "
          f"{T.precision} · MoE {P.model.name} at {T.batch_size} x {P.data.seq_len}, dense {T.dense} · "
          f"{T.train_steps} steps, median after {T.warmup} · {torch.get_num_threads()} CPU threads")
    tables = {"moe": moe_rows(P, device, args.compile_mode), "dense": dense_rows(P, device, args.compile_mode)}
    lines = []
    for name, table in tables.items():
        table["tokens_per_s_ratio"] = table["tokens_per_s"] / table["tokens_per_s"].iloc[0]
        table["s_per_step"] = (T.batch_size * P.data.seq_len if name == "moe" else T.dense[3] * T.dense[4]) / table["tokens_per_s"]
        lines += [f"## {name}", "", _markdown(table), ""]
    moe = tables["moe"]
    gap = moe.loc["cookbook Trainer, fast paths", "val_loss"] / moe.loc["cookbook Trainer, no fast paths", "val_loss"] - 1
    ratio = moe.loc["cookbook Trainer, fast paths", "tokens_per_s"] / moe.loc["plain Hugging Face loop", "tokens_per_s"]
    mfu = tables["dense"]["mfu"].iloc[-1]
    summary = (f"MoE: fast Trainer {ratio:.2f}x the plain loop's tokens/s; validation loss {gap:+.2%} against the "
               f"Trainer without fast paths (target within 2%) · dense MFU "
               f"{'n/a (no GPU)' if mfu != mfu else f'{mfu:.1%}'} (target 40% on an H100-class GPU)")
    lines.append(summary)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({k: t.reset_index(names="setting").to_dict(orient="records")
                                               for k, t in tables.items()}, indent=1, default=float))
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
