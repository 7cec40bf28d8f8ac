"""Big jobs, with real processes: the README's **Big jobs** promise (Delivery and failures).

Every message of jobs is cut to ``--max-message-mb`` (64 MiB by default, the same on master and
slaves); a single job over it is recorded as failed (``JobTooLarge``, with its size and the
option to raise) and the run goes on; what the master holds of jobs is bounded by
``--max-buffer-mb`` (256 MiB by default).

Every test runs `tm-run` with two slaves, or `tm-master` with `tm-slave`s on a loopback port the
master picks, with tests/jobs/big_jobs.py: each job is a `bytes` object of a chosen size that
handle_job checks whole (a cut or mangled job is a ValueError, so a failure) before it appends
the job's number to a ledger file. The ledger, compared as a set with `check_ledger`, is the
proof that every job ran, and ran whole.

A run that stops making progress is the defect these promises exist against (a batch over what
a slave accepts, sent again forever): each run is watched, and a run whose ledger has not grown
for `STALL_S` seconds while it still runs is killed and fails the test as a hang, rather than
wait out the whole bound.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from test_faults import Run, check_ledger, count_lines

from procs import Proc, Procs
from taskmaster.config import DEFAULT_BUFFER_BYTES

MIB = 1024 * 1024
STALL_S = 10.0
"""Longest a run may go without finishing a job before it counts as hung. A job here takes
well under a second (a 50 MiB one about one, on a loaded machine a few): ten seconds without
one is no slowness but a run that will never end."""
RUN_S = 60.0
"""Bound on a whole run, however it progresses."""
TARGET = "big_jobs"


class HangError(AssertionError):
    """A run that finished jobs, then none for `STALL_S` while it still ran."""


# -- helpers ------------------------------------------------------------------------------------


def finishes(proc: Proc, run: Run, timeout: float = RUN_S, stall_s: float = STALL_S,
             sample: Callable[[], object] | None = None) -> int:
    """The exit status of ``proc``. It fails (and kills ``proc``) when the run takes longer
    than ``timeout``, or when its ledger does not grow for ``stall_s`` while ``proc`` runs: a
    hang (`HangError` once some job has finished). ``sample()``, when given, is called about
    every 20 ms meanwhile."""
    started = time.monotonic()
    size, grew = -1, started
    while proc.proc.poll() is None:
        now = time.monotonic()
        current = run.ledger.stat().st_size if run.ledger.exists() else 0
        if current != size:
            size, grew = current, now
        why = (f"no job finished for {stall_s:.0f}s (a hang)" if now - grew > stall_s else
               f"still running after {timeout:.0f}s" if now - started > timeout else None)
        if why is not None:
            jobs = len(set(run.jobs()))
            proc.kill()
            error = HangError if now - grew > stall_s and jobs else AssertionError
            raise error(f"{proc.argv}: {why}, with {jobs} distinct jobs in the ledger:\n"
                        f"{proc.output}")
        if sample is not None:
            sample()
        time.sleep(0.02)
    return proc.wait(10)


def tm_run(run: Run, slaves: int, *args: str, env: dict[str, str] | None = None) -> Proc:
    """`tm-run big_jobs N` with this run's state file (its failures file beside it)."""
    return run.procs.start("tm-run", TARGET, str(slaves), *args, "--state-file", str(run.state),
                           "--no-progress", env=env if env is not None else run.env())


def assert_complete(proc: Proc, code: int, run: Run, fault: str, n: int) -> None:
    """A run of ``n`` jobs that completed with none failed: every job ran, whole."""
    assert code == 0, proc.output
    proc.expect(rf"run complete: {n} finished, 0 failed", 1)
    assert run.failure_records() == [], "a job failed (mangled on the way?)"
    check_ledger(fault, run.jobs(), set(range(n)))


def only_too_large(run: Run, seq: int, size_mib: float, limit_mib: int) -> None:
    """The failures file holds one record: job ``seq``, too large for a message of
    ``limit_mib``, its size and the option to raise in the message."""
    records = run.failure_records()
    assert [(r["seq"], r["exception"]) for r in records] == [(seq, "JobTooLarge")], \
        [(r["seq"], r["exception"], r["message"]) for r in records]
    message = str(records[0]["message"])
    assert f"{size_mib:.1f} MiB" in message, message
    assert f"over the {limit_mib} MiB" in message, message
    assert "--max-message-mb" in message, message
    assert records[0]["attempts"] == 1, records[0]["attempts"]  # not sent again and again


# -- 1. many jobs of a few MB -------------------------------------------------------------------


