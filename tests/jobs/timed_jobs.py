"""Job module for rate tests: each job appends "job wall-time" to the ledger file (LEDGER)."""

from __future__ import annotations

import os
import time

from ledger_jobs import append


def get_jobs(last=0, count="1000", **kwargs):
    yield from range(int(last), int(count))


def handle_job(job):
    append(os.environ["LEDGER"], f"{job} {time.time():.6f}")
