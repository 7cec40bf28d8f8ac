"""The master: stream -> buffer -> dispatch -> acknowledgements -> ledger -> checkpoint.

Three greenlets share one `Ledger`: the feeder pulls jobs from the user's generator into the
buffer, the server answers slaves (credit, acknowledgements, heartbeats) on the ROUTER socket,
and the ticker expires silent slaves, pings live ones, checkpoints and reports progress. None of
them blocks on another; they meet only in the ledger, which never does I/O.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import operator
import os
import pickle
import random
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import gevent.event

from . import protocol as p
from . import sized
from .config import (
    BATCH_BYTES,
    CHECKPOINT_INTERVAL_S,
    HEARTBEAT_INTERVAL_S,
    MAX_BATCH_JOBS,
    MAX_MESSAGE_BYTES,
    MAX_WINDOW_JOBS,
    WINDOW_BYTES,
    MasterConfig,
    signing_key,
)
from .errors import EXIT_FAILED, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, ConfigError, UserCodeError
from .ledger import Batch, Failure, Ledger
from .progress import Progress, Snapshot
from .state import Checkpoint, FailureLog, StateFile, read_failures, safe_repr
from .transport import HEARTBEAT_SUFFIX, MasterSocket, load_curve

log = logging.getLogger(__name__)

FEED_STEP_JOBS = 1000
FEED_TURN_S = 0.01
"""Longest the feeder pulls from the stream before it lets the server run. Within that it fills
the buffer's room whole: a buffer topped up a little at a time is handed out in batches just
as small, and every batch costs a message each way."""
TICK_S = 0.25
DONE_LINGER_S = 2.0
"""After the run, how long the master waits for slaves to acknowledge DONE."""
DROP_LOG_INTERVAL_S = 10.0
WELCOME_REPEAT_S = 0.5
"""Least time between two WELCOMEs to one slave: knocks are not answered more often."""
FIRST_BATCH_JOBS = 100
MAX_TRACKED_SENDERS = 100_000
MAX_ERROR_CHARS = 100_000
"""Longest error text (a traceback, usually) kept from a slave's report."""


@dataclass
class SlaveInfo:
    """What the master knows of one connected slave."""

    ident: bytes
    host: str = "?"
    pid: int = 0
    concurrency: int = 0
    window: int = 0
    """Jobs the slave asks to hold at once (it measures how many keep it busy)."""
    last_seen: float = field(default_factory=time.monotonic)
    leaving: bool = False
    started: set[int] | None = None
    """Batches the slave said it had started, in its last heartbeat (at ``reported_at``)."""
    reported_at: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}"


class _Stream:
    """The user's job stream, pulled in chunks. An exception from it ends the stream and is kept
    as the run's error; every job yielded before it is still returned."""

    def __init__(self, iterable: Any) -> None:
        self.iterator: Iterator[Any] = iter(iterable)
        self.ended = False
        self.error: UserCodeError | None = None

    def pull(self, n: int, turn_s: float) -> list[Any]:
        """Up to ``n`` jobs: fewer when the stream ends, or when pulling them takes longer than
        ``turn_s`` (a slow generator must not keep the server from answering slaves)."""
        jobs: list[Any] = []
        deadline = time.monotonic() + turn_s
        try:
            while len(jobs) < n:
                want = min(n - len(jobs), FEED_STEP_JOBS)
                before = len(jobs)
                # No generator of our own around the user's: that would cost more per job than
                # the rest of the master does. extend() keeps what it appended before an
                # exception, so a failing stream loses none of the jobs it did yield.
                jobs.extend(itertools.islice(self.iterator, want))
                if len(jobs) - before < want:
                    self.ended = True
                elif time.monotonic() < deadline:
                    continue
                break
        except Exception as e:  # noqa: BLE001 - the user's exception, reported in full
            self.ended = True
            self.error = UserCodeError(f"get_jobs raised {type(e).__name__}: {e}",
                                       traceback.format_exc())
        return jobs