def test_hundred_jobs_of_4_mb_complete(procs: Procs, tmp_path: Path) -> None:
    """100 jobs of 4 MiB (400 MiB) under tm-run with 2 slaves: batches are cut to what a
    slave accepts, so the run completes, exit 0, every job run whole, well within the bound
    (a batch of 20 such jobs, 80 MiB, over a slave's 64 MiB, was once sent again forever)."""
    run = Run(procs, tmp_path, TARGET)
    proc = tm_run(run, 2, "count=100", "mib=4")
    assert_complete(proc, finishes(proc, run, timeout=30), run, "100 jobs of 4 MiB", 100)


# -- 2. jobs of 50 MB ---------------------------------------------------------------------------


def test_twenty_jobs_of_50_mb_complete(procs: Procs, tmp_path: Path) -> None:
    """20 jobs of 50 MiB (1 GiB) under tm-run with 2 slaves and the default buffer bound:
    each goes alone in a message, the master holds at most 256 MiB of them at a time, and the
    run completes, exit 0, every job run whole."""
    run = Run(procs, tmp_path, TARGET)
    proc = tm_run(run, 2, "count=20", "mib=50")
    assert_complete(proc, finishes(proc, run), run, "20 jobs of 50 MiB", 20)


def test_twenty_jobs_of_50_mb_complete_with_room_for_all(procs: Procs, tmp_path: Path) -> None:
    """The same 20 jobs of 50 MiB, with a buffer bound (2 GiB) that holds them all: the
    messages of 50 MiB jobs themselves go through whole, exit 0 (what fails the test above is
    the buffer bound alone)."""
    run = Run(procs, tmp_path, TARGET)
    proc = tm_run(run, 2, "count=20", "mib=50", "--max-buffer-mb", "2048")
    assert_complete(proc, finishes(proc, run), run, "20 jobs of 50 MiB, buffer 2 GiB", 20)


# -- 3. one job over the message limit ----------------------------------------------------------

SMALL = ("count=200", "mib=0.01", "big_at=50", "big_mib=100")
"""200 jobs of 10 KiB, but job 50 is 100 MiB."""
BIG_SEQ = 50


def test_job_over_the_message_limit_fails_and_the_run_goes_on(procs: Procs,
                                                              tmp_path: Path) -> None:
    """One job of 100 MiB among 199 small ones, under tm-run with 2 slaves and the default
    64 MiB limit: it is recorded as failed (JobTooLarge, naming its size and --max-message-mb)
    after one attempt, every other job runs, and the run exits 1."""
    run = Run(procs, tmp_path, TARGET)
    proc = tm_run(run, 2, *SMALL)
    code = finishes(proc, run)
    assert code == 1, proc.output
    proc.expect(r"run complete: 199 finished, 1 failed", 1)
    assert count_lines(proc, rf"job #{BIG_SEQ} .* cannot be sent: .*--max-message-mb") == 1
    only_too_large(run, BIG_SEQ, 100, 64)
    check_ledger("100 MiB job, limit 64 MiB", run.jobs(), set(range(200)) - {BIG_SEQ})


def test_run_max_message_mb_reaches_its_slaves(procs: Procs, tmp_path: Path) -> None:
    """The same jobs under tm-run --max-message-mb 128: tm-run gives the limit to its slaves
    too, so the 100 MiB job goes out and runs whole with the others; exit 0."""
    run = Run(procs, tmp_path, TARGET)
    proc = tm_run(run, 2, *SMALL, "--max-message-mb", "128")
    assert_complete(proc, finishes(proc, run), run, "100 MiB job, limit 128 MiB", 200)


def test_master_and_slave_raised_limit_runs_the_big_job(procs: Procs, tmp_path: Path) -> None:
    """tm-master and a tm-slave both with --max-message-mb 128: the 100 MiB job runs whole
    with the others; both exit 0."""
    run = Run(procs, tmp_path, TARGET)
    master = run.master(*SMALL, "--max-message-mb", "128")
    slave = run.slave("--max-message-mb", "128")
    assert_complete(master, finishes(master, run), run, "100 MiB job, both 128 MiB", 200)
    assert slave.wait(20) == 0, slave.output


def test_slave_with_the_default_limit_is_not_sent_the_big_job(procs: Procs,
                                                              tmp_path: Path) -> None:
    """tm-master with --max-message-mb 128 but a tm-slave with the default 64: the master
    sends no message over what the slave said it accepts, so the 100 MiB job is recorded as
    too large for 64 MiB (not sent, refused and sent again forever), every other job runs;
    the master exits 1, the slave 0."""
    run = Run(procs, tmp_path, TARGET)
    master = run.master(*SMALL, "--max-message-mb", "128")
    slave = run.slave()
    code = finishes(master, run)
    assert code == 1, master.output
    master.expect(r"run complete: 199 finished, 1 failed", 1)
    only_too_large(run, BIG_SEQ, 100, 64)
    check_ledger("100 MiB job, slave 64 MiB", run.jobs(), set(range(200)) - {BIG_SEQ})
    assert slave.wait(20) == 0, slave.output


