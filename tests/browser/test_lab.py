"""JupyterLab as a reader meets it: the kernel starts in the project venv, Run All works, the progress bars render
as widgets and the training monitor's live view refreshes in place."""

import contextlib
import json
import os
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


def _run_all(page, url: str, token: str, name: str, timeout_s: float, screenshot: Path, watch=None) -> list:
    """Open `name`, Run All from the menu, wait until the kernel is idle with no cell queued; `watch(page)` is
    called about every second meanwhile, and the list of what it returned is returned. On a timeout the page
    is saved to `screenshot`."""
    page.goto(f"{url}/lab/tree/{name}?token={token}")
    chromium.wait_for_idle_kernel(page)
    page.click("li.lm-MenuBar-item:has-text('Run')")
    page.click("li.lm-Menu-item:has-text('Run All Cells')")
    seen, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if watch is not None:
            seen.append(watch(page))
        prompts = page.eval_on_selector_all(_PROMPTS, "els => els.map(e => e.textContent.trim())")
        idle = "Idle" in page.inner_text("#jp-main-statusbar")
        if idle and prompts and "[*]:" not in prompts and prompts[0] != "[ ]:":
            return seen
        time.sleep(1)
    page.screenshot(path=str(screenshot))
    pytest.fail(f"{name} did not finish in {timeout_s:.0f} s: prompts {prompts}, status bar "
                f"{page.inner_text('#jp-main-statusbar')!r}; screenshot {screenshot.name}")


def _saved(page, path: Path):
    """Save from the page (Ctrl+S) and read back what Lab wrote: the run's outputs, as the kernel sent them."""
    before = path.stat().st_mtime_ns
    page.keyboard.press("Control+s")
    for _ in range(60):
        if path.stat().st_mtime_ns != before:
            break
        time.sleep(0.5)
    time.sleep(0.5)
    return nbformat.read(path, as_version=4)


def _check_ran_cleanly(notebook, name: str) -> None:
    code = [c for c in notebook.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    assert all(c.execution_count for c in code), f"{name}: not every code cell ran"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lab")
    with _lab(folder, tmp_path_factory.mktemp("lab-settings")) as (url, token):
        yield folder, url, token


def test_notebook_00_runs_in_the_project_kernel(lab, browser, artifacts):
    folder, url, token = lab
    name = "00_setup_and_planning.ipynb"
    path = _fresh_copy(name, folder)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    _run_all(page, url, token, name, timeout_s=300, screenshot=artifacts / "lab-00.png")
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
    folder, url, token = lab
    name = "06_monitoring_and_diagnostics.ipynb"
    path = _fresh_copy(name, folder)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    states = _run_all(page, url, token, name, timeout_s=600, screenshot=artifacts / "lab-06-live.png",
                      watch=lambda p: p.evaluate(_LIVE_OUTPUT))
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
