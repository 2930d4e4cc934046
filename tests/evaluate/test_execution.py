import contextlib
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cookbook.evaluate import execution
from cookbook.evaluate.execution import SandboxUnavailable, SandboxWarning, pass_at_k, run_candidate

ADD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"


def _try_all(*attempts: str) -> str:
    """A candidate that tries each attempt, swallows every error, and then passes: only outside effects count."""
    body = "".join(f"try:\n    exec({a!r})\nexcept BaseException:\n    pass\n" for a in attempts)
    return body + ADD


def test_statuses_of_ordinary_candidates():
    assert run_candidate(ADD, TESTS).status == "passed"
    wrong = run_candidate("def add(a, b):\n    return a - b\n", TESTS)
    assert wrong.status == "failed" and "AssertionError" in wrong.detail
    broken = run_candidate("def add(a, b):\n    return a +\n", TESTS)
    assert broken.status == "error" and "SyntaxError" in broken.detail
    crash = run_candidate("def add(a, b):\n    return a / 0\n", TESTS)
    assert crash.status == "error" and "ZeroDivisionError" in crash.detail
    killed = run_candidate("import os\nos.kill(os.getpid(), 9)\n", TESTS)
    assert killed.status == "error" and killed.detail == "killed by signal 9"


def test_a_candidate_that_exits_early_does_not_pass():
    for code in ("import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n"):
        assert run_candidate(code, TESTS).status == "error", code


def test_inside_the_sandbox_an_unprivileged_user_an_empty_environment_and_a_private_tmp(monkeypatch):
    monkeypatch.setenv("COOKBOOK_SECRET", secret := secrets.token_hex(8))
    probe = ("import os, socket\n"
             "def facts():\n"
             "    open('/tmp/scratch', 'w').write('ok')\n"
             "    return (os.getuid(), os.getgid(), sorted(os.environ), os.path.exists('/proc/self'),\n"
             "            socket.gethostname(), open('/tmp/scratch').read())\n")
    expected = (65534, 65534, ["HOME", "LC_ALL", "PATH", "PWD"], False, "sandbox", "ok")
    verdict = run_candidate(probe, f"assert facts() == {expected!r}, facts()\n")
    assert verdict.status == "passed", verdict
    leak = run_candidate("import os\nraise RuntimeError(repr(dict(os.environ)))\n", "")
    assert leak.status == "error" and "LC_ALL" in leak.detail and secret not in leak.detail
    assert not Path("/tmp/scratch").exists()  # the candidate's /tmp was its own


def test_files_outside_cannot_be_written_deleted_or_read(tmp_path):
    # Targets are this test's own files or fresh names it removes: a broken sandbox must not damage the host.
    keep, secret = tmp_path / "keep.txt", secrets.token_hex(8)
    keep.write_text(secret)
    probes = [Path(sys.base_prefix) / f"sandbox-probe-{secrets.token_hex(4)}", Path(f"/sandbox-probe-{secret}")]
    escape = _try_all(f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')",
                      f"import os; os.remove({str(keep)!r})",
                      f"import shutil; shutil.rmtree({str(tmp_path)!r})",
                      *(f"open({str(probe)!r}, 'w').write('x')" for probe in probes))
    try:
        assert run_candidate(escape, TESTS).status == "passed"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"] and keep.read_text() == secret
        assert not any(probe.exists() for probe in probes)
    finally:
        for probe in probes:
            probe.unlink(missing_ok=True)
    shadow = run_candidate("raise RuntimeError(open('/etc/shadow').read()[:40])\n", "")
    assert shadow.status == "error" and "FileNotFoundError" in shadow.detail  # /etc is not there at all
    mine = run_candidate(f"raise RuntimeError(open({str(keep)!r}).read())\n", "")
    assert "FileNotFoundError" in mine.detail and secret not in mine.detail


def test_no_connection_reaches_a_server_of_the_host():
    servers = [socket.socket(socket.AF_INET), socket.socket(socket.AF_UNIX)]
    servers[0].bind(("127.0.0.1", 0))
    abstract = f"\0cookbook-sandbox-{secrets.token_hex(4)}"  # abstract unix sockets: per network namespace
    servers[1].bind(abstract)
    accepted = []
    for server in servers:
        server.listen(4)
        server.settimeout(3.0)
        threading.Thread(target=_accept, args=(server, accepted)).start()
    port = servers[0].getsockname()[1]
    escape = _try_all(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)",
                      f"import socket; socket.create_connection(('localhost', {port}), timeout=1)",
                      f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)",
                      f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({abstract!r})")
    try:
        assert run_candidate(escape, TESTS).status == "passed"
        time.sleep(0.2)
    finally:
        for server in servers:
            server.close()
    assert accepted == [], "a sandboxed candidate reached a server of the host"


