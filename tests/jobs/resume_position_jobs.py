"""Job module for resume tests: a get_jobs with no ``last`` parameter, whose jobs repeat.

get_jobs(count) yields ``Row(i % 7, i)`` for i in ``range(count)``: rows compare (and hash)
equal by their key alone, so as far as ``==`` can tell the stream is the same seven jobs over
and over, and only a resume by position can find its place in it. ``pos`` is the row's place
in the stream, which handle_job appends to $LEDGER (one line per run of a job).

With HOLD_AT=K and HOLD_GATE=path, get_jobs blocks before yielding row K until that file
exists; with GATE and GATE_ON=K, handle_job waits for the GATE file before running row K.
"""

from __future__ import annotations

import ctypes
import os

import gated_jobs

_libc = ctypes.CDLL(None)
HOLD_POLL_US = 10_000


class Row:
    """A job whose identity (for ``==``) is its key, not its place in the stream."""

    __slots__ = ("key", "pos")

    def __init__(self, key, pos):
        self.key, self.pos = key, pos

    def __eq__(self, other):
        return isinstance(other, Row) and other.key == self.key

    def __hash__(self):
        return hash(self.key)

    def __repr__(self):
        return f"Row({self.key}, {self.pos})"

    def __reduce__(self):
        return Row, (self.key, self.pos)


def get_jobs(count="1000"):
    hold_at, gate = os.environ.get("HOLD_AT"), os.environ.get("HOLD_GATE")
    for i in range(int(count)):
        if gate and hold_at is not None and i == int(hold_at):
            while not os.path.exists(gate):
                _libc.usleep(HOLD_POLL_US)
        yield Row(i % 7, i)


def handle_job(row):
    gated_jobs.handle_job(row.pos)
