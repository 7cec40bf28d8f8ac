"""The one helper that owns the processes tests start: start, expect, wait, kill by PID."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import psutil

TESTS = Path(__file__).resolve().parent
JOBS = TESTS / "jobs"

COMMANDS = {"tm-master": "master", "tm-slave": "slave", "tm-spawn": "spawn", "tm-run": "run",
            "tm-keygen": "keygen", "tm-ctl": "ctl"}

T = TypeVar("T")


ANY_PORT = "tcp://127.0.0.1:0"
"""A master address on loopback whose port the system picks when the master binds it: no
other process can take the port between the pick and the bind. `listening_on` reads the
address the master got."""


class Proc:
    """A started command whose output is collected, line by line, in the background."""

    def __init__(self, argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        # A master stays a few seconds after its run to tell late slaves (--linger): not in
        # tests, unless one asks for it, or every test would wait for it.
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(JOBS),
                    "TASKMASTER_LINGER": "0",
                    **(env or {})}
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def expect(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Wait until a line matches ``pattern`` (a regex); fail with the output otherwise."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"{pattern!r} not seen within {timeout}s from {self.argv}:\n{self.output}")
                self._changed.wait(min(left, 0.1))

    def wait(self, timeout: float = 60.0) -> int:
        """The exit status; on timeout the process group is killed and the test fails."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.argv} still running after {timeout}s:\n{self.output}") from None
        self._reader.join(5)
        return code

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the command and everything it started: its process group, and its
        descendants, which tm-run and tm-spawn put in sessions of their own."""
        try:
            descendants = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        for child in descendants:
            with contextlib.suppress(psutil.Error):
                child.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._reader.join(5)


class Procs:
    """Every process a test started; `cleanup` kills any still alive, by PID."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.started: list[Proc] = []

    def start(self, command: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        """Start ``tm-master`` etc. with this interpreter (so no PATH surprises)."""
        argv = [sys.executable, "-m", "taskmaster", COMMANDS[command], *args]
        proc = Proc(argv, self.cwd, env)
        self.started.append(proc)
        return proc

    def run(self, command: str, *args: str, timeout: float = 60.0,
            env: dict[str, str] | None = None) -> Proc:
        """Start and wait; the Proc carries ``code`` and its output."""
        proc = self.start(command, *args, env=env)
        proc.code = proc.wait(timeout)  # type: ignore[attr-defined]
        return proc

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.proc.poll() is None:
                proc.kill()


def read_ledger(path: Path) -> list[str]:
    """Lines a ledger job module wrote, one per executed job."""
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line]


def listening_on(master: Proc, timeout: float = 20.0) -> str:
    """The address a master says it bound: with `ANY_PORT`, the port the system picked."""
    return master.expect(r"master listening on (\S+)", timeout).group(1)


def wait_for(check: Callable[[], T], timeout: float, what: str, *alive: Proc,
             between: Callable[[], object] | None = None, step_s: float = 0.01) -> T:
    """Poll ``check()`` every ``step_s`` until it returns something truthy; return that.

    Fails with an AssertionError that names ``what``, says whether the wait timed out or a
    process of ``alive`` exited (checked every round: none of them may end before ``check``
    holds), and holds the output of each process of ``alive``. ``between()``, when given,
    runs after each round that found ``check()`` false, e.g. to keep poking a peer.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        gone = [p for p in alive if p.proc.poll() is not None]
        if gone:
            # What it printed or wrote just before it exited may be what ``check`` waits for.
            for p in gone:
                p._reader.join(1)
            value = check()
            if value:
                return value
        if gone or time.monotonic() > deadline:
            why = (", ".join(f"{p.argv} exited with {p.proc.returncode}" for p in gone) if gone
                   else f"timed out after {timeout}s")
            outputs = "\n\n".join(f"{p.argv}:\n{p.output}" for p in alive)
            raise AssertionError(f"waiting for {what}: {why}\n{outputs}")
        if between is not None:
            between()
        time.sleep(step_s)
