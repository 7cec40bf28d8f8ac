"""Job module for tests of the retry loop: jobs that stay broken until a test "fixes" them.

get_jobs(last, count) yields ``range(last, count)``. handle_job appends every job it is called
with to $ATTEMPTS (every attempt, failed or not), sleeps SLEEP_S, and raises ValueError for the
multiples of 10 at or above FIXED * 10 (FIXED=0: all of them are broken; FIXED=10: none of the
first hundred is).
"""

from __future__ import annotations

import os
import time

import ledger_jobs


def get_jobs(last=None, count="100"):
    return range(0 if last is None else int(last), int(count))


def handle_job(job):
    ledger_jobs.append(os.environ["ATTEMPTS"], job)
    time.sleep(float(os.environ.get("SLEEP_S", "0")))
    if job % 10 == 0 and job >= int(os.environ.get("FIXED", "0")) * 10:
        raise ValueError(f"job {job} is still broken")
