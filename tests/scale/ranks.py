"""Start `cookbook.scale.train_lm` on several CPU ranks, the way a launcher does, with bounded waits."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ["-m", "cookbook.scale.train_lm", "--data", "counting", "--no-progress", "--micro-batch", "2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(**extra) -> dict:
    # one thread per rank: two ranks already fill the two cores of a small CI machine
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def start_ranks(args, out: Path, nproc: int = 2) -> list[subprocess.Popen]:
    """The ranks as plain processes with the launcher's variables (no agent that would clean up after them)."""
    port, procs = free_port(), []
    for rank in range(nproc):
        env = environment(RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
        with open(out / f"rank{rank}.out", "w") as stdout, open(out / f"rank{rank}.err", "w") as stderr:
            # files, not pipes: a rank blocked on a full pipe would look like a hang
            procs.append(subprocess.Popen([sys.executable, *SCRIPT, *map(str, args)], cwd=ROOT, env=env,
                                          stdout=stdout, stderr=stderr))
    return procs


def wait_for_step(path: Path, step: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f'"step": {step},' in path.read_text():
            return
        assert proc.poll() is None, f"rank exited early: {path.read_text()[-2000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no step {step} within {timeout} s: {path.read_text()[-2000:]}")


def stop(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def history(out: Path) -> list[dict]:
    return json.loads((out / "history.json").read_text())
