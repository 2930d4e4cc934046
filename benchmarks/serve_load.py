"""QPS and p50/p99 latency of the gRPC ModelService: concurrency levels, direct vs nginx, micro-batching on vs off.

    python benchmarks/serve_load.py                        # profile from $COOKBOOK_PROFILE / the device
    python benchmarks/serve_load.py --requests 100 --seconds 5 --concurrency 1 8 32
    python benchmarks/serve_load.py --json serve_load.json

For micro-batching on and then off: two replica processes of the profile's model (weights 3:2) behind nginx, a
`grpc.aio` load test against one replica directly and against nginx at each concurrency level. Loopback only;
every run is bounded by a request count and a duration. Weights are freshly initialised (the service's work per
request does not depend on training: every request generates exactly `gen_tokens` tokens unless it samples the
end-of-text token). Needs the Debian packages nginx (and the serve extra's grpcio-health-checking).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd

from cookbook import deploy, env, models, profiles
from cookbook.data import tokenizer


def run(P: profiles.Profile, device, workdir: Path, *, concurrency, requests: int, seconds: float) -> pd.DataFrame:
    D = P.deploy
    tok = tokenizer.for_profile(P)
    model = models.build(P.model.name, len(tok), seed=0).eval()
    model_dir = deploy.save_for_serving(model, tok, workdir / "model")
    service = dict(max_prompt_tokens=D.max_prompt_tokens, max_tokens_limit=D.max_tokens_limit, max_batch=D.max_batch,
                   batch_wait_ms=D.batch_wait_ms)
    tables = []
    for batching in (True, False):
        label = "on" if batching else "off"
        with deploy.Stack.start(model_dir, workdir / f"batching-{label}", weights=D.weights, device=str(device),
                                config={**service, "micro_batching": batching}, prometheus=False) as stack:
            targets = {"direct (1 replica)": stack.replicas[0].address,
                       f"nginx ({len(stack.replicas)} replicas)": stack.nginx.address}
            table = deploy.load_sweep(targets, concurrency, requests=requests, duration_s=seconds,
                                      max_tokens=D.gen_tokens)
        tables.append(table.assign(micro_batching=label))
    return pd.concat(tables, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=None, help="default: the profile's levels")
    parser.add_argument("--requests", type=int, default=None, help="requests per run (default: the profile's)")
    parser.add_argument("--seconds", type=float, default=None, help="longest run (default: the profile's)")
    parser.add_argument("--json", default=None, help="also write the table as JSON records to this file")
    args = parser.parse_args()
    P = profiles.profile()
    env.seed_everything(0)
    device = env.device()
    D = P.deploy
    concurrency = args.concurrency or list(D.concurrency)
    print(f"profile {P.name} · device {device} · model {P.model.name} · {D.gen_tokens} new tokens per request · "
          f"replicas weighted {D.weights}")
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        table = run(P, device, Path(tmp), concurrency=concurrency, requests=args.requests or D.load_requests,
                    seconds=args.seconds or D.load_seconds)
    table["errors"] = table["errors"].map(lambda e: sum(e.values()))
    table["tokens_per_s"] = table["qps"] * D.gen_tokens
    columns = ["micro_batching", "setup", "concurrency", "ok", "errors", "qps", "tokens_per_s", "p50_ms", "p99_ms"]
    pd.set_option("display.width", 200)
    print(table[columns].round(1).to_string(index=False))
    if args.json:
        Path(args.json).write_text(json.dumps(table[columns].to_dict(orient="records"), indent=1))


if __name__ == "__main__":
    main()
