"""Job module for tests of what a terminal shows: a stream that knows its length.

get_jobs(last, count) returns ``range(last, count)`` (so the run knows its total, and can show
a percentage and an ETA). handle_job sleeps SLEEP_S (gevent-friendly), raises ValueError on
every job divisible by FAIL_EVERY, and appends every job it finishes to $LEDGER when given.
"""

from __future__ import annotations

import os
import time

import ledger_jobs


def get_jobs(last=None, count="3000"):
    return range(0 if last is None else int(last), int(count))


def handle_job(job):
    time.sleep(float(os.environ.get("SLEEP_S", "0")))
    fail_every = int(os.environ.get("FAIL_EVERY", "0"))
    if fail_every and job % fail_every == 0:
        raise ValueError(f"job {job} fails on purpose")
    if os.environ.get("LEDGER"):
        ledger_jobs.append(os.environ["LEDGER"], job)
