"""Size and latency of every quantization method against fp32, for the profile's MoE model and its dense twin.

    python benchmarks/quantization.py                 # profile from $COOKBOOK_PROFILE / the device
    python benchmarks/quantization.py --repeats 30

One run, side-by-side ratios: size on disk (serialized state dict) and latency per token of a forward over
`P.quant.latency_batch` x `P.data.seq_len` random tokens, timed round-robin across the variants (median of
`--repeats` after `P.quant.warmup` untimed forwards). Weights are freshly initialised: size and speed do not
depend on training (notebooks/09 measures perplexity on the pretrained model). Needs the `quant` extra.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from cookbook import compress, env, models, profiles


def variants(model, device: torch.device, calibration) -> dict:
    """fp32, int8 weight-only as torchao alone leaves a MoE (experts in fp32), and every method that runs on
    `device` (`compress.methods_for`: torch.ao's kernels are CPU-only, tinygemm's int4 CUDA-only)."""
    out = {"fp32": model}
    if any(compress.is_fused_experts(m) for m in model.modules()):
        out["int8-weight-only, torchao alone"] = compress.quantize(model, "int8-weight-only", experts=False)
    for method in compress.methods_for(device):
        out[method] = compress.quantize(model, method, calibration=calibration)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None, help="timed forwards per variant (default: the profile's)")
    args = parser.parse_args()
    P = profiles.profile()
    env.seed_everything(0)
    device = env.device()
    ids = torch.randint(0, P.data.vocab_size, (P.quant.latency_batch, P.data.seq_len),
                        generator=torch.Generator().manual_seed(0))
    calibration = [{"input_ids": ids}]
    print(f"profile {P.name} · device {device} · model {P.model.name} · {ids.numel()} tokens per forward · "
          f"{torch.get_num_threads()} CPU threads · torchao {compress.require_torchao().__version__}")
    moe = models.build(P.model.name, P.data.vocab_size, seed=0).to(device).eval()
    dense = models.build_dense(moe.config, seed=0).to(device).eval()
    timing = dict(repeats=args.repeats or P.quant.repeats, warmup=P.quant.warmup)
    tables = []
    for name, model in (("moe", moe), ("dense twin", dense)):
        table = compress.compare(variants(model, device, calibration), None, ids, **timing)
        tables.append(table.drop(columns=["zeros", "path", "notes"]).assign(model=name).set_index("model", append=True))
    pd.set_option("display.width", 200)
    print(pd.concat(tables).reorder_levels(["model", "variant"]).round(3).to_string())


if __name__ == "__main__":
    main()
