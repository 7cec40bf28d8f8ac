"""The slave: credit -> jobs -> a pool of greenlets calling handle_job -> acknowledgements.

The slave asks the master for as many jobs as keep its greenlets busy for a short while
(`SLAVE_WORK_AHEAD_S`), measured as it goes: thousands for jobs that take microseconds, a few
for jobs that take seconds. A batch from the master is cut into pieces, one piece per turn of a
worker greenlet, and acknowledged as a whole when its last piece is done. Liveness is a
separate OS thread, so a callback that never yields does not make the slave look dead.
"""

from __future__ import annotations

import itertools
import logging
import operator
import os
import signal
import socket
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event

from . import protocol as p
from .config import (
    HEARTBEAT_INTERVAL_S,
    MAX_MESSAGE_BYTES,
    MAX_WINDOW_JOBS,
    PROGRESS_LOG_INTERVAL_S,
    SLAVE_WORK_AHEAD_S,
    SlaveConfig,
    signing_key,
)
from .errors import EXIT_FAILED, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM
from .transport import SlaveSocket, load_curve, start_heartbeat_thread

log = logging.getLogger(__name__)

PIECE_S = 0.05
"""Work one greenlet does in one turn before it lets the others (and the socket) run."""
STOP_WAIT_S = 30.0
"""On SIGINT/SIGTERM, how long running jobs get to finish before the slave leaves anyway."""
JOIN_RETRY_S = 0.05
"""How often a slave knocks while no master has welcomed it (the heartbeat thread keeps
knocking every second after the first few)."""
JOIN_FAST_S = 5.0
WAKE_S = 0.2
"""Longest the serving loop sleeps without a message, so that it notices it should exit."""
ACK_DELAY_S = 0.1
"""Longest a slave with plenty of queued work holds back an acknowledgement, to send several in
one message: each message wakes the master, and on a host with as many busy slaves as cores
the master's turn is taken from a slave. A slave running low on work acknowledges at once."""
NO_EPOCH = bytes(p.EPOCH_BYTES)


class JobTimeoutError(Exception):
    """handle_job ran past --job-timeout."""


@dataclass(eq=False)
class _Batch:
    bid: int
    epoch: bytes
    size: int
    pieces_left: int = 0
    started: bool = False
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class _Piece:
    batch: _Batch
    offset: int
    jobs: list[Any]
    alone: bool


class _Isolation:
    """Lets a suspect job (one whose slave died before) run with nothing else beside it."""

    def __init__(self) -> None:
        self.shared = 0
        self.exclusive = False
        self.waiting = 0  # suspects waiting: new ordinary pieces wait behind them
        self._changed = gevent.event.Event()

    def enter(self, alone: bool) -> None:
        if alone:
            self.waiting += 1
        while self.exclusive or (alone and self.shared) or (not alone and self.waiting):
            self._changed.clear()
            self._changed.wait()
        if alone:
            self.waiting -= 1
            self.exclusive = True
        else:
            self.shared += 1

    def leave(self, alone: bool) -> None:
        if alone:
            self.exclusive = False
        else:
            self.shared -= 1
        self._changed.set()


def describe_error(e: BaseException) -> dict[str, str]:
    """An exception as data: what travels to the master and lands in the failure records."""
    return {"type": type(e).__name__, "message": str(e)[:2000],
            "traceback": "".join(traceback.format_exception(e))}


