"""tm-run: a master and N supervised local slaves in one process tree, until the run is done.

The master's phases leave room for the slaves: they are started after the state file is taken
(a complete run starts none) and, when the address is known before binding, before the master
opens anything else, so that they can be forks of this process: it has imported gevent, zmq and
the user's script already, and a fork costs milliseconds where a fresh interpreter costs a
third of a second. Nothing of the master may be copied into a fork (its sockets, greenlets, the
feeder's thread), which is why the forks come before `Master.start`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable

import gevent
import gevent.os

from .config import SLAVE_EXIT_GRACE_S, SUPERVISE_POLL_S
from .errors import (
    EXIT_FAILED,
    EXIT_OK,
    InternalError,
    Outcome,
    TaskmasterError,
    exit_code_for_signal,
)
from .master import Master
from .settings import MasterConfig, asks_for_a_port
from .spawn import Supervisor
from .watchdog import end_process

log = logging.getLogger(__name__)


def run_here(cfg: MasterConfig, get_jobs: Callable[..., object], n: int, *,
             slave_argv: Callable[[str], list[str]], env: dict[str, str],
             fork: Callable[[str], int] | None, cleanup: Callable[[], None],
             leave: Callable[[int], None] | None = None) -> Outcome:
    """Serve the run with ``n`` slaves started as ``slave_argv(address)`` (or, for the first
    ones, as forks running ``fork(tag)`` when given and the address is known in advance).
    ``cleanup`` undoes what the caller made for the run (its private directory), also when
    a second signal makes tm-run leave at once; ``leave(signum)`` is how it leaves then (by
    default the process ends)."""
    supervisors: list[Supervisor] = []

    def leave_now(signum: int) -> None:
        # A second signal: the state file already holds a safe resume point; our slaves and
        # our files go with us.
        for sup in supervisors:
            sup.kill()
        cleanup()
        if leave is not None:
            leave(signum)
        else:
            end_process(exit_code_for_signal(signum), supervised=True)

    def gone(name: str, status: int) -> None:
        # A slave's process ended (with this status): its master need not wait for silence.
        slave = master.registry.get(name.encode("utf-8", "surrogateescape"))
        if slave is not None:
            master.handout.gone(slave, status, None, time.monotonic())
            master.check_complete()

    master = Master(cfg, get_jobs, leave_now=leave_now)
    master.expected = f"starting {n} local slaves"
    outcome: Outcome | None = None
    # On a terminal the master's progress line holds stderr: the slaves write to it through us.
    relay = Relay() if cfg.progress and sys.stderr.isatty() else None
    try:
        outcome = master.open()
        if outcome is not None:
            return outcome
        stderr = relay.fd if relay is not None else None
        if not asks_for_a_port(cfg.address):
            supervisors.append(Supervisor(slave_argv(cfg.address), n, env, fork=fork,
                                          on_exit=gone, stderr=stderr))
        address = master.start()
        if relay is not None:
            relay.start()  # not before the forks: they would run it too
        if not supervisors:
            supervisors.append(Supervisor(slave_argv(address), n, env, on_exit=gone,
                                          stderr=stderr))
        sup = supervisors[0]
        watcher = gevent.spawn(_watch, sup, master, n)
        watcher.link_exception(
            lambda g: master.stop(InternalError(f"watching the slaves: {g.exception!r}")))
        outcome = master.serve()
        watcher.kill()
        sup.wind_down()
        if outcome.complete:
            # A slave still starting when the run ends hears DONE instead of waiting for
            # a signal: the goodbye lasts until all of ours have gone.
            master.farewell(until=lambda: not sup.poll(), linger_s=0)
        return outcome
    finally:
        master.close()
        for sup in supervisors:
            # After a complete run the slaves have been told so and leave by themselves.
            done = outcome is not None and outcome.exit_code in (EXIT_OK, EXIT_FAILED)
            sup.stop(grace_s=SLAVE_EXIT_GRACE_S if done else 0)
        if relay is not None:
            relay.close()
        cleanup()


def _watch(sup: Supervisor, master: Master, n: int) -> None:
    """Restart slaves that die; if none is left, the run cannot go on."""
    while sup.poll():
        gevent.sleep(SUPERVISE_POLL_S)
    if sup.all_gave_up():
        master.stop(TaskmasterError(f"all {n} slaves are down for good; see their messages "
                                    "above"))


class Relay:
    """A pipe for the slaves' stderr, whose lines we write to ours as they come: while the
    progress line is shown, above it."""

    def __init__(self) -> None:
        self._read, self.fd = os.pipe()
        os.set_blocking(self._read, False)
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        pending = b""
        while data := gevent.os.nb_read(self._read, 65536):
            pending += data
            lines, _, pending = pending.rpartition(b"\n")
            if lines:
                sys.stderr.write(lines.decode(errors="replace") + "\n")
                sys.stderr.flush()
        if pending:
            sys.stderr.write(pending.decode(errors="replace") + "\n")

    def close(self) -> None:
        """After the slaves are gone: what they wrote last is passed on, and the pipe closed."""
        os.close(self.fd)  # the last writer: the pipe ends once what is in it is read
        if self._greenlet is not None:
            self._greenlet.join(timeout=2)
            self._greenlet.kill()
        os.close(self._read)