def open_stream(get_jobs: Callable[..., Any], kwargs: dict[str, str],
                cp: Checkpoint | None) -> Any:
    """Call ``get_jobs``, with ``last`` when resuming; bad KEY=VALUE names are a ConfigError."""
    call_kwargs: dict[str, Any] = dict(kwargs)
    if cp is not None and cp.has_resume:
        call_kwargs["last"] = cp.resume_job
    try:
        # `last` is checked on a fresh run too: better now than at the first resume.
        inspect.signature(get_jobs).bind(**{"last": None, **call_kwargs})
    except TypeError as e:
        raise ConfigError(f"get_jobs cannot take these arguments: {e}; "
                          "check the KEY=VALUE pairs and get_jobs' parameters") from None
    except ValueError:
        pass  # no signature to check (a builtin); the call itself will tell
    try:
        return get_jobs(**call_kwargs)
    except Exception as e:  # noqa: BLE001
        raise UserCodeError(f"get_jobs raised {type(e).__name__}: {e}",
                            traceback.format_exc()) from None


def _recorded_jobs(path: Path, cp: Checkpoint | None) -> Any:
    """The jobs of a failures file, from the resume point on (its position in the file)."""
    jobs = [job for _seq, job in read_failures(path)]
    start = cp.resume_seq if cp is not None and cp.has_resume else 0
    log.info("retrying %d recorded jobs from %s", len(jobs) - start, path)
    return sized(iter(jobs[start:]), total=len(jobs) - start)