def _accept(server, accepted: list) -> None:
    try:
        accepted.append(server.accept())
    except OSError:  # timeout or closed: nobody connected
        pass


def test_signals_reach_no_outside_process():
    # Every route names its target: a broken sandbox must hurt only this test, never kill(-1) the machine.
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: received.append(1))
    sentinel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        me, target = os.getpid(), sentinel.pid
        escape = _try_all(f"import os, signal; os.kill({target}, signal.SIGKILL)",
                          f"import os, signal; os.killpg({target}, signal.SIGKILL)",
                          f"import os, signal; os.kill({me}, signal.SIGUSR1)",
                          f"import os, signal; signal.pidfd_send_signal(os.pidfd_open({target}), signal.SIGKILL)",
                          "import os, signal; os.kill(os.getppid(), signal.SIGKILL)")
        assert run_candidate(escape, TESTS).status == "passed"
        time.sleep(0.2)
        assert sentinel.poll() is None and received == []
    finally:
        sentinel.kill()
        sentinel.wait()
        signal.signal(signal.SIGUSR1, previous)


def _alive(marker: str) -> list[int]:
    alive = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                alive.append(int(entry.name))
        except OSError:
            pass
    return alive


@pytest.mark.parametrize("then", ["", "while True:\n    pass\n"], ids=["returns", "times out"])
def test_no_process_the_candidate_started_survives_the_call(then):
    marker = f"sandbox-orphan-{secrets.token_hex(4)}"
    daemon = (f"import os, subprocess, sys\n"
              f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}],\n"
              f"                 start_new_session=True)\n"
              f"if os.fork() == 0:\n"  # a double fork, re-parented away from the candidate
              f"    os.setsid()\n"
              f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n")
    verdict = run_candidate(daemon + then + ADD, TESTS, timeout=2.0)
    assert verdict.status == ("passed" if not then else "timeout")
    time.sleep(0.3)
    assert _alive(marker) == []


def test_tampering_with_the_guard_changes_nothing_outside(tmp_path):
    outside, probe = tmp_path / "outside.txt", Path(sys.base_prefix) / f"sandbox-probe-{secrets.token_hex(4)}"
    tamper = ("import ctypes, os, resource\n"
              "for r in (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_FSIZE, resource.RLIMIT_NPROC):\n"
              "    try:\n"
              "        resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
              "    except (ValueError, OSError):\n"
              "        pass\n"
              "libc = ctypes.CDLL(None, use_errno=True)\n"
              "refused = [libc.setuid(0), libc.mount(b'none', b'/', None, 32 | 4096, None),\n"  # MS_REMOUNT|MS_BIND
              "           libc.unshare(0x10000000), libc.unshare(0x40000000)]\n"  # CLONE_NEWUSER, CLONE_NEWNET
              + _try_all(f"open({str(outside)!r}, 'w').write('x')", f"open({str(probe)!r}, 'w')"))
    tests = ("assert refused == [-1] * 4, refused\n"
             "assert resource.getrlimit(resource.RLIMIT_CPU)[1] != resource.RLIM_INFINITY\n" + TESTS)
    try:
        assert run_candidate(tamper, tests).status == "passed"
        assert not outside.exists() and not probe.exists()
    finally:
        probe.unlink(missing_ok=True)


def test_resource_limits_hold_in_the_child():
    code = ("import resource\ndef limits():\n    return [resource.getrlimit(r)[1] for r in\n"
            "            (resource.RLIMIT_FSIZE, resource.RLIMIT_CORE, resource.RLIMIT_NPROC, resource.RLIMIT_CPU)]\n")
    assert run_candidate(code, f"assert limits() == [{16 * 2**20}, 0, 64, 3], limits()\n", timeout=2.0).passed
    hungry = run_candidate("x = bytearray(400 * 2**20)\n", "", memory_mb=256)
    assert hungry.status == "error" and "MemoryError" in hungry.detail
    big = run_candidate("open('/tmp/big', 'wb').write(bytes(20 * 2**20))\n", "")
    assert big.status == "error" and ("File too large" in big.detail or "signal 25" in big.detail), big
    flood = run_candidate("import sys\nwhile True:\n    sys.stdout.write('x' * 2**20)\n", "", timeout=5.0)
    assert flood.status == "error"  # stopped by the file-size limit, not by filling the caller's memory


