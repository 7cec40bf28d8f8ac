"""Stop signals, handled one way by every process: the first asks for a graceful stop, the
second for an immediate one.

A handler only records what arrived and wakes whoever waits; the process's own loop decides
what stopping means for it (huey's consumer does the same, for the same reason: a handler runs
between any two lines of the loop and must not touch what the loop is in the middle of).
SIGHUP, a closed terminal, counts as SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignals:
    """Watches the stop signals while open; ``requested`` is the first one that arrived (at
    ``at``, monotonic), and ``arrived`` is set with it.

    ``on_second`` runs on a second signal: it is the escalation, and typically leaves the
    process at once. gevent runs a handler in a greenlet of its own, between two turns of the
    loop, never in the middle of one; but then a callback that holds the loop holds the
    handler too. ``green=False`` is for a process where that may happen (a slave): Python's
    own handlers run between any two lines of the main thread, and so only set the flags;
    ``arrived`` is not set in that mode (nothing of gevent may be touched there).
    """

    def __init__(self, on_second: Callable[[int], None], *, green: bool = True) -> None:
        self.requested: int | None = None
        self.by = ""
        """Who asked for the stop, when not a signal that arrived (see `request`)."""
        self.at = 0.0
        self.arrived = gevent.event.Event()
        self._on_second = on_second
        self._green = green
        self._handlers: list[gevent.signal_handler] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> StopSignals:
        """Start watching (the handlers are in place until `close`)."""
        if self._green:
            # Noted first: gevent's watchers leave the signal at its OS default once cancelled
            # (a Ctrl-C after `taskmaster.run` returned would kill the caller), so `close`
            # puts Python's own handlers back.
            if threading.current_thread() is threading.main_thread():
                self._previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
            self._handlers = [gevent.signal_handler(s, self._handle, s) for s in STOP_SIGNALS]
        else:
            self._previous = {s: signal.signal(s, self._handle_raw) for s in STOP_SIGNALS}
        return self

    def close(self) -> None:
        for handler in self._handlers:
            handler.cancel()
        self._handlers = []
        for signum, previous in self._previous.items():
            if previous is not None:
                signal.signal(signum, previous)
        self._previous = {}

    def _handle_raw(self, signum: int, frame: object) -> None:
        self._handle(signum)

    @property
    def name(self) -> str:
        """What asked for the stop: the signal's name, or who asked for it like one."""
        if self.requested is None:
            return ""
        return self.by or signal.Signals(self.requested).name

    def request(self, signum: int, by: str) -> None:
        """Ask for what the first ``signum`` asks for, as ``by`` (tm-ctl stop, say), as if it
        had arrived; nothing when a stop was asked for already."""
        if self.requested is None:
            self._handle(signum)
            self.by = by

    def _handle(self, signum: int) -> None:
        if self.requested is not None:
            self._on_second(signum)
            return
        # A closed terminal asks for what SIGTERM asks for; it reports as SIGTERM too.
        self.requested = signal.SIGTERM if signum == signal.SIGHUP else signum
        self.at = time.monotonic()
        if self._green:
            self.arrived.set()
