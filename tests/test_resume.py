"""Resuming after a crash of the master, with real processes: streams that resume right, late,
not at all, or by position, and how many jobs a crash makes run again.

Every test runs real `tm-master` / `tm-slave` processes over loopback ZeroMQ (a port the first
master picks, read back from its log) with job modules that append each executed job to a
ledger file (tests/jobs/resume_jobs.py, resume_position_jobs.py, ledger_jobs.py). The ledger,
across every session of a run, is the proof: the set of jobs in it must be the whole stream (no
job lost); how many ran more than once is printed, and bounded where the README bounds it.

To know for sure that a job did not run before a crash, a test holds it: the stream waits
before yielding job K (a hold file), so that K goes out first once the jobs before it are
done, and the slave's handle_job waits before running K (a gate file that is never created).
The checkpoint then names K, and the test kills the slave with the master, so that K has not
run when the next session begins.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from test_faults import Run, check_ledger, wait_count

from procs import Proc, Procs, wait_for
from taskmaster.config import CHECKPOINT_INTERVAL_S, MAX_WINDOW_JOBS

START_S = 20.0
"""Longest a master or slave may take to start, join or resume on a loaded machine."""
RUN_S = 60.0
"""Longest a test's run may take to end once it can."""


# -- helpers ------------------------------------------------------------------------------------


def checkpoint(path: Path) -> dict[str, object]:
    """The state file as it is now ({} before the first write). Writes are atomic renames,
    so a read never sees half a file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def wait_checkpoint(run: Run, timeout: float, *watch: Proc, **fields: object) -> dict[str, object]:
    """Wait until the state file holds these values; return it."""
    def holds() -> dict[str, object] | None:
        cp = checkpoint(run.state)
        return cp if cp and all(cp.get(k) == v for k, v in fields.items()) else None
    return wait_for(holds, timeout, f"a checkpoint with {fields} in {run.state}", *watch)


def finished_count(master: Proc) -> int:
    """The N of the master's "run complete: N finished" line."""
    return int(master.expect(r"run complete: (\d+) finished", 5).group(1))


def warned_begins_with(master: Proc, last: object, first: object) -> None:
    """The master warned, at WARNING level, that get_jobs(last=...) began with another job,
    naming both."""
    master.expect(rf"WARNING .*get_jobs\(last={re.escape(repr(last))}\) began with "
                  rf"{re.escape(repr(first))}: it should yield from `last` on", START_S)


