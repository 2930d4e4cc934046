"""The README's "Train on your own files" snippet, run exactly as printed, on a folder of real files."""

import re
import shutil
from pathlib import Path

from cookbook.data import corpus

README = Path(__file__).parents[1] / "README.md"


def _snippet() -> str:
    section = README.read_text().split("## Train on your own files", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_train_on_your_own_files_snippet_runs_as_printed(tmp_path, monkeypatch, capsys):
    root, files = corpus.stdlib_files()
    project = tmp_path / "my_project"
    for path in files[:200]:  # a small project of real Python files, plus a file the loader must report
        target = project / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    (project / "logo.png").write_bytes(b"\x89PNG")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COOKBOOK_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("COOKBOOK_SCALE", "0.25")  # the profile's documented knob: 15 steps, evaluated every 5
    scope: dict = {}
    exec(compile(_snippet(), "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    history, P = scope["history"], scope["P"]
    assert history["step"].iloc[-1] == P.train.steps
    val = history["val_loss"].dropna()
    assert len(val) >= 2 and val.iloc[-1] < val.iloc[0]  # it learned from the user's files
    assert (tmp_path / "runs" / "my_project" / "metrics.jsonl").is_file()
    assert "profile smoke" in capsys.readouterr().out
