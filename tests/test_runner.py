import json
import os

import nbformat
import pytest
import torch

from cookbook import runner


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_record_outside_the_runner_keeps_figures(monkeypatch):
    monkeypatch.delenv("COOKBOOK_RECORD_FILE", raising=False)
    assert runner.record(val_loss=1.5)["val_loss"] == 1.5
    with pytest.raises(TypeError, match="number or string"):
        runner.record(bad=[1, 2])


def test_record_writes_the_runner_file(tmp_path, monkeypatch):
    monkeypatch.setenv("COOKBOOK_RECORD_FILE", str(tmp_path / "f.json"))
    import numpy as np

    runner.record(steps=np.int64(3))
    assert json.loads((tmp_path / "f.json").read_text())["steps"] == 3


def test_run_continues_after_a_failure_and_summarises(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_ok.ipynb", "from cookbook.runner import record\nrecord(answer=42, loss=0.123456)")
    _notebook(nbs / "01_fail.ipynb", "raise RuntimeError('boom')")
    out = tmp_path / "out"
    # the kernel sees the profile and the run's folder (where a notebook's logs go), and runs in its notebook's folder
    _notebook(nbs / "02_ok.ipynb", "import os, pathlib\nassert os.environ['COOKBOOK_PROFILE'] == 'smoke'\n"
                                   f"assert os.environ['COOKBOOK_RUNS_DIR'] == {str(out.resolve())!r}\n"
                                   f"assert pathlib.Path.cwd() == pathlib.Path({str(nbs.resolve())!r})")
    (nbs / "README.ipynb").write_text("{}")  # unnumbered files are not part of the series
    before = dict(os.environ)
    code = runner.main(["run", "--profile", "smoke", "--notebooks", "nbs", "--out", "out"])
    assert code == 1  # one notebook failed
    summary = (out / "summary.md").read_text()
    assert "| 00_ok | ok |" in summary and "answer=42, loss=0.1235" in summary
    assert "| 01_fail | FAILED |" in summary and "boom" in summary
    assert "| 02_ok | ok |" in summary
    assert sorted(p.name for p in out.glob("*.ipynb")) == ["00_ok.ipynb", "01_fail.ipynb", "02_ok.ipynb"]
    printed = capfd.readouterr()
    assert "executed notebooks, their figures and this summary: out/\n" in printed.out  # where they went
    assert "01_fail" in printed.err
    assert "without encryption" not in printed.err + printed.out  # ipykernel's TCP warning, once per kernel
    assert dict(os.environ) == before  # the runner's own environment is left as it was



def test_run_notebooks_inplace_writes_back_only_what_ran(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_ok.ipynb", "from cookbook.runner import record\nrecord(n=2)\nprint(6 * 7)")
    _notebook(nbs / "01_fail.ipynb", "print('partial')", "raise ValueError('bad input')")
    rows = runner.run_notebooks(sorted(nbs.glob("*.ipynb")), tmp_path / "out", "smoke", inplace=True)
    assert [(r["notebook"], r["status"], r["figures"]) for r in rows] == [("00_ok", "ok", {"n": 2}),
                                                                          ("01_fail", "FAILED", {})]
    assert [r["error"] for r in rows] == ["", "ValueError: bad input"]  # no terminal colour codes
    ran = nbformat.read(nbs / "00_ok.ipynb", as_version=4)  # the source now holds its outputs
    assert ran.cells[0].outputs[0]["text"] == "42\n"
    failed = nbformat.read(nbs / "01_fail.ipynb", as_version=4)  # left as it was: no half-executed source
    assert all(not cell.outputs for cell in failed.cells)
    executed = nbformat.read(tmp_path / "out" / "01_fail.ipynb", as_version=4)  # the failure is kept in out/
    assert executed.cells[0].outputs[0]["text"] == "partial\n" and executed.cells[1].outputs[0]["ename"] == "ValueError"

def test_run_with_no_matching_notebooks(tmp_path):
    assert runner.main(["run", "--notebooks", str(tmp_path), "--match", "zzz"]) == 2


def test_unknown_profile_is_a_usage_error(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        runner.main(["run", "--profile", "smok", "--notebooks", str(tmp_path)])
    assert exit_.value.code == 2
    assert "invalid choice: 'smok' (choose from 'smoke', 'full')" in capsys.readouterr().err
    monkeypatch.setenv("COOKBOOK_PROFILE", "smok")
    with pytest.raises(SystemExit) as exit_:
        runner.main(["run", "--notebooks", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m cookbook run") and "unknown profile 'smok'; valid profiles: smoke, full" in err


def test_report_marks_packages_and_strict_fails_on_a_mismatch(tmp_path, capsys, monkeypatch):
    pins = tmp_path / "constraints.txt"
    pins.write_text(f"torch=={torch.__version__.split('+')[0]}\nnumpy==0.0.1\nno-such-package==1.0\n")
    monkeypatch.setattr(runner, "pins_file", lambda: pins)
    assert runner.main(["report"]) == 0  # a clear table, not a failure
    out = capsys.readouterr().out
    assert [line.split()[-1] for line in out.splitlines() if line.startswith(("torch ", "numpy "))] == [
        "MISMATCH", "OK"]
    assert "no-such-package" not in out  # an optional package that is not installed is only counted
    assert "MISSING (optional)" in out and "not as tested: numpy" in out
    assert runner.main(["report", "--strict"]) == 1
    capsys.readouterr()
    assert runner.main(["report", "--all"]) == 0
    assert "no-such-package" in capsys.readouterr().out
    pins.write_text(f"torch=={torch.__version__}\n")
    assert runner.main(["report", "--strict"]) == 0  # torch as pinned; unpinned dependencies are not failures


def test_clean_outputs_drops_widget_state_and_progress_widgets_only():
    nb = nbformat.v4.new_notebook(metadata={"widgets": {"state": {"x": 1}}})
    bar = nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "m"},
                                                       "text/plain": "HBox(children=(...))"})
    text = nbformat.v4.new_output("stream", name="stdout", text="loss 1.0\n")
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=[bar, text]), nbformat.v4.new_markdown_cell("m")]
    runner.clean_outputs(nb)
    assert "widgets" not in nb.metadata and nb.cells[0].outputs == [text]


def test_clean_outputs_names_the_runs_folder_by_its_variable(tmp_path):
    folder = str(tmp_path.resolve())
    stream = nbformat.v4.new_output("stream", name="stderr", text=f"saved at {folder}/06/last.safetensors\n")
    shown = nbformat.v4.new_output("execute_result", data={"text/plain": f"'{folder}/logs'",
                                                           "text/html": f"<b>{folder}</b>"}, execution_count=1)
    other = nbformat.v4.new_output("stream", name="stdout", text="/elsewhere/file\n")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=[stream, shown, other])]
    runner.clean_outputs(nb, tmp_path)
    assert stream["text"] == "saved at $COOKBOOK_RUNS_DIR/06/last.safetensors\n"
    assert shown["data"] == {"text/plain": "'$COOKBOOK_RUNS_DIR/logs'", "text/html": "<b>$COOKBOOK_RUNS_DIR</b>"}
    assert other["text"] == "/elsewhere/file\n"  # only the run's folder is rewritten
