"""A real terminal for tests of what a person sees: a pty of a chosen size, read through pyte.

`Terminal` starts a command on the slave side of a pseudo-terminal (so that it sees a tty on
stdin, stdout and stderr, with the size we set), feeds everything it writes to a `pyte` screen
from a reader thread, and can resize it (TIOCSWINSZ, then SIGWINCH, as a terminal emulator
does). The process is started in a session of its own and killed by PID when the test ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pyte

from procs import JOBS


class Terminal:
    """One command on a pty of ``columns`` x ``rows``, its screen kept by pyte."""

    def __init__(self, argv: Sequence[str], cwd: Path, env: dict[str, str], columns: int,
                 rows: int = 30) -> None:
        self.argv = list(argv)
        self.screen = pyte.Screen(columns, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        self._lock = threading.Lock()
        master_fd, slave_fd = os.openpty()
        self._fd = master_fd
        self._resize_fd(slave_fd, columns, rows)
        full_env = {**os.environ, "PYTHONPATH": str(JOBS), "TASKMASTER_LINGER": "0",
                    "TERM": "xterm", "COLUMNS": "", "LINES": "", **env}
        full_env = {k: v for k, v in full_env.items() if v != ""}
        self.proc = subprocess.Popen(self.argv, cwd=cwd, env=full_env, stdin=slave_fd,
                                     stdout=slave_fd, stderr=slave_fd, start_new_session=True)
        os.close(slave_fd)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @staticmethod
    def _resize_fd(fd: int, columns: int, rows: int) -> None:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 65536)
            except OSError:  # EIO: the other side is closed, every process on it gone
                return
            if not data:
                return
            with self._lock:
                self.raw += data
                self.stream.feed(data)

    def resize(self, columns: int, rows: int | None = None) -> None:
        rows = rows or self.screen.lines
        with self._lock:
            self.screen.resize(rows, columns)
        self._resize_fd(self._fd, columns, rows)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGWINCH)

    def lines(self) -> list[str]:
        """The screen's rows, right-stripped, without the empty ones at the bottom."""
        with self._lock:
            rows = [row.rstrip() for row in self.screen.display]
        while rows and not rows[-1]:
            rows.pop()
        return rows

    def text(self) -> str:
        return "\n".join(self.lines())

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """Until a row of the screen matches ``pattern``; that match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for row in self.lines():
                m = rx.search(row)
                if m:
                    return m
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not on the screen of {self.argv} within "
                                     f"{timeout}s:\n{self.text()}")
            time.sleep(0.05)

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.argv} still running after {timeout}s:\n"
                                 f"{self.text()}") from None
        self._reader.join(2)
        return code

    def close(self) -> None:
        """Kill what is left of it (its whole session), and let go of the pty."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._reader.join(2)
        with contextlib.suppress(OSError):
            os.close(self._fd)
