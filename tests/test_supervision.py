"""Supervision with real processes: slaves that die with their supervisor, stop signals that
reach them, slaves replaced by fresh processes (hard --job-timeout, recycling), deaths told to
the master at once, the restart budget, and slaves that come late or wait for a master.

Every process is started through the `procs` fixture (`tm-master`, `tm-slave`, `tm-spawn`,
`tm-run` over loopback or ipc://), with job modules from tests/jobs that append each executed
job to a ledger file. The ledger is the proof that no job was lost: after the run, the set of
jobs in it must be the whole stream minus the jobs the test expects to be recorded as failed.
Slave processes are found as psutil children of their supervisor before it is killed, and
their end is waited for (bounded) after. The restart budget of `Supervisor` is tested in this
process, with real child processes, reaped and killed by PID.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import time
from itertools import pairwise
from pathlib import Path

import psutil
import pytest
from test_faults import check_ledger, count_lines, exits, log_time, wait_count

import taskmaster.spawn as spawn_module
from procs import ANY_PORT, Proc, Procs, listening_on, read_ledger, wait_for
from taskmaster.errors import EXIT_REPLACE
from taskmaster.spawn import Supervisor

START_S = 20.0
"""Bound on a process getting as far as a line it logs at start (joined, listening)."""
RUN_S = 60.0
"""Bound on a whole small run."""
GONE_S = 3.0
"""Bound on the slaves of a supervisor that was killed being gone (the promise: about 2 s)."""
NO_PROGRESS = "--no-progress"


# -- helpers ------------------------------------------------------------------------------------


class Run:
    """One run's files: a state file, its failures file, a ledger; and its command lines."""

    def __init__(self, procs: Procs, tmp_path: Path, target: str = "ledger_jobs") -> None:
        self.procs = procs
        self.target = target
        self.state = tmp_path / "run.tmstate"
        self.failures = tmp_path / "run.failures.jsonl"  # the default: beside the state file
        self.ledger = tmp_path / "ledger.txt"
        self.address: str | None = None

    def env(self, **extra: object) -> dict[str, str]:
        return {"LEDGER": str(self.ledger), **{k: str(v) for k, v in extra.items()}}

    def master(self, *args: str, env: dict[str, str] | None = None) -> Proc:
        """A tm-master of this run; the first one binds a port the system picks, and later
        ones the same address, so that slaves still running rejoin."""
        proc = self.procs.start(
            "tm-master", self.target, *args, "--address", self.address or ANY_PORT,
            "--state-file", str(self.state), NO_PROGRESS,
            env=env if env is not None else self.env())
        if self.address is None:
            self.address = listening_on(proc, START_S)
        return proc

    def slave(self, *args: str, env: dict[str, str] | None = None) -> Proc:
        assert self.address is not None, "start a master first"
        return self.procs.start("tm-slave", self.target, "--address", self.address,
                                NO_PROGRESS, *args, env=env if env is not None else self.env())

    def spawn(self, n: int, *args: str, env: dict[str, str] | None = None) -> Proc:
        assert self.address is not None, "start a master first"
        return self.procs.start("tm-spawn", self.target, str(n), "--address", self.address,
                                NO_PROGRESS, *args, env=env if env is not None else self.env())

    def tm_run(self, n: int, *args: str, env: dict[str, str] | None = None) -> Proc:
        return self.procs.start("tm-run", self.target, str(n), *args, "--state-file",
                                str(self.state), NO_PROGRESS,
                                env=env if env is not None else self.env())

    def jobs(self) -> list[int]:
        return [int(line) for line in read_ledger(self.ledger)]

    def wait_ledger(self, n: int, *watch: Proc, timeout: float = START_S) -> None:
        """Wait until the ledger holds ``n`` distinct jobs (the watched processes running)."""
        wait_for(lambda: len(set(self.jobs())) >= n, timeout,
                 f"{n} distinct jobs in the ledger", *watch)

    def records(self) -> list[dict[str, object]]:
        if not self.failures.exists():
            return []
        return [json.loads(line) for line in self.failures.read_text().splitlines()
                if line.strip()]

    def checkpoint(self) -> dict[str, object]:
        try:
            return json.loads(self.state.read_text())  # replaced atomically: read whole
        except FileNotFoundError:
            return {}


def another_spawn_completes(run: Run, master: Proc, env: dict[str, str], n: int,
                            what: str) -> None:
    """A new tm-spawn of 2 slaves finishes the run of ``master``: every job ran."""
    again = run.spawn(2, "-c", "5", env=env)
    assert master.wait(RUN_S) == 0, master.output
    assert again.wait(20) == 0, again.output
    check_ledger(what, run.jobs(), set(range(n)))