class Master:
    """One run's master. `run()` returns the exit status."""

    def __init__(self, cfg: MasterConfig, get_jobs: Callable[..., Any], *,
                 on_bound: Callable[[str], None] | None = None,
                 expected_gone: Callable[[], bool] | None = None) -> None:
        self.cfg = cfg
        self.get_jobs = get_jobs
        self.key = signing_key(cfg.secret)
        self.on_bound = on_bound
        # tm-run knows its slaves: the goodbye lasts until all of them have gone, so that
        # one still starting when the run ends hears DONE instead of waiting for a signal.
        self.expected_gone = expected_gone or (lambda: True)
        self.epoch = p.new_epoch()
        self.slaves: dict[bytes, SlaveInfo] = {}
        self._waiting: set[bytes] = set()  # slaves with room left and nothing to give them
        self._welcomes: dict[bytes, tuple[int, float]] = {}  # offered session, when
        self._counters: dict[bytes, int] = {}  # last counter seen from each sender
        self._sessions = itertools.count(1)
        self._counter = itertools.count(1)
        self._room = gevent.event.Event()
        self._finished = gevent.event.Event()
        self._stop_signal: int | None = None
        self._complete = False
        self._broken = False
        self._fatal: UserCodeError | None = None
        self._base = Checkpoint()
        self._base_finished = self._base_failed = 0
        self._last_saved: tuple[Any, ...] | None = None
        self.dropped = 0
        self._dropped_logged = 0.0
        self._job_bytes = 0.0  # pickled size of a job, averaged over recent batches
        self.total: int | None = None
        self.started = time.monotonic()

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        """Serve the run to completion (or a stop); checkpoint; return the exit status."""
        assert self.cfg.state_path is not None and self.cfg.failures_path is not None
        with StateFile(self.cfg.state_path) as state:
            if self.cfg.reset:
                state.remove()
                self.cfg.failures_path.unlink(missing_ok=True)
            cp = state.load()
            if cp is not None and cp.complete:
                log.warning("run already complete (%d finished, %d failed), per %s; "
                            "--reset starts it over", cp.finished, cp.failed, state.path)
                return EXIT_OK
            log.info("state file: %s%s", state.path,
                     f" (resuming at job #{cp.resume_seq}: {safe_repr(cp.resume_job, 80)})"
                     if cp and cp.has_resume else "")
            self._base = cp or Checkpoint()
            if self._base.has_resume:
                # Everything before the resume point is settled; everything after runs again.
                self._base_failed = self._base.failed_before
                self._base_finished = self._base.resume_seq - self._base_failed
            self._base.target, self._base.kwargs = self.cfg.target.spec, self.cfg.kwargs
            if self.cfg.retry_failures is not None:
                stream = _recorded_jobs(self.cfg.retry_failures, cp)
            else:
                stream = open_stream(self.get_jobs, self.cfg.kwargs, cp)
            hint = operator.length_hint(stream, -1)
            first = self._base.resume_seq if self._base.has_resume else 0
            self.total = first + hint if hint >= 0 else None
            # Batch ids start at random, so a slave still finishing a batch of an earlier master
            # never confuses it with one of ours.
            self.ledger = Ledger(self.cfg.size, first_seq=first, first_bid=random.getrandbits(48),
                                 max_retries=self.cfg.max_retries, max_deaths=self.cfg.max_deaths)
            self.failures = FailureLog(self.cfg.failures_path)
            curve = load_curve(self.cfg.curve_dir, "master") if self.cfg.curve_dir else None
            self.sock = MasterSocket(self.cfg.address, MAX_MESSAGE_BYTES, curve)
            try:
                return self._serve(state, _Stream(stream))
            finally:
                self.failures.close()
                self.sock.close()

    def _serve(self, state: StateFile, stream: _Stream) -> int:
        log.info("master listening on %s (%s)", self.sock.address, _security(self.cfg))
        if self.on_bound:
            self.on_bound(self.sock.address)
        progress = Progress(self.snapshot, enabled=self.cfg.progress)
        handlers = [gevent.signal_handler(s, self._on_signal, s)
                    for s in (signal.SIGINT, signal.SIGTERM)]
        greenlets = [gevent.spawn(self._feed, stream), gevent.spawn(self._receive),
                     gevent.spawn(self._tick, state, progress)]
        for g in greenlets:
            g.link_exception(self._crashed)
        try:
            self._finished.wait()
            if self._stop_signal is not None or self._fatal is not None:
                self._drain()
            if not self._broken:
                # After an internal error the ledger may be ahead of the failure records:
                # the last periodic checkpoint is the safe one.
                self._checkpoint(state, force=True)
            if self._stop_signal is None and self._fatal is None:
                self._farewell()
        finally:
            gevent.killall(greenlets)
            for h in handlers:
                h.cancel()
            progress.close()
        return self._outcome()

    @property
    def finished(self) -> int:
        """Jobs of the run that succeeded, each counted once across restarts."""
        return self._base_finished + self.ledger.finished

    @property
    def failed(self) -> int:
        return self._base_failed + self.ledger.failed

    def _outcome(self) -> int:
        failed, finished = self.failed, self.finished
        if self._fatal is not None:
            trace = self._fatal.user_traceback.rstrip()
            log.error("%s%s", self._fatal, "\n" + trace if trace else "")
            log.error("run stopped; state saved: restart to resume")
            return EXIT_FAILED
        if self._stop_signal is not None:
            log.warning("stopped by %s; state saved: restart to resume",
                        signal.Signals(self._stop_signal).name)
            return EXIT_SIGINT if self._stop_signal == signal.SIGINT else EXIT_SIGTERM
        elapsed = time.monotonic() - self.started
        ledger = self.ledger
        log.info("run complete: %d finished, %d failed in %.1fs (%d retries, %d jobs sent again, "
                 "%d stale acknowledgements, %d messages dropped)", finished, failed, elapsed,
                 ledger.retried, ledger.redispatched, ledger.stale_acks, self.dropped)
        if failed:
            log.error("%d jobs failed; see %s (rerun them with --retry-failures)",
                      failed, self.cfg.failures_path)
            return EXIT_FAILED
        return EXIT_OK

    def _on_signal(self, signum: int) -> None:
        if self._stop_signal is not None:
            # Second signal: the state file already holds a safe resume point.
            os._exit(EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM)
        log.warning("%s: stopping; waiting up to %.0fs for leased jobs (again to exit now)",
                    signal.Signals(signum).name, self.cfg.stop_wait_s)
        self._stop_signal = signum
        self._finished.set()

    def abort(self, message: str) -> None:
        """Stop the run as failed (saving its state), for a reason found outside the master."""
        if not self.stopping:
            self._fatal = UserCodeError(message, "")
            self._finished.set()

    def _crashed(self, greenlet: gevent.Greenlet) -> None:
        log.critical("internal error in %s", greenlet, exc_info=greenlet.exc_info)
        self._broken = True
        self._fatal = UserCodeError(f"internal error: {greenlet.exception!r}", "")
        self._finished.set()

    def _farewell(self) -> None:
        """Tell every slave the run is complete, and wait (bounded) for each to say goodbye:
        closing the socket at once could drop those last messages."""
        self._complete = True
        self._broadcast(p.DONE, [self.finished, self.failed, None])
        deadline = time.monotonic() + DONE_LINGER_S
        while (self.slaves or not self.expected_gone()) and time.monotonic() < deadline:
            gevent.sleep(0.01)

    def _drain(self) -> None:
        """Stop handing out work and wait (bounded) for what slaves hold to come back."""
        self._broadcast(p.STOP, None)
        deadline = time.monotonic() + self.cfg.stop_wait_s
        while self.ledger.leases and time.monotonic() < deadline:
            gevent.sleep(0.05)
        if self.ledger.leases:
            log.warning("%d jobs still leased after %.0fs; they will run again on restart",
                        self.ledger.leased, self.cfg.stop_wait_s)

    @property
    def stopping(self) -> bool:
        return self._finished.is_set()

    # -- the feeder ------------------------------------------------------------------------

    def _feed(self, stream: _Stream) -> None:
        while not self.stopping:
            room = self.ledger.room()
            if room <= 0:
                self._room.clear()
                self._room.wait()
                continue
            jobs = stream.pull(room, FEED_TURN_S)
            self.ledger.feed(jobs, exhausted=stream.ended and stream.error is None)
            self._serve_waiting()
            if stream.error is not None:
                self._fatal = stream.error
                self._finished.set()
                return
            if stream.ended:
                log.debug("stream exhausted at job #%d", self.ledger.next_seq)
                self._check_complete()
                return
            # Not sleep(0): gevent runs up to 50 ready greenlets before it next polls sockets,
            # and idle() waits for that poll, so the server answers slaves between turns.
            gevent.idle()

    # -- the server ------------------------------------------------------------------------

    def _receive(self) -> None:
        handlers = {p.ACK: self._on_ack, p.BYE: self._on_bye}
        while True:
            ident, frames = self.sock.recv()
            try:
                msg = p.unpack(frames, key=self.key, kinds=p.SLAVE_KINDS,
                               max_bytes=MAX_MESSAGE_BYTES)
            except p.ProtocolError as e:
                self._drop(ident, str(e))
                continue
            if self.key is not None and not self._fresh(ident, msg.counter):
                self._drop(ident, "replayed message")
                continue
            now = time.monotonic()
            slave = self.slaves.get(ident)
            try:
                if msg.kind == p.HEARTBEAT:
                    self._on_heartbeat(ident, msg, now)
                elif msg.kind == p.READY and msg.epoch == self.epoch:
                    self._on_ready(ident, slave, msg, now)
                elif slave is None or msg.epoch != self.epoch:
                    # From an earlier run, or a slave we gave up on: its heartbeat will be
                    # answered with WELCOME, and then it starts afresh.
                    if msg.kind == p.ACK:
                        self.ledger.stale_acks += 1
                else:
                    slave.last_seen = now
                    handlers[msg.kind](ident, slave, msg, now)
            except (TypeError, ValueError, KeyError, AttributeError, IndexError,
                    OverflowError) as e:
                # Authentic but ill-formed (or unauthenticated on a secret-less loopback run):
                # the body is plain JSON, so nothing worse than a wrong shape can arrive.
                self._drop(ident, f"bad {msg.kind.decode()} body: {type(e).__name__}")

    def _fresh(self, ident: bytes, counter: int) -> bool:
        """Each sender's counter only grows; a repeat is a replayed capture."""
        if counter <= self._counters.get(ident, 0):
            return False
        if len(self._counters) > MAX_TRACKED_SENDERS:
            # Only authenticated senders get here, so this is many slaves over a long run.
            self._counters.clear()
        self._counters[ident] = counter
        return True

    def _drop(self, ident: bytes, why: str) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._dropped_logged > DROP_LOG_INTERVAL_S:
            self._dropped_logged = now
            log.warning("dropped a message from %r: %s (%d dropped so far)",
                        ident[:40], why, self.dropped)

    def _on_heartbeat(self, sender: bytes, msg: p.Message, now: float) -> None:
        name, nonce, held, started = msg.body
        ident = str(name).encode("utf-8", "surrogateescape")
        if sender not in (ident, ident + HEARTBEAT_SUFFIX):
            # The MAC does not cover the connection's identity, which a peer picks itself:
            # only the slave's own two sockets may speak for it, or a replayed heartbeat could
            # keep a dead slave's leases alive forever.
            raise ValueError("heartbeat names another slave")
        slave = self.slaves.get(ident)
        if slave is not None:
            if msg.epoch == self.epoch:
                slave.last_seen = now
                if started is not None:
                    slave.started = {_count(bid) for bid in started}
                    slave.reported_at = now
                self._reconcile(slave, held, now)
            return
        if self._complete:
            # A slave that knocks while we say goodbye learns that there is nothing left.
            self._send(ident, p.DONE, [self.finished, self.failed, str(nonce)])
            return
        # A slave we do not know (new, from an earlier run, or one we gave up on): tell it to
        # start afresh. It accepts a WELCOME only if it echoes its latest nonce, so a late or
        # replayed one cannot reset it a second time.
        session, sent = self._welcomes.get(ident, (next(self._sessions), 0.0))
        if now - sent >= WELCOME_REPEAT_S:
            self._welcomes[ident] = (session, now)
            self._send(ident, p.WELCOME, [session, str(nonce)])
        if len(self._welcomes) > MAX_TRACKED_SENDERS:
            self._welcomes.clear()

    def _reconcile(self, slave: SlaveInfo, held: Any, now: float) -> None:
        if held is None or slave.leaving or self.stopping:
            return
        bids = {_count(bid) for bid in held}
        jobs = self.ledger.reclaim(slave.ident, bids, now - self.cfg.lease_timeout_s)
        if jobs:
            log.warning("slave %s does not hold %d jobs leased to it %.0fs ago (lost in "
                        "transit); they go out again", slave.name, jobs,
                        self.cfg.lease_timeout_s)
            self._serve_waiting()

    def _on_ready(self, ident: bytes, slave: SlaveInfo | None, msg: p.Message,
                  now: float) -> None:
        session, window, concurrency, host, pid = msg.body
        window, concurrency, pid = _count(window), _count(concurrency), _count(pid)
        if slave is None:
            if self._welcomes.get(ident, (None,))[0] != session:
                return
            del self._welcomes[ident]
            if self._complete:
                # Welcomed just before the run ended, and so missed the goodbye to everyone.
                self._send(ident, p.DONE, [self.finished, self.failed, None])
                return
            slave = self.slaves[ident] = SlaveInfo(ident, str(host)[:200], pid, concurrency)
            log.info("slave %s joined (concurrency %d)", slave.name, slave.concurrency)
        slave.last_seen = now
        slave.window = window
        self._dispatch(slave, now)

    def _on_ack(self, ident: bytes, slave: SlaveInfo, msg: p.Message, now: float) -> None:
        done, window = _parse_ack(msg.body)
        for bid, failures in done:
            final = self.ledger.ack(ident, bid, failures, now)
            if failures:
                self._log_failures(slave, failures, final)
            self.failures.record(final)
        if slave.leaving:
            if not self.ledger.held_by(ident):
                self._forget(slave)
        else:
            slave.window = window
            self._dispatch(slave, now)
        if self.ledger.exhausted:
            self._check_complete()

    def _on_bye(self, ident: bytes, slave: SlaveInfo, msg: p.Message, now: float) -> None:
        self.ledger.hand_back(ident, list(msg.body))
        slave.leaving = True
        slave.window = 0
        log.info("slave %s leaving", slave.name)
        if not self.ledger.held_by(ident):
            self._forget(slave)
        self._serve_waiting()

    def _forget(self, slave: SlaveInfo) -> None:
        self.slaves.pop(slave.ident, None)
        self._waiting.discard(slave.ident)

    def _log_failures(self, slave: SlaveInfo, failures: list[Any], final: list[Failure]) -> None:
        for _index, error in failures:
            log.warning("job failed on %s: %s: %s", slave.name, error.get("type"),
                        error.get("message"))
        for f in final:
            log.error("job #%d %s failed for good after %d attempts:\n%s", f.seq,
                      safe_repr(f.job, 200), f.attempts, f.error.get("traceback", "").rstrip())

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self, slave: SlaveInfo, now: float) -> None:
        if slave.leaving or self.stopping:
            return
        # Absolute, not incremental, credit: what the slave asks to hold minus what it holds.
        # A lost message then cannot leave master and slave disagreeing for good.
        window, max_batch = min(slave.window, MAX_WINDOW_JOBS), MAX_BATCH_JOBS
        if not self._job_bytes:
            # Until one batch has shown how large a job pickles, a small one: 5 000 unknown
            # jobs could be more than a slave accepts in one message.
            max_batch = FIRST_BATCH_JOBS
        else:
            # Large jobs: bounded in bytes too, but never below a job per greenlet.
            window = min(window, max(slave.concurrency, int(WINDOW_BYTES / self._job_bytes)))
            max_batch = max(1, min(max_batch, int(BATCH_BYTES / self._job_bytes)))
        credit = window - self.ledger.held_by(slave.ident)
        if credit <= 0:
            self._waiting.discard(slave.ident)
            return
        batches = self.ledger.take(slave.ident, credit, now, alone=self._takers() <= 1,
                                   max_batch=max_batch)
        for i, batch in enumerate(batches):
            credit -= len(batch.jobs)
            if not self._send_batch(slave, batch, unsent=batches[i + 1:]):
                return
        if credit > 0:
            self._waiting.add(slave.ident)
        else:
            self._waiting.discard(slave.ident)
        if batches and self.ledger.room() > 0:
            self._room.set()

    def _takers(self) -> int:
        return sum(1 for s in self.slaves.values() if not s.leaving and s.window)

    def _send_batch(self, slave: SlaveInfo, batch: Batch, unsent: list[Batch]) -> bool:
        try:
            frames = p.pack(p.JOBS, (batch.bid, batch.jobs, batch.isolate), epoch=self.epoch,
                            counter=next(self._counter), key=self.key)
        except Exception:  # noqa: BLE001 - a job that cannot be pickled is the user's error
            self.ledger.hand_back(slave.ident, [b.bid for b in (batch, *unsent)])
            self._fatal = _unpicklable(batch)
            self._finished.set()
            return False
        size = len(frames[p.BODY_FRAME]) / len(batch.jobs)
        self._job_bytes = size if not self._job_bytes else 0.8 * self._job_bytes + 0.2 * size
        if not self.sock.send(slave.ident, frames):
            self._lose(slave, "disconnected")
            return False
        return True

    def _serve_waiting(self) -> None:
        now = time.monotonic()
        for ident in list(self._waiting):
            slave = self.slaves.get(ident)
            if slave is None:
                self._waiting.discard(ident)
            elif self.ledger.has_work():
                self._dispatch(slave, now)
            else:
                break

    def _lose(self, slave: SlaveInfo, why: str) -> None:
        held = self.ledger.held_by(slave.ident)
        log.warning("slave %s lost (%s); %d leased jobs go out again", slave.name, why, held)
        self._forget(slave)
        final = self.ledger.lose(slave.ident, slave.started, slave.reported_at)
        for f in final:
            log.error("job #%d %s recorded as failed: %s", f.seq, safe_repr(f.job, 200),
                      f.error["message"])
        self.failures.record(final)
        self._serve_waiting()
        self._check_complete()

    def _check_complete(self) -> None:
        # The two cheap tests first: `complete` scans every lease.
        if self.ledger.exhausted and not self.ledger.leases and self.ledger.complete:
            self._finished.set()

    def _send(self, ident: bytes, kind: bytes, body: Any) -> bool:
        return self.sock.send(ident, p.pack(kind, body, epoch=self.epoch,
                                            counter=next(self._counter), key=self.key))

    def _broadcast(self, kind: bytes, body: Any) -> None:
        for ident in list(self.slaves):
            self._send(ident, kind, body)

    # -- the ticker ------------------------------------------------------------------------

    def _tick(self, state: StateFile, progress: Progress) -> None:
        last_ping = last_checkpoint = 0.0
        while True:
            before = time.monotonic()
            gevent.sleep(TICK_S)
            now = time.monotonic()
            if now - before > self.cfg.lease_timeout_s / 2:
                # We were the ones not listening (a get_jobs that blocked the hub, a slow
                # disk): silence from slaves over that time says nothing about them.
                for slave in self.slaves.values():
                    slave.last_seen = max(slave.last_seen, now)
            for slave in list(self.slaves.values()):
                if now - slave.last_seen > self.cfg.lease_timeout_s:
                    self._lose(slave, f"silent for {now - slave.last_seen:.0f}s")
            if now - last_ping >= HEARTBEAT_INTERVAL_S:
                last_ping = now
                self._broadcast(p.PING, None)
            if self.ledger.retrying:
                self._serve_waiting()
            if now - last_checkpoint >= CHECKPOINT_INTERVAL_S:
                last_checkpoint = now
                self._checkpoint(state)
            progress.update()

    def _checkpoint(self, state: StateFile, force: bool = False) -> None:
        ledger = self.ledger
        point = ledger.resume_point()
        cp = Checkpoint(finished=self.finished, failed=self.failed,
                        target=self._base.target, kwargs=self._base.kwargs)
        if point is not None:
            cp.resume_seq, cp.resume_job = point
            cp.has_resume = True
            cp.failed_before = self._base_failed + ledger.failed_before(cp.resume_seq)
        elif ledger.exhausted:
            cp.resume_seq, cp.complete = ledger.next_seq, True
            cp.failed_before = cp.failed
        else:
            # Nothing pulled from the stream yet: where we started is still where to resume.
            cp.resume_seq, cp.resume_job = self._base.resume_seq, self._base.resume_job
            cp.has_resume = self._base.has_resume
            cp.failed_before = self._base.failed_before
        key = (cp.resume_seq, cp.has_resume, cp.finished, cp.failed, cp.complete)
        if key != self._last_saved or force:
            try:
                state.save(cp)
            except (pickle.PicklingError, TypeError, AttributeError) as e:
                # The resume job itself cannot be pickled (the dispatcher reports it as the
                # run's error); the last checkpoint written is still a safe resume point.
                log.debug("checkpoint not written: %s", e)
                return
            self._last_saved = key

    def snapshot(self) -> Snapshot:
        """The numbers the progress display shows."""
        ledger = self.ledger
        return Snapshot(done=self.finished + self.failed, failed=self.failed, total=self.total,
                        buffered=ledger.buffered, leased=ledger.leased,
                        slaves=len(self.slaves), dropped=self.dropped)


