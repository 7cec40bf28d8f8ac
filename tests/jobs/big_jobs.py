"""Job module for tests of big jobs: each job is a `bytes` object of a chosen size.

get_jobs(last, count, mib, big_at, big_mib) yields ``count`` jobs; job K is ``mib`` MiB long
(``big_mib`` MiB for job ``big_at``, when given): its number as 8 big-endian bytes, zeros, and
the number again in its last 8 bytes, so that handle_job can tell which job it got and that it
came whole. A resumed stream starts from the number of ``last``, inclusive.

handle_job checks the job (a ValueError if it was cut or mangled on the way, which the run then
records as a failure) and appends its number to $LEDGER, one line per executed job, as
`ledger_jobs` does. $SLEEP_S, when set, makes each job sleep that long first (gevent-friendly):
slaves slower than the stream, so that what the master holds is bounded by its buffer alone.
"""

from __future__ import annotations

import os
import time

MIB = 1024 * 1024
_MARK = 8


def make_job(number, size):
    """Job ``number``, ``size`` bytes long (at least 16)."""
    size = max(int(size), 2 * _MARK)
    job = bytearray(size)
    mark = number.to_bytes(_MARK, "big")
    job[:_MARK] = mark
    job[-_MARK:] = mark
    return bytes(job)


def job_number(job):
    return int.from_bytes(job[:_MARK], "big")


def get_jobs(last=None, count="100", mib="1", big_at=None, big_mib=None, **kwargs):
    start = job_number(last) if last is not None else 0
    size = float(mib) * MIB
    for number in range(start, int(count)):
        if big_at is not None and number == int(big_at):
            yield make_job(number, float(big_mib) * MIB)
        else:
            yield make_job(number, size)


def handle_job(job):
    if not isinstance(job, bytes) or len(job) < 2 * _MARK or job[:_MARK] != job[-_MARK:]:
        raise ValueError(f"job mangled on the way: {type(job).__name__} of {len(job)} bytes")
    number = job_number(job)
    sleep_s = float(os.environ.get("SLEEP_S", "0"))
    if sleep_s:
        time.sleep(sleep_s)
    # One write() per line under O_APPEND: lines from concurrent slaves never interleave.
    fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{number}\n".encode())
    finally:
        os.close(fd)
