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
from collections.abc import Callable

import gevent

from .config import SLAVE_EXIT_GRACE_S, SUPERVISE_POLL_S, MasterConfig, asks_for_a_port
from .errors import (
    EXIT_FAILED,
    EXIT_OK,
    InternalError,
    Outcome,
    TaskmasterError,
    exit_code_for_signal,
)
from .master import Master
from .spawn import Supervisor
from .watchdog import end_process

log = logging.getLogger(__name__)


def run_here(cfg: MasterConfig, get_jobs: Callable[..., object], n: int, *,
             slave_argv: Callable[[str], list[str]], env: dict[str, str],
             fork: Callable[[str], int] | None, cleanup: Callable[[], None]) -> Outcome:
    """Serve the run with ``n`` slaves started as ``slave_argv(address)`` (or, for the first
    ones, as forks running ``fork(tag)`` when given and the address is known in advance).
    ``cleanup`` undoes what the caller made for the run (its private directory), also when
    a second signal makes tm-run leave at once."""
    supervisors: list[Supervisor] = []

    def leave_now(signum: int) -> None:
        # A second signal: the state file already holds a safe resume point; our slaves and
        # our files go with us.
        for sup in supervisors:
            sup.kill()
        cleanup()
        end_process(exit_code_for_signal(signum), supervised=True)

    def gone(name: str, status: int) -> None:
        master.slave_gone(name, status)

    master = Master(cfg, get_jobs, leave_now=leave_now)
    outcome: Outcome | None = None
    try:
        outcome = master.open()
        if outcome is not None:
            return outcome
        if not asks_for_a_port(cfg.address):
            supervisors.append(Supervisor(slave_argv(cfg.address), n, env, fork=fork,
                                          on_exit=gone))
        address = master.start()
        if not supervisors:
            supervisors.append(Supervisor(slave_argv(address), n, env, on_exit=gone))
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
        cleanup()


def _watch(sup: Supervisor, master: Master, n: int) -> None:
    """Restart slaves that die; if none is left, the run cannot go on."""
    while sup.poll():
        gevent.sleep(SUPERVISE_POLL_S)
    if sup.all_gave_up():
        master.stop(TaskmasterError(f"all {n} slaves are down for good; see their messages "
                                    "above"))