# -- 4. what the master holds -------------------------------------------------------------------

BUFFER_MB = 64
LEASED_MB = 2 * 10
"""What two slaves may lease of 1 MiB jobs: a big job's window is never below a job per
greenlet (10 by default), and 4 MiB of jobs is less."""
RUNTIME_MB = 100
"""The interpreter with gevent, zmq and the job module (about 40 MiB), and what it has in
flight beside the jobs it holds: a message being pickled, frames queued in ZeroMQ, the
allocator's slack."""


def test_master_memory_stays_within_the_buffer_bound(procs: Procs, tmp_path: Path) -> None:
    """3 000 jobs of 1 MiB (about 3 GiB) with tm-master --max-buffer-mb 64 --size 10000 (given,
    so that the default's own bound in bytes is off) and two slow tm-slaves (40 ms a job): the
    stream outruns the slaves from the start, and would fill a buffer of --size (all 3 GiB);
    the master's resident memory, sampled all along,
    must peak under 64 MiB (the bound, leases included, as the README says) + 20 MiB (what two
    slaves may lease, counted again for the copies queued for them) + 100 MiB (the process
    itself and what it has in flight): 184 MiB, where the default 256 MiB bound measures about
    330 MiB. The run completes, exit 0, every job run whole."""
    n = 3000
    run = Run(procs, tmp_path, TARGET)
    peak = master_peak(run, run.master(
        f"count={n}", "mib=1", "--max-buffer-mb", str(BUFFER_MB), "--size", "10000",
        env=run.env(SLEEP_S=0.04)), f"{n} jobs of 1 MiB, buffer {BUFFER_MB} MiB", n)
    bound = (BUFFER_MB + LEASED_MB + RUNTIME_MB) * MIB
    print(f"\n[master memory] peak RSS {peak / MIB:.0f} MiB; bound {bound / MIB:.0f} MiB "
          f"(--max-buffer-mb {BUFFER_MB} + {LEASED_MB} leased + {RUNTIME_MB})")
    assert peak < bound, f"master peaked at {peak / MIB:.0f} MiB, over {bound / MIB:.0f} MiB"


def test_the_default_buffer_holds_a_few_megabytes_of_big_jobs(procs: Procs,
                                                              tmp_path: Path) -> None:
    """1 000 jobs of 1 MiB with tm-master's defaults and two slow tm-slaves (40 ms a job):
    without --size, the buffer holds 50 000 jobs but never more than 8 MiB of them
    (`DEFAULT_BUFFER_BYTES`), so the master peaks under 8 MiB + 20 MiB (what two slaves may
    lease) + 100 MiB (the process itself): 128 MiB, where the buffer bound of --max-buffer-mb
    alone (256 MiB by default) lets it reach 300 MiB. Exit 0, every job run whole."""
    n = 1000
    run = Run(procs, tmp_path, TARGET)
    peak = master_peak(run, run.master(f"count={n}", "mib=1", env=run.env(SLEEP_S=0.04)),
                       f"{n} jobs of 1 MiB, the default buffer", n)
    bound = (DEFAULT_BUFFER_BYTES // MIB + LEASED_MB + RUNTIME_MB) * MIB
    print(f"\n[master memory] peak RSS {peak / MIB:.0f} MiB; bound {bound / MIB:.0f} MiB")
    assert peak < bound, f"master peaked at {peak / MIB:.0f} MiB, over {bound / MIB:.0f} MiB"


def master_peak(run: Run, master: Proc, fault: str, n: int) -> int:
    """The peak resident memory of ``master``, sampled all along a run of ``n`` jobs by two
    slow slaves (40 ms a job), which must complete (see `assert_complete`), the slaves
    exiting 0 too."""
    watched = psutil.Process(master.pid)
    peak = 0

    def sample() -> None:
        nonlocal peak
        with contextlib.suppress(psutil.Error):  # it has just exited
            peak = max(peak, watched.memory_info().rss)

    slaves = [run.slave(env=run.env(SLEEP_S=0.04)) for _ in range(2)]
    assert_complete(master, finishes(master, run, sample=sample), run, fault, n)
    for slave in slaves:
        assert slave.wait(20) == 0, slave.output
    return peak