def is_gone(p: psutil.Process) -> bool:
    """The process has ended (a zombie nobody reaps yet counts: it runs nothing)."""
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def slaves_of(supervisor: Proc, n: int) -> list[psutil.Process]:
    """The ``n`` live child processes of ``supervisor`` (waits until it has exactly ``n``)."""

    def check() -> list[psutil.Process] | None:
        try:
            kids = [c for c in psutil.Process(supervisor.pid).children() if not is_gone(c)]
        except psutil.Error:
            return None
        return kids if len(kids) == n else None

    return wait_for(check, START_S, f"{n} live children of {supervisor.argv[3:5]}", supervisor)


def wait_gone(ps: list[psutil.Process], timeout: float, what: str) -> float:
    """Wait until every process of ``ps`` is gone; how long that took."""
    started = time.monotonic()
    wait_for(lambda: all(is_gone(p) for p in ps), timeout,
             f"{what}: pids {[p.pid for p in ps]} gone")
    return time.monotonic() - started


def tm_run_files() -> set[Path]:
    return set(Path("/tmp").glob("tm-run-*"))


# -- 1. slaves die with their supervisor --------------------------------------------------------


def test_slaves_die_with_tm_run_on_sigkill(procs: Procs, tmp_path: Path) -> None:
    """SIGKILL tm-run: both kinds of its slaves (a fork of it, and a fresh interpreter that
    replaced a killed fork) are gone within ~2 s, no tm-run-* file is left in /tmp, and a
    restart resumes and completes the run with no job lost."""
    n = 4000
    run = Run(procs, tmp_path)
    env = run.env(SLEEP_S=0.01)
    before = tm_run_files()
    tm = run.tm_run(2, f"count={n}", "-c", "5", env=env)
    wait_count(tm, r"slave \S+ joined", 2, START_S)
    run.wait_ledger(200, tm)
    forked = slaves_of(tm, 2)
    # One of the forks dies: its slot comes back as a fresh interpreter, which dies with its
    # supervisor by another way (told its parent's pid) than the forks do.
    forked[0].kill()
    tm.expect(rf"slave \d+ \(pid {forked[0].pid}\) died with 137; restarting", 10)
    wait_count(tm, r"slave \S+ joined", 3, START_S)
    slaves = slaves_of(tm, 2)
    assert forked[1].pid in {s.pid for s in slaves}
    assert forked[0].pid not in {s.pid for s in slaves}

    tm.signal(signal.SIGKILL)
    assert tm.wait(10) == -signal.SIGKILL
    took = wait_gone(slaves, GONE_S, "the slaves of a SIGKILLed tm-run")
    print(f"\nslaves of tm-run gone {took:.2f}s after its SIGKILL")
    left = tm_run_files() - before
    assert not left, f"tm-run left files behind: {sorted(left)}"

    again = run.tm_run(2, f"count={n}", "-c", "5", env=env)
    again.expect(r"resuming at job #\d+", START_S)
    assert again.wait(RUN_S) == 0, again.output
    check_ledger("tm-run SIGKILL, restart", run.jobs(), set(range(n)))


def test_slaves_die_with_tm_spawn_on_sigkill(procs: Procs, tmp_path: Path) -> None:
    """SIGKILL tm-spawn: its slaves are gone within ~2 s; another tm-spawn completes the run
    (after the lease timeout gives the dead slaves' jobs back) with no job lost."""
    n = 3000
    run = Run(procs, tmp_path)
    env = run.env(SLEEP_S=0.01)
    master = run.master(f"count={n}", "--lease-timeout", "3")
    sp = run.spawn(2, "-c", "5", env=env)
    wait_count(master, r"slave \S+ joined", 2, START_S)
    run.wait_ledger(200, master, sp)
    slaves = slaves_of(sp, 2)

    sp.signal(signal.SIGKILL)
    assert sp.wait(10) == -signal.SIGKILL
    took = wait_gone(slaves, GONE_S, "the slaves of a SIGKILLed tm-spawn")
    print(f"\nslaves of tm-spawn gone {took:.2f}s after its SIGKILL")
    assert master.proc.poll() is None, master.output

    another_spawn_completes(run, master, env, n, "tm-spawn SIGKILL, another tm-spawn")


# -- 2. SIGHUP is a graceful stop ---------------------------------------------------------------


