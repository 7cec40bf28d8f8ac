"""The failures file: one JSON line per job that failed for good, appended and flushed to disk
before the job counts as settled, and read back (streamed) to retry them."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import StateError
from .settling import Failure
from .state import decode_job, encode_job, safe_repr

log = logging.getLogger(__name__)


class FailureLog:
    """Failed jobs as JSON Lines, appended and flushed to disk before they count as settled."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def check(self) -> None:
        """Make sure records can be written here (a missing directory, a directory in the
        file's place, a read-only place are StateErrors), leaving no empty file behind."""
        existed = self.path.exists()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise StateError(f"cannot write failures file {self.path}: {e.strerror}; choose "
                             "another --failures-file") from None
        try:
            self._drop_torn_tail(fd)
        finally:
            os.close(fd)
        if not existed:
            self.path.unlink()

    def _drop_torn_tail(self, fd: int) -> None:
        """A record cut short at the end (its master died mid-write) is dropped, or the next
        record would be glued to it: it was never settled, so its job runs again."""
        size = os.fstat(fd).st_size
        if not size:
            return
        tail = os.pread(fd, min(size, 1 << 20), max(0, size - (1 << 20)))
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        keep = size - len(tail) + cut + 1 if cut >= 0 else (0 if size <= len(tail) else None)
        if keep is None:  # a last record over a MiB long: find its start the slow way
            with open(self.path, "rb") as f:
                keep = 0
                for line in f:
                    if line.endswith(b"\n"):
                        keep += len(line)
        try:
            os.ftruncate(fd, keep)
        except OSError as e:
            raise StateError(f"cannot write failures file {self.path}: {e.strerror}; choose "
                             "another --failures-file") from None
        log.warning("%s ended in a record cut short (%d bytes, from a master that stopped "
                    "mid-write); dropped it: its job runs again", self.path, size - keep)

    def record(self, failures: list[Failure]) -> None:
        """Append the records and fsync them, all or none: raises OSError when the disk will
        not take them (the file is then as it was, and opened anew at the next try)."""
        if not failures:
            return
        data = "".join(json.dumps({
            "seq": f.origin,
            "job_repr": safe_repr(f.job),
            "job": encode_job(f.job),
            "exception": f.error.type,
            "message": f.error.message,
            "traceback": f.error.traceback,
            "attempts": f.attempts,
            "slave": (f.slave or b"").decode(errors="replace"),
            "time": time.time(),
        }) + "\n" for f in failures).encode()
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        fd, size = self._fd, os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            # Not one torn record at the end: the file as it was (a shorter file needs no
            # room), and the records written again, whole, once the disk takes them.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            self.close()
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_failures(path: Path) -> Iterator[tuple[int, Any]]:
    """(sequence number, job) of each record in a failures file, in file order, read as it
    goes (a file of millions of records costs no memory). A torn last line, left by a disk
    that filled mid-record, is skipped with a warning: its job was never settled, so the run
    that wrote it runs it again."""
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 - closed by the generator
    except OSError as e:
        raise StateError(f"cannot read failures file {path}: {e.strerror}") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                yield int(rec["seq"]), decode_job(rec["job"])
            except Exception as e:  # noqa: BLE001
                if not line.endswith("\n") and not f.read(1):
                    log.warning("failures file %s: the last line is incomplete (a full disk?); "
                                "skipping it", path)
                    return
                raise StateError(
                    f"failures file {path}, line {n}: unreadable record ({e})") from None


def count_failures(path: Path) -> int:
    """How many records `read_failures` will yield, counted without decoding any."""
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip() and line.endswith(b"\n"))
    except OSError as e:
        raise StateError(f"cannot read failures file {path}: {e.strerror}") from None
