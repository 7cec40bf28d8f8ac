"""The C heap, told to keep the blocks that messages are built in.

A batch is pickled into a fresh block of up to a megabyte, and ZeroMQ holds each one until
it is sent, so several are alive at once. glibc gives blocks that size their own mapping from
the kernel (or hands the heap's top back when they are freed), so every batch paid for new,
zeroed pages: pickling 500 jobs of 1 KB took 420 us, against 70 to 110 with the heap kept, more
than all the rest of the master's work on the batch (1 KB jobs through tm-run: 8 to 19 % faster
in A/B runs). Raising both thresholds keeps such blocks in the heap for reuse; memory
stays bounded by what is alive at once plus `TRIM_BYTES` kept free.
"""

from __future__ import annotations

import functools
import os

from .config import BATCH_BYTES

MMAP_BYTES = 2 * BATCH_BYTES
"""Blocks below this come from the heap, not a mapping of their own: a batch's pickle
(`BATCH_BYTES` of jobs, by a job's estimated size) with room to spare; larger ones (a user's
arrays, say) still get a mapping of their own, given back when freed."""
TRIM_BYTES = 16 * 1024 * 1024
"""Free memory at the heap's top beyond this goes back to the system: a few windows' worth."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
_USERS_OWN = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


@functools.cache
def keep_message_blocks() -> None:
    """Once a process (a fork keeps its parent's setting): a no-op where the C library is not
    glibc, or where the user tunes its allocator themselves (any of `_USERS_OWN` set: which is
    also how to opt out, with ``MALLOC_MMAP_THRESHOLD_=131072``, glibc's default threshold)."""
    if any(name in os.environ for name in _USERS_OWN):
        return
    import ctypes  # here: only a process that moves messages pays for importing it

    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None and os.uname().sysname == "Linux":
        mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)
        mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES)
