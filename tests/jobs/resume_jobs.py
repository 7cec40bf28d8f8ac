"""Job module for resume tests: a get_jobs(last=...) that resumes right, one late, or not at all.

get_jobs(last, count) yields ``range(start, count)``, where ``start`` is 0 on a fresh run and,
when resuming, depends on $RESUME_MODE:

- ``exact`` (the default): ``last``, inclusive, as the README asks;
- ``late``: ``last + 1`` (a common mistake: ``for i in range(last + 1, N)``);
- ``ignore``: 0, as if ``last`` were never given.

It announces ``get_jobs(last=...)`` on stderr. With HOLD_AT=K and HOLD_GATE=path, it blocks
before yielding job K until that file exists (a poll in a C sleep: the master pulls get_jobs in
a thread of its own), so that a test can make the stream wait.

handle_job is `gated_jobs.handle_job`: it appends the job to $LEDGER (with the knobs of
`ledger_jobs`), and with GATE and GATE_ON=K, job K waits for the GATE file first.
"""

from __future__ import annotations

import ctypes
import os
import sys

import gated_jobs

_libc = ctypes.CDLL(None)
HOLD_POLL_US = 10_000

handle_job = gated_jobs.handle_job


def get_jobs(last=None, count="1000"):
    print(f"get_jobs(last={last!r})", file=sys.stderr, flush=True)
    mode = os.environ.get("RESUME_MODE", "exact")
    if last is None or mode == "ignore":
        start = 0
    elif mode == "late":
        start = int(last) + 1
    else:
        start = int(last)
    hold_at, gate = os.environ.get("HOLD_AT"), os.environ.get("HOLD_GATE")
    for job in range(start, int(count)):
        if gate and hold_at is not None and job == int(hold_at):
            while not os.path.exists(gate):
                _libc.usleep(HOLD_POLL_US)
        yield job
