"""The master: wiring and lifecycle.

A job's way through it: the `Feeder` pulls it from ``get_jobs`` in a thread of its own; the
feed greenlet puts it in the `Ledger`; the `Handout` leases it to a slave of the `Registry`
and sends it; the slave's acknowledgement comes back through the `Exchange` to the ledger; the
`Checkpointer` writes failure records and, about once a second, the resume point.

Three greenlets do the work (feed, receive, and the `Upkeep` of a tick) and meet only in those
parts, which never block. The master's own life is phases a caller can drive one by one (tm-run
starts its slaves between them): `open` the state file, `start` the stream and the socket,
`serve` until the run ends (an `Outcome`), say `farewell` to slaves, `close`. `run` does all.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event

from . import protocol as p
from .checkpointer import Checkpointer
from .config import (
    BEAT_GATHER_S,
    CONTROL_SAMPLE_S,
    DONE_LINGER_S,
    FAREWELL_POLL_S,
    MAX_MESSAGE_BYTES,
)
from .control import Control
from .curve import load_curve
from .dispatch import buffer_room
from .errors import InternalError, Outcome, TaskmasterError, exit_code_for_signal
from .exchange import Exchange
from .feeder import feeder_for
from .handout import Handout
from .ledger import Ledger
from .progress import Progress, plural
from .redelivery import Redelivery
from .registry import Registry
from .report import already_complete, report_end, report_start
from .settings import MasterConfig, signing_key
from .signals import StopSignals
from .transport import MasterSocket
from .upkeep import Upkeep, every

log = logging.getLogger(__name__)


class Master:
    """One run's master."""

    def __init__(self, cfg: MasterConfig, get_jobs: Callable[..., Any], *,
                 leave_now: Callable[[int], None] | None = None) -> None:
        """``leave_now(signum)``: what a second stop signal does (by default, exit at once:
        the state file already holds a safe resume point)."""
        self.cfg = cfg
        self.get_jobs = get_jobs
        self.registry = Registry()
        self.signals = StopSignals(on_second=leave_now or self._leave_now)
        self.started = time.monotonic()
        self._end = gevent.event.Event()
        self._error: TaskmasterError | None = None
        self._greenlets: list[gevent.Greenlet] = []
        self._resources: list[Any] = []  # what open() and start() opened, each with a close()

    # -- the phases ------------------------------------------------------------------------

    def run(self) -> Outcome:
        """The whole run, for tm-master."""
        try:
            outcome = self.open()
            if outcome is None:
                self.start()
                outcome = self.serve()
                if outcome.complete:
                    self.farewell()
            return outcome
        finally:
            self.close()

    def open(self) -> Outcome | None:
        """Take the state file; returns the outcome at once if the run is already complete."""
        self.checkpointer = Checkpointer.open(self.cfg)
        self._resources.append(self.checkpointer)
        cp = self.checkpointer.resumed
        if cp is not None and cp.complete:
            return already_complete(self.cfg, cp)
        self.checkpointer.check()
        report_start(self.cfg, cp)
        return None

    expected = "waiting for slaves (tm-slave or tm-spawn, with the same target and --address)"
    """What the start says of the slaves to come (tm-run says how many it starts)."""

    def start(self) -> str:
        """Open the job stream and the socket; returns the address slaves connect to."""
        cfg, cp = self.cfg, self.checkpointer.resumed
        self.feeder = feeder_for(self.get_jobs, cfg, cp, self.checkpointer.retry_source)
        self._resources.append(self.feeder)
        # Batch ids start at random, so a slave still finishing a batch of an earlier master
        # never confuses it with one of ours.
        self.ledger = Ledger(cfg.size, first_seq=self.checkpointer.start.resume_seq,
                             first_bid=random.getrandbits(48),
                             policy=Redelivery(cfg.max_retries, cfg.max_deaths))
        curve = load_curve(cfg.curve_dir, "master") if cfg.curve_dir else None
        self.sock = MasterSocket(cfg.address, MAX_MESSAGE_BYTES, curve, same_user=cfg.same_user)
        self._resources.append(self.sock)
        key, epoch = signing_key(cfg.secret), p.new_epoch()
        self.handout = Handout(self.ledger, self.registry, self.checkpointer, self.sock.send,
                               p.Seal(key, epoch), stop=self.stop, room_freed=self._room_freed,
                               max_message_bytes=cfg.max_message_bytes, rate=cfg.rate)
        self.exchange = Exchange(self.ledger, self.registry, self.handout, self.checkpointer,
                                 key=key, epoch=epoch, lease_timeout_s=cfg.lease_timeout_s)
        self.control = Control(cfg, registry=self.registry, ledger=self.ledger,
                               handout=self.handout, exchange=self.exchange,
                               signals=self.signals, totals=self._totals,
                               total=lambda: self.feeder.total, address=self.sock.address,
                               epoch=epoch, stop=self.stop)
        self._resources.append(self.control)
        log.info("master listening on %s (%s); %s", self.sock.address, cfg.security,
                 self.expected)
        # From now on (until close), a stop signal is a graceful stop, whenever it comes.
        self.signals.open()
        self._resources.append(self.signals)
        return self.sock.address

    def serve(self) -> Outcome:
        """Serve slaves until the run is complete or stopped; checkpoint; the outcome."""
        self.progress = Progress(self.control.snapshot, enabled=self.cfg.progress)
        upkeep = Upkeep(lease_timeout_s=self.cfg.lease_timeout_s, registry=self.registry,
                        ledger=self.ledger, handout=self.handout,
                        checkpointer=self.checkpointer, progress=self.progress,
                        check_complete=self.check_complete,
                        also=[every(CONTROL_SAMPLE_S, self.control.sample),
                              self.control.check_limits,
                              *([self.sock.gate.tell] if self.sock.gate is not None else [])])
        for body in (self._feed, self._receive, upkeep.run):
            greenlet = gevent.spawn(body)
            greenlet.link_exception(self._crashed)
            self._greenlets.append(greenlet)
        self.feeder.start()
        gevent.wait([self._end, self.signals.arrived], count=1)
        self._end.set()
        self.handout.closed = True
        # After a bug of ours, no wait for leases (the greenlet reading acknowledgements
        # may be the one that died) and no checkpoint (the ledger may be wrong): the last
        # periodic one is the safe one.
        saved = False
        if not isinstance(self._error, InternalError):
            if self.signals.requested is not None or self._error is not None:
                self._drain()
            self.checkpointer.retry(self.ledger)
            saved = self.checkpointer.save(self.ledger, force=True)
        self.progress.close()
        if self.sock.gate is not None:
            self.sock.gate.tell(time.monotonic(), last=True)
        outcome = Outcome(*self._totals(), signal=self.signals.requested, error=self._error)
        report_end(outcome, self.ledger.stats, dropped=self.exchange.dropped,
                   elapsed_s=time.monotonic() - self.started,
                   state_path=self.cfg.state_path, failures_path=self.cfg.failures_path,
                   saved=saved, on_disk=self.checkpointer.on_disk, digest=self.handout.digest,
                   retrying=self.cfg.retry_failures is not None, stopped_by=self.signals.by)
        return outcome

    def farewell(self, until: Callable[[], bool] = lambda: True,
                 linger_s: float | None = None) -> None:
        """Tell every slave the run is complete and wait (bounded) for each to say goodbye,
        and for ``until()``: closing the socket at once could drop those last messages.
        Stay ``linger_s`` (default --linger) in any case, telling late slaves the same."""
        self.exchange.farewell = p.Done(*self._totals())
        self.handout.broadcast(self.exchange.farewell)
        began = time.monotonic()
        linger_s = self.cfg.linger_s if linger_s is None else linger_s
        deadline = began + max(linger_s, DONE_LINGER_S)
        while (len(self.registry) or not until() or time.monotonic() - began < linger_s) \
                and time.monotonic() < deadline and self.signals.requested is None:
            gevent.sleep(FAREWELL_POLL_S)

    def close(self) -> None:
        """Let go of everything: greenlets, the stream's thread, the socket, the state file."""
        gevent.killall(self._greenlets)
        while self._resources:
            self._resources.pop().close()

    def stop(self, error: TaskmasterError) -> None:
        """End the run as failed, saving its state, for ``error`` (the run's first wins)."""
        if not self._end.is_set():
            self._error = error
            self._end.set()

    # -- the work --------------------------------------------------------------------------

    def _feed(self) -> None:
        self._room_freed()
        ended, first = False, True
        while not ended:
            for chunk in self.feeder.take():
                self.ledger.feed(chunk.jobs, exhausted=chunk.ended and chunk.error is None,
                                 origins=chunk.origins)
                if chunk.error is not None:
                    self.stop(chunk.error)
                ended = chunk.ended
            if first:
                # A resume point on disk before any job goes out: a stream that starts from
                # "now" (a schedule) is resumed from its first job, never started afresh.
                first = not self.checkpointer.save(self.ledger)
            # Also after the last chunk: the jobs that came with the end must go out too.
            self.handout.serve_waiting()
            self._room_freed()
        log.debug("stream ended at job #%d", self.ledger.next_seq)
        self.check_complete()

    def _room_freed(self) -> None:
        ledger = self.ledger
        held = ledger.buffered + ledger.requeued + ledger.leased + ledger.recording
        job_bytes = max(self.feeder.job_bytes, self.handout.job_size.bytes)
        self.feeder.allow(buffer_room(ledger.room(), held=held, leased=ledger.leased,
                                      job_bytes=job_bytes, max_bytes=self.cfg.max_buffer_bytes,
                                      buffer_bytes=self.cfg.buffer_bytes))

    def _receive(self) -> None:
        calm_s = 0.0
        while True:
            sender, frames = self.sock.recv(calm_s)
            now = time.monotonic()
            self.exchange.handle(sender, frames, now)
            self.check_complete()
            self.control.check_limits(now)
            # After a beat from a slave's heartbeat socket (it wants no answer) what comes next
            # may wait a moment, to be taken with the others that come meanwhile (see
            # BEAT_GATHER_S). Not after a knock on a slave's own socket: its READY comes next,
            # and the start of a run waits on it. The sender is read unchecked: all it decides
            # is how soon we look again.
            calm_s = BEAT_GATHER_S if sender.endswith(p.HEARTBEAT_SUFFIX) else 0.0

    def check_complete(self) -> None:
        """End the run once every job of it is settled."""
        if self.ledger.complete:
            self._end.set()

    def _drain(self) -> None:
        """Stop handing out work and wait (bounded) for what slaves hold to come back."""
        if self.signals.requested is not None:
            log.warning("%s: stopping; waiting up to %.0fs for leased jobs (again to exit now)",
                        self.signals.name, self.cfg.stop_wait_s)
        self.handout.broadcast(p.Stop())
        deadline = time.monotonic() + self.cfg.stop_wait_s
        while self.ledger.leases and time.monotonic() < deadline:
            gevent.sleep(0.05)
        if self.ledger.leases:
            log.warning("%s still leased after %.0fs; they will run again on restart",
                        plural(self.ledger.leased, "job"), self.cfg.stop_wait_s)

    # -- the ending ------------------------------------------------------------------------

    def _crashed(self, greenlet: gevent.Greenlet) -> None:
        log.critical("internal error in %s", greenlet, exc_info=greenlet.exc_info)
        self.stop(InternalError(f"internal error: {greenlet.exception!r}"))

    def _leave_now(self, signum: int) -> None:
        # A second signal: the state file already holds a safe resume point.
        os._exit(exit_code_for_signal(signum))

    def _totals(self) -> tuple[int, int]:
        """Jobs of the run finished and failed, each counted once across restarts."""
        return self.checkpointer.finished(self.ledger), self.checkpointer.failed(self.ledger)
