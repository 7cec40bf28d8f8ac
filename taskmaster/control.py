"""Steering a live run: the master's side of tm-ctl, and the limits an operator sets.

A request comes in on the master's own socket, authenticated like a slave's message (HMAC with
the run's secret, Curve when on), and names its sender in its body: only that connection may
speak for it, and its counter only grows, so a captured request cannot be replayed. A request
that changes the run must carry the run's epoch and a one-time word, both from the answer to a
"hello" just before: a captured request is one for no master, not even its own twice.

`pause` stops new leases (slaves finish what they hold, keep beating, and wait); `resume`
lifts that; `stop` is the graceful stop of SIGTERM; `rate N` sets the token bucket. `status`
answers with the run's numbers as one JSON object (its keys are documented in the README).
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from typing import Any

from . import protocol as p
from .config import RATE_WINDOW_S
from .errors import FailureLimitError, TaskmasterError
from .exchange import Exchange
from .handout import Handout
from .ledger import Ledger
from .limits import FailureBrake
from .progress import Snapshot, Speed
from .registry import Registry
from .settings import MasterConfig
from .signals import StopSignals
from .state import ControlFile, safe_repr

log = logging.getLogger("taskmaster.master")

CHANGES = frozenset({"pause", "resume", "stop", "rate"})
"""Requests that change the run: only under the run's epoch, with the word of a fresh hello."""
CHALLENGE_S = 30.0
"""How long the word a hello gives stays good."""
MAX_CHALLENGES = 1000
"""Words given and not used yet, at most (the oldest go first)."""