def _count(value: Any, most: int = 2**62) -> int:
    """A whole number from a message, or ValueError: JSON also allows floats, bools, 1e999."""
    if type(value) is not int or not 0 <= value <= most:
        raise ValueError(f"expected a count, got {str(value)[:40]!r}")
    return value


def _parse_ack(body: Any) -> tuple[list[tuple[int, list[tuple[int, dict[str, str]]]]], int]:
    """An ACK body, checked whole before any of it touches the ledger."""
    done, window = body
    parsed = []
    for bid, failures in done:
        errors = []
        for index, error in failures:
            if not isinstance(error, dict):
                raise ValueError("a failure's error is not an object")
            errors.append((_count(index), {key: str(error.get(key, ""))[:MAX_ERROR_CHARS]
                                           for key in ("type", "message", "traceback")}))
        parsed.append((_count(bid), errors))
    return parsed, _count(window)


def _security(cfg: MasterConfig) -> str:
    if cfg.secret is None:
        return "no shared secret: loopback only" if not cfg.insecure else "INSECURE: unsigned"
    return "signed with the shared secret" + (", Curve-encrypted" if cfg.curve_dir else "")


def _unpicklable(batch: Batch) -> UserCodeError:
    for i, job in enumerate(batch.jobs):
        try:
            pickle.dumps(job, p.PICKLE_PROTOCOL)
        except Exception as e:  # noqa: BLE001
            return UserCodeError(
                f"job #{batch.start + i} {safe_repr(job, 200)} cannot be pickled "
                f"({type(e).__name__}: {e}); get_jobs must yield picklable values",
                traceback.format_exc())
    return UserCodeError(f"batch from job #{batch.start} cannot be pickled", "")