def test_sighup_on_tm_master_is_a_graceful_stop(procs: Procs, tmp_path: Path) -> None:
    """SIGHUP on tm-master: exit 143, "stopped by SIGTERM; state saved"; a restart resumes."""
    n = 1500
    run = Run(procs, tmp_path)
    env = run.env(SLEEP_S=0.01)
    master = run.master(f"count={n}")
    slave = run.slave("-c", "5", env=env)
    run.wait_ledger(300, master, slave)
    master.signal(signal.SIGHUP)
    code, _ = exits(master, 40)
    assert code == 143, master.output
    master.expect(r"stopped by SIGTERM; state saved", 1)
    slave.expect(r"master is stopping", 5)
    cp = run.checkpoint()
    assert cp["has_last"] and not cp["complete"], cp
    resume = int(cp["resume_seq"])  # type: ignore[call-overload]
    assert resume < n

    master = run.master(f"count={n}")
    master.expect(rf"resuming at job #{resume}\b", START_S)
    assert master.wait(RUN_S) == 0, master.output
    assert slave.wait(15) == 0, slave.output
    check_ledger("tm-master SIGHUP, restart", run.jobs(), set(range(n)))


def test_sighup_on_tm_run_is_a_graceful_stop(procs: Procs, tmp_path: Path) -> None:
    """SIGHUP on tm-run: exit 143, "stopped by SIGTERM; state saved", its slaves gone; a
    restart resumes and completes with no job lost."""
    n = 4000
    run = Run(procs, tmp_path)
    env = run.env(SLEEP_S=0.01)
    tm = run.tm_run(2, f"count={n}", "-c", "5", env=env)
    run.wait_ledger(300, tm)
    slaves = slaves_of(tm, 2)
    tm.signal(signal.SIGHUP)
    code, _ = exits(tm, 40)
    assert code == 143, tm.output
    tm.expect(r"stopped by SIGTERM; state saved", 1)
    wait_gone(slaves, GONE_S, "the slaves of tm-run after SIGHUP")
    cp = run.checkpoint()
    assert cp["has_last"] and not cp["complete"], cp

    again = run.tm_run(2, f"count={n}", "-c", "5", env=env)
    again.expect(rf"resuming at job #{cp['resume_seq']}\b", START_S)
    assert again.wait(RUN_S) == 0, again.output
    check_ledger("tm-run SIGHUP, restart", run.jobs(), set(range(n)))


def test_sighup_on_tm_spawn_is_a_graceful_stop(procs: Procs, tmp_path: Path) -> None:
    """SIGHUP on tm-spawn: its slaves are told SIGTERM, it exits 143; the master runs on and
    another tm-spawn completes the run with no job lost."""
    n = 3000
    run = Run(procs, tmp_path)
    env = run.env(SLEEP_S=0.01)
    master = run.master(f"count={n}", "--lease-timeout", "3")
    sp = run.spawn(2, "-c", "5", env=env)
    run.wait_ledger(300, master, sp)
    slaves = slaves_of(sp, 2)
    sp.signal(signal.SIGHUP)
    code, _ = exits(sp, 40)
    assert code == 143, sp.output
    assert count_lines(sp, r"SIGTERM: (leaving|finishing)") == 2, sp.output
    wait_gone(slaves, GONE_S, "the slaves of tm-spawn after SIGHUP")
    assert master.proc.poll() is None, master.output

    another_spawn_completes(run, master, env, n, "tm-spawn SIGHUP, another tm-spawn")


# -- 3. a second Ctrl-C on tm-run ---------------------------------------------------------------


def test_second_sigint_on_tm_run_takes_its_slaves_along(procs: Procs, tmp_path: Path) -> None:
    """A leased job outlasts the first SIGINT (the master waits up to --stop-wait 30 s); a
    second SIGINT makes tm-run exit 130 at once, its slaves gone within seconds; a restart
    completes the run with no job lost."""
    n, slow = 300, 50
    run = Run(procs, tmp_path, target="fault_jobs")
    env = run.env(SLEEP_S=0.002, SLOW_ON=slow, SLOW_S=60)
    tm = run.tm_run(2, f"count={n}", env=env)
    tm.expect(rf"slow job {slow} started", START_S)
    # A first checkpoint with a resume point, which a second signal relies on.
    wait_for(lambda: run.checkpoint().get("has_last"), 10, "a first checkpoint", tm)
    slaves = slaves_of(tm, 2)
    tm.signal(signal.SIGINT)
    tm.expect(r"SIGINT: stopping", 10)
    tm.signal(signal.SIGINT)
    code, took = exits(tm, 10)
    assert code == 130, tm.output
    assert took < 3, f"a second SIGINT took {took:.1f}s to stop tm-run"
    gone_s = wait_gone(slaves, GONE_S, "the slaves of tm-run after a second SIGINT")
    print(f"\ntm-run exited {took:.2f}s after the second SIGINT, its slaves "
          f"{gone_s:.2f}s after that")
    assert slow not in run.jobs()

    again = run.tm_run(2, f"count={n}", env=env)  # the slow job is quick the second time
    assert again.wait(RUN_S) == 0, again.output
    check_ledger("tm-run SIGINT twice, restart", run.jobs(), set(range(n)))


