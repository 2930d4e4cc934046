"""Mutation testing of chosen modules against their own tests: `make mutate MODULES="planning.memory train.loss"`.

Why mutmut (3.8.1) and not cosmic-ray: mutmut mutates a *copy* of the package (under the work folder's
`mutants/`), never the files in this tree, so other people's test runs on the same checkout are unaffected while
it runs (cosmic-ray's local runner rewrites the source file in place); it imports torch once and forks a worker per
mutant, running only the tests that execute the mutated function (cosmic-ray starts a fresh pytest, torch import
included, for each mutant): that is what makes a module fit a few minutes on 2 cores.

For each module this script makes a work folder `runs/mutate/<module>/` (a fresh copy of cookbook/ and tests/ and a
setup.cfg that restricts mutmut to that module's file and its own test file), runs `mutmut run` there with a time
budget, then prints the kill rate and the diff of each surviving mutant. Mutants explained as equivalent in
docs/mutation.md (a line holding the mutant's name in backticks) leave the denominator:

    kill rate = killed (incl. timeouts) / (all mutants - equivalent - not checked within the budget)

A module is `planning.memory` (cookbook/planning/memory.py, tests/planning/test_memory.py), a folder such as
`data.dedup` (every file of cookbook/data/dedup/, tests/data/dedup/), or `deploy.service:validate` (only the
mutants of that function). TESTS overrides the test files for modules whose tests live elsewhere (see TESTS below).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENTS = ROOT / "docs" / "mutation.md"
# Modules whose tests are not (only) tests/<pkg>/test_<name>.py: the files that test them.
TESTS = {
    "train.loss": ["tests/train/test_loss.py", "tests/train/test_fused_loss.py"],
    "models.moe": ["tests/models/test_moe.py"],
    "finetune.lora": ["tests/finetune/test_lora.py"],
    "compress.quantize": ["tests/compress/test_quantize.py", "tests/compress/test_quantize_mutants.py"],
    "deploy.service": ["tests/deploy/test_validate.py"],  # run as deploy.service:validate
    "evaluate.metrics": ["tests/evaluate/test_metrics.py", "tests/evaluate/test_text_metrics.py"],
}
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", 37: "caught by type check", None: "not checked"}


def module_paths(module: str) -> tuple[list[Path], list[str], str | None]:
    """(source files to mutate, test files, function name or None) for `pkg.mod` or `pkg.mod:function`."""
    name, _, function = module.partition(":")
    parts = name.split(".")
    folder = ROOT / "cookbook" / Path(*parts)
    if folder.is_dir():
        sources = sorted(p for p in folder.rglob("*.py") if p.name != "__init__.py")
        default_tests = [f"tests/{'/'.join(parts)}"]
    elif folder.with_suffix(".py").is_file():
        sources = [folder.with_suffix(".py")]
        default_tests = [f"tests/{'/'.join(parts[:-1])}/test_{parts[-1]}.py"]
    else:
        raise SystemExit(f"unknown module {module!r}: no cookbook/{'/'.join(parts)}(.py)")
    tests = TESTS.get(name, default_tests)
    missing = [t for t in tests if not (ROOT / t).exists()]
    if missing:
        raise SystemExit(f"{module}: test files {missing} do not exist; add the module to TESTS in {__file__}")
    return sources, tests, function or None


def equivalents() -> dict[str, str]:
    """Mutant name -> one-line reason, from the lines of docs/mutation.md's "## Equivalent mutants" section
    (like "- `cookbook.x.y__mutmut_3`: reason")."""
    if not EQUIVALENTS.exists():
        return {}
    found, section = {}, ""
    for line in EQUIVALENTS.read_text().splitlines():
        if line.startswith("## "):
            section = line
        if section != "## Equivalent mutants":  # survivors explained elsewhere in the file still count
            continue
        for name in re.findall(r"`(cookbook\.[^`\s]+__mutmut_\d+)`", line):
            found[name] = line.split(":", 1)[-1].strip() if ":" in line else ""
    return found


def prepare(work: Path, sources: list[Path], tests: list[str]) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "cookbook", work / "cookbook", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    # pytest's markers and warning filters; mutmut reads its own settings from setup.cfg (pyproject has none)
    shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")
    only = "\n    ".join(str(p.relative_to(ROOT)) for p in sources)
    selection = "\n    ".join(tests)
    (work / "setup.cfg").write_text(
        "[mutmut]\nsource_paths = cookbook\n"
        f"only_mutate =\n    {only}\n"
        f"pytest_add_cli_args_test_selection =\n    {selection}\n"
        "pytest_add_cli_args =\n    -p\n    no:cacheprovider\n    -m\n    not gpu and not browser\n"
        "use_git_change_detection = false\n")


def refresh(work: Path, sources: list[Path]) -> None:
    """Give an earlier run's work folder this tree's tests, keeping its mutants and their results: only right
    while the mutated files are unchanged (an edit renumbers the mutants)."""
    if not (work / "mutants").is_dir():
        raise SystemExit(f"--survivors: no earlier run in {work}; run the module without --survivors first")
    changed = [str(s.relative_to(ROOT)) for s in sources if (work / s.relative_to(ROOT)).read_bytes() != s.read_bytes()]
    if changed:
        raise SystemExit(f"--survivors: {changed} changed since the run in {work}, so its mutants are other mutants; "
                         "run the module again without --survivors")
    shutil.rmtree(work / "tests")
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))


def run_mutmut(work: Path, names: list[str], budget: float, children: int) -> bool:
    """Run mutmut in `work` on the named mutants (all when none); False when the budget ran out (the mutants
    checked so far still count)."""
    env = {**os.environ, "COOKBOOK_PROFILE": "smoke", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    mutmut = Path(sys.executable).with_name("mutmut")
    command = [str(mutmut), "run", "--max-children", str(children), *names]
    log = open(work / "mutmut.log", "w")
    proc = subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=budget)
        finished = True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        finished = False
    log.close()
    if finished and proc.returncode != 0:
        tail = (work / "mutmut.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"mutmut failed (exit {proc.returncode}) in {work}:\n{tail}")
    return finished


def _dotted(source: Path) -> str:
    return ".".join(source.relative_to(ROOT).with_suffix("").parts)


def results(work: Path, sources: list[Path], function: str | None) -> dict[str, str]:
    """Mutant name -> status, read from mutmut's .meta files."""
    statuses = {}
    for source in sources:
        meta = work / "mutants" / (str(source.relative_to(ROOT)) + ".meta")
        if not meta.exists():
            continue
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if function and f".x_{function}__mutmut_" not in name:
                continue
            statuses[name] = STATUS.get(code, "suspicious")
    return statuses


