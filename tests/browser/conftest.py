"""End-to-end checks in a real browser: headless Chromium driven by Playwright (`make test-browser`).

The system Chromium is used (`/usr/bin/chromium`, or $COOKBOOK_CHROMIUM): Playwright downloads no browser.
On a closed network Chromium needs the flags below, or it keeps trying to reach Google's services. Every test
here is marked `browser` (left out of `make unit`) and skips with the reason when Chromium or Playwright is
missing. Screenshots go to runs/browser/ (or $COOKBOOK_BROWSER_ARTIFACTS).
"""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser():
    executable = os.environ.get("COOKBOOK_CHROMIUM") or shutil.which("chromium")
    if not executable:
        pytest.skip("no Chromium (Debian: apt-get install chromium; elsewhere set COOKBOOK_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("COOKBOOK_BROWSER_ARTIFACTS") or ROOT / "runs" / "browser")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
