"""One real tm-master against many simulated slaves: ``python benchmarks/loadgen.py``.

Each simulated slave speaks the wire protocol as a tm-slave does (slave.py, session.py): a
DEALER socket of its own with the identity ``host:pid:tag``, a second one with that identity
plus ``/heartbeat`` that sends ``Heartbeat(beat=True, held, started, seen, sent)`` every
`HEARTBEAT_INTERVAL_S` (holding nothing, every `Session.idle_beat_s`), knocks on the main
socket every `JOIN_RETRY_S` (for `JOIN_FAST_S`) until a WELCOME echoes its nonce, READY, and an
``Ack((BatchDone(bid), ...), window)`` for every JOBS batch it "runs" (at once, or in
``--batch-ms``). Every message is signed with the run's secret through `protocol.Seal` and
every message from the master checked through the slave's own `Session` (HMAC, epoch, replay
counter), so the master pays what it pays on a real network run. Many slaves share one process,
driven by one `zmq.Poller`; a few processes share the slaves. The master is ``tm-master
benchmarks/noop_jobs.py`` with an endless stream.

Per slave count, each run measures: the join storm (from "go" to every slave welcomed and
READY, and to every slave holding its first batch), the throughput over a steady window with
instant acknowledgements (the master is then the bottleneck), the master's CPU per job, and,
with the run paused by ``tm-ctl pause``, what heartbeats alone cost the master. See
README.rst for how to read the table.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import heapq
import json
import logging
import math
import multiprocessing
import multiprocessing.sharedctypes
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import zmq

from taskmaster import protocol as p
from taskmaster.config import (
    DEFAULT_MASTER_TIMEOUT_S,
    DEFAULT_MAX_MESSAGE_BYTES,
    HEARTBEAT_INTERVAL_S,
    IDLE_BEAT_S,
    JOIN_FAST_S,
    JOIN_RETRY_S,
    MAX_WINDOW_JOBS,
    MESSAGE_SLACK_BYTES,
    RECONNECT_FIRST_MS,
    RECONNECT_MAX_MS,
)
from taskmaster.fields import millis
from taskmaster.session import Session
from taskmaster.settings import signing_key

HERE = Path(__file__).resolve().parent
JOB_MODULE = HERE / "noop_jobs.py"
ENDLESS = 10**12
"""The master's stream: more jobs than any window takes."""
SLAVE_COUNTS = (10, 100, 1000)
BASE_SLAVES = 10
"""The row every throughput is compared with."""
THROUGHPUT_TOLERANCE = 0.10
JOIN_GOAL_S = JOIN_FAST_S
"""The join storm should settle within a slave's fast-knocking time: past it, a slave not yet
welcomed knocks only once a second."""
BEAT_GOAL_PERCENT = 5.0
CONCURRENCY = 10
"""What each simulated slave says in READY (the master uses it only for large jobs)."""
PATIENCE_MS = millis(DEFAULT_MASTER_TIMEOUT_S)
"""And its --master-timeout, as a tm-slave says it: the default."""
STARTUP_TIMEOUT_S = 30.0
JOIN_TIMEOUT_S = 60.0
BUSY_TIMEOUT_S = 10.0
"""After the join, how long to wait for every slave to get its first batch."""
CTL_TIMEOUT_S = 20.0
MASTER_STOP_S = 10.0
WARMUP_S = 2.0
IDLE_S = 2.0
QUIET_PERCENT = 25.0
QUIET_SAMPLE_S = 0.5
SETTLE_MAX_S = 15.0
"""After pausing, longest wait for every slave to hold nothing."""
POLL_MAX_MS = 50
PR_SET_PDEATHSIG = 1
MASTER_LINE = re.compile(r"master listening on (\S+)")
FDS_PER_SLAVE = 4
"""File descriptors per simulated slave in a generator process (two sockets, each a mailbox
and a TCP connection), and about as many in the master (two connections, with headroom)."""

# Counters a generator process publishes, by index into its row of the shared array.
READY, BUSY, LAST_READY_T, LAST_BUSY_T, JOBS_IN, JOBS_ACKED, ACKS, BEATS, KNOCKS, HELD, \
    MESSAGES_IN, DROPPED, REJOINS, SEND_FAILED, SET_UP, FED, BATCHES = range(17)
FIELDS = 17
MARK = 0
"""The driver's slot in its control array: a new value starts a new count of `FED`, the
slaves that get a batch from then on."""


# -- the simulated slaves (generator processes) ---------------------------------------------


