"""JupyterLab as a reader meets it: the kernel starts in the project venv, Run All works, the progress bars render
as widgets and the training monitor's live view refreshes in place."""

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from tests.browser.conftest import ROOT, chromium

# Lab renders only the cells in view by default; the checks below read every cell's output from the page.
SETTINGS = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
            "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                                  "checkForUpdates": False}}
_PROMPTS = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputArea-prompt"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _lab(folder: Path, settings: Path):
    """A JupyterLab server of this venv on a free loopback port with a random token, stopped by its PID."""
    for name, values in SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    log = open(settings / "lab.log", "w")  # noqa: SIM115 (closed below, after the server)
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(settings / "ws"))
    env.pop("MPLBACKEND", None)  # tests/conftest.py sets agg for the test process; a reader's kernel uses inline
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                               f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
                               f"--ServerApp.root_dir={folder}", "--LabApp.extension_manager=readonly",
                               "--allow-root"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start: {(settings / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", token
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _fresh_copy(name: str, folder: Path) -> Path:
    """The committed notebook without outputs: everything the page shows comes from this run."""
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(notebook, folder / name)
    return folder / name


def _run_all(page, url: str, token: str, name: str, timeout_s: float, screenshot: Path, log: Path,
             watch=None) -> list:
    """Open `name`, Run All from the menu, wait until the kernel is idle and every code cell has its execution
    count; `watch(page)` is called about every second meanwhile, and the list of what it returned is returned.
    A run that stops early (the kernel died: nothing queued, cells never run) or a timeout fails with the prompts,
    the end of the server's log and a screenshot."""
    chromium.open_notebook(page, url, name, token)
    _menu(page, "Run", "runmenu:run-all")
    seen, deadline, stopped_since = [], time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        if watch is not None:
            seen.append(watch(page))
        prompts = page.eval_on_selector_all(_PROMPTS, "els => els.map(e => e.textContent.trim())")
        idle = "Idle" in page.inner_text("#jp-main-statusbar")
        if idle and prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
            return seen
        # Right after the click nothing is queued yet: only a run idle with unrun cells for 10 s has stopped.
        stopped = idle and "[*]:" not in prompts and any(re.fullmatch(r"\[\d+\]:", p) for p in prompts)
        stopped_since = (stopped_since or time.monotonic()) if stopped else None
        if stopped_since and time.monotonic() - stopped_since > 10:
            break
        time.sleep(1)
    page.screenshot(path=str(screenshot))
    what = "stopped before the end" if stopped_since else f"did not finish in {timeout_s:.0f} s"
    pytest.fail(f"{name} {what}: prompts {prompts}, status bar {page.inner_text('#jp-main-statusbar')!r}; "
                f"screenshot {screenshot.name}; server log ends:\n{log.read_text()[-3000:]}")


def _menu(page, menu: str, command: str) -> None:
    """Click a command in a menu of Lab's menu bar (Lumino names each item by its command id)."""
    page.click(f"li.lm-MenuBar-item:has-text('{menu}')")
    page.click(f"li.lm-Menu-item[data-command='{command}']")


def _saved(page, path: Path):
    """Save from the File menu and read back what Lab wrote: the run's outputs, as the kernel sent them."""
    before = path.stat().st_mtime_ns
    _menu(page, "File", "docmanager:save")
    deadline = time.monotonic() + 30
    while path.stat().st_mtime_ns == before:
        if time.monotonic() > deadline:
            pytest.fail(f"Lab did not save {path.name} within 30 s")
        time.sleep(0.5)
    time.sleep(0.5)
    return nbformat.read(path, as_version=4)


def _check_ran_cleanly(notebook, name: str) -> None:
    code = [c for c in notebook.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    unrun = [i for i, c in enumerate(code) if not c.execution_count]
    assert not unrun, f"{name}: code cells {unrun} of {len(code)} have no execution count in the saved file"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    folder, settings = tmp_path_factory.mktemp("lab"), tmp_path_factory.mktemp("lab-settings")
    with _lab(folder, settings) as (url, token):
        yield folder, url, token, settings / "lab.log"


def test_notebook_00_runs_in_the_project_kernel(lab, browser, artifacts):
    folder, url, token, log = lab
    name = "00_setup_and_planning.ipynb"
    path = _fresh_copy(name, folder)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    _run_all(page, url, token, name, timeout_s=300, screenshot=artifacts / "lab-00.png", log=log)
    page.screenshot(path=str(artifacts / "lab-00.png"))
    notebook = _saved(page, path)
    page.close()
    _check_ran_cleanly(notebook, name)
    setup = "".join(o.get("text", "") for o in notebook.cells[1].outputs)
    assert setup.startswith("profile smoke · device cpu"), setup  # the kernel runs the cookbook of this checkout


_LIVE_OUTPUT = """() => {
  const cell = [...document.querySelectorAll('.jp-CodeCell')]
      .find(c => c.querySelector('.jp-InputArea-editor').textContent.includes('live=True'));
  if (!cell) return null;
  const images = [...cell.querySelectorAll('.jp-OutputArea-output img')].map(i => i.getAttribute('src'));
  return images.join('|');
}"""


def test_training_notebook_shows_progress_widgets_and_a_live_plot(lab, browser, artifacts):
    folder, url, token, log = lab
    name = "06_monitoring_and_diagnostics.ipynb"
    path = _fresh_copy(name, folder)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    states = _run_all(page, url, token, name, timeout_s=600, screenshot=artifacts / "lab-06-live.png",
                      log=log, watch=lambda p: p.evaluate(_LIVE_OUTPUT))
    notebook_html = page.inner_html(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
    bars = page.locator(".jp-OutputArea-output .widget-hprogress").count()
    live = page.evaluate(_LIVE_OUTPUT)
    page.locator(".jp-CodeCell", has_text="live=True").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "lab-06-live.png"))
    notebook = _saved(page, path)
    page.close()
    _check_ran_cleanly(notebook, name)
    assert bars >= 1, "no tqdm progress bar rendered as a widget"
    assert "Error displaying widget" not in notebook_html and "HBox(children=" not in notebook_html
    pictures = [s for s in states if s]
    assert live and live.count("|") == 0, "the live view should show one picture, updated in place"
    assert len(set(pictures)) >= 2, "the live plot never refreshed while training"
