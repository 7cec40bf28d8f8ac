"""Job module for process tests: every executed job is appended to a ledger file.

Environment: LEDGER (path, required), plus optional knobs read per job so that a test can
inject behaviour: SLEEP_S (seconds per job, gevent-friendly), FAIL_EVERY (raise on jobs
divisible by it), EXIT_ON (os._exit on this job).
"""

from __future__ import annotations

import os
import time


def get_jobs(last=0, count="1000", **kwargs):
    yield from range(int(last), int(count))


def handle_job(job):
    sleep_s = float(os.environ.get("SLEEP_S", "0"))
    if sleep_s:
        time.sleep(sleep_s)
    if os.environ.get("EXIT_ON") == str(job):
        os._exit(3)
    fail_every = int(os.environ.get("FAIL_EVERY", "0"))
    if fail_every and job % fail_every == 0:
        raise ValueError(f"job {job} fails on purpose")
    append(os.environ["LEDGER"], job)


def append(path, job):
    """Add ``job`` as a line of the file at ``path``: one write() under O_APPEND, so that
    lines from concurrent slaves never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{job}\n".encode())
    finally:
        os.close(fd)
