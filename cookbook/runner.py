"""Run the notebook series headless and summarise it: `python -m cookbook run`.

Each notebook records its headline figures with `record(name=value, ...)`; the runner collects them
into `runs/<timestamp>/summary.md` next to the executed notebooks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError
from tqdm.auto import tqdm

from cookbook.env import report
from cookbook.profiles import profile

__all__ = ["main", "record", "run_notebooks"]

_RECORD_ENV = "COOKBOOK_RECORD_FILE"
_recorded: dict[str, object] = {}


def record(**figures) -> dict[str, object]:
    """Record a notebook's headline figures (numbers or short strings) for the run summary.

    Inside `python -m cookbook run` they are written to the file the runner reads; elsewhere they are
    just kept in memory and returned, so calling it from your own notebook is harmless.
    """
    for key, value in figures.items():
        if hasattr(value, "item"):  # numpy / torch scalars
            value = value.item()
        if not isinstance(value, (int, float, str, bool)):
            raise TypeError(f"figure {key!r} must be a number or string, got {type(value).__name__}")
        _recorded[key] = value
    path = os.environ.get(_RECORD_ENV)
    if path:
        Path(path).write_text(json.dumps(_recorded, indent=1))
    return dict(_recorded)


def _format(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_notebooks(notebooks: list[Path], out: Path, profile: str, timeout: int = 1800) -> list[dict]:
    """Execute notebooks in order (a failure is reported and the others still run); write `out/summary.md`."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for nb_path in tqdm(notebooks, desc=f"notebooks ({profile})", unit="nb"):
        figures_file = out / f"{nb_path.stem}.figures.json"
        figures_file.unlink(missing_ok=True)
        os.environ[_RECORD_ENV] = str(figures_file.resolve())  # the kernel inherits our environment
        os.environ["COOKBOOK_PROFILE"] = profile
        nb = nbformat.read(nb_path, as_version=4)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(nb_path.parent)}})
        start, status, error = time.perf_counter(), "ok", ""
        try:
            client.execute()
        except (CellExecutionError, CellTimeoutError, RuntimeError) as exc:
            status = "FAILED"
            error = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
        seconds = time.perf_counter() - start
        nbformat.write(nb, out / nb_path.name)
        figures = json.loads(figures_file.read_text()) if figures_file.exists() else {}
        rows.append(dict(notebook=nb_path.stem, status=status, seconds=round(seconds, 1), figures=figures, error=error))
    os.environ.pop(_RECORD_ENV, None)

    lines = [f"# Notebook run — profile `{profile}`", "", "| notebook | status | seconds | headline figures |", "|---|---|---|---|"]
    for row in rows:
        figs = ", ".join(f"{k}={_format(v)}" for k, v in row["figures"].items()) or row["error"]
        lines.append(f"| {row['notebook']} | {row['status']} | {row['seconds']} | {figs} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cookbook", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the notebook series and write runs/<timestamp>/summary.md")
    run.add_argument("--profile", default=None, help="smoke or full (default: $COOKBOOK_PROFILE, else by device)")
    run.add_argument("--notebooks", default="notebooks", help="folder of numbered .ipynb files")
    run.add_argument("--match", default="", help="only notebooks whose name contains this text")
    run.add_argument("--out", default=None, help="output folder (default: runs/<timestamp>)")
    sub.add_parser("report", help="print the environment report")
    args = parser.parse_args(argv)

    if args.command == "report":
        print(report().to_string())
        return 0
    name = profile(args.profile).name
    notebooks = sorted(p for p in Path(args.notebooks).glob("[0-9]*.ipynb") if args.match in p.name)
    if not notebooks:
        print(f"no notebooks matching {args.match!r} in {args.notebooks}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    rows = run_notebooks(notebooks, out, name)
    print((out / "summary.md").read_text())
    failed = [r["notebook"] for r in rows if r["status"] != "ok"]
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
