"""Taskmaster against multiprocessing.Pool, side by side in one run: ``python benchmarks/bench.py``.

Every measurement is a whole command started as a subprocess with this interpreter and timed
from start to exit, so interpreter start-up, connecting and shutting down count on both sides.
Each command runs in a fresh temporary directory (tm-run keeps its state files in the current
directory, and a leftover one would make the next run resume instead of start). Repeats are
interleaved, so that a noisy minute on a shared machine spreads over all the rows instead of
spoiling one; the table shows the median. See README.rst for how to read it.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from jobs import CPU_JOB_S, SLEEP_JOB_S  # noqa: E402 - needs the path set just above

SLAVES = 2
CHUNKSIZES = (1, 100, 1000)
CHUNKSIZE_1_DIVISOR = 30
"""Pool with chunksize 1 runs 1/30 of the no-op jobs: one pipe round trip per job makes the
full count take minutes, and the rate is what we compare."""
SLEEP_CONCURRENCIES = (10, 50)
SLEEP_POOL_CHUNKSIZE = 1
"""Pool's rate on sleeping jobs is one sleep per process at a time whatever the chunksize."""
RSS_SAMPLE_S = 0.05
DEFAULT_TIMEOUT_S = 900.0
"""A command still running after this is killed, and its row is not run again: a stuck run
must cost the benchmark minutes, not the night."""
FLAT_RSS_TOLERANCE = 0.10
MIB = 2**20
FINISHED_LINE = re.compile(r"run complete: (\d+) finished, (\d+) failed in ([\d.]+)s")


@dataclass
class Outcome:
    """What a finished command says about its run."""

    finished: int
    failed: int = 0
    inner_s: float | None = None
    """The run's own time, when the command reports one."""


@dataclass
class Command:
    """One row of the table: a command, how many jobs it runs, and its measured runs."""

    workload: str
    label: str
    argv: list[str]
    jobs: int
    outcome: Callable[[str, str], Outcome | None]
    """Reads the command's stdout and stderr; None when it did not get through the stream."""
    sample_rss: bool = False
    walls: list[float] = field(default_factory=list)
    inner: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    typical: list[float] = field(default_factory=list)
    """Median of each run's RSS samples: what the process holds most of the time."""
    problems: list[str] = field(default_factory=list)
    timed_out: bool = False

    @property
    def measured(self) -> bool:
        return bool(self.walls)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def rate(self) -> float:
        return self.jobs / self.wall if self.walls else 0.0

    @property
    def spread(self) -> float:
        """Range of the runs' times as a fraction of the median: how much to trust the row."""
        return (max(self.walls) - min(self.walls)) / self.wall

    @property
    def peak(self) -> float:
        return statistics.median(self.peaks)

    def run_once(self, timeout_s: float) -> float | None:
        """Run the command once and record it; its wall time, None when it did not finish."""
        with tempfile.TemporaryDirectory(prefix="tm-bench-") as tmp:
            out_path, err_path = Path(tmp, "stdout"), Path(tmp, "stderr")
            with open(out_path, "w") as out, open(err_path, "w") as err:
                started = time.perf_counter()
                # Its own session, so that on a timeout its slaves or workers go with it.
                proc = subprocess.Popen(self.argv, cwd=tmp, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=err, start_new_session=True)
                deadline = started + timeout_s
                peak, typical = _watch_rss(proc, deadline) if self.sample_rss else (0, 0.0)
                try:
                    proc.wait(max(0.0, deadline - time.perf_counter()))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    self.timed_out = True
                wall = time.perf_counter() - started
            stdout, stderr = out_path.read_text(), err_path.read_text()
        if self.timed_out:
            self.problems.append(f"killed after {timeout_s:.0f}s (--timeout), not run again")
            tail = "\n".join((stdout + stderr).splitlines()[-15:])
            print(f"# {self.label} timed out: {' '.join(self.argv)}\n{tail}", file=sys.stderr)
            return None
        got = self.outcome(stdout, stderr)
        if proc.returncode == 0 and got is not None and got.finished == self.jobs:
            problem = None
        elif got is not None and got.finished + got.failed == self.jobs:
            # The stream went through, so time and memory still mean something; the row says
            # what went wrong beside them.
            problem = f"{got.failed:,} jobs recorded failed, exit {proc.returncode}"
        else:
            done = got.finished if got is not None else "?"
            self.problems.append(f"exit {proc.returncode} after {done} of {self.jobs:,} jobs")
            tail = "\n".join((stdout + stderr).splitlines()[-15:])
            print(f"# {self.label} failed: {' '.join(self.argv)}\n{tail}", file=sys.stderr)
            return None
        if problem:
            self.problems.append(problem)
        self.walls.append(wall)
        if got.inner_s is not None:
            self.inner.append(got.inner_s)
        self.peaks.append(peak)
        self.typical.append(typical)
        return wall


