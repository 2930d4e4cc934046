"""The whole GPU pass as one command: corpus, every notebook, `pytest -m gpu`, GPU benchmarks, one archive.

    python tools/gpu_pass.py --out runs/gpu                                # `make gpu`: the full profile
    python tools/gpu_pass.py --profile smoke --out runs/gpu                # the same pass on a CPU
    python tools/gpu_pass.py --only 03,04 --out runs/gpu                   # re-run a failed part

Steps, each a subprocess with a wall-clock limit, in three lanes that run side by side:
- corpus: builds the profile's corpus, tokenizer and training blocks once, on every core (cached under
  `cookbook.env.cache_dir()`); notebooks that read them wait for it, the others start at once;
- cpu: notebooks that never train (00-02 by default, `--cpu-lane`), next to the GPU work;
- gpu: `pytest -m gpu` (while the corpus is built), the training notebooks in order, the single-GPU run of
  `python -m cookbook.scale.train_lm` (step `scale`: notebook 04's run through the distributed script), then the GPU
  benchmarks (last, so that no other work on the machine skews their timings), one at a time.
A failed or timed-out step is recorded and the pass goes on; `--deadline` skips what would not finish in
time, so the archive is always written. Prints a timing line per step and writes OUT/<name>/ (notebooks/,
benchmarks/, logs/, summary.md, summary.json, pass.log) and OUT/<name>.tar.gz.

On the GPU image (Python 3.12, torch 2.11, no venv), from the project root, with the wheels of
../shared/gpu/wheelhouse.sh in .whl/:
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && make gpu GPU_PYTHON=python3 COMMIT=<sha>
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU_BENCHMARKS = ("monitor_overhead", "train_throughput", "serve_load")  # those that exist are run
# On a CPU the pass proves the plumbing, not the speed: a few steps per benchmark configuration.
SMOKE_BENCH_ARGS = {"monitor_overhead": ["--steps", "2", "--repeats", "1"]}
CPU_LANE = ("00", "01", "02")  # notebooks that never train: they run next to the GPU lane
# A notebook that calls these reads the profile's corpus, tokenizer or blocks: it waits for the corpus step.
_CORPUS_CALLS = ("for_profile(", "blocks_for_profile(", "pretrained(", "sources.")


@dataclasses.dataclass
class Step:
    """One subprocess of the pass. `after` turns its outputs into a note for the summary."""

    name: str
    lane: str
    command: list[str]
    timeout: float
    needs_corpus: bool = False
    after: object = None  # callable(Step, status) -> str


@dataclasses.dataclass
class Result:
    step: str
    lane: str
    status: str  # ok | FAILED (rc N) | TIMEOUT | SKIPPED (...)
    start_s: float
    seconds: float
    note: str = ""


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill a step and every process it started (a notebook's kernel runs in a session of its own)."""
    try:
        import psutil  # in the GPU image and the `monitor` extra; without it, only the process group

        children = psutil.Process(proc.pid).children(recursive=True)
    except Exception:  # no psutil, or the process is already gone
        children = []
    for child in children:
        try:
            child.kill()
        except Exception:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (OSError, AttributeError):  # gone already, or no process groups (Windows)
        proc.kill()


