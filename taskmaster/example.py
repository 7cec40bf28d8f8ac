"""The example from the README: ``tm-run taskmaster/example.py 4`` works right after install.

``get_jobs`` yields the numbers from ``last`` (inclusive) up to ``count``; ``handle_job`` does a
little arithmetic, which is idempotent as every handle_job must be.
"""

from __future__ import annotations

from collections.abc import Iterator

from taskmaster import sized


def get_jobs(last: int = 0, count: str | int = 100_000, **kwargs: str) -> sized:
    """Jobs ``last .. count-1``; ``tm-master taskmaster.example count=1000`` makes fewer."""
    start, stop = int(last), int(count)

    def numbers() -> Iterator[int]:
        yield from range(start, stop)

    return sized(numbers(), total=max(0, stop - start))


def handle_job(job: int) -> int:
    """Square the number: pure, so running it twice does no harm."""
    return job * job