class SimSlave:
    """One simulated slave: its two sockets, its session with the master, what it holds."""

    __slots__ = ("batches", "beat_seal", "beat_sock", "busy", "fed_mark", "finish_at",
                 "finished", "ident", "index", "joined_at", "last_heard", "running", "session",
                 "sock", "to_ack")

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], index: int, ident: bytes,
                 key: bytes | None, beats_on_main: bool) -> None:
        self.index = index
        self.ident = ident
        self.session = Session(ident.decode(), key, DEFAULT_MAX_MESSAGE_BYTES)
        self.beat_seal = p.Seal(key)
        """The heartbeat socket's own counter, as the real heartbeat thread's watchdog has."""
        self.sock = _dealer(ctx, ident)
        self.beat_sock = None if beats_on_main else _dealer(ctx, ident + p.HEARTBEAT_SUFFIX)
        self.batches: dict[int, int] = {}
        """Batches held, by id: jobs in each, in the order they came."""
        self.running: int | None = None
        """With --batch-ms: the batch being "run", and when it will be done."""
        self.finish_at = 0.0
        self.to_ack: list[int] = []
        self.last_heard = 0.0
        self.joined_at = 0.0
        self.busy = False
        """It has been sent work at least once."""
        self.fed_mark = 0.0
        """The driver's mark when it last got a batch."""
        self.finished = False

    def connect(self, address: str) -> None:
        self.sock.connect(address)
        if self.beat_sock is not None:
            self.beat_sock.connect(address)

    def send(self, message: p.Message) -> bool:
        try:
            self.sock.send_multipart(self.session.seal(message), flags=zmq.NOBLOCK)
        except zmq.Again:
            return False  # not connected yet (IMMEDIATE): dropped, as a tm-slave's would be
        return True

    def beat(self) -> bool:
        """What the heartbeat thread sends: the batches held and begun, over its own socket
        (or, with --beats-on-main, the main one, which the protocol allows)."""
        held = frozenset(self.batches)
        started = frozenset([self.running] if self.running is not None else held)
        if self.beat_sock is None:
            return self.send(self.session.knock(held, started, beat=False))
        self.beat_seal.epoch = self.session.epoch
        frames = self.beat_seal(self.session.knock(held, started, beat=True))
        try:
            self.beat_sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def close(self) -> None:
        self.sock.close(linger=0)
        if self.beat_sock is not None:
            self.beat_sock.close(linger=0)


def _dealer(ctx: zmq.Context[zmq.Socket[bytes]], identity: bytes) -> zmq.Socket[bytes]:
    """A DEALER set up as transport.SlaveSocket and the heartbeat thread set theirs up."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_FIRST_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, DEFAULT_MAX_MESSAGE_BYTES + MESSAGE_SLACK_BYTES)
    return sock


KNOCK, BEAT, FINISH = range(3)
"""Kinds of timer in a generator's heap."""


@dataclass(frozen=True)
class GeneratorSpec:
    """What one generator process simulates, and where it reports."""

    slot: int
    address: str
    key: bytes | None
    tags: list[int]
    window: int
    batch_s: float
    beats_on_main: bool
    seed: int


