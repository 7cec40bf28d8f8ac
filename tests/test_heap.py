"""The C heap keeps message-sized blocks (taskmaster/heap.py), and leaves a user's own setting."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# A fresh interpreter for each case: the setting is per process and cannot be undone.
# mallinfo2's hblks counts the blocks that have a mapping of their own.
PROBE = """
import ctypes, sys
from taskmaster.heap import keep_message_blocks

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    keep_message_blocks()
before = libc.mallinfo2().hblks
block = bytes(600 * 1024)  # a batch of 500 jobs of 1 KB pickles to a little less
print(libc.mallinfo2().hblks - before)
"""

LIBC, VERSION = platform.libc_ver()
glibc = pytest.mark.skipif(
    LIBC != "glibc" or tuple(int(n) for n in VERSION.split(".")[:2]) < (2, 33),
    reason="the setting is glibc's, and the probe's mallinfo2 is glibc 2.33's")


def mapped_blocks(how: str, **env: str) -> int:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    out = subprocess.run([sys.executable, "-c", PROBE, how], env={**environ, **env},
                         capture_output=True, text=True, timeout=30, check=True)
    return int(out.stdout)


@glibc
def test_a_batch_sized_block_comes_from_the_heap_once_kept() -> None:
    assert mapped_blocks("plain") == 1  # the probe itself would see a mapping by default
    assert mapped_blocks("keep") == 0


@glibc
def test_the_users_own_allocator_setting_is_left_alone() -> None:
    assert mapped_blocks("keep", MALLOC_MMAP_THRESHOLD_="65536") == 1