class LedgerTail:
    """Counts the lines of a growing ledger, reading only what was appended since the last
    look (reading 200 000 lines fifty times a second would slow the run it measures)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0
        self.samples: list[tuple[float, int]] = []
        """(monotonic time, lines) at each `count`."""

    def count(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            data = b""
        whole = data.rfind(b"\n") + 1  # a line being appended is counted once it is whole
        self.offset += whole
        self.lines += data.count(b"\n", 0, whole)
        self.samples.append((time.monotonic(), self.lines))
        return self.lines

    def rate(self, over_s: float = 1.0) -> float:
        """Jobs per second over the last ``over_s`` seconds of samples."""
        end_t, end_n = self.samples[-1]
        start_t, start_n = next((t, n) for t, n in self.samples if t >= end_t - over_s)
        if end_t - start_t < over_s / 2:
            raise AssertionError(f"too few samples to measure a rate: {self.samples[-5:]}")
        return (end_n - start_n) / (end_t - start_t)


def hold_job(run: Run, k: int, *watch: Proc) -> None:
    """With a stream that waits before job ``k`` (HOLD_AT/HOLD_GATE) and a slave that waits
    before running it (GATE/GATE_ON, gate never opened): let jobs 0..k-1 run, then the
    stream go on, and wait until the checkpoint names job k, with many jobs after it done."""
    run.wait_ledger(k, START_S, *watch)
    assert set(run.jobs()) == set(range(k)), "the stream went past its hold"
    (run.tmp / "hold").touch()
    # Nothing was left in the buffer: job k goes out first, alone or at the head of a batch,
    # and waits; the jobs after it run (an idle greenlet takes over the rest of its piece).
    # The resume point is k once the batches before it are acknowledged.
    run.wait_ledger(k + 200, START_S, *watch)
    cp = wait_checkpoint(run, 10, *watch, resume_seq=k, last_seq=k, has_last=True)
    assert cp["complete"] is False
    assert k not in run.jobs(), f"job {k} ran, though its gate was never opened"


def hold_env(run: Run, k: int, **extra: object) -> dict[str, str]:
    return run.env(HOLD_AT=k, HOLD_GATE=run.tmp / "hold", **extra)


def gate_env(run: Run, k: int, **extra: object) -> dict[str, str]:
    return run.env(GATE=run.tmp / "gate-never-opened", GATE_ON=k, **extra)


def rerun_bound(size: int, slaves: int, rate: float) -> float:
    """What a crash of the master may make run again: the buffer, what the slaves hold (each
    at most MAX_WINDOW_JOBS), and the work acknowledged since the last checkpoint, which is
    up to one interval old and written on the master's tick after it (so two intervals of
    work at the observed rate)."""
    return size + slaves * MAX_WINDOW_JOBS + rate * CHECKPOINT_INTERVAL_S * 2


# -- a stream that resumes one job late ---------------------------------------------------------


def test_a_stream_that_resumes_one_late_loses_no_job(procs: Procs, tmp_path: Path) -> None:
    """get_jobs(last=K) yields from K+1: after a SIGKILL of the master (and its slave) with
    job K unfinished, the restarted master warns, naming K and K+1, and no job is lost."""
    n, k = 1000, 300
    run = Run(procs, tmp_path, target="resume_jobs")
    master = run.master(f"count={n}", env=hold_env(run, k, RESUME_MODE="late"))
    slave = run.slave("-c", "5", env=gate_env(run, k))
    hold_job(run, k, master, slave)
    master.kill()
    slave.kill()  # with it, job K, which waits for its gate: it never ran

    master = run.master(f"count={n}", env=run.env(RESUME_MODE="late"))
    slave = run.slave("-c", "5")
    master.expect(rf"resuming at job #{k}: {k}\)", START_S)
    warned_begins_with(master, k, k + 1)
    assert master.wait(RUN_S) == 0, master.output
    assert slave.wait(15) == 0, slave.output
    check_ledger("get_jobs resumes one late, job K unfinished", run.jobs(), set(range(n)),
                 note=f"checkpoint named #{k}; get_jobs(last={k}) began with {k + 1}")


def test_a_late_stream_resumed_after_the_last_job_yielded_loses_no_job(
        procs: Procs, tmp_path: Path) -> None:
    """The stream waits before job K with everything it yielded finished, so the checkpoint
    names job K-1 (last_seq = resume_seq - 1): SIGKILL the master there; a get_jobs that
    resumes one late (from K) is warned about, its first job K runs (it is not dropped as if
    it were K-1), no job is lost and none runs twice."""
    n, k = 600, 300
    run = Run(procs, tmp_path, target="resume_jobs")
    # The hold file is never created: the first master's stream waits before job K for good.
    master = run.master(f"count={n}", env=hold_env(run, k, RESUME_MODE="late"))
    slave = run.slave("-c", "5")
    run.wait_ledger(k, START_S, master, slave)
    wait_checkpoint(run, 10, master, slave, resume_seq=k, last_seq=k - 1, has_last=True)
    master.kill()

    master = run.master(f"count={n}", env=run.env(RESUME_MODE="late"))
    master.expect(rf"resuming at job #{k}: {k - 1}\)", START_S)
    warned_begins_with(master, k - 1, k)
    assert master.wait(RUN_S) == 0, master.output
    slave.expect(r"rejoining", 5)
    assert slave.wait(15) == 0, slave.output
    runs = check_ledger("get_jobs resumes one late, after the last job yielded", run.jobs(),
                        set(range(n)), note=f"get_jobs(last={k - 1}) began with {k}")
    # Everything before K was finished and checkpointed, and nothing was in flight.
    assert not [j for j, c in runs.items() if c > 1], "a job ran twice"
    assert finished_count(master) == n


# -- a stream that ignores `last` ---------------------------------------------------------------


def test_a_stream_that_ignores_last_is_warned_about_and_runs_every_job(
        procs: Procs, tmp_path: Path) -> None:
    """get_jobs ignores `last` (yields from 0 every time): after a SIGKILL mid-run the
    restarted master warns (get_jobs(last=R) began with 0), runs the stream as it comes
    (nothing is dropped or skipped) and completes."""
    n, k = 2000, 1000
    run = Run(procs, tmp_path, target="resume_jobs")
    env = run.env(RESUME_MODE="ignore")
    # The first master's stream waits before job K for good (its hold file is never created),
    # so that it is killed mid-run however fast the jobs before K go.
    master = run.master(f"count={n}", "--size", "100", env=hold_env(run, k, RESUME_MODE="ignore"))
    slave = run.slave("-c", "5", env=run.env(SLEEP_S=0.002))
    wait_for(lambda: int(checkpoint(run.state).get("resume_seq", 0)) >= 500,  # type: ignore[call-overload]
             START_S, "a checkpoint past job #500", master, slave)
    master.kill()
    cp = checkpoint(run.state)
    resume = int(cp["resume_seq"])  # type: ignore[call-overload]
    assert 0 < resume <= k, cp

    master = run.master(f"count={n}", "--size", "100", env=env)
    master.expect(rf"resuming at job #{resume}\b", START_S)
    warned_begins_with(master, int(cp["last_seq"]), 0)  # type: ignore[call-overload]
    assert master.wait(RUN_S) == 0, master.output
    assert slave.wait(15) == 0, slave.output
    runs = check_ledger("get_jobs ignores last", run.jobs(), set(range(n)),
                        note=f"resumed at #{resume}; run complete: {finished_count(master)} "
                        f"finished, state file {checkpoint(run.state)['finished']}")
    # The whole stream came again, so every job before the resume point ran again.
    assert all(runs[j] >= 2 for j in range(resume)), "the master skipped jobs of the stream"
    # And the counts of the run include them (the stream is numbered from the resume point):
    # the warning says so, in those words.
    assert "the counts of this run then include them" in master.output


# -- a stream without `last`: resumed by position -----------------------------------------------


def test_a_stream_without_last_is_resumed_by_position_exactly(
        procs: Procs, tmp_path: Path) -> None:
    """get_jobs without a `last` parameter, whose jobs repeat (seven values, by ==): SIGKILL
    the master (and its slave) with job K unfinished; the restart skips exactly the K jobs
    before it, says so, and runs K: every position runs, and none before K runs again."""
    n, k = 1000, 300
    run = Run(procs, tmp_path, target="resume_position_jobs")
    master = run.master(f"count={n}", env=hold_env(run, k))
    slave = run.slave("-c", "5", env=gate_env(run, k))
    hold_job(run, k, master, slave)
    master.kill()
    slave.kill()  # with it, job K, which waits for its gate: it never ran
    first_session = Counter(run.jobs())

    master = run.master(f"count={n}")
    slave = run.slave("-c", "5")
    master.expect(rf"resuming at job #{k}: Row\({k % 7}, {k}\)", START_S)
    master.expect(rf"get_jobs takes no `last`: resuming by position, skipping the {k} jobs "
                  rf"before job #{k}\b", START_S)
    assert master.wait(RUN_S) == 0, master.output
    assert slave.wait(15) == 0, slave.output
    assert "began with" not in master.output
    runs = check_ledger("no `last`: resumed by position", run.jobs(), set(range(n)),
                        note=f"skipped {k}, repeated values")
    again = [j for j in range(k) if runs[j] != 1]
    assert not again, f"jobs before the resume point ran again: {again[:20]}"
    assert first_session[k] == 0 and runs[k] == 1, "job K ran other than once, after the restart"
    assert finished_count(master) == n


# -- how many jobs a crash of the master runs again ---------------------------------------------


@pytest.mark.parametrize(("n", "concurrency", "sleep_s"), [
    (200_000, 20, 0.001),
    # Enough no-ops that over a second of them is still mid-run on a fast machine (400 000
    # were all done within 1.3 s on one, and the kill came after the end).
    (1_000_000, 10, 0.0),
], ids=["1 ms jobs", "no-op jobs"])
def test_reruns_after_a_master_crash_are_bounded(
        procs: Procs, tmp_path: Path, n: int, concurrency: int, sleep_s: float) -> None:
    """A fast stream (2 slaves; jobs of 1 ms, 20 at a time, or no-ops): SIGKILL the master
    mid-run, restart it. The jobs that ran twice are all after the resume point, and fewer
    than the buffer, what the slaves may hold and two checkpoint intervals of work at the
    rate measured before the kill."""
    size, slaves = 1000, 2
    run = Run(procs, tmp_path)
    args = (f"count={n}", "--size", str(size))
    master = run.master(*args)
    workers = [run.slave("-c", str(concurrency), env=run.env(SLEEP_S=sleep_s))
               for _ in range(slaves)]
    wait_count(master, r"slave \S+ joined", slaves, START_S)
    tail = LedgerTail(run.ledger)
    # Mid-run, with over a second of the ledger's growth seen, to measure the rate.
    wait_for(lambda: tail.count() >= 0.25 * n and len(tail.samples) > 25, RUN_S,
             f"{0.25 * n:.0f} jobs in the ledger", master, *workers, step_s=0.05)
    rate = tail.rate()
    master.kill()
    at_kill = tail.count()
    cp = checkpoint(run.state)
    resume = int(cp["resume_seq"])  # type: ignore[call-overload]
    assert 0 < resume < at_kill < n, cp

    master = run.master(*args)
    master.expect(rf"resuming at job #{resume}\b", START_S)
    assert master.wait(RUN_S) == 0, master.output
    for s in workers:
        assert s.wait(15) == 0, s.output
    bound = rerun_bound(size, slaves, rate)
    stated = size + slaves * MAX_WINDOW_JOBS  # README: --size plus what the slaves hold
    ledger = run.jobs()
    runs = Counter(ledger)
    extra = len(ledger) - len(runs)
    print(f"\n[re-run bound] {n} jobs, --size {size}, {slaves} slaves: {rate:.0f} jobs/s "
          f"before the kill; {at_kill} ledger lines at the kill, resume point #{resume}; "
          f"{extra} extra runs; allowed {bound:.0f} = {size} + {slaves} x {MAX_WINDOW_JOBS} + "
          f"{rate:.0f} x {CHECKPOINT_INTERVAL_S:g}s x 2; README's bound {stated}"
          f"{' (EXCEEDED)' if extra > stated else ''}")
    runs = check_ledger("master SIGKILL, fast stream", ledger, set(range(n)),
                        note=f"{extra} extra runs, allowed {bound:.0f}")
    twice = [j for j, c in runs.items() if c > 1]
    assert min(twice, default=resume) >= resume, "a job before the resume point ran again"
    assert extra <= bound, f"{extra} jobs ran again, over {bound:.0f}"


# -- a master paused past the lease timeout -----------------------------------------------------


def test_a_master_paused_past_the_lease_timeout_reclaims_nothing(
        procs: Procs, tmp_path: Path) -> None:
    """SIGSTOP the master for twice --lease-timeout, then SIGCONT: the heartbeats and
    acknowledgements that waited unread meanwhile lose no slave and send nothing out again
    ("lost in transit"), so no job runs twice (none may: nothing failed, and a re-run could
    only come from a lease taken back from a live slave); the run completes."""
    n, lease_timeout, pause_s = 4000, 3, 6.0
    run = Run(procs, tmp_path)
    master = run.master(f"count={n}", "--lease-timeout", str(lease_timeout))
    slaves = [run.slave("-c", "5", env=run.env(SLEEP_S=0.005)) for _ in range(2)]
    wait_count(master, r"slave \S+ joined", 2, START_S)
    run.wait_ledger(800, START_S, master, *slaves)
    master.signal(signal.SIGSTOP)
    try:
        # Hold the stop for a period (not a wait for a condition): twice the lease timeout,
        # while the slaves finish what they hold and their messages queue up unread.
        time.sleep(pause_s)
        left = n - len(set(run.jobs()))
        assert left > 0, "the run ended before the pause"
    finally:
        master.signal(signal.SIGCONT)
    assert master.wait(RUN_S) == 0, master.output
    for s in slaves:
        assert s.wait(15) == 0, s.output
    assert "lost in transit" not in master.output, master.output
    assert not re.search(r"slave \S+ lost", master.output), master.output
    assert not [s for s in slaves if "rejoining" in s.output], "a slave had to rejoin"
    runs = check_ledger(f"master SIGSTOP {pause_s:g}s > lease {lease_timeout}s", run.jobs(),
                        set(range(n)), note=f"{left} jobs left at SIGCONT")
    twice = sorted(j for j, c in runs.items() if c > 1)
    assert not twice, f"{len(twice)} jobs ran twice, e.g. {twice[:20]}"
