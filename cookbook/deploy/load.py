"""A bounded gRPC load test (`grpc.aio`): N concurrent clients, QPS and latency percentiles, loopback only.

Each of `concurrency` coroutines sends one request after the other until `requests` have been sent or
`duration_s` has passed, whichever comes first, so a test never runs away. Latency is measured at the client
(it includes nginx and the network stack; the server's own histogram does not). The event loop runs in a
thread of its own, so `load_test` works the same from a script and from a notebook (which has a loop running).

    row = load_test("127.0.0.1:50051", concurrency=8, requests=200, max_tokens=8)
    row.qps, row.p50_ms, row.p99_ms
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
import time

import grpc
import numpy as np
import pandas as pd
import torch

from cookbook.checks import positive_int
from cookbook.deploy import model_service_pb2 as pb
from cookbook.deploy import model_service_pb2_grpc as pb_grpc
from cookbook.deploy.generate import generate

__all__ = ["LoadResult", "PROMPTS", "generation_ceiling", "load_sweep", "load_test", "predict"]

# Code prompts like the corpus the model was trained on; a load test cycles through them.
PROMPTS = ("def add(a, b):\n    return", "import os\n\n\ndef main():\n", "class Stack:\n    def __init__(self):",
           "for i in range(10):\n    print(", "with open(path) as f:\n    data =", "if __name__ == '__main__':\n")


def _local(address: str) -> str:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"load tests run against loopback only (127.0.0.1, localhost, ::1), got {address!r}")
    return address


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """One load-test run: counts, throughput and client-side latency percentiles."""

    target: str
    concurrency: int
    sent: int
    ok: int
    errors: dict  # {status name: count}
    seconds: float
    qps: float  # successful requests per second of wall time
    p50_ms: float
    p99_ms: float
    latencies_ms: np.ndarray = dataclasses.field(repr=False)  # of the successful requests

    def row(self) -> dict:
        """The table row: every field but the raw latencies."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "latencies_ms"}


async def _run(address, concurrency, requests, duration_s, prompts, max_tokens, timeout_s):
    counter = itertools.count()
    latencies, errors = [], {}
    start = time.perf_counter()
    end = start + duration_s
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.ModelServiceStub(channel)

        async def client():
            while time.perf_counter() < end and (i := next(counter)) < requests:
                request = pb.PredictRequest(prompt=prompts[i % len(prompts)], max_tokens=max_tokens)
                sent = time.perf_counter()
                try:
                    await stub.Predict(request, timeout=timeout_s)
                    latencies.append(1000 * (time.perf_counter() - sent))
                except grpc.aio.AioRpcError as err:
                    errors[err.code().name] = errors.get(err.code().name, 0) + 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return np.asarray(latencies), errors, time.perf_counter() - start


def load_test(address: str, *, concurrency: int, requests: int, duration_s: float = 30.0, max_tokens: int = 8,
              prompts=PROMPTS, timeout_s: float = 30.0) -> LoadResult:
    """Send up to `requests` Predict calls from `concurrency` concurrent clients for at most `duration_s`.

    Shown in notebooks/12 §9.
    """
    _local(address)
    positive_int("concurrency", concurrency)
    positive_int("requests", requests)
    box = {}

    def run():
        try:
            box["result"] = asyncio.run(_run(address, concurrency, requests, duration_s, list(prompts), max_tokens,
                                             timeout_s))
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = err

    thread = threading.Thread(target=run, name="load-test")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    latencies, errors, seconds = box["result"]
    ok = len(latencies)
    p50, p99 = (np.percentile(latencies, [50, 99]) if ok else (float("nan"), float("nan")))
    return LoadResult(address, concurrency, ok + sum(errors.values()), ok, errors, seconds, ok / seconds,
                      float(p50), float(p99), latencies)


def load_sweep(targets: dict[str, str], concurrencies, **options) -> pd.DataFrame:
    """`load_test` for each {label: address} and each concurrency: one row per run. Shown in notebooks/12 §9."""
    rows = []
    for label, address in targets.items():
        for concurrency in concurrencies:
            rows.append({"setup": label, **load_test(address, concurrency=concurrency, **options).row()})
    return pd.DataFrame(rows).drop(columns=["target"])


def generation_ceiling(model, tokenizer, concurrency: int, *, requests: int, max_tokens: int, warmup: int = 1,
                       threads: int | None = None) -> dict:
    """The model's own speed, no service: `generate` on batches of `concurrency` prompts back to back.

    The prompts cycle `PROMPTS`, each request asks `max_tokens` greedy tokens, as a load test's do; after
    `warmup` batches, ceil(requests / concurrency) batches are timed. Every request of a batch waits for the
    whole batch, so a batch's time is its requests' latency. `threads` runs it on that many torch threads
    (restored after; a replica runs on 1). Returns a row like a load test's: setup, concurrency, n, qps,
    p50_ms, p99_ms. Shown in notebooks/12 §9 and benchmarks/serve_load.py.
    """
    positive_int("concurrency", concurrency)
    batches = -(-positive_int("requests", requests) // concurrency)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    prompts = [tokenizer.encode(PROMPTS[i % len(PROMPTS)], add_special_tokens=False) for i in range(concurrency)]
    before = torch.get_num_threads()
    torch.set_num_threads(positive_int("threads", threads) if threads is not None else before)
    try:
        seconds = []
        for i in range(warmup + batches):
            start = time.perf_counter()
            generate(model, prompts, [max_tokens] * concurrency, eos_id=tokenizer.eos_token_id)
            if i >= warmup:
                seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    p50, p99 = np.percentile(1000 * np.asarray(seconds), [50, 99])
    return {"setup": "ceiling (generate)", "concurrency": concurrency, "n": batches * concurrency,
            "qps": batches * concurrency / sum(seconds), "p50_ms": float(p50), "p99_ms": float(p99)}


def predict(address: str, prompt: str, max_tokens: int, *, timeout_s: float = 30.0, **fields) -> pb.PredictResponse:
    """One blocking Predict call (a fresh channel, closed after). Shown in notebooks/12 §5."""
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.ModelServiceStub(channel).Predict(
            pb.PredictRequest(prompt=prompt, max_tokens=max_tokens, **fields), timeout=timeout_s)
