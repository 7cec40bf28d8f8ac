"""Job module for process tests: `ledger_jobs`, but handle_job waits for a gate file first.

Environment: everything `ledger_jobs` reads, plus GATE (a path): while it does not exist,
handle_job waits for it (a gevent-friendly poll), so that a test can hold a run open whatever the
machine's speed. With GATE_ON=K only job K waits; without it every job does.
"""

from __future__ import annotations

import os
import time

import ledger_jobs

GATE_POLL_S = 0.01

get_jobs = ledger_jobs.get_jobs


def handle_job(job):
    gate = os.environ.get("GATE")
    gate_on = os.environ.get("GATE_ON")
    if gate and (gate_on is None or gate_on == str(job)):
        while not os.path.exists(gate):
            time.sleep(GATE_POLL_S)  # the slave monkey-patches time: other greenlets run
    ledger_jobs.handle_job(job)