class Generator:
    """A process's simulated slaves, in one thread: poll their sockets, act on what comes,
    fire the knocks, beats and (with --batch-ms) batch ends that are due."""

    def __init__(self, spec: GeneratorSpec, counters: Any, control: Any) -> None:
        self.spec = spec
        self.row = spec.slot * FIELDS
        self.shared = counters
        self.control = control
        self.mark = 0.0
        self.n = [0.0] * FIELDS
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.ctx.set(zmq.MAX_SOCKETS, 2 * len(spec.tags) + 64)
        host, pid = socket.gethostname(), os.getpid()
        self.host, self.pid = host, pid
        self.slaves = [SimSlave(self.ctx, i, f"{host}:{pid}:sim{tag}".encode(), spec.key,
                                spec.beats_on_main) for i, tag in enumerate(spec.tags)]
        self.by_sock = {s.sock: s for s in self.slaves}
        self.poller = zmq.Poller()
        for s in self.slaves:
            self.poller.register(s.sock, zmq.POLLIN)
        self.timers: list[tuple[float, int, int]] = []
        self.random = random.Random(spec.seed)

    def start(self, now: float) -> None:
        """Connect every slave and knock at once, as a tm-slave does; its heartbeat thread's
        first beat comes a second later (here at a random phase within the next second, as
        slaves started over a second would beat)."""
        for s in self.slaves:
            s.last_heard = now
            s.connect(self.spec.address)
            self._knock(s, now)
            heapq.heappush(self.timers, (now + HEARTBEAT_INTERVAL_S * (1 + self.random.random()),
                                         BEAT, s.index))

    def run(self, go: Any, stop: Any) -> None:
        self.n[SET_UP] = 1
        self._publish()
        go.wait()
        self.start(time.monotonic())
        next_stop_check = 0.0
        while True:
            now = time.monotonic()
            if now >= next_stop_check:
                if stop.is_set():
                    break
                next_stop_check = now + 0.1
            wait_ms = POLL_MAX_MS
            if self.timers:
                wait_ms = max(0, min(POLL_MAX_MS, int((self.timers[0][0] - now) * 1000) + 1))
            for sock, _ in self.poller.poll(wait_ms):
                self._drain(self.by_sock[sock])
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                when, kind, index = heapq.heappop(self.timers)
                self._fire(kind, self.slaves[index], when, now)
            self._publish()
        for s in self.slaves:
            s.close()
        self.ctx.term()

    def _publish(self) -> None:
        mark = self.control[MARK]
        if mark != self.mark:
            self.mark, self.n[FED] = mark, 0
        self.shared[self.row:self.row + FIELDS] = self.n

    def _fire(self, kind: int, s: SimSlave, when: float, now: float) -> None:
        if s.finished:
            return
        if kind == KNOCK:
            if not s.session.joined and now - s.last_heard < JOIN_FAST_S:
                self._knock(s, now)
        elif kind == BEAT:
            if not s.session.beat_due(bool(s.batches), now):
                pass  # a tm-slave's heartbeat thread would not beat on this tick either
            elif s.beat():
                self.n[BEATS] += 1
            else:
                self.n[SEND_FAILED] += 1
            heapq.heappush(self.timers, (now + HEARTBEAT_INTERVAL_S, BEAT, s.index))
        elif kind == FINISH and when == s.finish_at:  # else a batch forgotten since
            bid = s.running
            s.running = None
            if bid is not None and bid in s.batches:
                s.to_ack.append(bid)
            self._run_next(s, now)
            self._flush(s)

    def _knock(self, s: SimSlave, now: float) -> None:
        if s.send(s.session.knock()):
            self.n[KNOCKS] += 1
        heapq.heappush(self.timers, (now + JOIN_RETRY_S, KNOCK, s.index))

    def _drain(self, s: SimSlave) -> None:
        """Everything waiting on one slave's socket, then its acknowledgement."""
        now = time.monotonic()
        while True:
            try:
                frames = s.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.n[MESSAGES_IN] += 1
            s.last_heard = now
            self._handle(s, frames, now)
        self._flush(s)

    def _handle(self, s: SimSlave, frames: list[bytes], now: float) -> None:
        envelope = s.session.accept(frames)
        if envelope is None:
            self.n[DROPPED] += 1
            return
        msg = envelope.message
        if isinstance(msg, p.Welcome):
            was_joined = s.session.joined
            if s.session.join(envelope, msg):
                if was_joined:
                    self.n[REJOINS] += 1
                self._forget(s)
                s.send(p.Ready(s.session.number, self.spec.window, CONCURRENCY, self.host,
                               self.pid, DEFAULT_MAX_MESSAGE_BYTES, PATIENCE_MS))
                if not s.joined_at:
                    s.joined_at = now
                    self.n[READY] += 1
                    self.n[LAST_READY_T] = max(self.n[LAST_READY_T], now)
        elif isinstance(msg, p.Jobs):
            n = len(msg.jobs)
            s.batches[msg.bid] = n
            self.n[JOBS_IN] += n
            self.n[BATCHES] += 1
            self.n[HELD] += n
            if s.fed_mark != self.mark:
                s.fed_mark = self.mark
                self.n[FED] += 1
            if not s.busy:
                s.busy = True
                self.n[BUSY] += 1
                self.n[LAST_BUSY_T] = max(self.n[LAST_BUSY_T], now)
            if self.spec.batch_s <= 0:
                s.to_ack.append(msg.bid)  # "run" at once: acknowledged after the drain
            elif s.running is None:
                self._run_next(s, now)
        elif isinstance(msg, p.Stop):
            self._stopping(s)
        elif isinstance(msg, p.Done):
            s.send(p.Bye())
            s.finished = True

    def _stopping(self, s: SimSlave) -> None:
        """The master is stopping: hand back what was not begun, as a tm-slave does."""
        unstarted = [bid for bid in s.batches if bid != s.running and bid not in s.to_ack]
        for bid in unstarted:
            self.n[HELD] -= s.batches.pop(bid)
        s.send(p.Bye(tuple(unstarted)))

    def _run_next(self, s: SimSlave, now: float) -> None:
        for bid in s.batches:
            if bid not in s.to_ack:
                s.running, s.finish_at = bid, now + self.spec.batch_s
                heapq.heappush(self.timers, (s.finish_at, FINISH, s.index))
                return

    def _flush(self, s: SimSlave) -> None:
        if not s.to_ack:
            return
        done = tuple(p.BatchDone(bid) for bid in s.to_ack)
        jobs = sum(s.batches.pop(bid) for bid in s.to_ack)
        s.to_ack = []
        if s.send(p.Ack(done, self.spec.window)):
            self.n[ACKS] += 1
            self.n[JOBS_ACKED] += jobs
        else:
            self.n[SEND_FAILED] += 1
        self.n[HELD] -= jobs

    def _forget(self, s: SimSlave) -> None:
        """A (new) WELCOME: what an earlier session held is not acknowledged."""
        self.n[HELD] -= sum(s.batches.values())
        s.batches.clear()
        s.to_ack = []
        s.running = None


def generator_main(spec: GeneratorSpec, counters: Any, control: Any, go: Any,
                   stop: Any) -> None:
    """A generator process's body."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops us, through `stop`
    die_with_parent()
    # A Session says why it drops a message or rejoins; here those are counted and reported
    # once, and a storm of a thousand slaves would say it a thousand times.
    logging.getLogger("taskmaster.session").setLevel(logging.ERROR)
    Generator(spec, counters, control).run(go, stop)


def die_with_parent() -> None:
    """Have the kernel end this process (SIGTERM) when its parent dies, on Linux: a driver
    killed outright then leaves no master or generator behind."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# -- the master -----------------------------------------------------------------------------


