"""Run the notebook series headless and summarise it: `python -m cookbook run`.

Each notebook records its headline figures with `record(name=value, ...)`; the runner collects them
into `runs/<timestamp>/summary.md` next to the executed notebooks. `python -m cookbook report` checks the
environment against the tested pins.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import zmq
from jupyter_client import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError
from tqdm.auto import tqdm
from traitlets.config import Config

from cookbook.env import check_packages, optional_tools, pins_file, report, runs_dir
from cookbook.profiles import PROFILES, profile

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # IPython colours a traceback's exception name

__all__ = ["RUNS_ENV", "clean_outputs", "main", "record", "run_notebooks"]

_RECORD_ENV = "COOKBOOK_RECORD_FILE"
RUNS_ENV = "COOKBOOK_RUNS_DIR"  # the run's folder, for what a notebook writes (logs): runs/<timestamp>
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


def _kernel_config() -> Config:
    """Encrypt the kernel's ZeroMQ traffic with CurveZMQ keys where jupyter_client and pyzmq can (the kernelspec
    of ipykernel >= 7.3 declares support). Without it ipykernel >= 7.3 logs "Kernel is running over TCP without
    encryption" on every start, once per notebook in the progress bar (ipython/ipykernel#1515 added the
    warning; jupyter/enhancement-proposals#145 the encryption)."""
    if "transport_encryption" in KernelManager.class_trait_names() and zmq.has("curve"):
        return Config({"KernelManager": {"transport_encryption": "auto"}})
    return Config()


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is inside it (shorter, and what `make run` users see)."""
    full = path.resolve()
    return full.relative_to(Path.cwd()).as_posix() if full.is_relative_to(Path.cwd()) else str(full)


_WIDGET = "application/vnd.jupyter.widget-view+json"


def clean_outputs(nb, runs_dir: Path | None = None) -> None:
    """Make an executed notebook fit to commit (DESIGN.md): no saved widget state, no progress-bar widgets,
    no path of the machine that ran it.

    Progress bars are transient: saved, they show as "Error displaying widget" or `HBox(...)` text once
    their state is gone, so they are dropped. Where text names the run's folder `runs_dir` (what the kernel's
    $COOKBOOK_RUNS_DIR held), it reads `$COOKBOOK_RUNS_DIR` instead; every other output stays as it was.
    """
    nb.metadata.pop("widgets", None)
    folder = str(Path(runs_dir).resolve()) if runs_dir is not None else None
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = [o for o in cell.outputs if _WIDGET not in o.get("data", {})]
        for output in cell.outputs if folder else ():
            if "text" in output:  # a stream
                output["text"] = output["text"].replace(folder, f"${RUNS_ENV}")
            for key in ("text/plain", "text/html", "text/markdown"):
                if key in output.get("data", {}):
                    output["data"][key] = output["data"][key].replace(folder, f"${RUNS_ENV}")


def run_notebooks(notebooks: list[Path], out: Path, profile: str, timeout: int = 1800,
                  inplace: bool = False) -> list[dict]:
    """Execute notebooks in order (a failure is reported and the others still run); write `out/summary.md`.

    Each kernel runs in its notebook's folder with COOKBOOK_PROFILE = `profile`, COOKBOOK_RUNS_DIR = `out` (so
    logs a notebook writes land beside its executed copy) and the file `record()` writes to; the runner's own
    environment is left as it was. Executed notebooks are cleaned (`clean_outputs`); `inplace=True` also
    writes each one that ran without error back over its source (how the committed notebooks are made).
    """
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for nb_path in tqdm(notebooks, desc=f"notebooks ({profile})", unit="nb"):
        figures_file = out / f"{nb_path.stem}.figures.json"
        figures_file.unlink(missing_ok=True)
        env = {**os.environ, _RECORD_ENV: str(figures_file.resolve()), "COOKBOOK_PROFILE": profile,
               RUNS_ENV: str(out.resolve())}
        nb = nbformat.read(nb_path, as_version=4)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", config=_kernel_config(),
                                resources={"metadata": {"path": str(nb_path.parent)}})
        start, status, error = time.perf_counter(), "ok", ""
        try:
            client.execute(env=env)
        except (CellExecutionError, CellTimeoutError, RuntimeError) as exc:
            status = "FAILED"
            text = _ANSI.sub("", str(exc)).strip()
            error = text.splitlines()[-1][:200] if text else type(exc).__name__
        seconds = time.perf_counter() - start
        clean_outputs(nb, out)
        nbformat.write(nb, out / nb_path.name)
        if inplace and status == "ok":
            nbformat.write(nb, nb_path)
        figures = json.loads(figures_file.read_text()) if figures_file.exists() else {}
        rows.append(dict(notebook=nb_path.stem, status=status, seconds=round(seconds, 1), figures=figures, error=error))

    lines = [f"# Notebook run — profile `{profile}`", "", "| notebook | status | seconds | headline figures |", "|---|---|---|---|"]
    for row in rows:
        figs = ", ".join(f"{k}={_format(v)}" for k, v in row["figures"].items()) or row["error"]
        lines.append(f"| {row['notebook']} | {row['status']} | {row['seconds']} | {figs} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return rows


def _report(show_all: bool, strict: bool) -> int:
    """`python -m cookbook report`: the environment against the tested pins; 1 under --strict when it differs."""
    pins = pins_file()
    print(report(pins=pins, every_package=show_all).to_string())
    # the optional system programs: never required, listed so a missing one is no surprise later
    print("\noptional system programs (`make stack-deps` installs them where it can):")
    print(optional_tools().to_string())
    if pins is None:
        print("\nno requirements/ folder (not a source checkout): versions are not checked against tested pins")
        return 0
    packages = check_packages(pins)
    counts = ", ".join(f"{n} {status}" for status, n in packages["status"].value_counts().items())
    print(f"\n{len(packages)} packages against {_shown(pins)}: {counts}")
    differ = list(packages.index[packages["status"].isin(["MISMATCH", "MISSING"])])
    if differ:
        print(f"not as tested: {', '.join(differ)}; install the tested versions with "
              f"pip install -c {_shown(pins)} -e .")
    return 1 if strict and differ else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cookbook", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the notebook series and write runs/<timestamp>/summary.md")
    run.add_argument("--profile", default=None, choices=list(PROFILES),
                     help="default: $COOKBOOK_PROFILE, else full with a GPU and smoke without")
    run.add_argument("--notebooks", default="notebooks", help="folder of numbered .ipynb files")
    run.add_argument("--match", default="", help="only notebooks whose name contains this text")
    run.add_argument("--out", default=None, help="output folder (default: runs/<timestamp>)")
    run.add_argument("--inplace", action="store_true",
                     help="also write each notebook that ran without error back over its source (to commit it)")
    check = sub.add_parser("report", help="the environment, each package marked OK / MISMATCH / MISSING against "
                                          "the tested pins in requirements/")
    check.add_argument("--all", action="store_true", help="list every pinned package, not only the cookbook's own")
    check.add_argument("--strict", action="store_true",
                       help="exit 1 when a package is installed at another version or a dependency is missing")
    args = parser.parse_args(argv)

    if args.command == "report":
        return _report(args.all, args.strict)
    try:
        name = profile(args.profile).name
    except ValueError as err:  # $COOKBOOK_PROFILE names no profile
        run.error(str(err))
    notebooks = sorted(p for p in Path(args.notebooks).glob("[0-9]*.ipynb") if args.match in p.name)
    if not notebooks:
        print(f"no notebooks matching {args.match!r} in {args.notebooks}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else runs_dir(time.strftime("%Y%m%d-%H%M%S"))
    rows = run_notebooks(notebooks, out, name, inplace=args.inplace)
    print((out / "summary.md").read_text())
    print(f"executed notebooks, their figures and this summary: {_shown(out)}/")
    failed = [r["notebook"] for r in rows if r["status"] != "ok"]
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
