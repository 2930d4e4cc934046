"""tools/gpu_pass.py (`make gpu`): lanes, failures, timeouts and the archive, proven on CPU."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gpu_pass", ROOT / "tools" / "gpu_pass.py")
gpu_pass = sys.modules["gpu_pass"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(gpu_pass)


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_pass_records_failures_and_timeouts_and_goes_on(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    # A step whose own child runs in a session of its own, as a notebook's kernel does: both must die.
    hang = py("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
              f"time.sleep(60)'], start_new_session=True); open({str(pidfile)!r}, 'w').write(str(p.pid)); "
              "time.sleep(60)")
    lanes = {
        "corpus": [gpu_pass.Step("corpus", "corpus", py("import time; time.sleep(2)"), 30)],
        "cpu": [gpu_pass.Step("fails", "cpu", py("import sys; print('boom'); sys.exit(3)"), 30),
                gpu_pass.Step("after-failure", "cpu", py("print('still running')"), 30)],
        "gpu": [gpu_pass.Step("hangs", "gpu", hang, 3),
                gpu_pass.Step("needs-corpus", "gpu", py("pass"), 30, needs_corpus=True)],
    }
    run = gpu_pass.Pass(tmp_path, dict(os.environ))
    start = time.perf_counter()
    run.run_lanes(lanes)
    wall = time.perf_counter() - start
    run.close()
    got = {r.step: r for r in run.results}
    assert got["corpus"].status == "ok" and got["after-failure"].status == "ok"
    assert got["fails"].status == "FAILED (rc 3)" and got["fails"].note == "boom"
    assert got["hangs"].status.startswith("TIMEOUT")
    assert got["needs-corpus"].start_s >= got["corpus"].seconds - 0.5  # waited for the corpus lane
    assert wall < 2 + 3 + 10  # lanes ran side by side: well under the sum of every step
    grandchild = int(pidfile.read_text())
    psutil = pytest.importorskip("psutil")
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
    log = (tmp_path / "pass.log").read_text()
    assert "FAILED (rc 3) fails (cpu lane)" in log and "----- after-failure: ok" in log
    assert (tmp_path / "logs" / "after-failure.log").read_text().splitlines()[-1] == "still running"


def test_deadline_skips_steps_that_cannot_finish(tmp_path):
    run = gpu_pass.Pass(tmp_path, dict(os.environ), deadline=1)
    run.run_lanes({"gpu": [gpu_pass.Step("late", "gpu", py("pass"), 30)]})
    run.close()
    assert run.results[0].status == "SKIPPED (deadline)"


def test_plan_lanes_subsets_and_bad_names(tmp_path):
    lanes = gpu_pass.plan("full", None, gpu_pass.CPU_LANE, tmp_path, tmp_path / "work", 300)
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    names = [s.name for steps in lanes.values() for s in steps]
    assert sorted(n for n in names if n[:2].isdigit()) == notebooks
    assert names[0] == "corpus" and "pytest-gpu" in names and "bench-train_throughput" in names
    assert [s.name[:2] for s in lanes["cpu"]] == [n[:2] for n in notebooks if n[:2] in gpu_pass.CPU_LANE]
    assert all(s.name[:2] not in gpu_pass.CPU_LANE for s in lanes["gpu"])
    bench = next(s for s in lanes["gpu"] if s.name == "bench-train_throughput")
    assert lanes["gpu"].index(bench) > max(i for i, s in enumerate(lanes["gpu"]) if s.name[:2].isdigit())
    assert lanes["gpu"][0].name == "pytest-gpu" and not lanes["gpu"][0].needs_corpus  # runs during the build

    only = gpu_pass.plan("full", ["04"], gpu_pass.CPU_LANE, tmp_path, tmp_path / "work", 300)
    assert [s.name for steps in only.values() for s in steps] == ["corpus", notebooks[4]]  # 04 reads the corpus
    assert only["gpu"][0].needs_corpus and "--match" in only["gpu"][0].command
    with pytest.raises(SystemExit, match="unknown step.*99.*valid: corpus, 00"):
        gpu_pass.plan("full", ["99"], gpu_pass.CPU_LANE, tmp_path, tmp_path / "work", 300)


def test_first_output_and_error_of_an_executed_notebook(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# title"), nbformat.v4.new_code_cell("x")])
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="profile full · device cuda · seed 0"
                                                  " · commit abc1234\nmore"),
                           nbformat.v4.new_output("error", ename="KeyError", evalue="'loss'", traceback=[])]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert gpu_pass._first_output(path) == "profile full · device cuda · seed 0 · commit abc1234"
    assert gpu_pass._error(path) == "KeyError: 'loss'"


@pytest.mark.slow
def test_make_gpu_pass_runs_one_notebook_end_to_end_on_cpu(tmp_path):
    """`make gpu PROFILE=smoke ONLY=02`: the corpus step, notebook 02 and the archive, as on the GPU machine."""
    env = {**os.environ, "COOKBOOK_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_pass.py"), "--profile", "smoke", "--only", "02",
                           "--out", str(tmp_path / "out"), "--commit", "test123"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "] ok      corpus (corpus lane)" in done.stdout and "] ok      02_corpus_and_tokenizer" in done.stdout
    (archive,) = (tmp_path / "out").glob("gpu-pass-smoke-test123-*.tar.gz")
    name = archive.name.removesuffix(".tar.gz")
    with tarfile.open(archive) as tar:
        members = set(tar.getnames())
    stem = next(p.stem for p in (ROOT / "notebooks").glob("02_*.ipynb"))
    for part in (f"notebooks/{stem}.ipynb", "summary.md", "summary.json", "pass.log", "corpus.json",
                 f"logs/{stem}.log"):
        assert f"{name}/{part}" in members
    rows = json.loads((tmp_path / "out" / name / "summary.json").read_text())
    assert [(r["step"], r["status"]) for r in rows] == [("corpus", "ok"), (stem, "ok")]
    assert "FIRST OUTPUT" not in rows[1]["note"] and "corpus_files=" in rows[1]["note"]
    executed = nbformat.read(tmp_path / "out" / name / "notebooks" / f"{stem}.ipynb", as_version=4)
    setup_lines = [o.get("text", "") for o in executed.cells[1].outputs if o.get("name") == "stdout"]
    assert any("profile smoke · device cpu" in t and " · commit " in t for t in setup_lines)