# -- 4. a job that kills its slave --------------------------------------------------------------


def check_poison(run: Run, poison: int, n: int, took: float, what: str) -> None:
    records = run.records()
    assert [r["seq"] for r in records] == [poison], records
    assert records[0]["exception"] == "SlaveDied", records[0]
    assert "slave died" in str(records[0]["message"]), records[0]
    check_ledger(what, run.jobs(), set(range(n)) - {poison})
    print(f"[{what}] recorded as SlaveDied; the run took {took:.1f}s")
    # Three deaths noticed by silence would take 3 x the 30 s lease timeout.
    assert took < 20, f"the run took {took:.1f}s"


def test_poison_job_under_tm_run_is_recorded_within_seconds(procs: Procs,
                                                            tmp_path: Path) -> None:
    """A job that os._exits its slave, under tm-run 2 with the default --max-deaths 3 and
    lease timeout 30 s: recorded as failed (SlaveDied) within seconds; every other job runs."""
    n, poison = 300, 123
    run = Run(procs, tmp_path)
    started = time.monotonic()
    tm = run.tm_run(2, f"count={n}", "-c", "5", env=run.env(EXIT_ON=poison, SLEEP_S=0.005))
    code = tm.wait(RUN_S)
    took = time.monotonic() - started
    assert code == 1, tm.output
    assert count_lines(tm, r"died with 3; restarting") >= 2, tm.output
    check_poison(run, poison, n, took, "tm-run: poison job (os._exit)")


def test_poison_job_under_tm_spawn_is_recorded_within_seconds(procs: Procs,
                                                              tmp_path: Path) -> None:
    """The same with tm-master (default lease timeout 30 s) and tm-spawn 2: tm-spawn tells
    the master of each death (GONE), so the job is recorded within seconds. The master
    lingers long enough for a slave restarted after the last death to hear that the run is
    done, so tm-spawn exits 0: the run completed (the master's own 1 says a job failed)."""
    n, poison = 300, 123
    run = Run(procs, tmp_path)
    master = run.master(f"count={n}", "--linger", "10")
    started = time.monotonic()
    sp = run.spawn(2, "-c", "5", "--master-timeout", "5",
                   env=run.env(EXIT_ON=poison, SLEEP_S=0.005))
    code = master.wait(RUN_S)
    took = time.monotonic() - started
    assert code == 1, master.output
    assert count_lines(master, r"lost \(its process exited with 3\)") >= 2, master.output
    assert not re.search(r"lost \(silent", master.output), master.output
    check_poison(run, poison, n, took, "tm-master + tm-spawn: poison job (os._exit)")
    assert sp.wait(20) == 0, sp.output


# -- 5. a hard --job-timeout --------------------------------------------------------------------


def check_timed_out(run: Run, spin: int, n: int) -> None:
    records = run.records()
    assert [r["seq"] for r in records] == [spin], records
    assert records[0]["exception"] == "JobTimeoutError", records[0]
    assert records[0]["attempts"] == 2, records[0]
    check_ledger("job that never yields, --job-timeout 1", run.jobs(), set(range(n)) - {spin})


def test_job_timeout_replaces_a_spinning_slave_under_tm_run(procs: Procs,
                                                            tmp_path: Path) -> None:
    """A job that never yields, with --job-timeout 1 --max-retries 1 under tm-run 2: its slave
    is replaced each time, the job is recorded as JobTimeoutError after 2 attempts, every
    other job runs, and the run ends by itself within seconds."""
    n, spin = 300, 77
    run = Run(procs, tmp_path, target="fault_jobs")
    started = time.monotonic()
    tm = run.tm_run(2, f"count={n}", "--job-timeout", "1", "--max-retries", "1",
                    env=run.env(SPIN_ON=spin, SPIN_S=3600))
    code = tm.wait(40)
    took = time.monotonic() - started
    assert code == 1, tm.output
    assert count_lines(tm, rf"spinning on job {spin}\b") == 2, tm.output
    assert count_lines(tm, r"slave \S+ is being replaced: a job ran past its --job-timeout") \
        == 2, tm.output
    # The first one at least: after the last, the run may be over before its supervisor
    # looks, and then it starts no replacement.
    assert count_lines(tm, r"slave \d+ \(pid \d+\) asked to be replaced; starting a fresh "
                           r"one") >= 1, tm.output
    assert not re.search(r"died with", tm.output), tm.output
    check_timed_out(run, spin, n)
    print(f"the run took {took:.1f}s")
    assert took < 30, f"the run took {took:.1f}s"


