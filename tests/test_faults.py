"""Fault injection with real processes: kill, stop, signal and break things mid-run.

Every test runs real `tm-master` / `tm-slave` / `tm-spawn` processes over ZeroMQ on a loopback
port the first master picks (port 0, read back from its log), with job modules that append
each executed job to a ledger file. The ledger is the proof: after the run, the set of jobs in
it must be the whole stream (minus the jobs the test expects to be recorded as failed), so no
job was lost; how many jobs ran more than once (allowed: delivery is at-least-once) is printed
per test and in a summary at the end (`-s`).
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import pytest

from procs import ANY_PORT, Proc, Procs, listening_on, read_ledger, wait_for
from taskmaster.config import RETRY_BACKOFF_BASE_S
from taskmaster.state import decode_job

STOP_WAIT = "10"
LEASE_TIMEOUT = "3"


# -- the summary --------------------------------------------------------------------------------


@dataclass
class Outcome:
    fault: str
    jobs: int
    lost: int
    twice: int
    recover_s: float | None
    note: str


SUMMARY: list[Outcome] = []


@pytest.fixture(scope="module", autouse=True)
def _summary() -> Iterator[None]:
    yield
    if not SUMMARY:
        return
    print("\n\nfault-injection summary (jobs lost / jobs run more than once / recovery)")
    print(f"{'fault':<48} {'jobs':>6} {'lost':>5} {'twice':>6} {'recover':>8}  note")
    for o in SUMMARY:
        rec = f"{o.recover_s:.1f}s" if o.recover_s is not None else "-"
        print(f"{o.fault:<48} {o.jobs:>6} {o.lost:>5} {o.twice:>6} {rec:>8}  {o.note}")


# -- helpers ------------------------------------------------------------------------------------


class Run:
    """One run's files and command lines: a state file, a ledger, and one address.

    The address is the one the first master bound on a port the system picked (port 0), and
    every later master binds that same address, so that slaves still running rejoin. A test
    whose slave starts before any master passes an ``ipc://`` address instead.
    """

    def __init__(self, procs: Procs, tmp_path: Path, target: str = "ledger_jobs",
                 address: str | None = None) -> None:
        self.procs = procs
        self.tmp = tmp_path
        self.target = target
        self.address = address
        self.state = tmp_path / "run.tmstate"
        self.failures = tmp_path / "run.failures.jsonl"  # the default: beside the state file
        self.ledger = tmp_path / "ledger.txt"

    def env(self, **extra: object) -> dict[str, str]:
        return {"LEDGER": str(self.ledger), **{k: str(v) for k, v in extra.items()}}

    def master(self, *args: str, env: dict[str, str] | None = None,
               stop_wait: str = STOP_WAIT) -> Proc:
        """A master of this run; the first one (with no address given) waits until it listens,
        to learn the address."""
        proc = self.procs.start(
            "tm-master", self.target, *args, "--address", self.address or ANY_PORT,
            "--state-file", str(self.state), "--stop-wait", stop_wait, "--no-progress",
            env=env if env is not None else self.env())
        if self.address is None:
            self.address = listening_on(proc)
        return proc

    def slave(self, *args: str, env: dict[str, str] | None = None) -> Proc:
        assert self.address is not None, "no address yet: start a master or give one to Run"
        return self.procs.start(
            "tm-slave", self.target, "--address", self.address, "--no-progress", *args,
            env=env if env is not None else self.env())

    def jobs(self) -> list[int]:
        return [int(line) for line in read_ledger(self.ledger)]

    def wait_ledger(self, n: int, timeout: float, *watch: Proc) -> None:
        """Wait until the ledger holds ``n`` distinct jobs; fail early if a watched process
        exits meanwhile."""
        wait_for(lambda: len(set(self.jobs())) >= n, timeout, f"{n} distinct jobs in the ledger",
                 *watch)

    def failure_records(self, path: Path | None = None) -> list[dict[str, object]]:
        path = path or self.failures
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_ledger(fault: str, ledger: list[int], expected: set[int], *,
                 recover_s: float | None = None, note: str = "") -> Counter[int]:
    """No job lost, nothing unexpected run; report (and record) how many jobs ran twice."""
    runs = Counter(ledger)
    lost = expected - set(runs)
    extra = set(runs) - expected
    twice = sum(1 for c in runs.values() if c > 1)
    extra_runs = sum(c - 1 for c in runs.values() if c > 1)
    SUMMARY.append(Outcome(fault, len(expected), len(lost), twice, recover_s, note))
    rec = f", recovered in {recover_s:.1f}s" if recover_s is not None else ""
    print(f"\n[{fault}] {len(expected)} jobs: {len(lost)} lost, {twice} ran more than once "
          f"({extra_runs} extra runs){rec}{'; ' + note if note else ''}")
    assert not lost, f"{len(lost)} jobs lost, e.g. {sorted(lost)[:20]}"
    assert not extra, f"jobs that should not have run did: {sorted(extra)[:20]}"
    return runs


def count_lines(proc: Proc, pattern: str) -> int:
    rx = re.compile(pattern)
    return sum(1 for line in proc.lines if rx.search(line))


def wait_count(proc: Proc, pattern: str, n: int, timeout: float) -> None:
    """Wait until ``n`` lines of the output of ``proc`` (which must not exit) match ``pattern``."""
    wait_for(lambda: count_lines(proc, pattern) >= n, timeout,
             f"{n} lines matching {pattern!r}", proc)


def lines_after(proc: Proc, first: str, pattern: str) -> list[str]:
    """Lines matching ``pattern`` that come after the first line matching ``first``."""
    start = next((i for i, line in enumerate(proc.lines) if re.search(first, line)), None)
    if start is None:
        raise AssertionError(f"no line matching {first!r} from {proc.argv}:\n{proc.output}")
    return [line for line in proc.lines[start + 1:] if re.search(pattern, line)]


def exits(proc: Proc, timeout: float) -> tuple[int, float]:
    """Exit status and how long it took to come."""
    started = time.monotonic()
    code = proc.wait(timeout)
    return code, time.monotonic() - started


def log_time(line: str) -> datetime:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def state(path: Path) -> dict[str, object]:
    return json.loads(path.read_text())


def slave_name(proc: Proc) -> str:
    """How the master names a slave in its log: host:pid."""
    return rf"\S+:{proc.pid}"


# -- the master dies ----------------------------------------------------------------------------


def test_master_sigkill_three_times(procs: Procs, tmp_path: Path) -> None:
    """SIGKILL the master three times mid-run; each restart resumes; slaves rejoin alone."""
    n = 3000
    run = Run(procs, tmp_path)
    env = run.env(SLEEP_S=0.01)
    master = run.master(f"count={n}")
    slaves = [run.slave("-c", "5", env=env) for _ in range(2)]
    wait_count(master, r"slave \S+ joined", 2, 20)
    recoveries = []
    for kill in range(1, 4):
        run.wait_ledger(kill * n // 5, 30, master, *slaves)
        master.kill()
        killed_at = time.monotonic()
        assert run.state.exists(), "no checkpoint written before the kill"
        master = run.master(f"count={n}")
        master.expect(r"resuming at job #\d+", 20)
        wait_count(master, r"slave \S+ joined", 2, 20)  # both came back by themselves
        recoveries.append(time.monotonic() - killed_at)
        for s in slaves:
            wait_count(s, r"rejoining", kill, 10)
    code, _ = exits(master, 60)
    assert code == 0, master.output
    assert re.search(r"run complete", master.output)
    for s in slaves:
        assert s.wait(15) == 0, s.output
    check_ledger("master SIGKILL x3", run.jobs(), set(range(n)), recover_s=max(recoveries),
                 note="recovery = kill to both slaves rejoined, worst of 3")


def test_master_timeout_without_master(procs: Procs, tmp_path: Path) -> None:
    """A slave with --master-timeout 2 and no master gives up with one clear line."""
    run = Run(procs, tmp_path, address=f"ipc://{tmp_path}/master")  # no master, so no port
    slave = run.slave("--master-timeout", "2")
    code, took = exits(slave, 20)
    assert code not in (0, None), slave.output
    assert re.search(rf"no master at {re.escape(run.address)} for \d+s; giving up",
                     slave.output), slave.output
    assert "Traceback" not in slave.output
    assert took >= 2.0, f"gave up after {took:.1f}s, not after waiting 2s"
    check_ledger("slave, no master (--master-timeout 2)", run.jobs(), set(),
                 recover_s=None, note=f"exit {code} after {took:.1f}s")


def test_master_timeout_after_master_dies(procs: Procs, tmp_path: Path) -> None:
    """The master dies mid-run for good: the slave gives up after --master-timeout; a new
    master and slave later finish the run without losing a job."""
    n = 1500
    run = Run(procs, tmp_path)
    env = run.env(SLEEP_S=0.01)
    master = run.master(f"count={n}")
    slave = run.slave("-c", "5", "--master-timeout", "2", env=env)
    run.wait_ledger(300, 20, master, slave)
    master.kill()
    code, took = exits(slave, 20)
    assert code != 0, slave.output
    assert re.search(r"no master at .* giving up", slave.output), slave.output
    master = run.master(f"count={n}")
    slave = run.slave("-c", "5", env=env)
    assert master.wait(60) == 0, master.output
    check_ledger("master gone, slave --master-timeout 2", run.jobs(), set(range(n)),
                 note=f"slave exit {code} {took:.1f}s after the kill")


# -- a slave dies, hangs or stops ---------------------------------------------------------------


def test_slave_sigkill_mid_run(procs: Procs, tmp_path: Path) -> None:
    """SIGKILL one of two slaves: after --lease-timeout its jobs go to the other one."""
    n = 2000
    run = Run(procs, tmp_path)
    env = run.env(SLEEP_S=0.01)
    master = run.master(f"count={n}", "--lease-timeout", LEASE_TIMEOUT)
    victim, survivor = (run.slave("-c", "5", env=env) for _ in range(2))
    wait_count(master, r"slave \S+ joined", 2, 20)
    run.wait_ledger(300, 20, master, victim, survivor)
    victim.kill()
    killed_at = time.monotonic()
    master.expect(rf"slave {slave_name(victim)} lost", 15)
    recover = time.monotonic() - killed_at
    assert master.wait(60) == 0, master.output
    assert survivor.wait(15) == 0, survivor.output
    check_ledger("slave SIGKILL", run.jobs(), set(range(n)), recover_s=recover,
                 note="recovery = kill to master declaring it lost")


def test_slave_sigstop_past_lease_then_sigcont(procs: Procs, tmp_path: Path) -> None:
    """A slave frozen past the lease timeout loses its leases; thawed, its late
    acknowledgements are ignored and it rejoins."""
    n = 1000
    run = Run(procs, tmp_path)
    env = run.env(SLEEP_S=0.02)
    master = run.master(f"count={n}", "--lease-timeout", LEASE_TIMEOUT)
    frozen, other = (run.slave("-c", "5", env=env) for _ in range(2))
    wait_count(master, r"slave \S+ joined", 2, 20)
    run.wait_ledger(100, 20, master, frozen, other)
    frozen.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        master.expect(rf"slave {slave_name(frozen)} lost", 15)
        recover = time.monotonic() - stopped_at
        assert recover >= float(LEASE_TIMEOUT) - 0.5, "declared lost before the lease timeout"
    finally:
        frozen.signal(signal.SIGCONT)
    frozen.expect(r"rejoining", 15)
    wait_count(master, rf"slave {slave_name(frozen)} joined", 2, 15)
    assert master.wait(60) == 0, master.output
    for s in (frozen, other):
        assert s.wait(15) == 0, s.output
    check_ledger("slave SIGSTOP > lease, SIGCONT", run.jobs(), set(range(n)), recover_s=recover,
                 note="recovery = stop to master declaring it lost; it rejoined after SIGCONT")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_slave_graceful_signal(procs: Procs, tmp_path: Path, signum: int) -> None:
    """SIGINT/SIGTERM on a slave: it hands back what it has not started, finishes what runs,
    exits 130/143; the other slave completes the run."""
    n = 1500
    run = Run(procs, tmp_path)
    env = run.env(SLEEP_S=0.01)
    # A short lease: should the leaving slave be handed jobs anyway (see the next test), they
    # come back in seconds rather than the default 30.
    master = run.master(f"count={n}", "--lease-timeout", LEASE_TIMEOUT)
    leaving, staying = (run.slave("-c", "5", env=env) for _ in range(2))
    wait_count(master, r"slave \S+ joined", 2, 20)
    run.wait_ledger(200, 20, master, leaving, staying)
    leaving.signal(signum)
    code, took = exits(leaving, 20)
    assert code == 128 + signum, leaving.output
    assert master.wait(60) == 0, master.output
    assert staying.wait(15) == 0, staying.output
    name = signal.Signals(signum).name
    rejoined = bool(lines_after(leaving, rf"{name}: finishing", r"rejoining"))
    check_ledger(f"slave {name}", run.jobs(), set(range(n)), recover_s=took,
                 note="recovery = signal to slave exit"
                 + ("; it REJOINED after the signal (bug)" if rejoined else ""))


def test_slave_signal_takes_no_new_work(procs: Procs, tmp_path: Path) -> None:
    """A slave signalled while it still runs a job from before a master restart (so the new
    master holds no lease for it) finishes that job and exits 143, taking no new work: it must
    not rejoin the master it has just said goodbye to."""
    n, slow, slow_s = 2000, 5, 6.0
    run = Run(procs, tmp_path, target="fault_jobs")
    master = run.master(f"count={n}", "--lease-timeout", LEASE_TIMEOUT)
    leaving = run.slave("-c", "2", env=run.env(SLEEP_S=0.01, SLOW_ON=slow, SLOW_S=slow_s))
    leaving.expect(rf"slow job {slow} started", 20)
    slow_started = time.monotonic()
    master.kill()
    master = run.master(f"count={n}", "--lease-timeout", LEASE_TIMEOUT)
    staying = run.slave("-c", "4", env=run.env(SLEEP_S=0.01))
    leaving.expect(r"rejoining", 15)
    wait_count(master, r"slave \S+ joined", 2, 15)
    assert time.monotonic() - slow_started < slow_s - 2, "too slow to set up the case"
    leaving.signal(signal.SIGTERM)
    code, took = exits(leaving, 30)
    master_code = master.wait(60)
    assert staying.wait(15) == 0, staying.output
    rejoined = lines_after(leaving, r"SIGTERM: finishing", r"rejoining")
    taken = lines_after(master, rf"slave {slave_name(leaving)} leaving",
                        rf"slave {slave_name(leaving)} (joined|lost)")
    check_ledger("slave SIGTERM mid old-epoch job", run.jobs(), set(range(n)), recover_s=took,
                 note="recovery = signal to slave exit"
                 + ("; it REJOINED after the signal (bug)" if rejoined else ""))
    assert not rejoined and not taken, (
        f"the slave rejoined after SIGTERM and took new work:\n{leaving.output}\n---\n"
        f"{master.output}")
    assert code == 143, leaving.output
    assert took < slow_s + 2, f"slave took {took:.1f}s to exit"
    assert master_code == 0, master.output


# -- the callback misbehaves --------------------------------------------------------------------


def test_callback_raises_retried_then_recorded(procs: Procs, tmp_path: Path) -> None:
    """handle_job raising: retried with backoff up to --max-retries, then one JSON line each
    in the failures file (default: beside the state file); the run goes on; exit 1."""
    n, every, retries = 200, 40, 2
    failing = set(range(0, n, every))
    run = Run(procs, tmp_path)
    env = run.env(FAIL_EVERY=every)
    master = run.master(f"count={n}", "--max-retries", str(retries))
    slave = run.slave("--log-level", "DEBUG", env=env)  # every attempt, with its time
    code, _ = exits(master, 60)
    assert code == 1, master.output
    assert re.search(rf"{len(failing)} jobs failed for good \(ValueError {len(failing)}\); "
                     rf"their records, tracebacks included, are in "
                     rf"{re.escape(str(run.failures))}", master.output), master.output
    records = run.failure_records()
    assert sorted(r["seq"] for r in records) == sorted(failing), records
    for r in records:
        job = r["seq"]
        assert decode_job(r["job"]) == job
        assert r["job_repr"] == repr(job)
        assert r["exception"] == "ValueError"
        assert r["message"] == f"job {job} fails on purpose"
        assert f"ValueError: job {job} fails on purpose" in r["traceback"]
        assert "ledger_jobs.py" in r["traceback"]
        assert r["attempts"] == retries + 1
        assert r["slave"]
    assert slave.wait(15) == 0, slave.output
    for job in failing:
        tries = [log_time(line) for line in slave.lines
                 if re.search(rf"handle_job\({job}\) raised ValueError", line)]
        assert len(tries) == retries + 1, slave.output
        gaps = [(b - a).total_seconds() for a, b in pairwise(tries)]
        # Doubling backoff from the base; lower bounds only (a loaded host only adds delay).
        floors = [RETRY_BACKOFF_BASE_S * 2**i - 0.1 for i in range(retries)]
        assert all(g >= f for g, f in zip(gaps, floors, strict=True)), \
            f"job {job} retried after {gaps}s, expected at least {floors}s"
    check_ledger("callback raises (FAIL_EVERY)", run.jobs(), set(range(n)) - failing,
                 note=f"{len(failing)} recorded after {retries + 1} attempts")


def test_callback_hangs_job_timeout(procs: Procs, tmp_path: Path) -> None:
    """A hanging handle_job is cut by --job-timeout: a failed attempt; then recorded."""
    n, hang = 100, 37
    run = Run(procs, tmp_path, target="fault_jobs")
    master = run.master(f"count={n}", "--max-retries", "1")
    slave = run.slave("--job-timeout", "1", env=run.env(HANG_ON=hang))
    code, took = exits(master, 40)
    assert code == 1, master.output
    records = run.failure_records()
    assert [r["seq"] for r in records] == [hang], records
    assert records[0]["exception"] == "JobTimeoutError"
    assert records[0]["attempts"] == 2
    assert slave.wait(15) == 0, slave.output
    check_ledger("callback hangs (--job-timeout 1)", run.jobs(), set(range(n)) - {hang},
                 note=f"recorded as JobTimeoutError; run took {took:.1f}s")


def test_callback_exits_poison_job(procs: Procs, tmp_path: Path) -> None:
    """handle_job calling os._exit on one job: tm-spawn restarts the dead slaves, and after
    --max-deaths (3) deaths the job is recorded as failed; every other job runs."""
    n, poison = 300, 123
    run = Run(procs, tmp_path)
    master = run.master(f"count={n}", "--lease-timeout", "2")
    procs.start("tm-spawn", "ledger_jobs", "2", "--address", run.address, "--no-progress",
                "-c", "5", "--master-timeout", "5", env=run.env(EXIT_ON=poison, SLEEP_S=0.005))
    code, took = exits(master, 60)
    records = run.failure_records()
    recorded = sorted(int(r["seq"]) for r in records)  # type: ignore[call-overload]
    check_ledger("callback os._exit (poison job)", run.jobs(), set(range(n)) - {poison},
                 note=f"{len(recorded)} recorded as failed (expected 1); run took {took:.1f}s")
    assert recorded == [poison], f"recorded as failed: {recorded}"
    assert "slave died" in str(records[0]["message"]), records[0]
    assert code == 1, master.output


def test_callback_spins_cpu_past_lease_timeout(procs: Procs, tmp_path: Path) -> None:
    """A job that holds the CPU without yielding for twice the lease timeout: heartbeats
    come from a real thread, so the slave is not declared dead and the job runs once."""
    n, spin = 400, 150
    run = Run(procs, tmp_path, target="fault_jobs")
    env = run.env(SPIN_ON=spin, SPIN_S=2 * float(LEASE_TIMEOUT), SLEEP_S=0.01)
    master = run.master(f"count={n}", "--lease-timeout", LEASE_TIMEOUT)
    slaves = [run.slave("-c", "4", env=env) for _ in range(2)]
    wait_for(lambda: next((s for s in slaves if count_lines(s, rf"spinning on job {spin}")),
                          None), 20, f"a slave to spin on job {spin}", master, *slaves)
    started = time.monotonic()
    code, _ = exits(master, 60)
    assert code == 0, master.output
    assert time.monotonic() - started >= 2 * float(LEASE_TIMEOUT) - 1, "the spin did not last"
    assert not re.search(r"slave .* lost", master.output), master.output
    runs = check_ledger("callback spins CPU 2x lease timeout", run.jobs(), set(range(n)),
                        note="spinning slave never declared lost")
    assert runs[spin] == 1, f"job {spin} ran {runs[spin]} times"
    for s in slaves:
        assert s.wait(15) == 0, s.output


# -- the stream misbehaves ----------------------------------------------------------------------


def test_get_jobs_raises_then_restart_resumes(procs: Procs, tmp_path: Path) -> None:
    """get_jobs raising mid-stream: the master drains, checkpoints, shows the user's
    traceback, exits 1; restarted with the cause fixed, it resumes at the earliest unfinished
    job and completes."""
    n, raise_at, size = 2000, 1200, 50
    run = Run(procs, tmp_path, target="fault_jobs")
    env = run.env(SLEEP_S=0.005)
    args = (f"count={n}", f"raise_at={raise_at}", "--size", str(size))
    master = run.master(*args)
    slave = run.slave("-c", "5", env=env)
    code, _ = exits(master, 40)
    assert code == 1, master.output
    assert "Traceback (most recent call last)" in master.output
    assert f"RuntimeError: get_jobs fails at job {raise_at} on purpose" in master.output
    assert "fault_jobs.py" in master.output
    cp = state(run.state)
    resume = int(cp["resume_seq"])  # type: ignore[arg-type]
    assert cp["has_last"] and not cp["complete"], cp
    assert 0 < resume <= raise_at, cp
    before = set(run.jobs())
    assert set(range(resume)) <= before, "a job before the resume point never ran"
    # Leased jobs were drained (finished or handed back unstarted), so the resume point is
    # the earliest job that has not run: nothing finished is left before it.
    assert resume not in before, f"resume point #{resume} had already run"

    master = run.master(*args, env=run.env(GET_JOBS_FIXED=1))
    master.expect(rf"resuming at job #{resume}\b", 20)
    master.expect(rf"get_jobs\(last={resume}\)", 20)
    assert master.wait(60) == 0, master.output
    assert slave.wait(15) == 0, slave.output
    check_ledger("get_jobs raises, restart fixed", run.jobs(), set(range(n)),
                 note=f"raised at {raise_at}, resumed at {resume}")


@pytest.mark.parametrize("bad", [0, 137])
def test_unpicklable_job(procs: Procs, tmp_path: Path, bad: int) -> None:
    """A job that cannot be pickled stops the run with its sequence number and repr, exit 1;
    fixed, a restart completes.

    Mid-stream (#137), the job before it is slow, so that the bad job is never the earliest
    unfinished one whatever the batch boundaries: the run stops with a picklable resume point.
    As the first job (#0), the bad job is itself the resume point the master must checkpoint.
    """
    n = 300
    run = Run(procs, tmp_path, target="fault_jobs")
    args = (f"count={n}", f"unpicklable_at={bad}")
    master = run.master(*args, stop_wait="1")
    slave = run.slave(env=run.env(SLEEP_S=0.001, SLOW_ON=bad - 1, SLOW_S=3))
    code, _ = exits(master, 40)
    assert code == 1, master.output
    assert re.search(rf"job #{bad} <[^>]*[Ll]ock[^>]* object at 0x[0-9a-f]+> cannot be "
                     r"pickled", master.output), master.output
    assert "internal error" not in master.output, master.output
    master = run.master(*args, env=run.env(GET_JOBS_FIXED=1))
    assert master.wait(60) == 0, master.output
    assert slave.wait(15) == 0, slave.output
    check_ledger(f"unpicklable job #{bad}, restart fixed", run.jobs(), set(range(n)))


# -- graceful stop, and the state file ----------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_master_graceful_signal_then_resume(procs: Procs, tmp_path: Path, signum: int) -> None:
    """SIGINT/SIGTERM on the master: it stops feeding, waits for leased jobs, checkpoints,
    exits 130/143; a restart resumes and completes."""
    n = 1500
    run = Run(procs, tmp_path)
    env = run.env(SLEEP_S=0.01)
    master = run.master(f"count={n}")
    slave = run.slave("-c", "5", env=env)
    run.wait_ledger(300, 20, master, slave)
    master.signal(signum)
    code, took = exits(master, float(STOP_WAIT) + 10)
    assert code == 128 + signum, master.output
    name = signal.Signals(signum).name
    assert re.search(rf"stopped by {name}; state saved", master.output), master.output
    slave.expect(r"master is stopping", 5)  # it was told
    cp = state(run.state)
    assert cp["has_last"] and not cp["complete"], cp
    resume = int(cp["resume_seq"])  # type: ignore[arg-type]
    assert set(range(resume)) <= set(run.jobs()), "a job before the resume point never ran"
    assert resume < n

    master = run.master(f"count={n}")
    master.expect(rf"resuming at job #{resume}\b", 20)
    assert master.wait(60) == 0, master.output
    assert slave.wait(15) == 0, slave.output
    check_ledger(f"master {name}, restart", run.jobs(), set(range(n)), recover_s=took,
                 note=f"recovery = signal to exit {code}; resumed at #{resume}")


@pytest.mark.parametrize("how", ["stop-wait", "second signal"])
def test_master_stop_wait_is_bounded(procs: Procs, tmp_path: Path, how: str) -> None:
    """A leased job that outlasts the stop: the master exits after --stop-wait (or at once on
    a second signal) with a checkpoint that still includes that job; a restart runs it."""
    n, slow = 200, 50
    run = Run(procs, tmp_path, target="fault_jobs")
    stop_wait = 2.0 if how == "stop-wait" else 30.0
    master = run.master(f"count={n}", stop_wait=str(stop_wait))
    slave = run.slave(env=run.env(SLOW_ON=slow, SLOW_S=60))
    slave.expect(rf"slow job {slow} started", 20)  # its batch stays leased for a minute
    # A first checkpoint with a resume point, which a second signal relies on (the file
    # exists from the start, saying only where the run begins).
    wait_for(lambda: run.state.exists() and state(run.state)["has_last"], 10,
             f"a first checkpoint in {run.state}", master, slave)
    master.signal(signal.SIGINT)
    master.expect(r"SIGINT: stopping", 10)
    if how == "second signal":
        master.signal(signal.SIGINT)
    code, took = exits(master, stop_wait + 10)
    assert code == 130, master.output
    if how == "stop-wait":
        assert stop_wait - 0.5 <= took <= stop_wait + 5, f"exited {took:.1f}s after SIGINT"
        assert re.search(r"\d+ jobs still leased", master.output), master.output
    else:
        assert took < 3, f"a second SIGINT took {took:.1f}s to stop the master"
    cp = state(run.state)
    assert cp["has_last"] and int(cp["resume_seq"]) <= slow, cp  # type: ignore[arg-type]
    assert slow not in run.jobs()

    master = run.master(f"count={n}")
    assert master.wait(40) == 0, master.output
    check_ledger(f"master SIGINT, slow leased job ({how})", run.jobs(), set(range(n)),
                 recover_s=took, note="recovery = signal to exit 130")


def test_two_masters_one_state_file(procs: Procs, tmp_path: Path) -> None:
    """A second master on a state file in use exits 2 naming the holder; the first runs on."""
    n = 200
    run = Run(procs, tmp_path)
    first = run.master(f"count={n}")  # listening: it has taken the state file
    second = procs.start("tm-master", "ledger_jobs", f"count={n}", "--address", ANY_PORT,
                         "--state-file", str(run.state), "--no-progress", env=run.env())
    code, _ = exits(second, 20)
    assert code == 2, second.output
    assert re.search(rf"in use by another master \(pid {first.pid}\b", second.output), \
        second.output
    assert first.proc.poll() is None, first.output
    run.slave()
    assert first.wait(60) == 0, first.output
    check_ledger("two masters, one state file", run.jobs(), set(range(n)),
                 note="second exited 2 naming the first's pid")


def run_with_failures(run: Run, n: int, every: int) -> set[int]:
    """A run of ``n`` jobs in which every ``every``-th fails for good at once: it exits 1 and
    records exactly those. Returns them."""
    failing = set(range(0, n, every))
    master = run.master(f"count={n}", "--max-retries", "0")
    slave = run.slave(env=run.env(FAIL_EVERY=every))
    assert master.wait(40) == 1, master.output
    assert slave.wait(15) == 0, slave.output
    records = run.failure_records()
    assert sorted(r["seq"] for r in records) == sorted(failing)
    assert all(r["attempts"] == 1 for r in records), records
    return failing


def test_retry_failures_round_trip(procs: Procs, tmp_path: Path) -> None:
    """A run with failures exits 1; --retry-failures with the cause fixed runs exactly the
    recorded jobs again and exits 0; together the ledgers hold every job."""
    n = 100
    run = Run(procs, tmp_path)
    failing = run_with_failures(run, n, every=7)
    first_ledger = run.jobs()
    assert set(first_ledger) == set(range(n)) - failing

    retry_ledger = tmp_path / "retry-ledger.txt"
    retry = procs.start("tm-master", "--retry-failures", str(run.failures), "ledger_jobs",
                        "--address", ANY_PORT, "--no-progress", env=run.env())
    run.address = listening_on(retry)  # no slave of the first master is left to rejoin
    slave = run.slave(env={"LEDGER": str(retry_ledger)})
    assert retry.wait(40) == 0, retry.output
    assert slave.wait(15) == 0, slave.output
    retried = [int(line) for line in read_ledger(retry_ledger)]
    assert sorted(set(retried)) == sorted(failing), "the retry ran other jobs than recorded"
    check_ledger("--retry-failures round trip", first_ledger + retried, set(range(n)),
                 note=f"{len(failing)} failed, then all retried with exit 0")


def test_a_retry_that_fails_again_records_the_original_sequence_numbers(
        procs: Procs, tmp_path: Path) -> None:
    """--retry-failures streams the file, and a job that fails again is recorded under the
    number it had in the run it came from, not under its place in the file."""
    n, every = 60, 7
    run = Run(procs, tmp_path)
    failing = run_with_failures(run, n, every)

    # Its own records are beside the file it retries (--failures-file names the run it
    # retries: the same command line with --retry-failures added is the retry).
    again = tmp_path / "run.retry.failures.jsonl"
    retry = procs.start("tm-master", "--retry-failures", str(run.failures), "ledger_jobs",
                        "--failures-file", str(run.failures), "--max-retries", "0",
                        "--address", ANY_PORT, "--no-progress", env=run.env())
    run.address = listening_on(retry)  # no slave of the first master is left to rejoin
    slave = run.slave(env=run.env(FAIL_EVERY=every))
    assert retry.wait(40) == 1, retry.output
    assert slave.wait(15) == 0, slave.output
    records = run.failure_records(again)
    assert sorted(r["seq"] for r in records) == sorted(failing), records
    assert all(decode_job(str(r["job"])) == r["seq"] for r in records)
