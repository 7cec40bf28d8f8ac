from __future__ import annotations

import compileall
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from procs import Procs

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Byte-compile the package once, for every process the tests start.

    Where Python is told not to write bytecode (PYTHONDONTWRITEBYTECODE, as on some CI
    machines), each of the suite's hundreds of commands would compile the whole package
    again: a tenth of a second of CPU each. Python still reads bytecode that is there, so the
    suite writes it where Python itself would (``__pycache__``, ignored by git).
    """
    if sys.flags.dont_write_bytecode:
        for folder in ("taskmaster", "tests/jobs", "benchmarks", "examples"):
            compileall.compile_dir(ROOT / folder, quiet=1, maxlevels=0)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Start commands in a fresh directory; whatever is still running at the end is killed."""
    p = Procs(tmp_path)
    yield p
    p.cleanup()