def _watch_rss(proc: subprocess.Popen[bytes], deadline: float) -> tuple[int, float]:
    """Resident memory of the process itself (not its children) until it exits, in bytes:
    the peak, and the median of the samples.

    Linux keeps the true high-water mark (VmHWM), which no 50 ms sampling can miss; elsewhere
    psutil's RSS samples are the best we have.
    """
    watched = psutil.Process(proc.pid)
    status = Path(f"/proc/{proc.pid}/status")
    peak, samples = 0, []
    while proc.poll() is None and time.perf_counter() < deadline:
        try:
            rss = watched.memory_info().rss
            peak = max(peak, rss, _vm_hwm(status))
            samples.append(rss)
        except (psutil.Error, OSError):
            break  # exited between poll() and the reading
        time.sleep(RSS_SAMPLE_S)
    return peak, statistics.median(samples) if samples else 0.0


def _vm_hwm(status: Path) -> int:
    if not status.exists():
        return 0
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _tm_outcome(stdout: str, stderr: str) -> Outcome | None:
    m = FINISHED_LINE.search(stderr)
    if m is None:
        return None
    return Outcome(int(m.group(1)), int(m.group(2)), float(m.group(3)))


def _pool_outcome(stdout: str, stderr: str) -> Outcome | None:
    words = stdout.split()
    return Outcome(int(words[-1])) if words and words[-1].isdigit() else None


def tm_run(workload: str, kind: str, jobs: int, *options: str, label: str = "") -> Command:
    """A ``tm-run benchmarks/KIND_jobs.py 2 count=JOBS`` row."""
    argv = [sys.executable, "-m", "taskmaster", "run", str(HERE / f"{kind}_jobs.py"),
            str(SLAVES), f"count={jobs}", "--no-progress", *options]
    text = label or " ".join(["tm-run", str(SLAVES), *options])
    return Command(workload, text, argv, jobs, _tm_outcome, sample_rss=kind == "kb")


def pool(workload: str, kind: str, jobs: int, chunksize: int) -> Command:
    """A ``Pool(2).imap_unordered(..., chunksize)`` row, as a script of its own."""
    argv = [sys.executable, str(HERE / "pool_run.py"), kind, str(jobs), str(chunksize),
            str(SLAVES)]
    return Command(workload, f"Pool({SLAVES}) chunksize={chunksize}", argv, jobs, _pool_outcome)


def _best(rows: list[Command]) -> Command:
    return max(rows, key=lambda c: c.rate)


def _fmt_int(n: float) -> str:
    return f"{n:,.0f}"