class Pass:
    """Runs lanes of steps in threads, logs a timing line per step, records every outcome."""

    def __init__(self, out: Path, env: dict[str, str], deadline: float | None = None):
        self.out, self.env, self.deadline = out, env, deadline
        self.results: list[Result] = []
        self.corpus_done = threading.Event()
        self.start = time.perf_counter()
        self._lock = threading.Lock()
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self._log = open(out / "pass.log", "a", encoding="utf-8")  # closed in close()

    def say(self, line: str) -> None:
        with self._lock:
            print(line, flush=True)
            self._log.write(line + "\n")
            self._log.flush()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def run_step(self, step: Step) -> Result:
        if step.needs_corpus:
            self.corpus_done.wait()
        start = self.elapsed()
        left = math.inf if self.deadline is None else self.deadline - start
        timeout = min(step.timeout, left)
        log_path = self.out / "logs" / f"{step.name}.log"
        if left < 5:  # not even the start-up of a step fits before the deadline
            status, seconds = "SKIPPED (deadline)", 0.0
        else:
            self.say(f"[{start:7.1f} s] start   {step.name} ({step.lane} lane)")
            with open(log_path, "w", encoding="utf-8") as log:
                log.write("$ " + " ".join(step.command) + "\n")
                log.flush()
                proc = subprocess.Popen(step.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                try:
                    rc = proc.wait(timeout=timeout)
                    status = "ok" if rc == 0 else f"FAILED (rc {rc})"
                except subprocess.TimeoutExpired:
                    _kill_tree(proc)
                    proc.wait()
                    status = f"TIMEOUT ({timeout:.0f} s)"
            seconds = self.elapsed() - start
        note = ""
        if step.after is not None:
            try:
                note = step.after(step, status)
            except Exception as exc:  # a broken note must not lose the step's result
                note = f"note failed: {type(exc).__name__}: {exc}"
        if status != "ok" and not note and log_path.exists():
            note = _last_line(log_path)
        result = Result(step.name, step.lane, status, round(start, 1), round(seconds, 1), note)
        with self._lock:
            self.results.append(result)
        self.say(f"[{self.elapsed():7.1f} s] {status:<7} {step.name} ({step.lane} lane) {seconds:.1f} s"
                 + (f" · {note}" if note else ""))
        if log_path.exists():
            with self._lock:
                self._log.write(f"----- {step.name}: {status}\n{log_path.read_text(errors='replace')}\n")
        return result

    def run_lanes(self, lanes: dict[str, list[Step]]) -> None:
        """Every lane in its own thread; the corpus lane releases the steps waiting for it when it ends."""

        def run(name: str, steps: list[Step]) -> None:
            try:
                for step in steps:
                    self.run_step(step)
            finally:
                if name == "corpus":
                    self.corpus_done.set()

        if "corpus" not in lanes:
            self.corpus_done.set()
        threads = [threading.Thread(target=run, args=item, daemon=True) for item in lanes.items() if item[1]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def close(self) -> None:
        self._log.close()


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _outputs(nb_path: Path) -> list[dict]:
    nb = json.loads(nb_path.read_text())
    return [output for cell in nb["cells"] if cell["cell_type"] == "code" for output in cell.get("outputs", [])]


def _first_output(nb_path: Path) -> str:
    """First line of the first output of an executed notebook (what the setup cell printed)."""
    for output in _outputs(nb_path):
        text = output.get("text") or output.get("data", {}).get("text/plain", "")
        lines = ("".join(text) if isinstance(text, list) else str(text)).strip().splitlines()
        return lines[0] if lines else ""
    return ""


def _error(nb_path: Path) -> str:
    """The exception a failed notebook stopped on, as `Name: message`."""
    for output in _outputs(nb_path):
        if output.get("output_type") == "error":
            return f"{output.get('ename')}: {output.get('evalue', '')}"[:200]
    return ""


def _notebook_note(profile: str, work: Path, archive: Path):
    """After a notebook: move it into the archive, check its first output, list its recorded figures."""

    def after(step: Step, status: str) -> str:
        stem = step.name
        executed = work / stem / f"{stem}.ipynb"
        if not executed.exists():
            return "" if status == "ok" else _last_line(archive.parent / "logs" / f"{stem}.log")
        shutil.move(executed, archive / executed.name)
        figures = work / stem / f"{stem}.figures.json"
        notes = []
        if figures.exists():
            shutil.move(figures, archive / figures.name)
            notes.append(", ".join(f"{k}={v}" for k, v in json.loads((archive / figures.name).read_text()).items()))
        if status != "ok":
            notes.insert(0, _error(archive / executed.name))
        first = _first_output(archive / executed.name)
        if not (f"profile {profile}" in first and "device" in first and "commit" in first):
            notes.insert(0, f"FIRST OUTPUT does not name profile, device and commit: {first[:120]!r}")
        return " · ".join(n for n in notes if n)

    return after


def _corpus_note(path: Path):
    def after(step: Step, status: str) -> str:
        if not path.exists():
            return ""
        info = json.loads(path.read_text())
        return " · ".join(f"{k}={v}" for k, v in info.items() if k in (
            "corpus", "documents", "clean_mb", "exact_removed", "near_removed", "train_tokens", "validation_tokens",
            "build_s", "seconds"))

    return after


def _scale_note(out: Path):
    """The final validation loss and speed of the script's single-GPU run (its history.json)."""

    def after(step: Step, status: str) -> str:
        path = out / "history.json"
        if not path.exists():
            return ""
        last = json.loads(path.read_text())[-1]
        return f"step {last['step']} · val_loss {last.get('val_loss', math.nan):.4f} · {last['seconds_per_step']:.3f} s/step"

    return after


def _bench_note(name: str, out: Path):
    """Keep a benchmark's printed table as JSON (its own --json output too, where the script has one); the
    summary's note is the benchmark's last printed line (train_throughput ends with its verdict line)."""

    def after(step: Step, status: str) -> str:
        log = out.parent / "logs" / f"{step.name}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        record = {"benchmark": name, "status": status, "command": step.command, "output": text.splitlines()[1:]}
        own = out / f"{name}.result.json"
        if own.exists():
            record["result"] = json.loads(own.read_text())
        (out / f"{name}.json").write_text(json.dumps(record, indent=1))
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1][:300] if lines else ""

    return after


def prepare(out: Path, workers: int) -> None:
    """The corpus step: the profile's corpus, tokenizer and blocks, built once on `workers` cores."""
    from cookbook import env
    from cookbook.data import corpus, sources, tokenizer

    start = time.perf_counter()
    P = env.setup()
    ds = sources.environment(workers=workers) if P.data.corpus == "environment" else sources.for_profile(P)
    info = {"corpus": P.data.corpus, "fingerprint": corpus.fingerprint(ds), "documents": len(ds),
            "clean_mb": round(sum(ds["bytes"]) / 1e6, 1)}
    if P.data.corpus == "environment":
        info.update(sources.report())
    tok = tokenizer.for_profile(P, ds)
    # Set before the packing workers fork: they then tokenize one document batch each, quietly.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    blocks = tokenizer.blocks_for_profile(P, tok, ds, num_proc=workers if workers > 1 else None)
    info.update(train_tokens=len(blocks["train"]) * P.data.seq_len,
                validation_tokens=len(blocks["validation"]) * P.data.seq_len, seconds=round(time.perf_counter() - start, 1))
    print(json.dumps(info))
    (out / "corpus.json").write_text(json.dumps(info, indent=1))


def _commit(given: str | None) -> str:
    if given:
        return given
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "cookbook", "notebooks"], cwd=ROOT,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        return f"{head}+changes" if dirty else head
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("COOKBOOK_COMMIT", "unknown")