class Slave:
    """One slave process's work. `run()` returns the exit status."""

    def __init__(self, cfg: SlaveConfig, handle_job: Callable[[Any], Any]) -> None:
        self.cfg = cfg
        self.handle_job = handle_job
        self.key = signing_key(cfg.secret)
        self.curve = load_curve(cfg.curve_dir, "slave") if cfg.curve_dir else None
        self.host = socket.gethostname()
        self.ident = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:6]}".encode()
        self.epoch = NO_EPOCH
        self.session = 0
        self.nonce = uuid.uuid4().hex
        self._master_counter = 0
        self._beats = itertools.count(1)
        self.held = 0  # jobs here, queued or running
        self.window = 2 * cfg.concurrency
        self.job_s = 0.001  # running estimate of one job's duration on one greenlet
        self._overlap = 1.0  # running estimate of pieces in progress at once
        self._unacked_done = 0  # jobs done in batches the master still counts as ours
        self._unreported: list[_Batch] = []  # finished batches, acknowledgement held back
        self._report_due: float | None = None  # since when something done is unreported
        self.done = 0
        self.failed_attempts = 0
        self._counter = 0
        self._queue: deque[_Piece] = deque()
        self._work = gevent.event.Event()
        self._stopping = False
        self._running = 0
        self._isolation = _Isolation()
        self._batches: dict[int, _Batch] = {}
        self._paused = False  # the master said STOP: take nothing until a (new) master welcomes
        self._exit: int | None = None
        self._last_heard = time.monotonic()

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        """Work until the master says the run is done, a signal, or the master is gone."""
        self.sock = SlaveSocket(self.cfg.address, self.ident, self.curve)
        stop_beats = start_heartbeat_thread(self.cfg.address, self.ident, self._heartbeat_frames,
                                            HEARTBEAT_INTERVAL_S, self.curve)
        handlers = [gevent.signal_handler(s, self._on_signal, s)
                    for s in (signal.SIGINT, signal.SIGTERM)]
        workers = [gevent.spawn(self._worker) for _ in range(self.cfg.concurrency)]
        for w in workers:
            w.link_exception(self._crashed)
        log.info("slave %s: %d greenlets, master %s", self.ident.decode(),
                 self.cfg.concurrency, self.cfg.address)
        try:
            self._serve()
        finally:
            stop_beats()
            for h in handlers:
                h.cancel()
            gevent.killall(workers, timeout=1)
            self.sock.close(linger_s=0.2)
        return self._exit if self._exit is not None else EXIT_FAILED

    def _serve(self) -> None:
        last_log = time.monotonic()
        self._send(p.HEARTBEAT, self._heartbeat_body())  # knock at once; a master may be up
        while self._exit is None:
            frames = self.sock.recv(JOIN_RETRY_S if self.epoch == NO_EPOCH else WAKE_S)
            now = time.monotonic()
            if frames is not None:
                self._last_heard = now
                self._handle(frames)
            elif self.epoch == NO_EPOCH and now - self._last_heard < JOIN_FAST_S:
                # Knock until a master answers; it replies WELCOME to an unknown slave.
                self._send(p.HEARTBEAT, self._heartbeat_body())
            if self._report_due is not None and now - self._report_due >= ACK_DELAY_S:
                self._report()
            if now - self._last_heard > self.cfg.master_timeout_s:
                log.error("no master at %s for %.0fs; giving up (is tm-master running there? "
                          "--master-timeout waits longer)", self.cfg.address,
                          now - self._last_heard)
                self._exit = EXIT_FAILED
            if now - last_log >= PROGRESS_LOG_INTERVAL_S:
                last_log = now
                log.debug("%d jobs done, %d held, window %d, %.2gs a job",
                          self.done, self.held, self.window, self.job_s)

    def _take_messages(self) -> None:
        """Handle what the master sent while a piece ran. Pieces that never yield (CPU-bound
        work) run one after another in a single turn of gevent's loop, without a look at the
        socket in between: new jobs would wait for all of them, and the queue run dry."""
        for frames in self.sock.pending():
            self._last_heard = time.monotonic()
            self._handle(frames)

    def _handle(self, frames: list[bytes]) -> None:
        try:
            msg = p.unpack(frames, key=self.key, kinds=p.MASTER_KINDS, max_bytes=MAX_MESSAGE_BYTES)
        except p.ProtocolError as e:
            log.warning("dropped a message from the master: %s", e)
            return
        try:
            self._dispatch(msg)
        except (TypeError, ValueError, IndexError, KeyError) as e:
            log.warning("dropped a %s message of the wrong shape: %s", msg.kind.decode(),
                        type(e).__name__)

    def _dispatch(self, msg: p.Message) -> None:
        if msg.kind == p.WELCOME:
            self._on_welcome(msg)
        elif msg.kind == p.DONE and msg.body[2] == self.nonce:
            pass  # the answer to our knock, from a master that has just finished its run
        elif msg.epoch != self.epoch:
            return  # meant for a run we have left
        elif self.key is not None and msg.counter <= self._master_counter:
            log.warning("dropped a replayed message from the master")
            return
        else:
            self._master_counter = msg.counter
        if msg.kind == p.JOBS:
            self._on_jobs(msg.epoch, *msg.body)
        elif msg.kind == p.STOP:
            log.info("master is stopping; handing back unstarted jobs")
            self._paused = True
            self._hand_back()
        elif msg.kind == p.DONE:
            finished, failed, _nonce = msg.body
            log.info("run complete (%d finished, %d failed); this slave ran %d (and %d failed "
                     "attempts)", finished, failed, self.done, self.failed_attempts)
            self._send(p.BYE, [])
            gevent.spawn(self._finish, EXIT_OK)

    def _on_welcome(self, msg: p.Message) -> None:
        session, nonce = msg.body
        if nonce != self.nonce or self._stopping:
            return  # an answer to an earlier knock, already taken (or a replay); or leaving
        if self.epoch != NO_EPOCH:
            log.warning("master restarted or lost track of this slave; rejoining")
        self.nonce = uuid.uuid4().hex
        self.epoch, self.session, self._paused = msg.epoch, session, False
        self._master_counter = msg.counter
        self._forget_leases()
        self._send(p.READY, (self.session, self._window(), self.cfg.concurrency, self.host,
                             os.getpid()))

    def _on_signal(self, signum: int) -> None:
        code = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
        if self._stopping:
            os._exit(code)  # second signal: leave now; the master re-runs what we held
        self._stopping = True
        if self.held:
            log.warning("%s: finishing running jobs, handing back the rest",
                        signal.Signals(signum).name)
        else:
            log.info("%s: leaving", signal.Signals(signum).name)
        self._paused = True
        self._hand_back()
        gevent.spawn(self._finish, code)

    def _finish(self, code: int) -> None:
        """Exit once the batches already started are done (bounded by STOP_WAIT_S)."""
        self._paused = True
        deadline = time.monotonic() + STOP_WAIT_S
        while (self._queue or self._running) and time.monotonic() < deadline:
            gevent.sleep(0.01)
        if self._queue or self._running:
            log.warning("jobs still running after %.0fs; leaving them to be run again",
                        STOP_WAIT_S)
        self._exit = code
        self.sock.wake()

    def _crashed(self, greenlet: gevent.Greenlet) -> None:
        log.critical("internal error in a worker", exc_info=greenlet.exc_info)
        self._exit = EXIT_FAILED

    # -- credit and jobs -------------------------------------------------------------------

    def _window(self) -> int:
        """The window to report: the master subtracts what it has leased to us, and that
        includes jobs done in batches not yet acknowledged, so those are added back."""
        return 0 if self._paused else self.window + self._unacked_done

    def _on_jobs(self, epoch: bytes, bid: int, jobs: list[Any], alone: bool) -> None:
        n = len(jobs)
        self.held += n
        batch = self._batches[bid] = _Batch(bid, epoch, n)
        size = 1 if alone else max(1, min(n, int(PIECE_S / self.job_s)))
        for offset in range(0, n, size):
            self._queue.append(_Piece(batch, offset, jobs[offset:offset + size] if size < n
                                      else jobs, alone))
            batch.pieces_left += 1
        self._work.set()

    def _forget_leases(self) -> None:
        """Drop every queued piece; running ones finish but will not be acknowledged (their
        lease is one the master has given up on, so it handed the jobs out again)."""
        for piece in self._queue:
            self.held -= len(piece.jobs)
            piece.batch.pieces_left -= 1
        self._queue.clear()
        self._unacked_done = 0
        self._unreported.clear()
        self._report_due = None
        for bid, batch in list(self._batches.items()):
            if batch.pieces_left <= 0:
                del self._batches[bid]
            else:
                batch.epoch = NO_EPOCH

    def _hand_back(self) -> None:
        """Give the master every batch not started yet, and forget it here."""
        if self._report_due is not None:
            self._report()
        back = [b.bid for b in self._batches.values() if not b.started]
        kept: deque[_Piece] = deque()
        for piece in self._queue:
            if piece.batch.started:
                kept.append(piece)
            else:
                self.held -= len(piece.jobs)
        self._queue = kept
        for bid in back:
            del self._batches[bid]
        self._send(p.BYE, back)

    # -- the workers -----------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            while not self._queue:
                self._work.clear()
                self._work.wait()
            piece = self._queue.popleft()
            piece.batch.started = True
            self._running += 1
            self._overlap = 0.8 * self._overlap + 0.2 * self._running
            self._isolation.enter(piece.alone)
            started = time.perf_counter()
            try:
                failures = self._run(piece)
            finally:
                self._isolation.leave(piece.alone)
                self._running -= 1
            elapsed = time.perf_counter() - started
            self._learn(elapsed / len(piece.jobs))
            self._piece_done(piece, failures)
            self._take_messages()
            # Not sleep(0): gevent runs up to 50 ready greenlets (here, 50 pieces) before it
            # next polls sockets, and meanwhile the master's new jobs and pings wait unread.
            gevent.idle()

    def _run(self, piece: _Piece) -> list[tuple[int, dict[str, str]]]:
        jobs, failures = piece.jobs, []
        handle = self.handle_job if self.cfg.job_timeout_s is None else self._timed
        remaining = iter(jobs)
        while True:
            try:
                # map() in a C loop, with no per-job Python of ours: for jobs that take
                # microseconds, the loop is most of what a slave does.
                deque(map(handle, remaining), maxlen=0)
                return failures
            except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's error is data
                # A list iterator knows exactly how many it has left: the job that raised is
                # the one just before those.
                i = len(jobs) - operator.length_hint(remaining) - 1
                log.warning("handle_job(%.80r) raised %s: %s", jobs[i], type(e).__name__, e)
                failures.append((piece.offset + i, describe_error(e)))

    def _timed(self, job: Any) -> None:
        limit = self.cfg.job_timeout_s
        with gevent.Timeout(limit, JobTimeoutError(f"ran past --job-timeout {limit}s")):
            self.handle_job(job)

    def _learn(self, job_s: float) -> None:
        # Weighted toward the recent past: a stream whose jobs change speed is followed
        # within a few pieces.
        self.job_s = max(1e-7, 0.7 * self.job_s + 0.3 * job_s)
        # Greenlets overlap only jobs that wait (I/O, sleeps): a CPU-bound piece never
        # yields, so it always runs alone. The window follows what really overlaps, or a
        # CPU-bound slave would ask for ten times what it can do and starve the others.
        ahead = SLAVE_WORK_AHEAD_S * self._overlap / self.job_s
        self.window = int(min(MAX_WINDOW_JOBS, max(2 * self.cfg.concurrency, ahead)))

    def _piece_done(self, piece: _Piece, failures: list[tuple[int, dict[str, str]]]) -> None:
        batch = piece.batch
        n = len(piece.jobs)
        self.held -= n
        self.done += n - len(failures)
        self.failed_attempts += len(failures)
        batch.failures.extend(failures)
        batch.pieces_left -= 1
        if batch.epoch != self.epoch:
            # A lease the master has given up on: it sent these jobs out again.
            if batch.pieces_left <= 0:
                self._batches.pop(batch.bid, None)
            return
        # Until acknowledged, the master counts the whole batch as ours: the window we report
        # adds back what is done in it, or a batch held open by one slow job would keep us
        # from getting any more work.
        self._unacked_done += n
        if batch.pieces_left <= 0:
            self._unreported.append(batch)
        if self._paused or self.held <= self.window // 2:
            self._report()
        elif self._report_due is None:
            self._report_due = time.monotonic()

    def _report(self) -> None:
        """Acknowledge the finished batches held back, and tell the master our room."""
        done = self._unreported
        self._unreported, self._report_due = [], None
        for batch in done:
            # Held in _batches until now so that heartbeats still name it: a lease missing
            # from a heartbeat is one the master takes back.
            self._batches.pop(batch.bid, None)
            self._unacked_done -= batch.size
        self._send(p.ACK, ([(b.bid, b.failures) for b in done], self._window()))

    # -- messages --------------------------------------------------------------------------

    def _send(self, kind: bytes, body: Any) -> None:
        self._counter += 1
        self.sock.send(p.pack(kind, body, epoch=self.epoch, counter=self._counter, key=self.key))

    def _heartbeat_body(self, held: list[int] | None = None,
                        started: list[int] | None = None) -> list[Any]:
        return [self.ident.decode("utf-8", "surrogateescape"), self.nonce, held, started]

    def _heartbeat_frames(self) -> list[bytes]:
        # Runs on the heartbeat thread: reads attributes, and advances only its own counter.
        # list() of a dict runs without releasing the GIL: a consistent snapshot.
        batches = list(self._batches.items())
        held = [bid for bid, _ in batches]
        started = [bid for bid, batch in batches if batch.started]
        return p.pack(p.HEARTBEAT, self._heartbeat_body(held, started), epoch=self.epoch,
                      counter=next(self._beats), key=self.key)