class Table:
    """Rows of text, printed with columns aligned, and the notes that go under them."""

    HEADER = ("workload", "command", "jobs", "wall s", "spread", "jobs/s", "master s",
              "compared")

    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []
        self.problems: list[str] = []

    def add(self, c: Command, compared: str = "", label: str | None = None) -> None:
        label = label or c.label
        if c.problems:
            self.problems.append(f"[!] {c.workload}, {label}, {c.jobs:,} jobs: "
                                 + "; ".join(c.problems))
            label += " [!]"
        if not c.measured:
            self.rows.append((c.workload, label, _fmt_int(c.jobs), "-", "-", "-", "-", ""))
            return
        self.rows.append((c.workload, label, _fmt_int(c.jobs), f"{c.wall:.2f}",
                          f"{c.spread:.0%}", _fmt_int(c.rate) if c.jobs > 1 else "",
                          f"{statistics.median(c.inner):.2f}" if c.inner else "", compared))

    def print(self) -> None:
        widths = [max(len(r[i]) for r in [self.HEADER, *self.rows])
                  for i in range(len(self.HEADER))]
        right = {2, 3, 4, 5, 6}
        for n, row in enumerate([self.HEADER, *self.rows]):
            cells = [cell.rjust(w) if i in right else cell.ljust(w)
                     for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
            print("  ".join(cells).rstrip())
            if n == 0:
                print("  ".join("-" * w for w in widths))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; --quick halves every job count and leaves out the 10 M run."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10_000_000, help="no-op jobs")
    # 10 s of CPU on 2 cores: long enough that start-up (a fixed cost, measured on its own
    # row) does not decide a throughput row.
    ap.add_argument("--cpu-jobs", type=int, default=20_000, help="1 ms CPU-bound jobs")
    ap.add_argument("--sleep-jobs", type=int, default=4000, help="10 ms sleeping jobs")
    ap.add_argument("--rss-jobs", type=int, nargs=2, default=[1_000_000, 10_000_000],
                    metavar=("SMALL", "LARGE"), help="1 KB jobs for the master-memory rows")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row; the table shows medians")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                    help="seconds before a command is killed (its row is then not run again)")
    ap.add_argument("--quick", action="store_true",
                    help="half the jobs everywhere and no 10 M run: a check that it all works")
    args = ap.parse_args(argv)
    if args.quick:
        args.jobs //= 2
        args.cpu_jobs //= 2
        args.sleep_jobs //= 2
        # Still a fivefold longer stream: growth with the stream's length is what "flat" tests.
        args.rss_jobs = [args.rss_jobs[0] // 10, args.rss_jobs[0] // 2]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every row ``--repeat`` times, interleaved, then print the one table."""
    args = parse_args(argv)
    n, ncpu, nsleep = args.jobs, args.cpu_jobs, args.sleep_jobs
    small, large = args.rss_jobs
    fixed = [tm_run("fixed cost", "noop", 1), pool("fixed cost", "noop", 1, 1)]
    noop = [tm_run("no-op", "noop", n)] + [
        pool("no-op", "noop", max(1, n // CHUNKSIZE_1_DIVISOR) if c == 1 else n, c)
        for c in CHUNKSIZES]
    cpu = [tm_run("cpu 1 ms", "cpu", ncpu)] + [pool("cpu 1 ms", "cpu", ncpu, c)
                                                for c in CHUNKSIZES]
    sleep = [tm_run("sleep 10 ms", "sleep", nsleep, "--concurrency", str(c))
             for c in SLEEP_CONCURRENCIES] + [pool("sleep 10 ms", "sleep", nsleep,
                                                   SLEEP_POOL_CHUNKSIZE)]
    rss = [tm_run("master RSS", "kb", k, label=f"tm-run {SLAVES}, 1 KB jobs")
           for k in (small, large)]
    commands = fixed + noop + cpu + sleep + rss

    print(f"# Python {platform.python_version()} ({sys.executable}), {os.cpu_count()} CPUs, "
          f"{platform.platform()}; {args.repeat} runs per row{', --quick' if args.quick else ''}",
          file=sys.stderr)
    for r in range(1, args.repeat + 1):
        for c in commands:
            if c.timed_out:
                continue
            wall = c.run_once(args.timeout)
            took = f"{wall:7.2f}s" if wall is not None else "did not finish"
            print(f"# run {r}/{args.repeat}: {c.workload:11} {c.label:28} {c.jobs:>10,} jobs "
                  f"{took}", file=sys.stderr, flush=True)

    table = Table()
    for c in fixed:
        table.add(c, "start-up + shutdown, 1 job")
    best_noop = _best(noop[1:])
    ratio = noop[0].rate / best_noop.rate if best_noop.measured else 0.0
    table.add(noop[0], f"{ratio:.2f}x the best Pool (chunksize {best_noop.argv[-2]})")
    for c in noop[1:]:
        mark = " [1]" if c.argv[-2] == "1" else ""
        table.add(c, "best Pool" if c is best_noop else "", label=c.label + mark)
    ideal_cpu = SLAVES / CPU_JOB_S
    best_cpu = _best(cpu[1:])
    for c in (cpu[0], best_cpu):
        table.add(c, f"{c.rate / ideal_cpu:.0%} of ideal {_fmt_int(ideal_cpu)}/s",
                  label=c.label + (" [2]" if c is best_cpu else ""))
    for c, conc in zip(sleep, [*SLEEP_CONCURRENCIES, 1], strict=True):
        ideal = SLAVES * conc / SLEEP_JOB_S
        table.add(c, f"{c.rate / ideal:.0%} of ideal {_fmt_int(ideal)}/s")
    for c in rss:
        compared = (f"peak master RSS {c.peak / MIB:.1f} MiB (typical "
                    f"{statistics.median(c.typical) / MIB:.1f})" if c.measured else "")
        if c is rss[-1] and c.measured and rss[0].measured:
            growth = c.peak / rss[0].peak
            verdict = "flat" if abs(growth - 1) <= FLAT_RSS_TOLERANCE else "NOT flat"
            compared += f" = {growth:.2f}x the {_fmt_int(rss[0].jobs)}-job run ({verdict})"
        table.add(c, compared)
    table.print()
    others = ", ".join(f"chunksize {c.argv[-2]}: {_fmt_int(c.rate)}/s" for c in cpu[1:])
    print(f"\nwall s: median of {args.repeat} runs of the whole command, start-up included; "
          "spread: (slowest - fastest) / median; master s: the run's time as tm-run's master "
          "logs it (from its start to the last acknowledgement: no interpreter start-up, no "
          "shutdown).")
    print(f"[1] chunksize 1 runs {CHUNKSIZE_1_DIVISOR}x fewer jobs (one pipe round trip per "
          "job would take minutes); its rate is comparable, its wall time is not.")
    print(f"[2] best of chunksizes {', '.join(map(str, CHUNKSIZES))} ({others}).")
    print(f"Sleeping jobs: Pool uses chunksize {SLEEP_POOL_CHUNKSIZE}; ideal = slaves x "
          "concurrency / 10 ms. Master RSS: kernel high-water mark (VmHWM) of the tm-run "
          f"process, which is the master (its slaves are children), polled every "
          f"{RSS_SAMPLE_S * 1000:.0f} ms; typical: the median of its RSS samples (psutil), "
          "i.e. what it holds most of the time; \"flat\" compares the peaks.")
    for line in table.problems:
        print(line)
    return 1 if table.problems else 0


if __name__ == "__main__":
    sys.exit(main())
