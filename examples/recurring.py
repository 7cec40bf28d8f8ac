"""An endless recurring schedule: 350 000 tasks, each due every 30 minutes, with no write per task.

The problem (Stack Overflow question 2458296): 350 000 tasks run about every half hour, 16.8
million executions a day, spread over many machines. Keeping an "execute at" timestamp per task
in the database, and writing it after every run, is a write load of hundreds a second that buys
nothing. The accepted answer keeps the schedule in memory instead: a ``heapq`` min-heap of
``(next due time, task id)``; pop the earliest, run it when it is due, push it back one period
later. This module is that answer as a Taskmaster stream.

Run it at real size on one host (a master and four local slaves)::

    tm-run examples/recurring.py 4
    end=$(( $(date +%s) + 3600 )); tm-run examples/recurring.py 4 tasks=1000 period=60 until=$end

(a restart takes the same KEY=VALUE words, ``until`` too: they are the run's identity),
or across hosts (the same checkout on every box, and a shared secret in ``$TASKMASTER_SECRET``:
see Security in the README)::

    tm-master examples/recurring.py --address tcp://0.0.0.0:3050              # one box
    tm-spawn examples/recurring.py 8 --address tcp://master.example:3050      # every other box

Why no write per task. Task ``i`` is due at ``k * period + i * period / tasks`` for every integer
``k``: absolute times, spread evenly over the period, a pure function of the arguments and of
nothing that happened. So the only thing a crash can lose is *how far the run got*, and that is
what the master checkpoints anyway, about once a second, as the earliest job not finished: one
small file write a second, whatever the number of tasks. ``handle_job`` writes nothing.

How a restart resumes. The restarted master calls ``get_jobs(last=(due, task))`` with that
earliest unfinished job; the heap is rebuilt with each task's first due time whose ``(due,
task)`` is at or after ``last`` (in tuple order), so the stream begins with ``last`` itself, and
every due time the dead master had not seen finished runs: those in the past at once (a master
down for an hour catches up two rounds, 700 000 jobs, as fast as the slaves go), the others when
they come due. Jobs finished after the checkpoint may run again, so ``handle_job`` must be
idempotent. The master writes its first checkpoint before the first job goes out, so even a
master killed at once is resumed from its first job, never started afresh from a later now.

What it costs the master, measured (Python 3.11, Linux x86-64, ``python examples/recurring.py``
prints the figures): the heap of 350 000 ``(float, int)`` tuples holds 40.1 MiB (tracemalloc),
about 120 bytes a task; a process that builds it grows by 46 MiB resident, and a running
``tm-master`` of this schedule holds 82 MiB resident where one of a single task holds 36 MiB.
Building the heap takes 0.3 to 0.5 s, on a fresh start as on a resume, once per start of the
master; each job then costs a ``heappop`` and a ``heappush``, about 2 us, at 194 jobs a second.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import resource
import sys
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass

Job = tuple[float, int]
"""``(due, task)``: a unix time, and the id of the task due then."""


@dataclass(frozen=True)
class Schedule:
    """``tasks`` tasks; task ``i`` is due at ``k * period + i * period / tasks``, every int k."""

    tasks: int
    period: float

    def due(self, k: int, task: int) -> float:
        """The ``k``-th due time of ``task``. Always computed from ``k`` by this one expression,
        never by adding ``period`` to the last due time: accumulated rounding would drift from
        the times a resumed run computes afresh, and a resumed stream must meet the very float
        the checkpoint holds."""
        return k * self.period + task * self.period / self.tasks

    def round_of(self, due: float, task: int) -> int:
        """The ``k`` of a due time of ``task`` (exact: rounding errors are far below half a
        period)."""
        return round((due - task * self.period / self.tasks) / self.period)

    def first_at_or_after(self, task: int, after: Job) -> Job:
        """The first job of ``task`` that is ``>= after`` in tuple order (due time, then id)."""
        k = math.ceil((after[0] - task * self.period / self.tasks) / self.period)
        # The division may land one round off either way: settle it with the comparison the
        # stream itself is ordered by.
        while (self.due(k - 1, task), task) >= after:
            k -= 1
        while (self.due(k, task), task) < after:
            k += 1
        return (self.due(k, task), task)

    def heap(self, after: Job) -> list[Job]:
        """A min-heap of every task's first job at or after ``after``."""
        heap = [self.first_at_or_after(task, after) for task in range(self.tasks)]
        heapq.heapify(heap)
        return heap


