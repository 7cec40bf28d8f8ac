from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from procs import Procs


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Start commands in a fresh directory; whatever is still running at the end is killed."""
    p = Procs(tmp_path)
    yield p
    p.cleanup()
