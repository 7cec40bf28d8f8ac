"""Job module for tests of slow and blocking streams: get_jobs waits in C between yields.

get_jobs(last, count) yields ``range(last, count)``; before each job it blocks for GAP_S seconds
(default 1) in a C call that holds no Python lock (libc ``usleep`` through ctypes), as a
database driver waiting on its server does, and it appends ``<job> <time.time()>`` to $YIELDS
as it yields. handle_job appends ``<job> <time.time()>`` to $LEDGER as it starts.
"""

from __future__ import annotations

import ctypes
import os
import time

_libc = ctypes.CDLL(None)


def _append(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def get_jobs(last=0, count="3"):
    gap_us = int(float(os.environ.get("GAP_S", "1")) * 1_000_000)
    for job in range(int(last), int(count)):
        _libc.usleep(gap_us)
        _append(os.environ["YIELDS"], f"{job} {time.time()}")
        yield job


def handle_job(job):
    _append(os.environ["LEDGER"], f"{job} {time.time()}")