class Control:
    """Answers tm-ctl for one master, and samples the rates `status` reports."""

    def __init__(self, cfg: MasterConfig, *, registry: Registry, ledger: Ledger,
                 handout: Handout, exchange: Exchange, signals: StopSignals,
                 totals: Callable[[], tuple[int, int]], total: Callable[[], int | None],
                 address: str, epoch: bytes,
                 stop: Callable[[TaskmasterError], None]) -> None:
        """Takes the exchange's control requests, and writes the control file beside the
        state file (see `ControlFile`), at once."""
        self.cfg = cfg
        self.registry = registry
        self.ledger = ledger
        self.handout = handout
        self.exchange = exchange
        exchange.control = self.handle
        self.signals = signals
        self.totals = totals
        self.total = total
        self.address = address
        self.epoch = epoch
        self.brake = FailureBrake(cfg.max_failures) if cfg.max_failures is not None else None
        self._stop = stop
        self.started = time.monotonic()
        self._speed = Speed(self.started, 0)
        self._slave_speeds: dict[bytes, Speed] = {}
        self._settled = (0, 0)  # this session's (finished, failed), as the brake last saw
        self._challenges: dict[str, tuple[str, float]] = {}  # client: (word, when given)
        self._file = ControlFile(cfg.state_path)
        self._file.write(address, secret=cfg.secret if cfg.own_secret else None,
                         secret_file=cfg.secret_file, curve_dir=cfg.curve_dir,
                         unsigned=cfg.same_user)

    def close(self) -> None:
        self._file.close()

    # -- sampling (a step of the master's tick) --------------------------------------------

    def sample(self, now: float) -> None:
        """Note the counts that rates are made of."""
        stats = self.ledger.stats
        self._speed.add(now, stats.finished + stats.failed)
        speeds = {}
        for slave in self.registry:
            speed = self._slave_speeds.get(slave.ident) or Speed(now, slave.done)
            speed.add(now, slave.done)
            speeds[slave.ident] = speed
        self._slave_speeds = speeds

    def check_limits(self, now: float) -> None:
        """Stop the run when its failures pass --max-failures (after every message, and every
        tick: failures also settle with time, once a full disk takes their records)."""
        if self.brake is None:
            return
        stats = self.ledger.stats
        finished, failed = self._settled
        if stats.finished == finished and stats.failed == failed:
            return
        self.brake.settled(stats.finished - finished, stats.failed - failed)
        self._settled = (stats.finished, stats.failed)
        why = self.brake.why()
        if why:
            self._stop(FailureLimitError(
                f"stopping: {why}; the jobs in flight finish (and are recorded) first; fix "
                "the cause and start the same command again: it resumes where it stopped"))

    def snapshot(self) -> Snapshot:
        """The numbers the progress display shows."""
        ledger, (finished, failed) = self.ledger, self.totals()
        return Snapshot(done=finished + failed, failed=failed, total=self.total(),
                        buffered=ledger.buffered + ledger.requeued, leased=ledger.leased,
                        slaves=len(self.registry), dropped=self.exchange.dropped,
                        paused="paused by tm-ctl" if self.handout.paused else
                        "a file cannot be written" if self.handout.checkpointer.blocked else "")

    def _paused_by(self) -> str | None:
        if self.handout.paused:
            return "tm-ctl"
        if self.handout.checkpointer.blocked:
            return "a file that cannot be written"
        return None

    # -- requests --------------------------------------------------------------------------

    def handle(self, sender: bytes, envelope: p.Envelope, msg: p.Control, now: float) -> bool:
        """Answer one request; False when it is not one to act on (to be dropped)."""
        if sender != msg.client.encode("utf-8", "surrogateescape"):
            return False
        if msg.command in CHANGES:
            expected = self._challenges.pop(msg.client, None)
            if (envelope.epoch != self.epoch or expected is None or expected[0] != msg.nonce
                    or now - expected[1] > CHALLENGE_S):
                return False
        if msg.command == "hello":
            # A one-time word the change that follows must carry: a captured change is
            # useless once done, whatever the replay counters remember.
            challenge = secrets.token_hex(16)
            self._challenges[msg.client] = (challenge, now)
            while len(self._challenges) > MAX_CHALLENGES:
                del self._challenges[next(iter(self._challenges))]
            answer = p.Answer(msg.nonce, True, f"taskmaster master {self.address}",
                              {"challenge": challenge})
        elif msg.command == "status":
            answer = p.Answer(msg.nonce, True, "", self.status(now))
        else:
            ok, text = self._change(msg.command, msg.value, now)
            log.warning("tm-ctl %s: %s", msg.command, text)
            answer = p.Answer(msg.nonce, ok, text)
        self.handout.send(sender, answer)
        return True

    def _change(self, command: str, value: float | None, now: float) -> tuple[bool, str]:
        handout = self.handout
        if self.signals.requested is not None or handout.closed:
            return False, "the run is stopping or complete: nothing to change"
        if command == "pause":
            if handout.paused:
                return True, "already paused"
            handout.paused = True
            return True, (f"paused: no new jobs go out; {self.ledger.leased:,} leased jobs "
                          "finish (tm-ctl resume goes on)")
        if command == "resume":
            if not handout.paused:
                return True, "not paused"
            handout.paused = False
            handout.serve_waiting()
            return True, "resumed"
        if command == "stop":
            self.signals.request(signal.SIGTERM, "tm-ctl stop")
            return True, (f"stopping: no new jobs; waiting up to {self.cfg.stop_wait_s:.0f}s "
                          f"for {self.ledger.leased:,} leased jobs, then saving the state")
        before = handout.bucket.rate
        handout.bucket.set(value, now)
        handout.serve_waiting()
        return True, f"rate limit {_rate(value)} (was {_rate(before)})"

    def status(self, now: float) -> dict[str, Any]:
        """The run's numbers, as `tm-ctl status --json` prints them."""
        ledger, stats, handout = self.ledger, self.ledger.stats, self.handout
        finished, failed = self.totals()
        total = self.total()
        self.sample(now)
        point = ledger.resume_point()
        paused_by = self._paused_by()
        state = ("stopping" if self.signals.requested is not None or handout.closed
                 else "paused" if paused_by else "running")
        uptime = now - self.started
        rate = self._speed.rate
        return {
            "state": state,
            "paused_by": paused_by,
            "target": self.cfg.target.identity, "kwargs": dict(self.cfg.kwargs),
            "state_file": str(self.cfg.state_path),
            "failures_file": str(self.cfg.failures_path),
            "address": self.address, "pid": os.getpid(),
            "finished": finished, "failed": failed, "total": total,
            "retried": stats.retried, "resent": stats.redispatched,
            "session_finished": stats.finished, "session_failed": stats.failed,
            "rate": rate, "rate_window_s": RATE_WINDOW_S,
            "rate_overall": (stats.finished + stats.failed) / uptime if uptime > 0 else 0.0,
            "eta_s": (max(0, total - finished - failed) / rate
                      if total is not None and rate > 0 else None),
            "buffered": ledger.buffered + ledger.requeued, "leased": ledger.leased,
            "resume_seq": point.seq if point is not None else None,
            "resume_job": safe_repr(point.last_job, 200) if point is not None else None,
            "rate_limit": handout.bucket.rate,
            "max_failures": str(self.brake.bound) if self.brake is not None else None,
            "uptime_s": uptime, "dropped": self.exchange.dropped,
            "slaves": [self._slave_row(slave, now) for slave in self.registry],
        }

    def _slave_row(self, slave: Any, now: float) -> dict[str, Any]:
        speed = self._slave_speeds.get(slave.ident)
        return {"name": slave.name, "host": slave.host, "pid": slave.pid,
                "concurrency": slave.concurrency, "done": slave.done,
                "held": self.ledger.held_by(slave.ident),
                "rate": speed.rate if speed is not None else 0.0,
                "last_heard_s": max(0.0, now - slave.last_seen),
                "leaving": slave.leaving}


def _rate(value: float | None) -> str:
    return "none" if value is None else f"{value:g} jobs/s"
