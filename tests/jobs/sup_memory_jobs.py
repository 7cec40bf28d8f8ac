"""Job module for supervision tests: `ledger_jobs` plus a handle_job that is bad with memory.

handle_job does what ledger_jobs.handle_job does (append the job to $LEDGER, with its knobs
SLEEP_S, FAIL_EVERY and EXIT_ON), after these optional faults, read per job from the environment:

- LEAK_MB=M: keep M MB more (written, so resident) in a module-level list on every job: the
  process's resident memory grows by that much a job, for as long as the process lives.
- OOM_ON=K: the first time job K runs (on any slave; a marker file beside the ledger
  remembers), announce ``job K raises MemoryError`` on stderr and raise MemoryError. Later
  runs of job K succeed.
"""

from __future__ import annotations

import os
import sys

import fault_jobs
import ledger_jobs

get_jobs = ledger_jobs.get_jobs

_leaked: list[bytes] = []


def handle_job(job):
    leak_mb = float(os.environ.get("LEAK_MB", "0"))
    if leak_mb:
        _leaked.append(b"\x01" * int(leak_mb * 1_000_000))  # every page written: resident
    if os.environ.get("OOM_ON") == str(job) and fault_jobs.first_time(f"oom-{job}"):
        print(f"job {job} raises MemoryError", file=sys.stderr, flush=True)
        raise MemoryError(f"job {job} runs out of memory on purpose")
    ledger_jobs.handle_job(job)
