"""The benchmark's job streams and callbacks, shared by the tm-run modules and the Pool runner.

Each kind has a stream ``<kind>_stream(last, count)`` that resumes at ``last`` inclusive, and a
callback. The tm-run side imports them through one small module per kind (``noop_jobs.py`` and
friends), so that no callback pays for dispatching on the kind of job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from taskmaster import sized

CPU_JOB_S = 0.001
SLEEP_JOB_S = 0.01
KB = 1024


def numbers(last: int | None, count: str | int) -> sized:
    """The jobs ``last .. count-1`` (from 0 on a fresh run)."""
    start, stop = int(last or 0), int(count)
    return sized(iter(range(start, stop)), total=max(0, stop - start))


def kilobytes(last: bytes | None, count: str | int) -> sized:
    """``count`` jobs of 1 KB each, each built from its sequence number as it is yielded."""
    start = 0 if last is None else int.from_bytes(last[:8], "big")
    stop = int(count)

    def stream() -> Iterator[bytes]:
        for seq in range(start, stop):
            # 8 bytes repeated: every job differs, and nothing here keeps a reference to it.
            yield seq.to_bytes(8, "big") * (KB // 8)

    return sized(stream(), total=max(0, stop - start))


def noop(job: object) -> None:
    """Do nothing: what is left is the cost of moving the job."""


def cpu(job: object) -> None:
    """Hold the CPU for 1 ms, never yielding (as a real CPU-bound callback would)."""
    deadline = time.perf_counter() + CPU_JOB_S
    while time.perf_counter() < deadline:
        pass


def sleep(job: object) -> None:
    """Wait 10 ms; in a slave, gevent's patched sleep lets the other greenlets run meanwhile."""
    time.sleep(SLEEP_JOB_S)


STREAMS: dict[str, Callable[[Any, str | int], sized]] = {
    "noop": numbers, "cpu": numbers, "sleep": numbers, "kb": kilobytes}
CALLBACKS: dict[str, Callable[[object], None]] = {
    "noop": noop, "cpu": cpu, "sleep": sleep, "kb": noop}
