"""Debian's chromium for the browser tests (the UI test, the report test), driven by Playwright."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def chromium_binary() -> str | None:
    """The Debian chromium binary itself (``/usr/bin/chromium`` is a shell wrapper around it)."""
    real = Path("/usr/lib/chromium/chromium")
    if real.is_file() and os.access(real, os.X_OK):
        return str(real)
    return shutil.which("chromium")
