"""The parts that steer and keep a run, without sockets: the master's `Control` (tm-ctl's
requests through the real exchange, over a recording wire), the master's `Upkeep` steps, and
the slave's `Session` and `Recycling`."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from master_parts import SLAVE, Parts

from taskmaster import protocol as p
from taskmaster.config import HEARTBEAT_INTERVAL_S, IDLE_BEAT_S
from taskmaster.control import Control
from taskmaster.errors import ConfigError, FailureLimitError, TaskmasterError
from taskmaster.limits import MaxFailures
from taskmaster.recycling import Recycling
from taskmaster.session import Session
from taskmaster.settings import MasterConfig, SlaveConfig
from taskmaster.signals import StopSignals
from taskmaster.slave import Slave
from taskmaster.target import Target
from taskmaster.upkeep import every

SECRET = b"s" * 32
CLIENT = b"ctl:host:1:abcd"


class Steered(Parts):
    """`Parts` with the master's `Control` on top, as `Master.start` wires it."""

    def __init__(self, tmp_path: Path, **kw: object) -> None:
        super().__init__(tmp_path, secret=SECRET, jobs=100, **kw)  # type: ignore[arg-type]
        self.cfg = MasterConfig(Target.parse("ledger_jobs", "get_jobs"),
                                state_path=self.state.path, secret=SECRET,
                                max_failures=MaxFailures(count=3))
        self.signals = StopSignals(on_second=lambda signum: None)
        self.stopped: list[TaskmasterError] = []
        self.control = Control(self.cfg, registry=self.registry, ledger=self.ledger,
                               handout=self.handout, exchange=self.exchange,
                               signals=self.signals, totals=lambda: (0, 0), total=lambda: None,
                               address="ipc://@test", epoch=self.epoch,
                               stop=self.stopped.append)

    def ask(self, command: str, value: float | None = None, *, epoch: bytes | None = None,
            client: bytes = CLIENT, sender: bytes = CLIENT,
            word: str | None = None) -> p.Answer | None:
        """A request as tm-ctl sends it (a change after a hello, with the word it gave, unless
        ``word`` is given); the answer, if the master gave one."""
        if command in ("pause", "resume", "stop", "rate") and word is None:
            hello = self.ask("hello", epoch=p.NO_EPOCH, client=client, sender=client)
            assert hello is not None and hello.status is not None
            word = hello.status["challenge"]
        mark = len(self.wire.sent)
        request = p.Control(client.decode(), word or "nonce-" + command, command, value)
        self.exchange.handle(sender, self.frames(sender, request, epoch=epoch),
                             time.monotonic())
        answers = [p.decode(frames, key=self.key, kinds=p.CONTROL_KINDS)
                   for to, frames in self.wire.sent[mark:] if to == sender]
        if not answers:
            return None
        [envelope] = answers
        assert isinstance(envelope.message, p.Answer)
        assert envelope.epoch == self.epoch  # how tm-ctl learns the run's epoch
        return envelope.message


def test_hello_is_answered_under_any_epoch_and_names_the_master(tmp_path: Path) -> None:
    s = Steered(tmp_path)
    answer = s.ask("hello", epoch=p.NO_EPOCH)
    assert answer is not None and answer.ok and "ipc://@test" in answer.line
    s.control.close()


def test_a_change_under_another_epoch_or_from_another_connection_is_dropped(
        tmp_path: Path) -> None:
    s = Steered(tmp_path)
    assert s.ask("pause", epoch=p.NO_EPOCH) is None  # captured under no (or another) master
    assert s.ask("pause", sender=b"ctl:other:2:ffff") is None  # speaks for another client
    assert not s.handout.paused and s.exchange.dropped == 2
    s.control.close()


def test_a_change_needs_the_word_of_a_fresh_hello_and_is_good_once(tmp_path: Path) -> None:
    s = Steered(tmp_path)
    assert s.ask("pause", word="made-up") is None  # no hello, no word
    hello = s.ask("hello", epoch=p.NO_EPOCH)
    assert hello is not None and hello.status is not None
    word = hello.status["challenge"]
    assert s.ask("stop", word="not-" + word) is None  # a wrong word uses the right one up
    assert s.ask("pause", word=word) is None
    hello = s.ask("hello", epoch=p.NO_EPOCH)
    assert hello is not None and hello.status is not None
    word = hello.status["challenge"]
    assert s.ask("pause", word=word) is not None and s.handout.paused
    assert s.ask("resume", word=word) is None  # the same word again: a replay
    assert s.handout.paused and s.signals.requested is None
    s.control.close()