class MasterProcess:
    """A tm-master of the no-op stream, in a directory of its own."""

    def __init__(self, tmp: Path, extra: Sequence[str]) -> None:
        self.tmp = tmp
        self.secret = tmp / "run.secret"
        self.secret.write_text(os.urandom(32).hex() + "\n")
        self.secret.chmod(0o600)
        self.log = tmp / "master.log"
        argv = [sys.executable, "-m", "taskmaster", "master", str(JOB_MODULE),
                f"count={ENDLESS}", "--address", "tcp://127.0.0.1:0", "--no-progress",
                "--secret-file", str(self.secret), "--state-file", str(tmp / "run.tmstate"),
                "--stop-wait", "2", "--linger", "0", *extra]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(argv, cwd=tmp, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=die_with_parent)
        self.ps = psutil.Process(self.proc.pid)
        self.address = self._wait_address()
        self.key = signing_key(self.secret.read_text().strip().encode())

    def _wait_address(self) -> str:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            m = MASTER_LINE.search(self.log.read_text())
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"tm-master did not start:\n{self.tail()}")

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def ctl(self, *command: str) -> str:
        """A tm-ctl command against this master; its output (raises if it fails)."""
        argv = [sys.executable, "-m", "taskmaster", "ctl", *command, "--address",
                self.address, "--secret-file", str(self.secret), "--timeout", "10"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=CTL_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"tm-ctl {' '.join(command)}: exit {done.returncode}: "
                               f"{done.stdout}{done.stderr}")
        return done.stdout

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (it saves its state and exits), SIGKILL if it does not within a while."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(MASTER_STOP_S)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# -- one run --------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What one run of one slave count measured."""

    slaves: int
    joined: int = 0
    join_s: float | None = None
    busy: int = 0
    """Slaves that got a batch within `BUSY_TIMEOUT_S` of the start."""
    busy_s: float | None = None
    syn_drops: int | None = None
    """Connection attempts the kernel dropped during the join (a full listen queue)."""
    rate: float | None = None
    knocks: int = 0
    """Knocks the slaves sent before they were welcomed (and a few after, in flight)."""
    fed: int = 0
    """Slaves that got at least one batch in the throughput window."""
    batch_jobs: float | None = None
    """Jobs per JOBS message in that window."""
    master_percent: float | None = None
    cpu_us_per_job: float | None = None
    generator_percent: list[float] = field(default_factory=list)
    others_percent: float | None = None
    """CPU of everything else on the machine in the throughput window, % of one core."""
    beat_master_percent: float | None = None
    beats_per_s: float | None = None
    idle_percent: float | None = None
    problems: list[str] = field(default_factory=list)


