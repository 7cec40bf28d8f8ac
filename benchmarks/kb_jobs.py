"""1 KB jobs that do nothing: for the master's memory with long streams.

``tm-run benchmarks/kb_jobs.py 2 count=N``; see ``jobs.py``.
"""

from __future__ import annotations

from typing import Any

from jobs import kilobytes
from jobs import noop as handle_job

__all__ = ["get_jobs", "handle_job"]


def get_jobs(last: Any = None, count: str = "1000000", **kwargs: str) -> Any:
    """Jobs from ``last`` (inclusive) up to ``count``."""
    return kilobytes(last, count)