def plan(profile: str, only: list[str] | None, cpu_lane: tuple[str, ...], out: Path, work: Path,
         notebook_timeout: float, python: str = sys.executable) -> dict[str, list[Step]]:
    """The steps of the pass by lane, restricted to `only` (notebook numbers or step names) when given."""
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    benches = [b for b in GPU_BENCHMARKS if (ROOT / "benchmarks" / f"{b}.py").exists()]
    valid = ["corpus", *(nb.name[:2] for nb in notebooks), "tests", "scale", *benches]
    if only is not None:
        unknown = [name for name in only if name not in valid]
        if unknown:
            raise SystemExit(f"--only: unknown step(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    wanted = set(valid if only is None else only)
    lanes: dict[str, list[Step]] = {"corpus": [], "cpu": [], "gpu": []}
    for nb in notebooks:
        if nb.name[:2] not in wanted:
            continue
        needs = any(call in nb.read_text() for call in _CORPUS_CALLS)
        if needs:
            wanted.add("corpus")
        command = [python, "-m", "cookbook", "run", "--profile", profile, "--notebooks", str(nb.parent),
                   "--match", nb.stem, "--out", str(work / nb.stem)]
        lane = "cpu" if nb.name[:2] in cpu_lane else "gpu"
        lanes[lane].append(Step(nb.stem, lane, command, notebook_timeout, needs,
                                _notebook_note(profile, work, out / "notebooks")))
    if "scale" in wanted:
        wanted.add("corpus")  # the script's run reads the profile's blocks, as notebook 04 does
    if "corpus" in wanted:
        command = [python, str(Path(__file__).resolve()), "--prepare", "--out", str(out)]
        lanes["corpus"].append(Step("corpus", "corpus", command, 900, after=_corpus_note(out / "corpus.json")))
    if "tests" in wanted:  # first on the GPU: it needs no corpus, so it runs while the corpus is built
        command = [python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
                   f"--junitxml={out / 'pytest-gpu.xml'}", "tests"]
        lanes["gpu"].insert(0, Step("pytest-gpu", "gpu", command, 300,
                                    after=lambda step, status: _last_line(out / "logs" / f"{step.name}.log")))
    if "scale" in wanted:  # python -m cookbook.scale.train_lm on one GPU: notebook 04's sizes, its validation loss
        command = [python, "-m", "cookbook.scale.train_lm", "--profile", profile, "--no-progress",
                   "--out", str(out / "scale")]
        lanes["gpu"].append(Step("scale-train_lm", "gpu", command, 300, True, _scale_note(out / "scale")))
    for name in benches:
        if name in wanted:
            script = ROOT / "benchmarks" / f"{name}.py"
            command = [python, str(script), *(SMOKE_BENCH_ARGS.get(name, []) if profile == "smoke" else [])]
            if '"--json"' in script.read_text():
                command += ["--json", str(out / "benchmarks" / f"{name}.result.json")]
            lanes["gpu"].append(Step(f"bench-{name}", "gpu", command, 300, after=_bench_note(name, out / "benchmarks")))
    return lanes


def _summary(results: list[Result], header: str) -> str:
    lines = [header, "", "| step | lane | status | start s | seconds | note |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.step} | {r.lane} | {r.status} | {r.start_s} | {r.seconds} | {r.note.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full", help="smoke or full (default: full)")
    parser.add_argument("--out", default="runs/gpu", help="folder the archive goes into")
    parser.add_argument("--only", default=None, help="comma-separated subset: notebook numbers (03,04), corpus, "
                                                    "tests, or a benchmark name (train_throughput, serve_load)")
    parser.add_argument("--cpu-lane", default=",".join(CPU_LANE), help="notebooks run next to the GPU lane")
    parser.add_argument("--notebook-timeout", type=float, default=None,
                        help="seconds per notebook (default: 480 in full: 04 pretrains and compiles its lever ladder; 900 in smoke)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds for the whole pass: later steps are skipped, running ones stopped")
    parser.add_argument("--commit", default=None, help="the commit the tree is at (default: from git)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes of the corpus build")
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # the corpus step itself
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    if args.prepare:
        prepare(out, args.workers)
        return 0

    commit = _commit(args.commit)
    name = re.sub(r"[^A-Za-z0-9._-]", "-", f"gpu-pass-{args.profile}-{commit}-{time.strftime('%Y%m%d-%H%M%S')}")
    archive = out / name
    for folder in ("notebooks", "benchmarks"):
        (archive / folder).mkdir(parents=True, exist_ok=True)
    work = archive / "work"
    env = {**os.environ, "COOKBOOK_PROFILE": args.profile, "COOKBOOK_COMMIT": commit, "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(ROOT)) if p)
    timeout = args.notebook_timeout or (480 if args.profile == "full" else 900)
    only = None if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
    lanes = plan(args.profile, only, tuple(s.strip() for s in args.cpu_lane.split(",")), archive, work, timeout)
    run = Pass(archive, env, args.deadline)
    run.say(f"GPU pass · profile {args.profile} · commit {commit} · python {sys.version.split()[0]} · "
            f"{os.cpu_count()} CPUs · steps: " + ", ".join(s.name for steps in lanes.values() for s in steps))
    run.run_lanes(lanes)
    shutil.rmtree(work, ignore_errors=True)
    # corpus, the notebooks by number, then the tests and benchmarks in the order they ran
    results = sorted(run.results, key=lambda r: (r.lane != "corpus", r.step[:1].isdigit() is False, r.start_s
                                                 if not r.step[:1].isdigit() else 0, r.step))
    failed = [r.step for r in results if r.status != "ok"]
    header = (f"# GPU pass — profile `{args.profile}`, commit `{commit}`, {run.elapsed():.0f} s wall"
              f"{'' if not failed else ' — not ok: ' + ', '.join(failed)}")
    (archive / "summary.md").write_text(_summary(results, header))
    (archive / "summary.json").write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1))
    run.say(_summary(results, header))
    run.close()
    with tarfile.open(out / f"{name}.tar.gz", "w:gz") as tar:
        tar.add(archive, arcname=name)
    print(f"archive: {out / f'{name}.tar.gz'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