def test_job_timeout_stops_a_job_that_swallows_its_time_out(procs: Procs,
                                                            tmp_path: Path) -> None:
    """A job that yields but catches the time-out (`except Exception` around its I/O, in a
    retry loop) and goes on: --job-timeout is still a hard limit; its slave is replaced, and
    the job is recorded as JobTimeoutError after 2 attempts."""
    n, stubborn = 300, 77
    run = Run(procs, tmp_path, target="fault_jobs")
    tm = run.tm_run(2, f"count={n}", "--job-timeout", "1", "--max-retries", "1",
                    env=run.env(STUBBORN_ON=stubborn))
    assert tm.wait(40) == 1, tm.output
    assert count_lines(tm, rf"stubborn job {stubborn} started") == 2, tm.output
    assert count_lines(tm, r"slave \S+ is being replaced: a job ran past its --job-timeout") \
        == 2, tm.output
    check_timed_out(run, stubborn, n)


def test_job_timeout_charges_the_job_that_would_not_stop(procs: Procs, tmp_path: Path) -> None:
    """As above, but the other jobs yield (a 50 ms sleep, as jobs doing I/O do), so other
    greenlets are in the middle of a job when job K starts to spin: the time-out is still the
    spinning job's. It spins twice (2 attempts), is recorded, and nothing else is."""
    n, spin = 2000, 77
    run = Run(procs, tmp_path, target="fault_jobs")
    tm = run.tm_run(2, f"count={n}", "--job-timeout", "1", "--max-retries", "1",
                    env=run.env(SPIN_ON=spin, SPIN_S=3600, SLEEP_S=0.05))
    spins = rf"spinning on job {spin}\b"
    # Charged rightly, job K spins twice and then the run ends: a third spin means that an
    # attempt was charged to another job.
    wait_for(lambda: tm.proc.poll() is not None or count_lines(tm, spins) >= 3, 40,
             f"tm-run to end, or a third spin on job {spin}")
    print(f"\n{count_lines(tm, spins)} spins on job {spin}")
    assert count_lines(tm, spins) == 2, tm.output
    assert tm.wait(10) == 1, tm.output
    check_timed_out(run, spin, n)


def test_job_timeout_standalone_slave_execs_itself_anew(procs: Procs, tmp_path: Path) -> None:
    """The same with tm-master and one tm-slave of its own: the slave replaces itself by
    exec (same pid, a new name), rejoins, and the run completes; told so, it exits 0."""
    n, spin = 200, 77
    run = Run(procs, tmp_path, target="fault_jobs")
    # A linger, so that the slave, exec'ing itself after the last time-out, is told the run
    # is done rather than waiting for a master.
    master = run.master(f"count={n}", "--max-retries", "1",
                        env={**run.env(), "TASKMASTER_LINGER": "5"})
    started = time.monotonic()
    slave = run.slave("--job-timeout", "1", "--master-timeout", "15",
                      env=run.env(SPIN_ON=spin, SPIN_S=3600))
    code = master.wait(40)
    took = time.monotonic() - started
    assert code == 1, master.output
    assert slave.wait(20) == 0, slave.output
    assert count_lines(slave, rf"spinning on job {spin}\b") == 2, slave.output
    assert count_lines(master, r"is being replaced: a job ran past its --job-timeout") == 2, \
        master.output
    # Three lives, one pid: each start logs the slave's name, host:pid:tag.
    names = re.findall(r"slave (\S+:\d+:\w+): \d+ greenlets", slave.output)
    assert len(names) == 3 and len(set(names)) == 3, slave.output
    assert all(name.split(":")[1] == str(slave.pid) for name in names), names
    assert count_lines(master, rf"slave \S+:{slave.pid} joined") >= 2, master.output
    check_timed_out(run, spin, n)
    print(f"the run took {took:.1f}s")
    assert took < 30, f"the run took {took:.1f}s"


# -- 6. recycling -------------------------------------------------------------------------------


RECYCLE_ARGS = ("-c", "2", "--max-jobs-per-slave", "50")


def test_recycling_by_job_count(procs: Procs, tmp_path: Path) -> None:
    """--max-jobs-per-slave 50 over 500 jobs under tm-run 2: slaves are replaced several
    times, every job runs, exit 0, and no replacement is a death."""
    n = 500
    run = Run(procs, tmp_path)
    tm = run.tm_run(2, f"count={n}", *RECYCLE_ARGS, env=run.env(SLEEP_S=0.01))
    assert tm.wait(RUN_S) == 0, tm.output
    recycled = count_lines(tm, r"jobs done \(--max-jobs-per-slave 50\): leaving, to be "
                               r"replaced by a fresh process")
    replaced = count_lines(tm, r"slave \d+ \(pid \d+\) asked to be replaced; starting a fresh")
    print(f"\n{recycled} slaves recycled, {replaced} replaced")
    assert replaced >= 3, tm.output
    assert not re.search(r"died with", tm.output), tm.output
    assert not run.records(), run.records()
    check_ledger("--max-jobs-per-slave 50", run.jobs(), set(range(n)))


