"""Headless Chromium for the browser tests and the workshop timing: the system browser, flags for a closed network.

Playwright drives the Chromium of the system (`/usr/bin/chromium`, or $COOKBOOK_CHROMIUM) and downloads none.
Without the background-networking flags Chromium keeps trying to reach Google's services, which a closed
network refuses.
"""

from __future__ import annotations

import os
import shutil

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def executable() -> str | None:
    """The Chromium to drive, or None when there is none."""
    return os.environ.get("COOKBOOK_CHROMIUM") or shutil.which("chromium")


def wait_for_idle_kernel(page, timeout_ms: int = 90_000) -> None:
    """Wait until JupyterLab's status bar says the open notebook's kernel is connected and idle."""
    page.wait_for_function("() => (document.querySelector('#jp-main-statusbar') || {}).textContent?.includes('Idle')",
                           timeout=timeout_ms)
