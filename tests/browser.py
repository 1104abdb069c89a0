"""Headless Chromium for the dashboard's browser tests: Debian's `chromium`, driven by Playwright
(which then downloads no browser of its own). Without the binary the test is skipped, or fails under
CI=true (`make test` installs it)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from typing import Any

from tests.servers import _missing_tool

__all__ = ["chromium"]

#: flags for a machine with no display, no network but loopback and (as root) no sandbox.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A Playwright `Browser` on Debian's Chromium; closed afterwards."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        _missing_tool("the dashboard's browser tests need Chromium (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()
