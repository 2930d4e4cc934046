import json

import nbformat
import pytest

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


def test_run_continues_after_a_failure_and_summarises(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_ok.ipynb", "from cookbook.runner import record\nrecord(answer=42, loss=0.123456)")
    _notebook(nbs / "01_fail.ipynb", "raise RuntimeError('boom')")
    _notebook(nbs / "02_ok.ipynb", "import os\nassert os.environ['COOKBOOK_PROFILE'] == 'smoke'")
    (nbs / "README.ipynb").write_text("{}")  # unnumbered files are not part of the series
    code = runner.main(["run", "--profile", "smoke", "--notebooks", str(nbs), "--out", str(tmp_path / "out")])
    assert code == 1  # one notebook failed
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| 00_ok | ok |" in summary and "answer=42, loss=0.1235" in summary
    assert "| 01_fail | FAILED |" in summary and "boom" in summary
    assert "| 02_ok | ok |" in summary
    assert sorted(p.name for p in (tmp_path / "out").glob("*.ipynb")) == ["00_ok.ipynb", "01_fail.ipynb", "02_ok.ipynb"]
    assert "01_fail" in capsys.readouterr().err


def test_run_with_no_matching_notebooks(tmp_path):
    assert runner.main(["run", "--notebooks", str(tmp_path), "--match", "zzz"]) == 2
