"""1 ms CPU-bound jobs.

``tm-run benchmarks/cpu_jobs.py 2 count=N``; see ``jobs.py``.
"""

from __future__ import annotations

from typing import Any

from jobs import cpu as handle_job
from jobs import numbers

__all__ = ["get_jobs", "handle_job"]


def get_jobs(last: Any = None, count: str = "1000000", **kwargs: str) -> Any:
    """Jobs from ``last`` (inclusive) up to ``count``."""
    return numbers(last, count)