def test_the_process_count_is_capped():
    # Counted from outside, root or not: each child the bomb starts becomes `sleep` under a name only this test uses.
    marker = f"sandbox-bomb-{secrets.token_hex(4)}"
    bomb = (f"import os, time\n"
            f"for _ in range(200):\n"
            f"    try:\n"
            f"        if os.fork() == 0:\n"
            f"            try:\n"
            f"                os.execv('/bin/sleep', [{marker!r}, '60'])\n"
            f"            finally:\n"
            f"                os._exit(1)\n"
            f"    except OSError:\n"
            f"        pass\n"
            f"time.sleep(60)\n")
    verdicts, peak = [], 0
    call = threading.Thread(target=lambda: verdicts.append(run_candidate(bomb, TESTS, timeout=5.0)))
    call.start()
    try:
        while call.is_alive():
            peak = max(peak, len(_alive(marker)))
            time.sleep(0.05)
    finally:
        call.join()
        deadline = time.monotonic() + 2.0  # the PID namespace's end kills them as the call returns: a moment
        while (survivors := _alive(marker)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in survivors:  # only a broken sandbox leaves any: end them, then fail below
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert verdicts[0].status == "timeout" and survivors == []
    assert 32 <= peak < execution._PROCESSES, peak  # 32: the bomb did start processes, so the count means something


def test_without_namespaces_it_refuses_and_the_weaker_guard_is_opt_in(monkeypatch, tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(execution, "_bwrap", lambda: str(fake))
    execution._check_bubblewrap.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="No permissions to create a new namespace.*isolation='in-process'"):
            run_candidate(ADD, TESTS)
        with pytest.warns(SandboxWarning) as caught:
            for _ in range(2):
                assert run_candidate(ADD, TESTS, isolation="in-process").passed
        assert len(caught) == 2  # a warning on every call
    finally:
        execution._check_bubblewrap.cache_clear()


@pytest.mark.filterwarnings("ignore::cookbook.evaluate.execution.SandboxWarning")
def test_the_in_process_guard_refuses_writes_network_and_processes(tmp_path):
    attempts = [f"open({str(tmp_path / 'x')!r}, 'w')", f"import os\nos.remove({str(tmp_path)!r})",
                "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)",
                "import os\nos.system('true')", "import ctypes"]
    for code in attempts:
        sneaky = f"try:\n    {code.replace(chr(10), '; ')}\nexcept Exception:\n    pass\n" + ADD
        verdict = run_candidate(sneaky, TESTS, isolation="in-process")
        assert verdict.status == "refused", (code, verdict)
    assert list(tmp_path.iterdir()) == []


def test_pass_at_k_matches_the_binomial_formula():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 5), (20, 20, 1), (7, 2, 6), (200, 13, 10), (5, 4, 2)]:
        formula = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(formula, abs=1e-12), (n, c, k)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the share of passing samples
    for bad, match in [((5, 6, 1), r"c \(samples that pass\)"), ((5, 2, 6), "k=6 is more than"),
                       ((0, 0, 1), "n must be a positive int")]:
        with pytest.raises(ValueError, match=match):
            pass_at_k(*bad)


def test_execution_pass_at_k_counts_each_task():
    candidates = {"add": [ADD, ADD, "def add(a, b):\n    return 0\n", "def add(a, b):\n    return a * b\n"],
                  "neg": ["def neg(x):\n    return -x\n"] * 2 + ["def neg(x):\n    return x\n"] * 2}
    tests = {"add": TESTS, "neg": "assert neg(2) == -2\n"}
    table, summary = execution.execution_pass_at_k(candidates, tests, ks=(1, 2), workers=2)
    assert table.loc["add", "c"] == 2 and table.loc["add", "failed"] == 2
    assert table.loc["neg", "c"] == 2
    assert table.loc["add", "pass@2"] == pytest.approx(1 - math.comb(2, 2) / math.comb(4, 2))
    assert summary == pytest.approx({"pass@1": 0.5, "pass@2": 5 / 6})
    with pytest.raises(ValueError, match=r"none for \['neg'\]"):
        execution.execution_pass_at_k(candidates, {"add": TESTS})


def test_bad_arguments():
    with pytest.raises(TypeError, match="strings"):
        run_candidate(ADD, None)
    with pytest.raises(ValueError, match="timeout must be > 0"):
        run_candidate(ADD, TESTS, timeout=0)
    with pytest.raises(ValueError, match=r"isolation must be one of \('bubblewrap', 'in-process'\), got 'none'"):
        run_candidate(ADD, TESTS, isolation="none")
