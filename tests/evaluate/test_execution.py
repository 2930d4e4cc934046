import math
import socket
import threading

import pytest

from cookbook.evaluate import execution
from cookbook.evaluate.execution import pass_at_k, run_candidate

ADD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"


def test_statuses_of_ordinary_candidates():
    assert run_candidate(ADD, TESTS).status == "passed"
    wrong = run_candidate("def add(a, b):\n    return a - b\n", TESTS)
    assert wrong.status == "failed" and "AssertionError" in wrong.detail
    broken = run_candidate("def add(a, b):\n    return a +\n", TESTS)
    assert broken.status == "error" and "SyntaxError" in broken.detail
    crash = run_candidate("def add(a, b):\n    return a / 0\n", TESTS)
    assert crash.status == "error" and "ZeroDivisionError" in crash.detail


def test_a_candidate_that_exits_early_does_not_pass():
    for code in ("import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n"):
        assert run_candidate(code, TESTS).status == "error", code


def test_an_endless_loop_times_out():
    verdict = run_candidate("while True:\n    pass\n", TESTS, timeout=1.0)
    assert verdict.status == "timeout" and verdict.seconds < 10


def test_file_writes_are_refused_and_nothing_is_written(tmp_path):
    target = tmp_path / "written.txt"
    attempts = [
        f"open({str(target)!r}, 'w').write('x')",
        f"open({str(target)!r}, 'a')",
        f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
        f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))",
        f"import os\nos.mkdir({str(tmp_path / 'made')!r})",
        f"import os\nos.remove({str(tmp_path / 'keep.txt')!r})",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
        "import tempfile\ntempfile.TemporaryFile()",
        f"import sqlite3\nsqlite3.connect({str(tmp_path / 'db.sqlite')!r})",
    ]
    (tmp_path / "keep.txt").write_text("keep")
    for code in attempts:
        verdict = run_candidate(code + "\n" + ADD, TESTS)
        assert verdict.status == "refused", (code, verdict)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "keep"


def test_reading_is_allowed_and_a_caught_refusal_is_still_reported(tmp_path):
    (tmp_path / "data.txt").write_text("41")
    reader = f"def add(a, b):\n    return a + b + int(open({str(tmp_path / 'data.txt')!r}).read()) - 41\n"
    assert run_candidate(reader, TESTS).status == "passed"
    sneaky = f"try:\n    open({str(tmp_path / 'x')!r}, 'w')\nexcept Exception:\n    pass\n" + ADD
    verdict = run_candidate(sneaky, TESTS)
    assert verdict.status == "refused" and "open" in verdict.detail
    assert not (tmp_path / "x").exists()


def test_network_and_processes_are_refused():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:  # the timeout: nobody connected
            pass

    listener = threading.Thread(target=accept)
    listener.start()
    attempts = [
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
        f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)",
        "import subprocess\nsubprocess.run(['true'])",
        "import os\nos.system('true')",
        "import os\nos.fork()",
        "import ctypes",
        "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))",
    ]
    try:
        for code in attempts:
            verdict = run_candidate(code + "\n" + ADD, TESTS)
            assert verdict.status == "refused", (code, verdict)
    finally:
        listener.join()
        server.close()
    assert accepted == [], "a sandboxed candidate reached the local server"


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


def test_resource_limits_hold_in_the_child():
    code = "import resource\ndef limits():\n    return [resource.getrlimit(r) for r in (resource.RLIMIT_FSIZE, resource.RLIMIT_CORE)]\n"
    assert run_candidate(code, "assert limits() == [(0, 0), (0, 0)]\n").status == "passed"
    hungry = run_candidate("x = bytearray(400 * 2**20)\n", "", memory_mb=256)
    assert hungry.status == "error" and "MemoryError" in hungry.detail
