"""Where a serving replica's time goes: py-spy samples every thread of the running process from outside.

py-spy (the `serve` extra) reads another process's Python stacks without changing or pausing it, so one
profile covers the replica's gRPC, handler and model threads at once; torch.profiler and cProfile see only
their own process or thread. Every thread is sampled at every tick, waiting or not (`--idle`), so the model
thread's samples split its wall time: generating, collecting a micro-batch, handing answers back, or waiting
for a request. Time inside gRPC's C core or a torch kernel shows as the Python line that called it.

    prof = profile_replica(replica, concurrency=16, max_tokens=8, seconds=1)
    prof.model_shares()  # {"generating": 0.74, "waiting for a request": 0.17, ...}
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cookbook.checks import positive_int
from cookbook.deploy.load import LoadResult, load_test
from cookbook.deploy.stack import Replica, scrape

__all__ = ["MODEL_STATES", "WAITING_FOR_MODEL", "ReplicaProfile", "batch_counts", "profile_replica", "py_spy", "thread_samples"]

# The model thread's state in one sample: the first rule whose (function, file) is in its stack, most specific
# first (generate runs inside _serve, and the queue is read inside _collect as well as when idle). Functions are
# matched by their bare name: py-spy shows `Class.method` from Python 3.11 (co_qualname), `method` before.
MODEL_STATES = ((("generate", "generate.py"), "generating"), (("_collect", "service.py"), "collecting a micro-batch"),
                (("_serve", "service.py"), "handing answers back"), (("get", "queue.py"), "waiting for a request"))
_HANDLER = ("_predict", "service.py")
_WAIT = ("wait", "threading.py")  # a handler thread blocked on its request's Event until the model thread answers
WAITING_FOR_MODEL = "waiting for the model"
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame(text: str) -> tuple[str, tuple[str, str]]:
    """(the name py-spy shows, (bare function name, file's base name)) of one raw frame `name (path:line)`."""
    match = _FRAME.match(text)
    name, path = (match["name"], match["file"]) if match else (text, "")
    return name, (name.rsplit(".", 1)[-1], path.replace("\\", "/").rsplit("/", 1)[-1])


def py_spy() -> str | None:
    """The py-spy program beside this interpreter (a venv's bin/) or on PATH; None where it is not installed."""
    return shutil.which("py-spy", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def thread_samples(raw: str) -> tuple[dict[str, int], dict[str, int]]:
    """Samples per model-thread state and per handler function, from py-spy's `--threads --format raw` output.

    Each raw line is `thread (id): name;frame;frame;… count`, a frame `function (file:line)`. The model thread
    (named "model") is counted by `MODEL_STATES` ("other" where no rule matches); a handler thread by the
    function `ModelServer._predict` was in: `WAITING_FOR_MODEL` while it waits for its answer, the function's
    shown name otherwise, "_predict itself" when it was in no call. Other threads are left out.
    """
    model, handlers = {}, {}
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        thread, *frames = stack.split(";")
        frames = [_frame(f) for f in frames]
        keys = [key for _, key in frames]
        if thread.endswith(": model"):
            state = next((name for rule, name in MODEL_STATES if rule in keys), "other")
            model[state] = model.get(state, 0) + int(count)
        elif _HANDLER in keys:
            inner = frames[keys.index(_HANDLER) + 1:][:1]
            name = ("_predict itself" if not inner else WAITING_FOR_MODEL if inner[0][1] == _WAIT else inner[0][0])
            handlers[name] = handlers.get(name, 0) + int(count)
    return model, handlers


@dataclasses.dataclass(frozen=True)
class ReplicaProfile:
    """A replica profiled under load: thread samples, the micro-batches it served meanwhile, the load test."""

    model_samples: dict[str, int]  # the model thread's samples per state
    handler_samples: dict[str, int]  # the handler threads' samples per function called from _predict
    batches: int  # batched generations during the load test
    requests: int  # requests in those batches
    load: LoadResult

    def model_shares(self) -> dict[str, float]:
        """The model thread's share of samples per state, largest first."""
        total = sum(self.model_samples.values())
        return {k: v / total for k, v in sorted(self.model_samples.items(), key=lambda kv: -kv[1])}

    @property
    def handlers_waiting(self) -> float:
        """The handler threads' share of samples spent waiting for the model thread's answer."""
        return self.handler_samples.get(WAITING_FOR_MODEL, 0) / max(sum(self.handler_samples.values()), 1)

    @property
    def mean_batch(self) -> float:
        return self.requests / self.batches

    @property
    def ms_per_generation(self) -> float:
        """Wall milliseconds the model thread spent per batched generation: generating share × time / batches."""
        return 1000 * self.model_shares().get("generating", 0.0) * self.load.seconds / self.batches


def batch_counts(replicas) -> tuple[int, int]:
    """(batched generations, requests in them) so far, from the replicas' own metrics, summed over them."""
    samples = [scrape(r.metrics_url) for r in replicas]
    return (int(sum(m.get(("inference_batch_size_count", ()), 0.0) for m in samples)),
            int(sum(m.get(("inference_batch_size_sum", ()), 0.0) for m in samples)))


def profile_replica(replica: Replica, *, concurrency: int, max_tokens: int, seconds: int = 1, rate: int = 1000,
                    output: Path | None = None) -> ReplicaProfile:
    """Sample `replica` with py-spy for `seconds` while `concurrency` clients keep it busy (a second longer).

    The clients start first, so py-spy attaches to a loaded replica; the load test's QPS covers the whole
    run. The raw profile is written to `output` (a temporary file by default). Raises `RuntimeError` saying
    what is missing where py-spy is not installed or cannot attach (it needs ptrace rights: root, or
    `kernel.yama.ptrace_scope=0`). Shown in notebooks/12 §9.
    """
    positive_int("seconds", seconds)  # py-spy records whole seconds
    positive_int("rate", rate)
    spy = py_spy()
    if spy is None:
        raise RuntimeError("py-spy is not installed: it comes with the serve extra (pip install -e '.[serve]')")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(output) if output is not None else Path(scratch) / "py-spy.txt"
        before = batch_counts([replica])
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(load_test, replica.address, concurrency=concurrency, requests=1_000_000,
                                  duration_s=seconds + 1, max_tokens=max_tokens)
            sampled = subprocess.run([spy, "record", "--pid", str(replica.process.pid), "--duration", str(seconds),
                                      "--rate", str(rate), "--nonblocking", "--threads", "--idle", "--format", "raw",
                                      "--output", str(path)], capture_output=True, text=True)
            load = running.result()
        after = batch_counts([replica])
        if sampled.returncode != 0:
            reason = (sampled.stderr.strip() or "no message").splitlines()[0]
            raise RuntimeError(f"py-spy could not sample the replica ({reason}); it needs ptrace rights: run as "
                               "root, or sudo sysctl kernel.yama.ptrace_scope=0")
        model, handlers = thread_samples(path.read_text())
    if not model or after[0] == before[0]:
        raise RuntimeError("the profile caught no model-thread sample or no batch: is the replica serving?")
    return ReplicaProfile(model, handlers, after[0] - before[0], after[1] - before[1], load)