def test_pause_holds_every_offer_and_resume_serves_those_waiting(tmp_path: Path) -> None:
    s = Steered(tmp_path)
    answer = s.ask("pause")
    assert answer is not None and answer.ok and answer.line.startswith("paused")
    s.join(window=10)
    assert s.ledger.leased == 0 and SLAVE in s.registry.waiting
    assert s.control.snapshot().paused == "paused by tm-ctl"
    again = s.ask("pause")
    assert again is not None and again.line == "already paused"
    resumed = s.ask("resume")
    assert resumed is not None and resumed.line == "resumed"
    assert s.ledger.leased == 10
    s.control.close()


def test_rate_sets_the_bucket_that_cuts_the_next_offer(tmp_path: Path) -> None:
    s = Steered(tmp_path)
    answer = s.ask("rate", 3.0)
    assert answer is not None and answer.line == "rate limit 3 jobs/s (was none)"
    time.sleep(1.05)  # the bucket fills at the rate, up to one second's worth
    s.join(window=50)
    assert s.ledger.leased == 3
    off = s.ask("rate", None)
    assert off is not None and off.line == "rate limit none (was 3 jobs/s)"
    assert s.ledger.leased == 50  # those waiting are served at once
    s.control.close()


def test_stop_asks_for_the_graceful_stop_of_sigterm_once(tmp_path: Path) -> None:
    s = Steered(tmp_path)
    answer = s.ask("stop")
    assert answer is not None and answer.ok and answer.line.startswith("stopping")
    assert s.signals.requested == signal.SIGTERM and s.signals.name == "tm-ctl stop"
    assert s.signals.arrived.is_set()
    later = s.ask("pause")
    assert later is not None and not later.ok and "stopping or complete" in later.line
    s.control.close()


def test_status_tells_the_run_and_each_slave(tmp_path: Path) -> None:
    s = Steered(tmp_path)
    s.join(window=7, concurrency=3)
    answer = s.ask("status")
    assert answer is not None and answer.status is not None
    st = answer.status
    assert st["state"] == "running" and st["leased"] == 7 and st["buffered"] == 93
    assert st["rate_limit"] is None and st["max_failures"] == "3"
    assert st["target"] == "ledger_jobs:get_jobs" and st["resume_seq"] == 0
    [row] = st["slaves"]
    assert (row["concurrency"], row["held"], row["done"]) == (3, 7, 0)
    s.control.close()


def test_the_failure_bound_stops_the_run_once(tmp_path: Path) -> None:
    s = Steered(tmp_path)
    s.ledger.stats.failed = 2
    s.control.check_limits(0.0)
    assert not s.stopped
    s.ledger.stats.failed = 3
    s.control.check_limits(0.0)
    [error] = s.stopped
    assert isinstance(error, FailureLimitError) and "(--max-failures 3)" in str(error)
    s.control.close()


def test_the_control_file_is_the_owners_and_goes_with_its_master(tmp_path: Path) -> None:
    s = Steered(tmp_path)
    control = Path(str(s.state.path) + ".ctl")
    assert control.stat().st_mode & 0o777 == 0o600
    assert '"secret": null' in control.read_text()  # a secret the user gave is not copied
    s.control.close()
    assert not control.exists()


def test_every_runs_a_step_at_most_once_per_interval() -> None:
    calls: list[float] = []
    step = every(1.0, calls.append)
    for now in (0.0, 0.5, 0.99, 1.0, 1.5, 2.2):
        step(now)
    assert calls == [0.0, 1.0, 2.2]


def test_a_session_takes_only_the_welcome_to_its_latest_knock(tmp_path: Path) -> None:
    session = Session("host:1:abc", SECRET, 1 << 20)
    knock = session.knock()
    assert not session.joined and knock.nonce == session.nonce
    epoch, seal = p.new_epoch(), p.Seal(SECRET)
    seal.epoch = epoch
    stale = session.accept(seal(p.Welcome(1, "an-earlier-nonce")))
    assert stale is not None and not session.join(stale, stale.message)  # type: ignore[arg-type]
    welcome = session.accept(seal(p.Welcome(2, knock.nonce)))
    assert welcome is not None and session.join(welcome, welcome.message)  # type: ignore[arg-type]
    assert session.joined and session.epoch == epoch and session.number == 2
    assert session.nonce != knock.nonce  # a replay of that welcome cannot reset us again


def test_a_session_drops_other_runs_and_replays() -> None:
    session = Session("host:1:abc", SECRET, 1 << 20)
    epoch = p.new_epoch()
    seal = p.Seal(SECRET, epoch)
    welcome = session.accept(seal(p.Welcome(1, session.nonce)))
    assert welcome is not None and session.join(welcome, welcome.message)  # type: ignore[arg-type]
    ping = seal(p.Ping())
    assert session.accept(ping) is not None
    assert session.accept(ping) is None  # the same counter again: a replay
    other = p.Seal(SECRET, p.new_epoch())
    assert session.accept(other(p.Ping())) is None  # a run we are not in
    assert session.accept([b"junk"]) is None


