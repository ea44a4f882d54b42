"""The package is `voicebridge`: nothing named `app` is left to collide with a user's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_app_package_remains() -> None:
    assert not (ROOT / "app").exists()


def test_python_m_voicebridge_is_the_cli() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "voicebridge", "--help"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    assert "serve" in run.stdout
