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


def open_notebook(page, base: str, name: str, token: str, timeout_ms: int = 90_000) -> None:
    """Open notebook `name` alone, in a workspace of its own reset to nothing (otherwise Lab restores the tabs of
    an earlier page, and the menus act on whichever is current), and wait until its kernel is idle."""
    workspace = name.rsplit(".", 1)[0]
    page.goto(f"{base}/lab/workspaces/{workspace}/tree/{name}?token={token}&reset")
    status = "(document.querySelector('#jp-main-statusbar') || {}).textContent || ''"
    page.wait_for_function(f"() => {{ const s = {status}; return s.includes('Idle') && s.includes({name!r}); }}",
                           timeout=timeout_ms)