def get_jobs(last: Job | None = None, tasks: str = "350000", period: str = "1800",
             until: str | None = None) -> Iterator[Job]:
    """Every task's due times in order, each yielded once it is due: from ``last`` (inclusive)
    when resuming, else from now on. ``period`` is in seconds; with ``until`` (a unix time) the
    stream ends before the first due time at or after it, else it never ends."""
    schedule = Schedule(int(tasks), float(period))
    if schedule.tasks < 1 or not schedule.period > 0:
        raise ValueError(f"tasks must be at least 1 and period above 0, got {tasks}, {period}")
    end = math.inf if until is None else float(until)
    # A fresh run starts at the first due time from now on: (now, -1) is before every task
    # due at `now` itself, since ids start at 0.
    heap = schedule.heap(last if last is not None else (time.time(), -1))
    return _due_jobs(schedule, heap, end)


def _due_jobs(schedule: Schedule, heap: list[Job], end: float) -> Iterator[Job]:
    while True:
        job = heapq.heappop(heap)
        due, task = job
        if due >= end:
            return
        # The master pulls this stream in an OS thread of its own: sleeping here holds up
        # nothing but this stream. time.sleep may wake a little early by the wall clock (it
        # counts on the monotonic one): sleep again until the job is due by time.time().
        while (wait := due - time.time()) > 0:
            time.sleep(wait)
        # Pushed back before the yield: once the job is out, the generator may never resume.
        heapq.heappush(heap, (schedule.due(schedule.round_of(due, task) + 1, task), task))
        yield job


def describe(task: int) -> str:
    """What task ``task`` is: a stand-in for reading its row (a read, which is cheap)."""
    return f"poll https://example.invalid/feeds/{task}"


def handle_job(job: Job) -> str:
    """Run one task for one due time: a placeholder, cheap and idempotent (running a due time
    twice does no harm), that writes nothing: no timestamp, since the schedule needs none."""
    due, task = job
    return hashlib.blake2b(f"{describe(task)} at {due!r}".encode(), digest_size=8).hexdigest()


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(tasks: int = 350_000, period: float = 1800.0) -> None:
    """Print what the heap costs the master: build time (fresh and resumed) and memory."""
    schedule = Schedule(tasks, period)
    rss_before = _max_rss_mib()
    started = time.perf_counter()
    heap = schedule.heap((time.time(), -1))
    fresh_s = time.perf_counter() - started
    rss_grew = _max_rss_mib() - rss_before
    last = heap[len(heap) // 2]  # any job of the schedule: a resume from the middle of a round
    del heap
    started = time.perf_counter()
    heap = schedule.heap(last)
    resume_s = time.perf_counter() - started
    del heap
    tracemalloc.start()
    heap = schedule.heap((time.time(), -1))
    held, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    started = time.perf_counter()
    for _ in range(tasks):
        due, task = heapq.heappop(heap)
        heapq.heappush(heap, (schedule.due(schedule.round_of(due, task) + 1, task), task))
    per_job_us = (time.perf_counter() - started) / tasks * 1e6
    print(f"{tasks} tasks: heap {held / 2**20:.1f} MiB (tracemalloc), resident size grew "
          f"{rss_grew:.0f} MiB; built in {fresh_s:.2f} s fresh, {resume_s:.2f} s resumed; "
          f"pop + push {per_job_us:.1f} us a job")


if __name__ == "__main__":
    measure(*(int(arg) for arg in sys.argv[1:2]))
