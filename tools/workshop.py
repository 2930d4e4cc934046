"""`make workshop`: everything a room of laptops needs, prepared once, in one archive that installs offline.

    python tools/workshop.py pack                 # build/workshop/cookbook-workshop-py311-<platform>.tar
    python tools/workshop.py measure ARCHIVE      # time from the archive to notebook 00 open with its kernel

The archive holds the committed tree (`git archive HEAD`), a wheelhouse of every pinned package for this Python
and platform (pip, setuptools and torch included), and a cache with the profile's tokenizer, training blocks and
pretrained checkpoint, so nobody trains the base model at the start of the session. On each laptop:

    tar xf cookbook-workshop-*.tar && cd cookbook-workshop && make offline-install && make lab

`make offline-install` installs from `wheelhouse/` with no package index (`pip --no-index`) and copies `cache/`
into the cookbook cache (`$COOKBOOK_CACHE` or ~/.cache/cookbook). The cache is keyed by the corpus, which is
the interpreter's standard library: laptops need the Python version the archive was made with (its name says
which; WORKSHOP.md gives the exact version), or their first notebook trains the tokenizer and model as usual.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

import browser  # tools/browser.py, beside this file
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
NAME = "cookbook-workshop"
WARM_UP = """
from cookbook import profiles, train
from cookbook.data import sources, tokenizer
P = profiles.profile({profile!r})
tok = tokenizer.for_profile(P, sources.for_profile(P))
tokenizer.blocks_for_profile(P, tok)
train.pretrained(profile=P)
"""


def _run(command: list[str], **kwargs) -> None:
    print("+", " ".join(map(str, command)), flush=True)
    subprocess.run(command, check=True, **kwargs)


def _make_var(name: str) -> str:
    """A variable of the Makefile as make sees it (EXTRAS, CONSTRAINTS)."""
    out = subprocess.run(["make", "-s", "--no-print-directory", f"print-{name}"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return out.strip()


def archive_name() -> str:
    return f"{NAME}-py{sys.version_info.major}{sys.version_info.minor}-{sys.platform}_{platform.machine()}.tar"


def pack(out: Path, profile: str = "smoke") -> Path:
    """Write the workshop archive into `out` and return its path (see the module docstring)."""
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout
    if dirty:
        print(f"note: uncommitted changes are not in the archive (it packs HEAD):\n{dirty}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as staging:
        tree = Path(staging) / NAME
        tree.mkdir()
        source = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, check=True,
                                capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(source)) as tar:
            tar.extractall(tree, filter="data")
        wheels = tree / "wheelhouse"
        constraints = ROOT / _make_var("CONSTRAINTS")
        pip = [sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels), "-c", str(constraints)]
        _run(pip + ["pip", "setuptools", f".[{_make_var('EXTRAS')}]"], cwd=ROOT)
        _run(pip + ["--no-deps", "torchattacks"], cwd=ROOT)  # as make install: without its torchvision
        cache = tree / "cache"
        _run([sys.executable, "-c", WARM_UP.format(profile=profile)], cwd=ROOT,
             env=dict(os.environ, COOKBOOK_CACHE=str(cache), COOKBOOK_PROFILE=profile))
        (tree / "WORKSHOP.md").write_text(
            f"# Workshop archive\n\nMade with Python {platform.python_version()} on {sys.platform} "
            f"{platform.machine()} for the `{profile}` profile, from commit {_commit()}.\n\n"
            "    make offline-install   # no package index needed\n    make lab\n\n"
            "Laptops need this Python version for the cached tokenizer and model to apply (the corpus is the\n"
            "interpreter's standard library); with another one the first notebook trains them as usual.\n")
        path = out / archive_name()
        with tarfile.open(path, "w") as tar:  # wheels are compressed already
            tar.add(tree, arcname=NAME)
    return path


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(archive: Path, workdir: Path | None = None) -> dict[str, float]:
    """Seconds from the archive to notebook 00 open in JupyterLab with an idle kernel, on this machine, offline.

    The notebook is opened in headless Chromium (tools/browser.py). pip reads no configuration file and no index (PIP_CONFIG_FILE=/dev/null, --no-index): only the wheelhouse.
    The cookbook cache is a fresh folder, filled from the archive. Returns the time of each stage and the total.
    """
    workdir = Path(tempfile.mkdtemp()) if workdir is None else workdir
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, COOKBOOK_CACHE=str(workdir / "cookbook-cache"))
    times, start = {}, time.perf_counter()
    with tarfile.open(archive) as tar:
        tar.extractall(workdir, filter="data")
    tree = workdir / NAME
    times["unpack"] = time.perf_counter() - start
    _run(["make", "offline-install", f"PYTHON={sys.executable}"], cwd=tree, env=env)
    times["offline install"] = time.perf_counter() - start - sum(times.values())
    port, token = _free_port(), os.urandom(8).hex()
    server = subprocess.Popen([str(tree / ".venv" / "bin" / "jupyter"), "lab", "--no-browser", "--allow-root",
                               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tree / 'notebooks'}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError("JupyterLab exited during start-up") from None
                time.sleep(0.3)
        with sync_playwright() as playwright:  # open it as a reader does, until the kernel is idle
            chrome = playwright.chromium.launch(executable_path=browser.executable(), args=browser.FLAGS)
            page = chrome.new_page()
            browser.open_notebook(page, base, "00_setup_and_planning.ipynb", token, timeout_ms=300_000)
            chrome.close()
        times["notebook 00 open in JupyterLab, kernel idle"] = time.perf_counter() - start - sum(times.values())
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    loaded = time.perf_counter()
    _run([str(tree / ".venv" / "bin" / "python"), "-c",
          "from cookbook import train; train.pretrained(profile='smoke')"], cwd=tree, env=env)
    times["pretrained model from the cache (not counted)"] = time.perf_counter() - loaded
    times["total"] = loaded - start
    shutil.rmtree(workdir, ignore_errors=True)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="write the archive")
    packing.add_argument("--out", type=Path, default=ROOT / "build" / "workshop")
    packing.add_argument("--profile", default="smoke")
    measuring = commands.add_parser("measure", help="time an offline install from the archive")
    measuring.add_argument("archive", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        start = time.perf_counter()
        path = pack(args.out, args.profile)
        print(f"{path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f} s")
    else:
        for stage, seconds in measure(args.archive).items():
            print(f"{stage:>48}: {seconds:6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
