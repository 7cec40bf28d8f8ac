"""10 ms sleeping jobs (IO-bound: they scale with --concurrency).

``tm-run benchmarks/sleep_jobs.py 2 count=N``; see ``jobs.py``.
"""

from __future__ import annotations

from typing import Any

from jobs import numbers
from jobs import sleep as handle_job

__all__ = ["get_jobs", "handle_job"]


def get_jobs(last: Any = None, count: str = "1000000", **kwargs: str) -> Any:
    """Jobs from ``last`` (inclusive) up to ``count``."""
    return numbers(last, count)