def test_a_recycled_slave_runs_no_more_than_its_max_jobs(procs: Procs, tmp_path: Path) -> None:
    """--max-jobs-per-slave 2000 over 20 000 instant jobs: a slave never asks for more than it
    has left, so each one leaves at 2 000 jobs run, not at the end of a batch it had begun
    (which held up to 50 000 of them); every job runs, exit 0."""
    n, most = 20_000, 2000
    run = Run(procs, tmp_path)
    tm = run.tm_run(2, f"count={n}", "--max-jobs-per-slave", str(most))
    assert tm.wait(RUN_S) == 0, tm.output
    ran = [int(m.group(1)) for m in re.finditer(
        rf"(\d+) jobs done \(--max-jobs-per-slave {most}\): leaving", tm.output)]
    print(f"\nrecycled slaves had run {ran}")
    assert len(ran) >= 5, tm.output
    assert max(ran) <= most, ran
    check_ledger(f"--max-jobs-per-slave {most}", run.jobs(), set(range(n)))


def test_recycled_slaves_are_never_charged_a_death(procs: Procs, tmp_path: Path) -> None:
    """With --max-deaths 1, one death records a job as failed: a run whose slaves are only
    ever recycled (none dies) must still record none, and no slave is 'lost'."""
    n = 1000
    run = Run(procs, tmp_path)
    tm = run.tm_run(2, f"count={n}", *RECYCLE_ARGS, "--max-deaths", "1",
                    env=run.env(SLEEP_S=0.01))
    code = tm.wait(RUN_S)
    replaced = count_lines(tm, r"asked to be replaced")
    lost = [line for line in tm.lines if re.search(r"slave \S+ lost \(", line)]
    records = run.records()
    print(f"\n{replaced} replaced, {len(lost)} lost, {len(records)} recorded as failed:\n"
          + "\n".join(lost))
    assert replaced >= 3, tm.output
    assert not re.search(r"died with", tm.output), tm.output
    assert not records, f"{len(records)} recorded as failed, e.g. {records[0]}"
    assert not lost, "\n".join(lost)
    assert code == 0, tm.output
    check_ledger("--max-jobs-per-slave 50, --max-deaths 1", run.jobs(), set(range(n)))


def resident_mb_of_a_slave(procs: Procs, tmp_path: Path, target: str) -> float:
    """The resident memory of a tm-slave of ``target`` that has started (and waits for a
    master that is not there); it is killed after."""
    probe = procs.start("tm-slave", target, "--address", f"ipc://{tmp_path}/nobody",
                        "--master-timeout", "60", NO_PROGRESS)
    probe.expect(r"greenlets, master", START_S)
    try:
        return psutil.Process(probe.pid).memory_info().rss / 1e6
    finally:
        probe.kill()


def test_recycling_by_memory(procs: Procs, tmp_path: Path) -> None:
    """A handle_job that leaks 2 MB a job, with --max-memory a little above a fresh slave's
    resident memory: slaves are replaced, every job runs, exit 0, no death."""
    n = 300
    run = Run(procs, tmp_path, target="sup_memory_jobs")
    limit = int(resident_mb_of_a_slave(procs, tmp_path, "sup_memory_jobs") + 40)
    tm = run.tm_run(2, f"count={n}", "-c", "2", "--max-memory", str(limit),
                    env=run.env(LEAK_MB=2, SLEEP_S=0.01))
    assert tm.wait(RUN_S) == 0, tm.output
    over = count_lines(tm, rf"\d+ MB resident \(--max-memory {limit}\): leaving, to be "
                           r"replaced by a fresh process")
    replaced = count_lines(tm, r"asked to be replaced; starting a fresh one")
    print(f"\n--max-memory {limit}: {over} slaves over it, {replaced} replaced")
    assert over >= 2 and replaced >= 2, tm.output
    assert not re.search(r"died with", tm.output), tm.output
    assert not run.records(), run.records()
    check_ledger(f"leak 2 MB a job, --max-memory {limit}", run.jobs(), set(range(n)))