def test_recycling_says_why_a_slave_makes_way() -> None:
    assert Recycling(None, None).why(10**9, False, 0.0) == ""
    assert Recycling(None, None).why(0, True, 0.0) == "a job ran out of memory"
    assert "100 jobs done (--max-jobs-per-slave 100)" in Recycling(100, None).why(100, False, 0.0)
    assert "MB resident (--max-memory 1)" in Recycling(None, 1).why(0, False, 0.0)


def test_recycling_reads_memory_at_most_every_half_second() -> None:
    recycling = Recycling(None, 1)
    assert recycling.why(0, False, 0.0)  # read at once (and over 1 MB, as any Python is)
    assert recycling.why(0, False, 0.3) == ""  # not read again so soon
    assert recycling.why(0, False, 0.6)


def test_a_session_offered_again_while_its_ready_is_on_the_way_is_kept() -> None:
    # The heartbeat thread's beat (with the new nonce) can reach the master before the READY:
    # the master offers the same session again. Taking it would forget every batch since.
    session = Session("host:1:abc", SECRET, 1 << 20)
    seal = p.Seal(SECRET, p.new_epoch())
    first = session.accept(seal(p.Welcome(7, session.nonce)))
    assert first is not None and session.join(first, first.message)  # type: ignore[arg-type]
    again = session.accept(seal(p.Welcome(7, session.nonce)))
    assert again is not None and not session.join(again, again.message)  # type: ignore[arg-type]
    other = session.accept(seal(p.Welcome(8, session.nonce)))  # a new session: it lost us
    assert other is not None and session.join(other, other.message)  # type: ignore[arg-type]
    assert session.number == 8


def test_a_welcome_sets_how_often_the_slave_beats_while_it_holds_nothing() -> None:
    # A quarter of the master's lease timeout, at most IDLE_BEAT_S, never under the interval;
    # a master that does not say (0) gets a beat each interval.
    for lease_ms, idle_s in ((0, HEARTBEAT_INTERVAL_S), (30_000, IDLE_BEAT_S), (12_000, 3.0),
                             (2_000, HEARTBEAT_INTERVAL_S)):
        session = Session("host:1:abc", SECRET, 1 << 20)
        seal = p.Seal(SECRET, p.new_epoch())
        welcome = session.accept(seal(p.Welcome(1, session.nonce, lease_ms)))
        assert welcome is not None and session.join(welcome, welcome.message)  # type: ignore[arg-type]
        assert session.idle_beat_s == idle_s, lease_ms


def test_a_slave_beats_each_tick_while_it_holds_jobs_or_knocks_and_seldom_when_idle() -> None:
    slave = Slave(SlaveConfig(Target.parse("jobs_module", "handle_job")), lambda job: None)
    assert slave._beat() is not None and slave._beat() is not None  # knocks: not joined yet
    seal = p.Seal(SECRET, p.new_epoch())
    slave.session.key = SECRET
    welcome = slave.session.accept(seal(p.Welcome(1, slave.session.nonce, 30_000)))
    assert welcome is not None and slave.session.join(welcome, welcome.message)  # type: ignore[arg-type]
    assert slave._beat() is not None, "the WELCOME is news: the next tick answers it"
    assert slave._beat() is None, "holding nothing, a beat a tick on says nothing new"
    assert slave.session.accept(seal(p.Ping())) is not None
    beat = slave._beat()
    assert beat is not None and beat.seen == slave.session.master_counter, "a PING is news"
    assert slave._beat() is None
    slave.holdings.add(5, slave.session.epoch, [1, 2], False, 2)
    beat = slave._beat()
    assert beat is not None and beat.held == frozenset({5}), "holding jobs, every tick"
    assert slave._beat() is not None
    slave.session._beat_at -= IDLE_BEAT_S  # as if that much time had passed since
    slave.holdings = type(slave.holdings)()
    assert slave._beat() is not None, "idle, but the idle interval is over"
    assert slave._beat() is None
    slave.session.reconnected()  # its heartbeat socket reconnected: a master restarted, perhaps
    assert slave._beat() is not None and slave._beat() is not None, "eager after that"


@pytest.mark.parametrize("field", ["lease_timeout_s", "stop_wait_s"])
def test_a_master_duration_that_is_not_a_number_is_refused(field: str) -> None:
    with pytest.raises(ConfigError, match=field.removesuffix("_s").replace("_", "-")):
        MasterConfig(Target.parse("jobs", "get_jobs"), **{field: float("nan")})  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["master_timeout_s", "job_timeout_s"])
def test_a_slave_duration_that_is_not_a_number_is_refused(field: str) -> None:
    with pytest.raises(ConfigError, match=field.removesuffix("_s").replace("_", "-")):
        SlaveConfig(Target.parse("jobs", "handle_job"), **{field: float("nan")})  # type: ignore[arg-type]
