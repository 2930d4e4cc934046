"""One `ModelServer` replica as its own process: `python -m cookbook.deploy.replica --model DIR --ready FILE ...`.

`stack.start_replica` runs it. The replica loads a `save_pretrained` folder (model and tokenizer), binds free
loopback ports, writes `{"pid", "port", "metrics_port"}` to the ready file (atomically: written, then renamed) once
it serves, and stops gracefully on SIGTERM or SIGINT, or when its `--parent` process is gone (health NOT_SERVING,
in-flight calls finish).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from cookbook.data import tokenizer
from cookbook.deploy.service import ModelServer, ServiceConfig

__all__ = ["DTYPES", "main"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cookbook.deploy.replica", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a save_pretrained folder holding the model and tokenizer")
    parser.add_argument("--ready", required=True, help="JSON file written once the replica serves")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--config", default="{}", help="ServiceConfig fields as JSON")
    parser.add_argument("--audit", default=None, help="JSONL audit log path")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:1 ...")
    parser.add_argument("--parent", type=int, default=None, help="stop when the process with this PID is gone")
    args = parser.parse_args(argv)

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=DTYPES[args.dtype]).to(args.device).eval()
    server = ModelServer(model, tokenizer.load(args.model), ServiceConfig(**json.loads(args.config)),
                         host=args.host, audit_path=args.audit).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ready = Path(args.ready)
    tmp = ready.with_name(ready.name + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "port": server.port, "metrics_port": server.metrics_port}))
    tmp.replace(ready)
    while not stop.wait(0.5):  # a timed wait: the signal handler runs between waits
        if args.parent is not None and os.getppid() != args.parent:  # re-parented: whoever started us is gone
            break
    server.stop()
    # everything is answered and the audit log is flushed line by line: skip the interpreter's slow teardown
    # (torch, gRPC and their threads), which under load outlasts a supervisor's patience
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