def test_memory_error_replaces_the_slave(procs: Procs, tmp_path: Path) -> None:
    """A handle_job that raises MemoryError (once): a failed attempt, its slave is replaced,
    the job succeeds on its retry, the run completes with exit 0."""
    n, oom = 300, 40
    run = Run(procs, tmp_path, target="sup_memory_jobs")
    tm = run.tm_run(2, f"count={n}", "-c", "2", env=run.env(OOM_ON=oom, SLEEP_S=0.005))
    assert tm.wait(RUN_S) == 0, tm.output
    assert count_lines(tm, rf"job {oom} raises MemoryError") == 1, tm.output
    # A failed attempt, said once, by the master (tm-run's slaves leave that to it).
    assert count_lines(tm, rf"failed \(it will be retried\): MemoryError: job {oom} ") == 1, \
        tm.output
    assert count_lines(tm, r"a job ran out of memory: leaving, to be replaced") == 1, tm.output
    assert count_lines(tm, r"asked to be replaced; starting a fresh one") == 1, tm.output
    assert not re.search(r"died with", tm.output), tm.output
    assert not run.records(), run.records()
    runs = check_ledger("MemoryError once", run.jobs(), set(range(n)))
    assert runs[oom] >= 1


# -- 7. tm-spawn's exit status ------------------------------------------------------------------


def test_tm_spawn_exits_0_when_the_run_completes_despite_a_killed_slave(
        procs: Procs, tmp_path: Path) -> None:
    """One of tm-spawn's slaves is SIGKILLed mid-run and restarted; the run completes: tm-spawn
    exits 0 (its status says the run completed, not that a slave once died)."""
    n = 1000
    gate = tmp_path / "gate"
    run = Run(procs, tmp_path, target="gated_jobs")
    env = run.env(GATE=gate)
    master = run.master(f"count={n}")
    sp = run.spawn(2, env=env)
    # No job finishes before the gate opens: the run cannot end before the replacement joins.
    wait_count(master, r"slave \S+ joined", 2, START_S)
    victim = slaves_of(sp, 2)[0]
    victim.kill()
    sp.expect(rf"slave \d+ \(pid {victim.pid}\) died with 137; restarting", 10)
    master.expect(rf"slave \S+:{victim.pid} lost \(its process exited with 137\)", 5)
    wait_count(master, r"slave \S+ joined", 3, START_S)
    assert read_ledger(run.ledger) == []
    gate.touch()

    assert master.wait(RUN_S) == 0, master.output
    code, _ = exits(sp, 20)
    assert code == 0, sp.output
    check_ledger("tm-spawn, one slave SIGKILLed", run.jobs(), set(range(n)))


def test_tm_spawn_exits_1_when_the_run_did_not_complete(procs: Procs, tmp_path: Path) -> None:
    """The master is SIGKILLed mid-run for good: tm-spawn's slaves give up (--master-timeout
    2) and tm-spawn exits 1; a new master and tm-spawn later finish with no job lost."""
    n = 2000
    run = Run(procs, tmp_path)
    env = run.env(SLEEP_S=0.01)
    master = run.master(f"count={n}")
    sp = run.spawn(2, "-c", "5", "--master-timeout", "2", env=env)
    run.wait_ledger(200, master, sp)
    master.kill()
    code, _ = exits(sp, 20)
    assert code == 1, sp.output
    assert count_lines(sp, r"no master at .* giving up") == 2, sp.output

    master = run.master(f"count={n}")
    again = run.spawn(2, "-c", "5", env=env)
    assert master.wait(RUN_S) == 0, master.output
    assert again.wait(20) == 0, again.output
    check_ledger("tm-spawn, master gone for good", run.jobs(), set(range(n)))


# -- 8. late slaves -----------------------------------------------------------------------------


def test_late_slave_is_told_the_run_is_done(procs: Procs, tmp_path: Path) -> None:
    """With the default linger (3 s), a tm-slave started right after the master logged "run
    complete" is told so and exits 0 within seconds, not after its --master-timeout (30)."""
    n = 200
    run = Run(procs, tmp_path)
    master = run.master(f"count={n}", env={**run.env(), "TASKMASTER_LINGER": "3"})
    first = run.slave()
    master.expect(r"run complete: 200 finished, 0 failed", START_S)
    late = run.slave("--master-timeout", "30")
    code, took = exits(late, 40)
    assert code == 0, late.output
    late.expect(r"run complete \(200 finished, 0 failed\); this slave ran 0", 1)
    print(f"\nthe late slave exited {took:.1f}s after it started")
    assert took < 6, f"the late slave took {took:.1f}s to leave"
    assert master.wait(10) == 0, master.output
    assert first.wait(10) == 0, first.output
    check_ledger("late slave", run.jobs(), set(range(n)))


# -- 9. a slave waiting for a master ------------------------------------------------------------


