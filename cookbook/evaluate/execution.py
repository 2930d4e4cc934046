"""Execution check of generated Python: hidden unit tests in a sandboxed subprocess, and pass@k.

    verdict = run_candidate(code, tests, timeout=3.0)        # Verdict(status="passed" | "failed" | ...)
    pass_at_k(n=20, c=3, k=5)                                 # Chen et al. 2021's unbiased estimator
    table, summary = execution_pass_at_k({"add": [code, ...]}, {"add": tests}, ks=(1, 5))

**The sandbox enforces, it does not ask.** Each candidate runs in a fresh interpreter started with `-I -S`
(isolated: no PYTHON* variables, no user or site packages, no script folder on the path), an empty environment
and an empty temporary working folder, under resource limits (CPU seconds, address space, file size 0 so no
byte reaches a file, no core dumps), and with a `sys.addaudithook` hook installed before the candidate's first
line. The hook refuses every open for writing or creating, file-system changes (remove, rename, mkdir, chmod,
link, truncate, shutil), sockets and every network client, processes (subprocess, os.system, exec, spawn, fork,
kill), ctypes, sqlite3, raising resource limits, and importing the C modules behind them (_socket, _ctypes,
_posixsubprocess, _sqlite3, _multiprocessing). A refusal is written to the child's stderr as it happens, so a
candidate that catches the PermissionError is still reported `refused`. A wall-clock timeout kills the child.

Threat model: code sampled from a model, which may loop, crash, delete or phone home by accident. Audit hooks are
not a jail against an attacker who targets this harness (PEP 578 says so); run untrusted code at scale in a
container or VM as well (gVisor, nsjail, Firecracker).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cookbook.checks import positive_int

__all__ = ["STATUSES", "Verdict", "execution_pass_at_k", "pass_at_k", "run_candidate"]

STATUSES = ("passed", "failed", "error", "timeout", "refused")
_REFUSED = "SANDBOX-REFUSED"

# Runs in the child before the candidate. Everything the hook uses is bound as a default argument (builtins
# included), so a candidate that rebinds `isinstance` or a global cannot switch it off.
_BOOTSTRAP = r'''
import json, os, resource, sys
# hard limit = soft limit: the candidate cannot raise them back (and the hook refuses resource.setrlimit anyway)
for _limit, _value in ((resource.RLIMIT_CPU, %(cpu)d), (resource.RLIMIT_AS, %(memory)d), (resource.RLIMIT_FSIZE, 0),
                       (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(_limit, (_value, _value))
_payload = json.loads(sys.stdin.read())

def _hook(event, args, _prefixes=("socket.", "subprocess.", "shutil.", "ctypes.", "sqlite3.", "urllib.",
                                  "http.client.", "ftplib.", "smtplib.", "poplib.", "imaplib.", "nntplib.",
                                  "telnetlib.", "webbrowser.", "pty.", "resource.setrlimit", "resource.prlimit",
                                  "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty", "os.kill",
                                  "os.killpg", "os.system", "os.remove", "os.rename", "os.rmdir", "os.mkdir",
                                  "os.chmod", "os.chown", "os.chflags", "os.link", "os.symlink", "os.truncate",
                                  "os.utime", "os.mkfifo", "os.mknod", "os.putenv", "os.unsetenv", "os.setxattr",
                                  "os.removexattr"),
          _modules=frozenset({"_socket", "_ssl", "_ctypes", "_posixsubprocess", "_sqlite3", "_multiprocessing",
                              "_posixshmem"}),
          _write=os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
          _isinstance=isinstance, _int=int, _str=str, _error=PermissionError, _say=os.write, _tag=%(tag)r):
    refused = False
    if event == "open":
        mode, flags = args[1], args[2]
        refused = (_isinstance(flags, _int) and flags & _write != 0) or (
            _isinstance(mode, _str) and mode.replace("r", "").replace("b", "").replace("t", "") != "")
    elif event == "import":
        refused = args[0] in _modules
    else:
        refused = event.startswith(_prefixes)
    if refused:
        _say(2, (_tag + " " + event + " " + _str(args[0] if args else "")[:120] + "\n").encode())
        raise _error("sandbox: " + event + " is not allowed (no file writes, network or processes)")

_code, _tests, _nonce = _payload["code"], _payload["tests"], _payload["nonce"]
del _payload
sys.addaudithook(_hook)
_namespace = {"__name__": "__candidate__"}
try:
    exec(compile(_code, "<candidate>", "exec"), _namespace)
    exec(compile(_tests, "<tests>", "exec"), _namespace)
except AssertionError as exc:
    sys.stderr.write("AssertionError: " + str(exc)[:200] + "\n")
    os._exit(3)
except BaseException as exc:
    sys.stderr.write(type(exc).__name__ + ": " + str(exc)[:200] + "\n")
    os._exit(4)
sys.stdout.write("\n" + _nonce + "\n")
sys.stdout.flush()
os._exit(0)
'''


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One candidate's result: `status` in STATUSES, `passed`, the last stderr line (`detail`) and `seconds`."""

    status: str
    detail: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_candidate(code: str, tests: str, *, timeout: float = 3.0, memory_mb: int = 512) -> Verdict:
    """Run `code` then the hidden `tests` (asserts) in the sandbox described in the module docstring.

    `passed`: every test ran and the child confirmed it (a candidate calling `sys.exit(0)` early does not
    pass); `failed`: an AssertionError; `error`: any other exception, a syntax error or a crash; `timeout`:
    over `timeout` wall-clock seconds; `refused`: it tried a write, the network or a process. Needs POSIX
    (Linux, macOS). Shown in notebooks/13 §1.
    """
    if not isinstance(code, str) or not isinstance(tests, str):
        raise TypeError(f"code and tests must be strings, got {type(code).__name__} and {type(tests).__name__}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    positive_int("memory_mb", memory_mb)
    if os.name != "posix":
        raise OSError(f"the execution sandbox needs POSIX resource limits; this is {os.name!r}")
    nonce = secrets.token_hex(16)
    payload = json.dumps({"code": code, "tests": tests, "nonce": nonce})
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sandbox-") as cwd:
        try:
            bootstrap = _BOOTSTRAP % {"tag": _REFUSED, "cpu": math.ceil(timeout) + 1, "memory": memory_mb * 2**20}
            done = subprocess.run([sys.executable, "-I", "-S", "-c", bootstrap], input=payload, capture_output=True,
                                  text=True, cwd=cwd, env={"LC_ALL": "C.UTF-8"}, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Verdict("timeout", f"over {timeout:g} s", time.perf_counter() - start)
    seconds = time.perf_counter() - start
    err = done.stderr.strip().splitlines()
    detail = err[-1][:300] if err else ""
    refusals = [line for line in err if line.startswith(_REFUSED)]
    if refusals:
        return Verdict("refused", refusals[0][len(_REFUSED):].strip(), seconds)
    if done.returncode == 0 and done.stdout.rstrip().endswith(nonce):
        return Verdict("passed", "", seconds)
    if done.returncode == 3:  # the bootstrap's code for an AssertionError
        return Verdict("failed", detail, seconds)
    if done.returncode < 0:  # killed by a signal: over the CPU limit, or a crash
        detail = detail or f"killed by signal {-done.returncode}"
    elif done.returncode != 4:  # the candidate ended the interpreter itself before its tests ran
        detail = f"exited with code {done.returncode} before its tests finished"
    return Verdict("error", detail, seconds)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. 2021 (§2.1): 1 - C(n-c, k) / C(n, k) from n samples of which c pass.

    The probability that at least one of k samples drawn without replacement from the n passes; computed as
    a product, `1 - prod_{i=n-c+1}^{n} (1 - k/i)`, which never forms the huge binomials. Shown in notebooks/13 §1.
    """
    for name, value in (("n", n), ("k", k)):
        positive_int(name, value)
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c <= n:
        raise ValueError(f"c (samples that pass) must be an int in [0, n={n}], got {c!r}")
    if k > n:
        raise ValueError(f"k={k} is more than the n={n} samples drawn: pass@k needs k <= n")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def execution_pass_at_k(candidates: Mapping[str, Sequence[str]], tests: Mapping[str, str], *,
                        ks: Sequence[int] = (1,), timeout: float = 3.0, workers: int = 2) -> tuple[pd.DataFrame, dict]:
    """Run every candidate of every task against its hidden tests; pass@k per task and overall.

    `candidates[task]` are the n sampled programs of a task (the same n for every task), `tests[task]` its
    hidden asserts. Returns (table, summary): the table has one row per task with n, c (passed), each
    status's count and `pass@k` per k; the summary holds the mean pass@k over tasks. Candidates run
    `workers` at a time. Shown in notebooks/13 §1.
    """
    positive_int("workers", workers)
    missing = sorted(set(candidates) - set(tests))
    if missing or not candidates:
        raise ValueError(f"every task needs hidden tests; none for {missing}" if missing else
                         "execution_pass_at_k() needs at least one task")
    jobs = [(task, i, code) for task, codes in candidates.items() for i, code in enumerate(codes)]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # threads: each waits on its own subprocess
        verdicts = list(pool.map(lambda job: run_candidate(job[2], tests[job[0]], timeout=timeout), jobs))
    rows = []
    for task, codes in candidates.items():
        mine = [v for (t, _, _), v in zip(jobs, verdicts, strict=True) if t == task]
        n, c = len(codes), sum(v.passed for v in mine)
        row = {"task": task, "n": n, "c": c, **{s: sum(v.status == s for v in mine) for s in STATUSES}}
        for k in ks:
            row[f"pass@{k}"] = pass_at_k(n, c, k)
        rows.append(row)
    table = pd.DataFrame(rows).set_index("task")
    return table, {f"pass@{k}": float(table[f"pass@{k}"].mean()) for k in ks}
