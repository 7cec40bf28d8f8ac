"""Local supervision of slave processes, for tm-spawn and tm-run.

A slave that exits by its own decision (the run is complete, no master, a bad target, a stop
signal) stays down. One that asks to be replaced (`EXIT_REPLACE`: its --job-timeout watchdog,
or recycling) is started again at once. One that dies (killed, or a callback's os._exit) is
restarted with a doubling delay, a bounded number of times in a row: a slot that ran healthily
for a while starts its count afresh. Every exit is told to ``on_exit`` with the slave's name, so
that its master hears of it at once. The supervisor's status says whether the run completed.

Each slave dies with its supervisor, whatever killed the supervisor: it asks the kernel to be
killed when its parent dies (and checks that the parent is still the one that started it).

Slaves start as fresh interpreters, except that tm-run forks its first ones: it has imported
everything they need (gevent, zmq, the user's script) and has not started anything of its own
yet, so a fork costs a few milliseconds where a fresh interpreter costs a third of a second.
A restart happens while the master is serving, and a fork then would copy its sockets and
greenlets into the slave: restarts are always fresh interpreters.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent

from .config import (
    MAX_RESTARTS,
    RESTART_FIRST_S,
    RESTART_HEALTHY_S,
    RESTART_MAX_S,
    SUPERVISE_POLL_S,
    SUPERVISOR_STOP_WAIT_S,
)
from .errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REPLACE,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_USAGE,
)
from .signals import StopSignals

log = logging.getLogger(__name__)

PARENT_ENV = "TASKMASTER_PARENT_PID"
"""Tells a slave started by a supervisor to die with it (the supervisor's pid)."""
TAG_ENV = "TASKMASTER_SLAVE_TAG"
"""The last part of the slave's name, chosen by its supervisor so that it knows the name."""
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Be killed when the process ``parent_pid`` dies; at once if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before we asked
        os._exit(EXIT_FAILED)


def slave_command(target: str, options: Sequence[str]) -> list[str]:
    """The argv that starts one slave with this interpreter (no secret on it: that is env)."""
    return [sys.executable, "-m", "taskmaster", "slave", target, *options]


def slave_argv(target: str, address: str, opts: dict[str, Any], log_level: str,
               quiet_failures: bool = False, same_user: bool = False) -> list[str]:
    """The argv of a slave of ``target`` with a command's slave options (by their click
    names): what tm-spawn starts, and how tm-run restarts one (``same_user``: see gate.py)."""
    argv = ["--address", address, "--concurrency", str(opts["concurrency"]),
            "--master-timeout", str(opts["master_timeout"]), "--log-level", log_level,
            "--max-message-mb", str(opts["max_message_mb"]), "--no-progress"]
    if quiet_failures:  # tm-run's: its master, on the same terminal, says them
        argv.append("--quiet-failures")
    if same_user:
        argv.append("--same-user")
    for flag, key in (("--job-timeout", "job_timeout"), ("--max-jobs-per-slave", "max_jobs"),
                      ("--max-memory", "max_memory")):
        if opts[key] is not None:
            argv += [flag, str(opts[key])]
    if opts["no_monkey_patch"]:
        argv.append("--no-monkey-patch")
    # The secret itself never goes on a command line: a file's path, or the environment.
    if opts["secret_file"] is not None:
        argv += ["--secret-file", str(opts["secret_file"])]
    if opts["insecure"]:
        argv.append("--insecure")
    if opts["curve_dir"] is not None:
        argv += ["--curve", str(opts["curve_dir"])]
    return slave_command(target, argv)


def slave_name(pid: int, tag: str) -> str:
    """How a slave started with ``tag`` names itself."""
    return f"{socket.gethostname()}:{pid}:{tag}"


class Forked:
    """A child process running ``body`` in a fork of this one, seen through the part of
    `subprocess.Popen` that the supervisor uses."""

    def __init__(self, body: Callable[[], int]) -> None:
        self.returncode: int | None = None
        parent = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:
            code = EXIT_FAILED
            try:
                os.setsid()  # as start_new_session: the terminal's Ctrl-C is not for it
                die_with_parent(parent)
                code = body()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else EXIT_FAILED
            except BaseException:  # noqa: BLE001 - whatever it is, the child must not return
                traceback.print_exc()
            finally:
                # Never back into the parent's code: its clean-up is the parent's to do. A
                # flush that fails (a closed pipe) must not stop the exit either.
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _pid, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@dataclass
class _Child:
    index: int
    proc: subprocess.Popen[bytes] | Forked
    tag: str
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0
    restart_at: float | None = None
    status: int | None = None

    @property
    def name(self) -> str:
        return slave_name(self.proc.pid, self.tag)


def _died(returncode: int) -> bool:
    """Killed by a signal, or an exit status a slave never chooses (such as a callback's
    os._exit): a death worth a restart. A slave's own verdicts (done, no master, bad
    target, stopped) are final."""
    return returncode < 0 or returncode not in (EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SIGINT,
                                                EXIT_SIGTERM, EXIT_REPLACE)


def _status(returncode: int) -> int:
    # A slave killed by signal N shows as -N; report it the shell's way, 128 + N.
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    """Starts N copies of a command and keeps them running until each is done.

    With ``fork``, the first N run ``fork(tag)`` in forks of this process instead (see
    above); their restarts are still the command. ``on_exit(name, status)`` hears of every
    exit of every slave, as it happens.
    """

    def __init__(self, argv: list[str], n: int, env: dict[str, str] | None = None,
                 fork: Callable[[str], int] | None = None,
                 on_exit: Callable[[str, int], None] | None = None,
                 stderr: int | None = None) -> None:
        self.argv = argv
        self.env = dict(os.environ if env is None else env)
        self.stderr = stderr
        """Where the slaves' stderr goes (a file descriptor), if not to ours."""
        self.on_exit = on_exit or (lambda name, status: None)
        self.stopping = False
        self.children = [self._launch(i, fork) for i in range(n)]

    def _launch(self, index: int, fork: Callable[[str], int] | None = None) -> _Child:
        tag = uuid.uuid4().hex[:6]
        if fork is not None:
            def body() -> int:
                if self.stderr is not None:
                    os.dup2(self.stderr, 2)
                return fork(tag)

            proc: subprocess.Popen[bytes] | Forked = Forked(body)
            log.debug("forked slave %d as pid %d", index, proc.pid)
        else:
            # A session of its own: Ctrl-C on a terminal reaches only us, and we pass it on
            # once (a slave takes a second signal as "leave now").
            env = {**self.env, PARENT_ENV: str(os.getpid()), TAG_ENV: tag}
            proc = subprocess.Popen(self.argv, env=env, start_new_session=True,
                                    stderr=self.stderr)
            log.debug("started slave %d as pid %d", index, proc.pid)
        return _Child(index, proc, tag)

    def poll(self) -> bool:
        """Reap and restart as needed; True while any child is still running or due back."""
        now = time.monotonic()
        alive = False
        for i, c in enumerate(self.children):
            if c.status is not None:
                continue
            if c.restart_at is not None:
                if self.stopping:
                    c.status = EXIT_FAILED
                elif now >= c.restart_at:
                    self.children[i] = c = self._relaunch(c)
                alive = True
                continue
            code = c.proc.poll()
            if code is None:
                alive = True
                continue
            self.on_exit(c.name, _status(code))
            if self.stopping or not (_died(code) or code == EXIT_REPLACE):
                c.status = _status(code)
                continue
            if code == EXIT_REPLACE:
                log.info("slave %d (pid %d) asked to be replaced; starting a fresh one",
                         c.index, c.proc.pid)
                c.restart_at = now
            else:
                if now - c.started_at >= RESTART_HEALTHY_S:
                    c.restarts = 0  # it ran well for a while: this death is a new story
                if c.restarts >= MAX_RESTARTS:
                    c.status = _status(code)
                    log.error("slave %d (pid %d) died with %d, %d times in a row; giving up "
                              "on it", c.index, c.proc.pid, c.status, c.restarts + 1)
                    continue
                delay = min(RESTART_MAX_S, RESTART_FIRST_S * 2 ** c.restarts)
                c.restarts += 1
                c.restart_at = now + delay
                log.warning("slave %d (pid %d) died with %d; restarting in %.0fs", c.index,
                            c.proc.pid, _status(code), delay)
            alive = True
        return alive

    def _relaunch(self, old: _Child) -> _Child:
        new = self._launch(old.index)
        new.restarts = old.restarts
        return new

    def all_gave_up(self) -> bool:
        """Every slave is down for good (none succeeded): nobody is left to run jobs."""
        return all(c.status not in (None, EXIT_OK) for c in self.children)

    def status(self) -> int:
        """0 when the run completed (a slave heard so and left with 0), else the worst exit
        of the slaves: one slot given up on does not make a completed run a failure."""
        statuses = [c.status or 0 for c in self.children]
        return EXIT_OK if EXIT_OK in statuses else max(statuses, default=EXIT_OK)

    def wait(self) -> int:
        """Supervise until every child is done, passing stop signals on; `status`."""
        with StopSignals(on_second=self.signal) as signals:
            while self.poll():
                if signals.requested is not None and not self.stopping:
                    self.signal(signals.requested)
                gevent.sleep(SUPERVISE_POLL_S)
        if signals.requested is not None:
            return EXIT_SIGINT if signals.requested == signal.SIGINT else EXIT_SIGTERM
        return self.status()

    def wind_down(self) -> None:
        """Restart nothing more: the run is over (a slot waiting for its restart is done)."""
        self.stopping = True

    def signal(self, signum: int) -> None:
        """Pass a stop signal on; a second one is passed on too (the slaves then leave now)."""
        self.stopping = True
        for c in self.children:
            if c.status is None and c.restart_at is None and c.proc.poll() is None:
                c.proc.send_signal(signum)

    def kill(self) -> None:
        """Kill every slave now (a last resort: their running jobs will run again)."""
        for c in self.children:
            if c.proc.poll() is None:
                c.proc.kill()

    def stop(self, grace_s: float = 0.0, wait_s: float = SUPERVISOR_STOP_WAIT_S) -> int:
        """Give children ``grace_s`` to exit by themselves, then SIGTERM those still running,
        wait (bounded), and kill what is left."""
        deadline = time.monotonic() + grace_s
        while self.poll() and time.monotonic() < deadline:
            gevent.sleep(SUPERVISE_POLL_S / 4)
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while self.poll() and time.monotonic() < deadline:
            gevent.sleep(SUPERVISE_POLL_S)
        for c in self.children:
            if c.proc.poll() is None:
                log.warning("slave pid %d did not stop; killing it", c.proc.pid)
                c.proc.kill()
                c.status = _status(c.proc.wait())
        return self.status()