def test_waiting_slave_says_so_every_10s(procs: Procs, tmp_path: Path) -> None:
    """A tm-slave with no master, --master-timeout 13: one "waiting for a master at ...: 10s
    of 13s" line about 10 s in, then it gives up with exit 1."""
    address = f"ipc://{tmp_path}/master"
    slave = procs.start("tm-slave", "ledger_jobs", "--address", address, "--master-timeout",
                        "13", NO_PROGRESS, env={"LEDGER": str(tmp_path / "ledger.txt")})
    code, took = exits(slave, 30)
    assert code == 1, slave.output
    waiting = [line for line in slave.lines if "waiting for a master" in line]
    assert len(waiting) == 1, slave.output
    assert re.search(rf"waiting for a master at {re.escape(address)}: 10s of 13s",
                     waiting[0]), waiting
    first = log_time(slave.lines[0])
    said = (log_time(waiting[0]) - first).total_seconds()
    assert 9.5 <= said <= 12, f"said it waits {said:.1f}s after its first line"
    assert re.search(rf"no master at {re.escape(address)} for 1[34]s; giving up", slave.output)
    assert 13 <= took < 20, f"gave up after {took:.1f}s"


# -- 10. the restart budget, in this process ----------------------------------------------------


CHILD = """\
import os, sys, time
log, plan, healthy_s = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3])
with open(log, "a+") as f:
    f.seek(0)
    launch = len(f.readlines())
    f.write(f"{launch} {time.monotonic()}\\n")
step = plan[min(launch, len(plan) - 1)]
if step.startswith("h"):  # a healthy while first
    time.sleep(healthy_s)
sys.exit(int(step.lstrip("h")))
"""
"""A child of one slot that exits as ``plan`` says for its launch number (the last step
repeats): ``3`` dies at once, ``75`` asks to be replaced, ``h3`` dies after ``healthy_s``.
Each launch appends its number and start time (monotonic, system-wide) to ``log``."""


def supervise(tmp_path: Path, plan: str, healthy_s: float,
              timeout: float = 20.0) -> tuple[Supervisor, list[int], list[float]]:
    """Supervise one slot of CHILD until it is given up on; the exits it was told of, and
    the start time of each launch."""
    log = tmp_path / "launches.txt"
    exits_told: list[int] = []
    sup = Supervisor([sys.executable, "-c", CHILD, str(log), plan, str(healthy_s)], 1,
                     on_exit=lambda name, status: exits_told.append(status))
    try:
        deadline = time.monotonic() + timeout
        while sup.poll():
            assert time.monotonic() < deadline, f"still supervising after {timeout}s"
            time.sleep(0.005)  # the supervisor's own loop polls like this, every 0.2 s
    finally:
        for c in sup.children:
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait(5)
    starts = [float(line.split()[1]) for line in log.read_text().splitlines()]
    return sup, exits_told, starts


@pytest.fixture
def quick_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Restarts 0.5 s apart (not 1 s doubling to 30 s), and 'healthy' after 1 s, not 60 s."""
    monkeypatch.setattr(spawn_module, "RESTART_FIRST_S", 0.5)
    monkeypatch.setattr(spawn_module, "RESTART_MAX_S", 0.5)
    monkeypatch.setattr(spawn_module, "RESTART_HEALTHY_S", 1.0)


@pytest.mark.usefixtures("quick_restarts")
def test_restart_budget_counts_deaths_in_a_row(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """A slot is given up on after 6 deaths in a row (5 restarts); a child that ran healthily
    first starts the count afresh: deaths 1-3, a healthy one, then 5 more."""
    caplog.set_level(logging.INFO, logger="taskmaster.spawn")
    assert spawn_module.MAX_RESTARTS == 5
    sup, told, starts = supervise(tmp_path, "3,3,3,h3,3", healthy_s=1.5)
    # Without the reset after the healthy run, the slot would stop after 6 launches.
    assert len(starts) == 9, told
    assert told == [3] * 9
    assert sup.all_gave_up() and sup.status() == 3
    gave_up = [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()]
    assert len(gave_up) == 1 and re.search(r"died with 3, 6 times in a row", gave_up[0]), \
        gave_up


@pytest.mark.usefixtures("quick_restarts")
def test_exit_75_is_restarted_at_once_and_never_counted(tmp_path: Path) -> None:
    """A child exiting 75 (asks to be replaced) is restarted at once, not after the restart
    delay, and not counted: among them, the slot still gets its 6 deaths in a row."""
    assert EXIT_REPLACE == 75
    plan = "75,3,75,75,3,75,3,75,3,3,75,3"
    sup, told, starts = supervise(tmp_path, plan, healthy_s=0)
    steps = [int(s) for s in plan.split(",")]
    assert told == steps, told  # every exit told, in order
    assert len(starts) == len(steps)
    assert steps.count(3) == 6
    assert sup.all_gave_up() and sup.status() == 3
    for i, (a, b) in enumerate(pairwise(starts)):
        gap = b - a
        if steps[i] == 75:
            assert gap < 0.4, f"launch {i + 1} came {gap:.2f}s after a 75: not at once"
        else:
            assert gap >= 0.5, f"launch {i + 1} came {gap:.2f}s after a death"
