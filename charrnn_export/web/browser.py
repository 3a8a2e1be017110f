"""Headless Chromium for the tests and the browser benchmark, driven by Playwright.

    find_chromium() -> path or None      Debian's chromium-headless-shell (or chromium)
    launch(playwright) -> Browser        with the flags for an offline, quiet, sandbox-less run

Playwright's own `playwright install` downloads a browser build, which cannot work where only
package registries are reachable; the distribution's Chromium is used through executable_path.
Playwright is imported by the caller (a test dependency, not the package's).
"""

from __future__ import annotations

import os
import shutil

CHROMIUM_ENV = "CHARRNN_EXPORT_CHROMIUM"  # a Chromium binary to use instead of the ones below
CANDIDATES = (
    "/usr/lib/chromium/chromium-headless-shell",  # Debian's chromium-headless-shell (the real binary)
    "chromium-headless-shell",
    "/usr/lib/chromium/chromium",  # Debian's full chromium, run headless
    "chromium",
)
LAUNCH_ARGS = [
    "--no-sandbox",  # root in a container: the setuid sandbox is unavailable
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no update or metrics calls: the runs are offline
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    if os.environ.get(CHROMIUM_ENV):
        return os.environ[CHROMIUM_ENV]
    for candidate in CANDIDATES:
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.access(path, os.X_OK):
            return path
    return None


def launch(playwright, executable: str | None = None):
    executable = executable or find_chromium()
    if executable is None:
        raise FileNotFoundError("no Chromium found: apt-get install chromium-headless-shell (or chromium), "
                                f"or set {CHROMIUM_ENV}")
    return playwright.chromium.launch(executable_path=executable, headless=True, args=LAUNCH_ARGS)