def diffs(work: Path, names: list[str]) -> dict[str, str]:
    """The diff of each mutant, from mutmut's own helper, run inside the work folder."""
    if not names:
        return {}
    script = ("import json, sys\nfrom mutmut.__main__ import get_diff_for_mutant, find_mutant\n"
              "out = {n: get_diff_for_mutant(n, path=find_mutant(n).path) for n in sys.argv[1:]}\n"
              "print(json.dumps(out))\n")
    done = subprocess.run([sys.executable, "-c", script, *names], cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        return {n: f"(no diff: {done.stderr.strip().splitlines()[-1:]})" for n in names}
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(module: str, statuses: dict[str, str], equivalent: dict[str, str], finished: bool, seconds: float,
           work: Path, show: bool) -> dict:
    counts: dict[str, int] = {}
    for name, status in statuses.items():
        status = "equivalent" if name in equivalent and status != "killed" else status
        counts[status] = counts.get(status, 0) + 1
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    survivors = sorted(n for n, s in statuses.items() if s not in ("killed", "timeout", "not checked", "skipped")
                       and n not in equivalent)
    judged = killed + len(survivors)
    rate = 100.0 * killed / judged if judged else float("nan")
    print(f"\n== {module}: {killed}/{judged} non-equivalent mutants killed ({rate:.1f}%), "
          f"{counts.get('equivalent', 0)} equivalent, {counts.get('not checked', 0)} not checked"
          f"{'' if finished else ' (budget ran out)'}; {seconds:.0f} s; {dict(sorted(counts.items()))}")
    if survivors:
        print(f"   {len(survivors)} surviving (status: name):")
        texts = diffs(work, survivors) if show else {}
        for name in survivors:
            print(f"   {statuses[name]}: {name}")
            for line in texts.get(name, "").splitlines():
                if line.startswith(("+", "-")) and not line.startswith(("+++", "---")):
                    print(f"      {line}")
    return {"module": module, "killed": killed, "judged": judged, "rate": round(rate, 1), "counts": counts,
            "finished": finished, "seconds": round(seconds), "survivors": survivors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="+", help="e.g. planning.memory data.dedup deploy.service:validate")
    parser.add_argument("--budget", type=float, default=900, help="seconds per module (default 900)")
    parser.add_argument("--children", type=int, default=2, help="parallel mutant workers (default 2)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "mutate")
    parser.add_argument("--survivors", action="store_true",
                        help="re-run only the last run's survivors and unchecked mutants against this tree's tests")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: the kill rate of the last run in each work folder, with today's equivalents")
    parser.add_argument("--no-diff", action="store_true", help="list surviving mutants without their diffs")
    args = parser.parse_args(argv)
    equivalent = equivalents()
    summary = []
    for module in args.modules:
        sources, tests, function = module_paths(module)
        work = args.work / module.replace(":", "-")
        print(f"-- {module}: mutating {[str(s.relative_to(ROOT)) for s in sources]}"
              f"{f' (function {function})' if function else ''} against {tests}; budget {args.budget:.0f} s",
              flush=True)
        start, finished = time.monotonic(), True
        if args.survivors:
            refresh(work, sources)
            names = [n for n, s in results(work, sources, function).items()
                     if s not in ("killed", "timeout", "skipped") and n not in equivalent]
            if names:
                finished = run_mutmut(work, names, args.budget, args.children)
        elif args.report:
            if not (work / "mutants").is_dir():
                raise SystemExit(f"--report: no earlier run in {work}")
        else:
            prepare(work, sources, tests)
            names = [f"{_dotted(s)}.x_{function}__mutmut_*" for s in sources] if function else []
            finished = run_mutmut(work, names, args.budget, args.children)
        statuses = results(work, sources, function)
        summary.append(report(module, statuses, equivalent, finished, time.monotonic() - start, work,
                              not args.no_diff))
    (args.work / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\nmodule                          killed/judged   rate")
    for row in summary:
        print(f"{row['module']:<32}{row['killed']:>6}/{row['judged']:<8}{row['rate']:>6.1f}%"
              f"{'' if row['finished'] else '  (partial: budget)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
