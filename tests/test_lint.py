"""The code stays ruff-clean and mypy-clean: checked with the tests, so CI enforces both."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed; `pip install -e '.[test]'` installs it")
    result = subprocess.run([ruff, "check", "taskmaster", "tests", "examples", "benchmarks"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean(tmp_path: Path) -> None:
    # Its settings are in setup.cfg; its cache goes to a temporary directory, not the checkout.
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path),
                             "taskmaster"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
