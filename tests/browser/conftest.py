"""End-to-end checks in a real browser: headless Chromium driven by Playwright (`make test-browser`).

The system Chromium is used (tools/browser.py: no browser download, flags for a closed network). Every test
here is marked `browser` (left out of `make unit`) and skips with the reason when Chromium or Playwright is
missing. Screenshots go to runs/browser/ (or $COOKBOOK_BROWSER_ARTIFACTS).
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_tool(name: str):
    """A module of tools/ (not a package), imported once."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look the module up
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


chromium = load_tool("browser")


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser():
    executable = chromium.executable()
    if not executable:
        pytest.skip("no Chromium (Debian: apt-get install chromium; elsewhere set COOKBOOK_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=chromium.FLAGS)
        yield instance
        instance.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("COOKBOOK_BROWSER_ARTIFACTS") or ROOT / "runs" / "browser")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