class Generators:
    """The generator processes of one run, and their shared counters."""

    def __init__(self, slaves: int, procs: int, address: str, key: bytes | None,
                 args: argparse.Namespace) -> None:
        mp = multiprocessing.get_context("fork")  # nothing of zmq exists in this process
        self.procs = max(1, min(procs, slaves))
        self.counters: Any = multiprocessing.sharedctypes.RawArray("d", self.procs * FIELDS)
        self.control: Any = multiprocessing.sharedctypes.RawArray("d", 1)
        self.go, self.stop_event = mp.Event(), mp.Event()
        self.processes = []
        for slot in range(self.procs):
            spec = GeneratorSpec(slot, address, key, list(range(slot, slaves, self.procs)),
                                 args.window, args.batch_ms / 1000, args.beats_on_main,
                                 seed=slot)
            proc = mp.Process(target=generator_main, name=f"loadgen-{slot}",
                              args=(spec, self.counters, self.control, self.go,
                                    self.stop_event), daemon=True)
            proc.start()
            self.processes.append(proc)
        self.ps = [psutil.Process(proc.pid) for proc in self.processes if proc.pid]

    def total(self, index: int) -> float:
        return float(sum(self.counters[slot * FIELDS + index] for slot in range(self.procs)))

    def latest(self, index: int) -> float:
        return float(max(self.counters[slot * FIELDS + index] for slot in range(self.procs)))

    def wait(self, index: int, target: float, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.total(index) < target:
            if time.monotonic() > deadline or not all(p.is_alive() for p in self.processes):
                return False
            time.sleep(0.01)
        return True

    def cpu_s(self) -> list[float]:
        out = []
        for ps in self.ps:
            t = ps.cpu_times()
            out.append(t.user + t.system)
        return out

    def close(self) -> None:
        """Stop every generator process; kill by PID whatever does not stop in time."""
        self.stop_event.set()
        self.go.set()  # one still waiting for "go" must see the stop too
        deadline = time.monotonic() + 10
        for proc in self.processes:
            proc.join(max(0.1, deadline - time.monotonic()))
        for proc in self.processes:
            if proc.is_alive() and proc.pid:
                os.kill(proc.pid, signal.SIGKILL)
                proc.join(5)


def wait_quiet(max_s: float) -> float:
    """Wait (up to ``max_s``) for the machine to be nearly idle: a run is for the master and
    its slaves alone. Returns how busy it was last, in % of one core."""
    deadline = time.monotonic() + max_s
    while True:
        before, t0 = _machine_busy_s(), time.monotonic()
        time.sleep(QUIET_SAMPLE_S)
        busy = 100 * (_machine_busy_s() - before) / (time.monotonic() - t0)
        if busy < QUIET_PERCENT or time.monotonic() >= deadline:
            return busy


def run_once(slaves: int, args: argparse.Namespace,
             profiler: Profiler | None = None) -> RunResult:
    """Start a master and ``slaves`` simulated slaves; measure the storm, the flow, the
    beats; stop everything."""
    result = RunResult(slaves)
    if args.quiet_wait > 0 and (busy := wait_quiet(args.quiet_wait)) >= QUIET_PERCENT:
        print(f"# other processes keep {busy:.0f}% of a core busy; starting anyway",
              file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="tm-loadgen-") as tmp:
        try:
            master = MasterProcess(Path(tmp), args.master_args)
        except (RuntimeError, OSError) as e:  # it has stopped what it started
            result.problems.append(str(e).splitlines()[0])
            print(f"# {slaves} slaves: {e}", file=sys.stderr)
            return result
        gens: Generators | None = None
        try:
            gens = Generators(slaves, args.procs, master.address, master.key, args)
            if not gens.wait(SET_UP, gens.procs, STARTUP_TIMEOUT_S):
                raise RuntimeError("the generator processes did not start")
            # The master alone (its tick, its checkpoints) as a baseline for the beats.
            time.sleep(0.5)
            cpu0, t0 = master.cpu_s(), time.monotonic()
            time.sleep(args.idle_s)
            result.idle_percent = 100 * (master.cpu_s() - cpu0) / (time.monotonic() - t0)

            _join(gens, slaves, result)
            time.sleep(args.warmup_s)
            profiler = profiler or Profiler(None)
            _flow(master, gens, args, result, profiler)
            _beats(master, gens, args, result, profiler)
            _check(master, gens, slaves, result)
        except (RuntimeError, subprocess.TimeoutExpired, psutil.Error) as e:
            result.problems.append(str(e).splitlines()[0])
            print(f"# {slaves} slaves: {e}\n{master.tail()}", file=sys.stderr)
        finally:
            if gens is not None:
                gens.close()
            master.stop()
        if master.proc.returncode not in (0, 143, -signal.SIGTERM):
            result.problems.append(f"master exited {master.proc.returncode}")
    return result


def _join(gens: Generators, slaves: int, result: RunResult) -> None:
    drops = listen_drops()
    started = time.monotonic()
    gens.go.set()
    joined = gens.wait(READY, slaves, JOIN_TIMEOUT_S)
    result.joined = int(gens.total(READY))
    if not joined:
        raise RuntimeError(f"only {result.joined} of {slaves} slaves joined within "
                           f"{JOIN_TIMEOUT_S:.0f}s")
    result.join_s = gens.latest(LAST_READY_T) - started
    after = listen_drops()
    result.syn_drops = after - drops if after is not None and drops is not None else None
    # Not a failure when some never get work: with instant slaves the master is the
    # bottleneck, and who gets its batches is its business (the `fed` column shows it).
    if gens.wait(BUSY, slaves, BUSY_TIMEOUT_S):
        result.busy_s = gens.latest(LAST_BUSY_T) - started
    result.busy = int(gens.total(BUSY))
    result.knocks = int(gens.total(KNOCKS))


def listen_drops() -> int | None:
    """The kernel's count of connection attempts dropped at a full listen queue (Linux; all
    of the host's sockets, so another busy listener would show too)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(row["ListenDrops"]) if "ListenDrops" in row else None
    return None


def _flow(master: MasterProcess, gens: Generators, args: argparse.Namespace,
          result: RunResult, profiler: Profiler) -> None:
    profiler.start(master.proc.pid, args.window_s, f"{result.slaves} slaves at work")
    gens.control[MARK] += 1
    jobs0, cpu0, gen0 = gens.total(JOBS_ACKED), master.cpu_s(), gens.cpu_s()
    in0, batches0 = gens.total(JOBS_IN), gens.total(BATCHES)
    machine0 = _machine_busy_s()
    t0 = time.monotonic()
    time.sleep(args.window_s)
    elapsed = time.monotonic() - t0
    jobs, cpu, gen = gens.total(JOBS_ACKED) - jobs0, master.cpu_s() - cpu0, gens.cpu_s()
    machine = _machine_busy_s() - machine0
    result.fed = int(gens.total(FED))
    batches = gens.total(BATCHES) - batches0
    result.batch_jobs = (gens.total(JOBS_IN) - in0) / batches if batches else None
    result.rate = jobs / elapsed
    result.master_percent = 100 * cpu / elapsed
    result.cpu_us_per_job = 1e6 * cpu / jobs if jobs else None
    result.generator_percent = [100 * (b - a) / elapsed for a, b in zip(gen0, gen, strict=True)]
    result.others_percent = max(0.0, 100 * (machine - cpu) / elapsed
                                - sum(result.generator_percent))
    profiler.finish()


def _machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot."""
    t = psutil.cpu_times()
    # Not guest time (Linux counts it in user already), nor steal (not this machine's work).
    return float(t.user + t.system + sum(getattr(t, name, 0.0)
                                         for name in ("nice", "irq", "softirq")))


def _beats(master: MasterProcess, gens: Generators, args: argparse.Namespace,
           result: RunResult, profiler: Profiler) -> None:
    """Pause the run; once every slave holds nothing, the master's CPU is its slaves' beats
    (and its own pings and tick)."""
    master.ctl("pause")
    # With --batch-ms a slave works through what it holds first: up to its window, in batches
    # of a thousand jobs or more once the master knows how small a job is.
    deadline = time.monotonic() + SETTLE_MAX_S + args.window / 1000 * args.batch_ms / 1000
    last_in, still_since = gens.total(JOBS_IN), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now_in = gens.total(JOBS_IN)
        if now_in != last_in:
            last_in, still_since = now_in, time.monotonic()
        elif gens.total(HELD) == 0 and time.monotonic() - still_since >= 1.0:
            break
    else:
        result.problems.append(f"{gens.total(HELD):.0f} jobs still held after pausing")
    # Slaves that hold nothing beat only every IDLE_BEAT_S (and are pinged as seldom): the
    # window starts once they all beat in that rhythm, not in the one they had while busy,
    # and is whole rhythms long (slaves paused at once beat at nearly the same moments).
    time.sleep(IDLE_BEAT_S)
    window_s = IDLE_BEAT_S * math.ceil(args.window_s / IDLE_BEAT_S)
    profiler.start(master.proc.pid, window_s, f"{result.slaves} slaves paused, beating")
    beats0, cpu0, t0 = gens.total(BEATS), master.cpu_s(), time.monotonic()
    time.sleep(window_s)
    elapsed = time.monotonic() - t0
    result.beat_master_percent = 100 * (master.cpu_s() - cpu0) / elapsed
    result.beats_per_s = (gens.total(BEATS) - beats0) / elapsed
    profiler.finish()


def _check(master: MasterProcess, gens: Generators, slaves: int, result: RunResult) -> None:
    """The master's own account agrees with the generators': every slave a member, every
    job acknowledged settled, nothing dropped."""
    status = json.loads(master.ctl("status", "--json"))
    members, dropped = len(status["slaves"]), status["dropped"]
    acked = gens.total(JOBS_ACKED)
    if members != slaves:
        result.problems.append(f"master counts {members} slaves of {slaves}")
    if dropped:
        result.problems.append(f"master dropped {dropped} messages")
    if status["session_finished"] != acked:
        result.problems.append(f"master settled {status['session_finished']:,} jobs, slaves "
                               f"acknowledged {acked:,.0f}")
    for name, index in (("dropped by slaves", DROPPED), ("rejoins", REJOINS)):
        if gens.total(index):
            result.problems.append(f"{gens.total(index):.0f} {name}")


# -- profiling ------------------------------------------------------------------------------


class Profiler:
    """py-spy on the master over a measurement window (sampling without stopping it), and
    a summary of where its time went; does nothing without a directory or without py-spy."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.spy = shutil.which("py-spy")
        if directory is not None and self.spy is None:
            print("# py-spy not found: no profile", file=sys.stderr)
        self._running: tuple[subprocess.Popen[bytes], Path, str] | None = None

    def start(self, pid: int, seconds: float, what: str) -> None:
        if self.directory is None or self.spy is None:
            return
        out = self.directory / (re.sub(r"\W+", "-", what) + ".folded")
        proc = subprocess.Popen([self.spy, "record", "--pid", str(pid), "--duration",
                                 str(max(1, int(seconds))), "--rate", "200", "--gil",
                                 "--format", "raw", "--nonblocking", "--output", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._running = (proc, out, what)

    def finish(self) -> None:
        if self._running is None:
            return
        proc, out, what = self._running
        self._running = None
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if not out.exists():
            print(f"# py-spy wrote no profile of {what}", file=sys.stderr)
            return
        print(f"\nmaster profile, {what} (py-spy --gil --nonblocking at 200 Hz: samples of "
              "threads holding the GIL):")
        print(summarise_profile(out.read_text()))


def summarise_profile(folded: str, top: int = 15) -> str:
    """Top functions of a py-spy raw (folded) profile: by own time and by time inclusive of
    what they call, as shares of all samples (the idle hub's wait included)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "(no samples)"
    lines = [f"{total} samples; own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines.append("inclusive:")
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


# -- the table ------------------------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def _spread(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    if len(got) < 2 or not statistics.median(got):
        return None
    return (max(got) - min(got)) / statistics.median(got)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


HEADER = ("slaves", "join s", "busy s", "SYN drops", "jobs/s", "spread", "vs 10", "fed",
          "jobs/batch", "master %", "us/job", "gen % max", "others %", "beats/s", "beat master %",
          "idle master %")


def table(results: dict[int, list[RunResult]]) -> list[tuple[str, ...]]:
    """One row per slave count: the medians of its runs."""
    rows: list[tuple[str, ...]] = [HEADER]
    base = _median([r.rate for r in results.get(BASE_SLAVES, [])])
    for slaves, runs in results.items():
        rate = _median([r.rate for r in runs])
        busy = _median([r.busy_s for r in runs]) if all(r.busy == slaves for r in runs) else None
        rows.append((
            f"{slaves:,}",
            _fmt(_median([r.join_s for r in runs]), ".2f"),
            _fmt(busy, ".2f") if busy is not None or not runs else
            f"{_fmt(_median([r.busy for r in runs]), ',.0f')} got work",
            _fmt(_median([r.syn_drops for r in runs]), ",.0f"),
            _fmt(rate, ",.0f"), _fmt(_spread([r.rate for r in runs]), ".0%"),
            _fmt(rate / base if rate is not None and base else None, ".2f"),
            _fmt(_median([r.fed for r in runs]), ",.0f"),
            _fmt(_median([r.batch_jobs for r in runs]), ",.0f"),
            _fmt(_median([r.master_percent for r in runs]), ".0f"),
            _fmt(_median([r.cpu_us_per_job for r in runs]), ".3f"),
            _fmt(_median([max(r.generator_percent, default=None) for r in runs]), ".0f"),
            _fmt(_median([r.others_percent for r in runs]), ".0f"),
            _fmt(_median([r.beats_per_s for r in runs]), ",.0f"),
            _fmt(_median([r.beat_master_percent for r in runs]), ".1f"),
            _fmt(_median([r.idle_percent for r in runs]), ".1f"),
        ))
    return rows


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def verdicts(results: dict[int, list[RunResult]]) -> list[str]:
    """The goals, each held or not, from the medians."""
    out = []
    largest = max(results)
    base = _median([r.rate for r in results.get(BASE_SLAVES, [])])
    rate = _median([r.rate for r in results[largest]])
    if base and rate is not None and largest != BASE_SLAVES:
        ok = rate >= (1 - THROUGHPUT_TOLERANCE) * base
        out.append(f"throughput at {largest:,} slaves within {THROUGHPUT_TOLERANCE:.0%} of "
                   f"{BASE_SLAVES}: {'holds' if ok else 'DOES NOT HOLD'} ({rate:,.0f} vs "
                   f"{base:,.0f} jobs/s, {rate / base:.2f}x)")
        # Throughput on a shared host follows what the others leave the master; the CPU it
        # spends per job does much less.
        us = _median([r.cpu_us_per_job for r in results[largest]])
        base_us = _median([r.cpu_us_per_job for r in results[BASE_SLAVES]])
        if us and base_us:
            ok = base_us / us >= 1 - THROUGHPUT_TOLERANCE
            out.append(f"  and by the master's CPU per job: {'holds' if ok else 'DOES NOT HOLD'} "
                       f"({us:.3f} vs {base_us:.3f} us/job: {base_us / us:.2f}x the jobs per "
                       "CPU-second)")
    join = _median([r.join_s for r in results[largest]])
    if join is not None:
        ok = join <= JOIN_GOAL_S
        out.append(f"join storm of {largest:,} settles within {JOIN_GOAL_S:.0f}s: "
                   f"{'holds' if ok else 'DOES NOT HOLD'} ({join:.2f}s to the last READY)")
    beat = _median([r.beat_master_percent for r in results[largest]])
    if beat is not None:
        ok = beat < BEAT_GOAL_PERCENT
        out.append(f"heartbeats of {largest:,} slaves under {BEAT_GOAL_PERCENT:.0f}% of a core: "
                   f"{'holds' if ok else 'DOES NOT HOLD'} ({beat:.1f}% of one core)")
    return out


# -- main -----------------------------------------------------------------------------------


def raise_file_limit(slaves: int) -> str:
    """Raise the soft open-file limit (inherited by the master and the generators) to what
    the largest run needs, within the hard limit; says what it did."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = FDS_PER_SLAVE * slaves + 256
    if soft >= need:
        return f"open-file limit {soft} (enough for {need}; not raised)"
    new = need if hard == resource.RLIM_INFINITY else min(need, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    short = "" if new >= need else f"; {need} wanted, the hard limit stops it"
    return f"open-file limit raised from {soft} to {new}{short}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slaves", type=int, nargs="+", default=list(SLAVE_COUNTS),
                    help="simulated slave counts, one row each")
    ap.add_argument("--procs", type=int, default=2, help="generator processes per run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row; the table shows medians")
    ap.add_argument("--window-s", type=float, default=10.0,
                    help="seconds of each steady measurement (throughput, heartbeats)")
    ap.add_argument("--warmup-s", type=float, default=WARMUP_S,
                    help="seconds of work after the join storm before the throughput window")
    ap.add_argument("--idle-s", type=float, default=IDLE_S,
                    help="seconds of the master alone, measured before the slaves start")
    ap.add_argument("--window", type=int, default=MAX_WINDOW_JOBS,
                    help="jobs each slave asks to hold (a tm-slave with instant jobs asks for "
                         "the most the master grants, MAX_WINDOW_JOBS)")
    ap.add_argument("--batch-ms", type=float, default=0.0,
                    help="time each batch takes to 'run' (0: acknowledged at once)")
    ap.add_argument("--beats-on-main", action="store_true",
                    help="send heartbeats on the main socket (beat=False): one socket a slave")
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="before each run, wait up to this many seconds for the machine to be "
                         f"idle (under {QUIET_PERCENT:.0f}%% of a core busy); 0: do not wait")
    ap.add_argument("--master-args", default="",
                    help="more tm-master options, as one string (e.g. '--size 50000')")
    ap.add_argument("--profile", nargs="?", const="", default=None, metavar="DIR",
                    help="after the table, one more run of the largest count with py-spy on "
                         "the master over both windows (not in the table); its raw profiles "
                         "are kept in DIR if given")
    ap.add_argument("--quick", action="store_true",
                    help="one run per row and 3 s windows: a check that it all works")
    args = ap.parse_args(argv)
    args.master_args = args.master_args.split()
    if args.quick:
        args.repeat, args.window_s, args.warmup_s, args.idle_s = 1, 3.0, 1.0, 1.0
        args.quiet_wait = min(args.quiet_wait, 5.0)
    return args


def summary(got: RunResult) -> str:
    """One run in a line, for the progress on stderr."""
    gens = "/".join(f"{g:.0f}" for g in got.generator_percent)
    parts = [
        f"join {_fmt(got.join_s, '.2f')}s ({got.knocks:,} knocks, "
        f"{_fmt(got.syn_drops, 'd')} SYN drops)",
        f"busy {_fmt(got.busy_s, '.2f')}s ({got.busy} slaves)",
        f"{_fmt(got.rate, ',.0f')} jobs/s to {got.fed} slaves "
        f"({_fmt(got.batch_jobs, ',.0f')} a batch)",
        f"master {_fmt(got.master_percent, '.0f')}% ({_fmt(got.cpu_us_per_job, '.3f')} us/job)",
        f"generators {gens}%, others {_fmt(got.others_percent, '.0f')}%",
        f"beats {_fmt(got.beats_per_s, ',.0f')}/s cost {_fmt(got.beat_master_percent, '.1f')}%",
    ]
    return ", ".join(parts) + (f" [!] {'; '.join(got.problems)}" if got.problems else "")


def main(argv: list[str] | None = None) -> int:
    """Every slave count ``--repeat`` times, interleaved, then the one table."""
    args = parse_args(argv)
    limit = raise_file_limit(max(args.slaves))
    print(f"# Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{platform.platform()}; {limit}; {args.procs} generator processes; "
          f"window {args.window} jobs; {args.repeat} runs per row", file=sys.stderr)
    results: dict[int, list[RunResult]] = {s: [] for s in args.slaves}
    for r in range(1, args.repeat + 1):
        for slaves in args.slaves:
            got = run_once(slaves, args)
            results[slaves].append(got)
            print(f"# run {r}/{args.repeat}: {slaves:5} slaves: " + summary(got),
                  file=sys.stderr, flush=True)
    problems = report(results, args) if args.repeat else []
    if args.profile is not None:
        with tempfile.TemporaryDirectory(prefix="tm-loadgen-profile-") as tmp:
            keep = Path(args.profile) if args.profile else Path(tmp)
            keep.mkdir(parents=True, exist_ok=True)
            run_once(max(args.slaves), args, Profiler(keep))
    return 1 if problems else 0


NOTES = """\
join s: from 'go' to the last slave welcomed and READY; busy s: to the last slave's first
batch (or how many had one after {busy:.0f} s); SYN drops: connection attempts the kernel dropped
at a full listen queue meanwhile. jobs/s: acknowledged over {window:.0f} s of steady work,
acknowledged at once; spread: (max - min) / median; vs {base}: against the {base}-slave row;
fed: slaves that got work in that window; jobs/batch: jobs per JOBS message. master %: the
master's CPU (all its threads) in that window, % of one core; us/job: its CPU per job;
gen % max: the busiest generator process; others %: everything else on the machine. beats/s,
beat master %: paused (tm-ctl pause), every slave holding nothing and beating; idle master %:
the master before any slave started."""


def report(results: dict[int, list[RunResult]], args: argparse.Namespace) -> list[str]:
    """Print the table, what its columns mean, the goals and the problems; the problems."""
    print_table(table(results))
    print(f"\nMedians of {args.repeat} runs; {args.procs} generator processes; each slave asks "
          f"for {args.window:,} jobs.")
    print(NOTES.format(busy=BUSY_TIMEOUT_S, window=args.window_s, base=BASE_SLAVES))
    problems = [f"[!] {s} slaves, run {i}: {'; '.join(r.problems)}"
                for s, runs in results.items() for i, r in enumerate(runs, 1) if r.problems]
    for line in [*verdicts(results), *problems]:
        print(line)
    return problems


if __name__ == "__main__":
    sys.exit(main())
