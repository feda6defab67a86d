"""Real headless Chromium (the Debian `chromium` package) for the page tests: the report opened from disk, the live
page of `tunelab watch` over loopback."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install -y chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]
    result = subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result
