"""Job module for fault-injection tests: `ledger_jobs` plus the faults user code can have.

handle_job does what ledger_jobs.handle_job does (append the job to $LEDGER, with the knobs
SLEEP_S, FAIL_EVERY and EXIT_ON), after these optional faults, read per job from the environment:

- SPIN_ON=K, SPIN_S=seconds: on job K, burn the CPU in a loop that never yields to gevent.
- HANG_ON=K: on job K, ``time.sleep(3600)`` (gevent-friendly: the slave monkey-patches time).
- STUBBORN_ON=K: on job K, announce ``stubborn job K started``, then sleep for an hour in short
  naps, retrying any `Exception` that interrupts a nap, as a retry loop around I/O does: it
  swallows the time-out --job-timeout raises in it.
- SLOW_ON=K, SLOW_S=seconds: the first time job K runs (on any slave; a marker file beside
  the ledger remembers), announce ``slow job K started`` on stderr, then sleep (gevent-friendly)
  for SLOW_S seconds. Later runs of job K are quick.

get_jobs(last, count, raise_at, unpicklable_at) yields ``range(last, count)`` and announces its
``last`` on stderr (``get_jobs(last=...)``) so a test can see where a restart resumed. Unless
$GET_JOBS_FIXED is set, it raises RuntimeError instead of yielding job ``raise_at``, and yields a
`threading.Lock` (which cannot be pickled) in place of job ``unpicklable_at``.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import ledger_jobs


def get_jobs(last=0, count="1000", raise_at=None, unpicklable_at=None, **kwargs):
    print(f"get_jobs(last={last!r})", file=sys.stderr, flush=True)
    fixed = bool(os.environ.get("GET_JOBS_FIXED"))
    for job in range(int(last), int(count)):
        if not fixed and raise_at is not None and job == int(raise_at):
            raise RuntimeError(f"get_jobs fails at job {job} on purpose")
        if not fixed and unpicklable_at is not None and job == int(unpicklable_at):
            yield threading.Lock()
            continue
        yield job


def handle_job(job):
    if os.environ.get("SPIN_ON") == str(job):
        seconds = float(os.environ.get("SPIN_S", "6"))
        print(f"spinning on job {job} for {seconds}s", file=sys.stderr, flush=True)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:  # no I/O, no sleep: never yields to the gevent hub
            pass
    if os.environ.get("SLOW_ON") == str(job) and first_time(f"slow-{job}"):
        print(f"slow job {job} started", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get("SLOW_S", "5")))
    if os.environ.get("HANG_ON") == str(job):
        time.sleep(3600)
    if os.environ.get("STUBBORN_ON") == str(job):
        print(f"stubborn job {job} started", file=sys.stderr, flush=True)
        end = time.monotonic() + 3600
        while time.monotonic() < end:
            try:
                time.sleep(0.1)
            except Exception:  # noqa: BLE001 - the point: it swallows the time-out
                continue
    ledger_jobs.handle_job(job)


def first_time(name):
    """True for the first caller only, across processes: creates a marker beside the ledger."""
    try:
        fd = os.open(f"{os.environ['LEDGER']}.{name}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True
