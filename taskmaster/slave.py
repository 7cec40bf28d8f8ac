"""The slave: its session with the master, and its life from first knock to goodbye.

A slave knocks (a heartbeat) until a master answers WELCOME, says READY with the window it
asks for, and from then on turns JOBS into `Holdings`, which its `WorkerPool` runs, and
acknowledges what is done. `Pacing` says how much to ask for. Liveness is a separate OS thread
(transport.py), so a callback that never yields does not make the slave look dead, and that
thread's `Watchdog` acts when such a callback holds everything else.

A slave may also leave on purpose, to be replaced by a fresh process (`EXIT_REPLACE`): after
--max-jobs-per-slave jobs, over --max-memory, or after a job ran out of memory. It leaves
cleanly: what it has not started goes back, what it runs it finishes.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import gevent

from . import protocol as p
from .config import (
    ACK_DELAY_S,
    HEARTBEAT_INTERVAL_S,
    JOIN_FAST_S,
    JOIN_FIRST_RETRY_S,
    JOIN_RETRY_S,
    MASTER_WAIT_LOG_S,
    PROGRESS_LOG_INTERVAL_S,
    SLAVE_STOP_WAIT_S,
    SLAVE_WAKE_S,
)
from .curve import load_curve
from .errors import EXIT_FAILED, EXIT_OK, EXIT_REPLACE, exit_code_for_signal
from .fields import millis
from .holdings import Failures, Holdings, Piece
from .pacing import Pacing
from .pool import WorkerPool
from .recycling import Recycling
from .session import Session
from .settings import SlaveConfig, signing_key
from .signals import StopSignals
from .transport import SlaveSocket, start_heartbeat_thread
from .watchdog import Watchdog, end_process

log = logging.getLogger(__name__)


class Slave:
    """One slave process's work. `run()` returns the exit status."""

    def __init__(self, cfg: SlaveConfig, handle_job: Callable[[Any], Any]) -> None:
        self.cfg = cfg
        key = signing_key(cfg.secret)
        self.curve = load_curve(cfg.curve_dir, "slave") if cfg.curve_dir else None
        self.host = socket.gethostname()
        tag = cfg.tag or uuid.uuid4().hex[:6]
        self.ident = f"{self.host}:{os.getpid()}:{tag}".encode()
        self.session = Session(self.name, key, cfg.max_message_bytes)
        self.recycling = Recycling(cfg.max_jobs, cfg.max_memory_mb)
        self.holdings = Holdings()
        self.pacing = Pacing(cfg.concurrency)
        self.pool = WorkerPool(handle_job, cfg.concurrency, self.holdings, self.pacing,
                               done=self._piece_done, between=self._take_messages,
                               job_timeout_s=cfg.job_timeout_s,
                               report_failures=cfg.report_failures)
        # Python's own handlers, not gevent's: a callback that holds the hub would hold those.
        self.signals = StopSignals(
            on_second=lambda signum: end_process(exit_code_for_signal(signum), True),
            green=False)
        self.watchdog = Watchdog(
            name=self.name, seal=p.Seal(key), heartbeat=self._beat, holdings=self.holdings,
            pool=self.pool, signals=self.signals, job_timeout_s=cfg.job_timeout_s,
            parent_pid=cfg.parent_pid, supervised=cfg.supervised,
            epoch=lambda: self.session.epoch)
        self._paused = False  # the master said STOP: take nothing until a (new) master welcomes
        self._stopping = False
        self._exit: int | None = None
        self._last_heard = time.monotonic()

    @property
    def name(self) -> str:
        return self.ident.decode("utf-8", "surrogateescape")

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        """Work until the master says the run is done, a signal, or the master is gone."""
        self.sock = SlaveSocket(self.cfg.address, self.ident, self.curve,
                                max_bytes=self.cfg.max_message_bytes,
                                same_user=self.cfg.same_user)
        stop_beats = start_heartbeat_thread(self.cfg.address, self.ident, self.watchdog,
                                            HEARTBEAT_INTERVAL_S, self.curve,
                                            connected=self.session.reconnected)
        self.pool.start(self._crashed)
        log.info("slave %s: %d greenlets, master %s", self.name, self.cfg.concurrency,
                 self.cfg.address)
        try:
            with self.signals:
                self._serve()
        finally:
            stop_beats()
            self.pool.stop()
            self.sock.close(linger_s=0.2)
        return self._exit if self._exit is not None else EXIT_FAILED

    def _serve(self) -> None:
        last_log, last_done = time.monotonic(), 0
        waiting_said = time.monotonic()
        self._send(self.session.knock())  # at once: a master may be up
        knocks = 1
        while self._exit is None:
            # Knocks come quickly at first (a master starting beside us is up within a few
            # milliseconds, and a knock before our connection is made is not sent at all), then
            # every JOIN_RETRY_S, so that a storm of slaves does not flood a master.
            knock_s = min(JOIN_RETRY_S, JOIN_FIRST_RETRY_S * 2 ** min(knocks - 1, 16))
            frames = self.sock.recv(SLAVE_WAKE_S if self.session.joined else knock_s)
            now = time.monotonic()
            if self.sock.gate is not None:  # a master of another user we did not talk to
                self.sock.gate.tell(now)
            if frames is not None:
                self._last_heard = now
                self._handle(frames)
            elif not self.session.joined and now - self._last_heard < JOIN_FAST_S:
                # Knock until a master answers; it replies WELCOME to an unknown slave.
                self._send(self.session.knock())
                knocks += 1
            if self.signals.requested is not None and not self._stopping:
                self._stop()
            due = self.holdings.report_due
            if due is not None and now - due >= ACK_DELAY_S:
                self._report()
            if self.pool.digest is not None:
                self.pool.digest.flush(now)
            silent = now - self._last_heard
            if silent > self.cfg.master_timeout_s:
                log.error("no master at %s for %.0fs; giving up (is tm-master running there? "
                          "--master-timeout waits longer)", self.cfg.address, silent)
                self._exit = EXIT_FAILED
            elif silent >= MASTER_WAIT_LOG_S and now - waiting_said >= MASTER_WAIT_LOG_S:
                waiting_said = now
                log.warning("waiting for a master at %s: %.0fs of %.0fs", self.cfg.address,
                            silent, self.cfg.master_timeout_s)
            if self.cfg.progress and now - last_log >= PROGRESS_LOG_INTERVAL_S:
                if self.holdings.done != last_done:
                    log.info("%d jobs done (%d failed attempts), %d held, %.2gs a job",
                             self.holdings.done, self.holdings.failed_attempts,
                             self.holdings.held, self.pacing.job_s)
                last_log, last_done = now, self.holdings.done

    def _stop(self) -> None:
        """Act on a stop signal: take nothing more, hand back what has not started, leave
        once what runs is done."""
        if self.holdings.held:
            log.warning("%s: finishing running jobs, handing back the rest", self.signals.name)
        else:
            log.info("%s: leaving", self.signals.name)
        self._leave(exit_code_for_signal(self.signals.requested or 0))

    def _recycle(self, why: str) -> None:
        """Leave to be replaced by a fresh process: planned, never a death."""
        log.info("%s: leaving, to be replaced by a fresh process", why)
        self._leave(EXIT_REPLACE)

    def _leave(self, code: int) -> None:
        self._stopping = True
        self._paused = True
        self._hand_back()
        gevent.spawn(self._finish, code).link_exception(self._crashed)

    def _finish(self, code: int) -> None:
        """Exit once the batches already started are done (bounded by SLAVE_STOP_WAIT_S)."""
        self._paused = True
        deadline = time.monotonic() + SLAVE_STOP_WAIT_S
        while self.pool.busy and time.monotonic() < deadline:
            gevent.sleep(0.01)
        if self.pool.busy:
            log.warning("jobs still running after %.0fs; leaving them to be run again",
                        SLAVE_STOP_WAIT_S)
        if self._exit is None:
            self._exit = code
        self.sock.wake()

    def _crashed(self, greenlet: gevent.Greenlet) -> None:
        log.critical("internal error in %s", greenlet, exc_info=greenlet.exc_info)
        self._exit = EXIT_FAILED
        self.sock.wake()

    # -- messages from the master ----------------------------------------------------------

    def _take_messages(self) -> None:
        """Handle what the master sent while a piece ran. Pieces that never yield (CPU-bound
        work) run one after another in a single turn of gevent's loop, without a look at the
        socket in between: new jobs would wait for all of them, and the queue run dry."""
        for frames in self.sock.pending():
            self._last_heard = time.monotonic()
            self._handle(frames)

    def _handle(self, frames: list[bytes]) -> None:
        envelope = self.session.accept(frames)
        if envelope is None:
            return
        msg = envelope.message
        if isinstance(msg, p.Welcome):
            if not self._stopping and self.session.join(envelope, msg):
                self._joined()
        elif isinstance(msg, p.Jobs):
            # Even when leaving: sent before our goodbye reached the master, it is ours to
            # run before we go (the master will not hand it to another meanwhile).
            piece = self.pacing.piece_size(len(msg.jobs), msg.isolate)
            self.holdings.add(msg.bid, envelope.epoch, msg.jobs, msg.isolate, piece)
            self.pool.wake()
        elif isinstance(msg, p.Stop):
            log.info("master is stopping; handing back unstarted jobs")
            self._paused = True
            self._hand_back()
        elif isinstance(msg, p.Done):
            log.info("run complete (%d finished, %d failed); this slave ran %d (and %d failed "
                     "attempts)", msg.finished, msg.failed, self.holdings.done,
                     self.holdings.failed_attempts)
            self._send(p.Bye())
            if not self._stopping:  # leaving already (a signal, say): with that status
                self._stopping = True
                gevent.spawn(self._finish, EXIT_OK).link_exception(self._crashed)

    def _joined(self) -> None:
        self.watchdog.seal.epoch = self.session.epoch
        self._paused = False
        self.holdings.forget(p.NO_EPOCH)  # no master's epoch: their batches go unacknowledged
        self._send(p.Ready(self.session.number, self._window(), self.cfg.concurrency,
                           self.host, os.getpid(), self.cfg.max_message_bytes,
                           millis(self.cfg.master_timeout_s)))

    # -- work done -------------------------------------------------------------------------

    def _piece_done(self, piece: Piece, failures: Failures) -> None:
        self.holdings.finish(piece, failures, self.session.epoch, time.monotonic())
        if self._paused or self.holdings.held <= self.pacing.window // 2:
            self._report()
        if not self._stopping:
            why = self.recycling.why(self.holdings.done + self.holdings.failed_attempts,
                                     self.pool.out_of_memory, time.monotonic())
            if why:
                self._recycle(why)

    def _report(self) -> None:
        """Acknowledge the finished batches held back, and tell the master our room."""
        self._send(p.Ack(tuple(self.holdings.report()), self._window()))

    def _hand_back(self) -> None:
        """Give the master every batch not started yet, and forget it here."""
        if self.holdings.report_due is not None:
            self._report()
        self._send(p.Bye(tuple(self.holdings.hand_back())))

    def _window(self) -> int:
        if self._paused:
            return 0
        ran = self.holdings.done + self.holdings.failed_attempts
        return self.holdings.window(self.recycling.window(self.pacing.window, ran))

    # -- messages to the master ------------------------------------------------------------

    def _send(self, message: p.Message) -> None:
        self.sock.send(self.session.seal(message))

    def _beat(self) -> p.Heartbeat | None:
        """Our heartbeat, or None on a tick with nothing to say (`Session.beat_due`)."""
        # Runs on the heartbeat thread: reads attributes only (the session's beat schedule
        # is that thread's own).
        held, started = self.holdings.snapshot()
        if not self.session.beat_due(bool(held), time.monotonic()):
            return None
        return self.session.knock(held, started, beat=True)
