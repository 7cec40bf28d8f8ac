"""Taskmaster against its limits, side by side in one run: ``python benchmarks/bench.py``.

Each tm-run row is measured beside what bounds it, in the same run: multiprocessing.Pool for
no-op and CPU-bound jobs, raw ZeroMQ with batched pickles (raw_zmq.py) for 1 KB jobs, bare
gevent pools (gevent_pool_run.py) for sleeping jobs; each row prints its goal from DESIGN.md
and whether it is met. The join of 200 slaves of one tm-spawn (spawn_join.py), the many-slave
rows (loadgen.py, driven from this process against a real tm-master) and, with --postgres, the
PostgreSQL rows (postgres_bench.py) run in the same loop.

Every other measurement is a whole command started as a subprocess with this interpreter and
timed from start to exit, so interpreter start-up, connecting and shutting down count on both
sides. Each command runs in a fresh temporary directory (tm-run keeps its state files in the
current directory, and a leftover one would make the next run resume instead of start).
Repeats are interleaved, so that a noisy minute on a shared machine spreads over all the rows
instead of spoiling one; the tables show medians. See README.rst for how to read them.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
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
from typing import Protocol

import psutil

from taskmaster.config import MAX_BATCH_JOBS

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import loadgen  # noqa: E402 - needs the path set just above
from jobs import CPU_JOB_S, SLEEP_JOB_S  # noqa: E402
from raw_zmq import BATCH as RAW_BATCH  # noqa: E402 - 1 KB jobs: half a megabyte a message
from spawn_join import GOAL_S as SPAWN_GOAL_S  # noqa: E402
from spawn_join import RESULT_LINE as JOINED_LINE  # noqa: E402

SLAVES = 2
CHUNKSIZES = (1, 100, 1000)
CHUNKSIZE_1_DIVISOR = 30
"""Pool with chunksize 1 runs 1/30 of the no-op jobs: one pipe round trip per job makes the
full count take minutes, and the rate is what we compare."""
SLEEP_GOALS = {100: 0.95, 500: 0.90}
"""Concurrency of the sleeping rows, and the share of the bare gevent pools each must reach."""
SLEEP_POOL_CHUNKSIZE = 1
"""Pool's rate on sleeping jobs is one sleep per process at a time whatever the chunksize."""
SLEEP_POOL_DIVISOR = 25
"""Pool(2) runs 1/25 of the sleeping jobs: at 200 jobs/s the full 100 000 would take eight
minutes, and the rate is what we compare."""
NOOP_GOAL = 2.0
"""No-op jobs through tm-run: at least this many times the best Pool's rate."""
CPU_GOAL = 0.90
"""CPU-bound jobs through tm-run: at least this share of the ideal two-core rate."""
RAW_GOAL = 0.80
"""1 KB jobs through tm-run: at least this share of raw ZeroMQ's rate."""
RAW_NOOP_BATCH = MAX_BATCH_JOBS
"""Jobs per message of raw ZeroMQ with no-op jobs: what tm-run's master sends instant jobs in
(loadgen.py's jobs/batch); batches of 500 small ints cost more per message than per job."""
FIXED_GOAL_S = 0.20
"""One job through tm-run, start-up and shutdown included, at most this long."""
SPAWN_SLAVES = 200
MANY_SLAVES = (10, 100, 1000)
"""Simulated slave counts of the loadgen.py rows (--quick: the first and the last)."""
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
    unit: str = "jobs"
    """What ``jobs`` counts; only rows of jobs have a rate (tm-spawn's row counts slaves)."""
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

    @property
    def inner_s(self) -> float | None:
        """Median of the run's own times, when the command reports them."""
        return statistics.median(self.inner) if self.inner else None

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
            self.problems.append(f"exit {proc.returncode} after {done} of {self.jobs:,} "
                                 f"{self.unit}")
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


def _count_outcome(stdout: str, stderr: str) -> Outcome | None:
    """pool_run.py, raw_zmq.py and gevent_pool_run.py print how many jobs they ran, last."""
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
    return Command(workload, f"Pool({SLAVES}) chunksize={chunksize}", argv, jobs, _count_outcome)


def raw_zmq(workload: str, kind: str, jobs: int, batch: int = RAW_BATCH, *,
            heap: str = "system") -> Command:
    """A ``raw_zmq.py KIND JOBS 2 BATCH HEAP`` row: the same jobs over bare ZeroMQ, pickled in
    batches; ``heap="kept"``: with the C heap set as tm-run's processes set it."""
    argv = [sys.executable, str(HERE / "raw_zmq.py"), kind, str(jobs), str(SLAVES), str(batch),
            heap]
    label = f"raw ZeroMQ, batches of {batch}" + (", heap kept" if heap == "kept" else "")
    return Command(workload, label, argv, jobs, _count_outcome)


def gevent_pool(workload: str, kind: str, jobs: int, concurrency: int) -> Command:
    """A ``gevent_pool_run.py KIND JOBS CONCURRENCY 2`` row: bare gevent pools, no master."""
    argv = [sys.executable, str(HERE / "gevent_pool_run.py"), kind, str(jobs), str(concurrency),
            str(SLAVES)]
    return Command(workload, f"gevent Pool({concurrency}) x {SLAVES}", argv, jobs, _count_outcome)


def _joined_outcome(stdout: str, stderr: str) -> Outcome | None:
    m = JOINED_LINE.search(stdout)
    # Slaves that did not join are no failed jobs: the row has no figure then.
    return Outcome(int(m.group(1)), 0, float(m.group(3))) if m else None


def spawn_join(slaves: int) -> Command:
    """A ``spawn_join.py SLAVES`` row: a master, then one tm-spawn of SLAVES slaves; its
    figure is the time from tm-spawn's start to the last slave joined."""
    argv = [sys.executable, str(HERE / "spawn_join.py"), str(slaves)]
    return Command("tm-spawn", f"tm-spawn {slaves}", argv, slaves, _joined_outcome,
                   unit="slaves")


def _best(rows: list[Command]) -> Command:
    return max(rows, key=lambda c: c.rate)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def share(c: Command, limit: Command) -> float | None:
    """The row's rate as a share of its limit's, when both were measured."""
    return c.rate / limit.rate if c.measured and limit.measured else None


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
        per_job = c.unit == "jobs"
        inner = c.inner_s
        self.rows.append((c.workload, label, _fmt_int(c.jobs), f"{c.wall:.2f}",
                          f"{c.spread:.0%}", _fmt_int(c.rate) if per_job and c.jobs > 1 else "",
                          f"{inner:.2f}" if per_job and inner is not None else "", compared))

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


class ManySlaves:
    """One slave count of loadgen.py as a row of this loop: a real tm-master and that many
    simulated slaves (see loadgen.py). loadgen bounds every step of a run itself (start-up,
    join, windows, stop), so --timeout does not apply to it."""

    workload = "many slaves"
    unit = "slaves"
    timed_out = False

    def __init__(self, slaves: int, options: argparse.Namespace,
                 results: dict[int, list[loadgen.RunResult]]) -> None:
        self.jobs = slaves
        self.label = f"loadgen.py {slaves}"
        self.options = options
        self.results = results
        """Shared by every count: loadgen.report compares them with each other."""
        results[slaves] = []

    def run_once(self, timeout_s: float) -> float | None:
        started = time.perf_counter()
        got = loadgen.run_once(self.jobs, self.options)
        self.results[self.jobs].append(got)
        print(f"#   {loadgen.summary(got)}", file=sys.stderr)
        return time.perf_counter() - started if got.join_s is not None else None


class PostgresRows:
    """postgres_bench.py's rows as one row of this loop: its server and demo table made once,
    up front, then each repeat its plain loop and tm-run rows, per row and per page."""

    workload = "PostgreSQL"
    unit = "rows"
    label = "postgres_bench.py"
    timed_out = False

    def __init__(self, n_rows: int, concurrencies: list[int], stack: contextlib.ExitStack) -> None:
        # Here, not at the top: psycopg and the embedded server are test extras, needed only
        # with --postgres.
        import postgres_bench

        self.pg = postgres_bench
        self.jobs = n_rows
        self.load_before = os.getloadavg()[0]
        self.dsn = stack.enter_context(postgres_bench.demo_database(n_rows))
        self.modes = list(postgres_bench.MODES)
        self.rows = postgres_bench.make_rows(self.dsn, self.modes, concurrencies)
        self.repeats = 0

    def run_once(self, timeout_s: float) -> float | None:
        started = time.perf_counter()
        for row in self.rows:
            if not row.problems:
                self.pg.measure(row, self.dsn, timeout_s)
        self.repeats += 1
        return time.perf_counter() - started

    def report(self) -> list[str]:
        """Print its table as postgres_bench.py prints it; its problems."""
        print(self.pg.summary(self.jobs, self.modes, self.repeats, self.load_before))
        print(self.pg.table(self.rows, self.jobs))
        return [f"[!] PostgreSQL, {r.mode}, {r.label}: {'; '.join(r.problems)}"
                for r in self.rows if r.problems]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; --quick halves every job count, leaves out the 10 M run and makes
    the many-slave rows short (loadgen.py --quick, 10 and 1000 slaves only)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10_000_000, help="no-op jobs")
    # 10 s of CPU on 2 cores: long enough that start-up (a fixed cost, measured on its own
    # row) does not decide a throughput row.
    ap.add_argument("--cpu-jobs", type=int, default=20_000, help="1 ms CPU-bound jobs")
    ap.add_argument("--sleep-jobs", type=int, default=100_000,
                    help=f"10 ms sleeping jobs (Pool(2) runs 1/{SLEEP_POOL_DIVISOR} of them)")
    ap.add_argument("--rss-jobs", type=int, nargs=2, default=[1_000_000, 10_000_000],
                    metavar=("SMALL", "LARGE"), help="1 KB jobs for the master-memory rows")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row; the table shows medians")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                    help="seconds before a command is killed (its row is then not run again)")
    ap.add_argument("--no-scale", dest="scale", action="store_false",
                    help="leave out the many-slave (loadgen.py) and tm-spawn rows")
    ap.add_argument("--many-slaves", type=int, nargs="+", default=list(MANY_SLAVES),
                    metavar="N", help="simulated slave counts of the loadgen.py rows")
    ap.add_argument("--spawn-slaves", type=int, default=SPAWN_SLAVES,
                    help="slaves of the tm-spawn row")
    ap.add_argument("--postgres", action="store_true",
                    help="add the PostgreSQL rows (postgres_bench.py; needs the test extras)")
    ap.add_argument("--pg-rows", type=int, default=100_000, help="rows of the PostgreSQL table")
    ap.add_argument("--pg-concurrency", type=int, nargs="+", default=[8], metavar="C",
                    help="--concurrency of the PostgreSQL tm-run rows")
    ap.add_argument("--quick", action="store_true",
                    help="half the jobs everywhere, no 10 M run, short many-slave rows: a "
                         "check that it all works")
    args = ap.parse_args(argv)
    if args.quick:
        args.jobs //= 2
        args.cpu_jobs //= 2
        args.sleep_jobs //= 2
        args.pg_rows //= 2
        # Still a fivefold longer stream: growth with the stream's length is what "flat" tests.
        args.rss_jobs = [args.rss_jobs[0] // 10, args.rss_jobs[0] // 2]
        if args.many_slaves == list(MANY_SLAVES):
            # The two counts the goal compares.
            args.many_slaves = [MANY_SLAVES[0], MANY_SLAVES[-1]]
    return args


def loadgen_options(args: argparse.Namespace) -> argparse.Namespace:
    """loadgen.py's own options for the many-slave rows: its defaults, or its --quick."""
    options = loadgen.parse_args(["--slaves", *map(str, args.many_slaves)]
                                 + (["--quick"] if args.quick else []))
    options.repeat = args.repeat  # what its report says the medians are of
    return options


class Row(Protocol):
    """What the loop runs: a Command, or a row of loadgen.py or of postgres_bench.py."""

    workload: str
    label: str
    jobs: int
    unit: str
    timed_out: bool

    def run_once(self, timeout_s: float) -> float | None: ...


def main(argv: list[str] | None = None) -> int:
    """Run every row ``--repeat`` times, interleaved, then print the tables."""
    args = parse_args(argv)
    if sys.flags.dont_write_bytecode:
        # Python told not to write bytecode (PYTHONDONTWRITEBYTECODE) would compile the package
        # again in every command: tens of milliseconds of start-up that no user pays twice.
        for folder in (HERE.parent / "taskmaster", HERE):
            compileall.compile_dir(folder, quiet=1, maxlevels=0)
    n, ncpu, nsleep = args.jobs, args.cpu_jobs, args.sleep_jobs
    small, large = args.rss_jobs
    fixed = [tm_run("fixed cost", "noop", 1), pool("fixed cost", "noop", 1, 1)]
    noop = [tm_run("no-op", "noop", n)] + [
        pool("no-op", "noop", max(1, n // CHUNKSIZE_1_DIVISOR) if c == 1 else n, c)
        for c in CHUNKSIZES]
    raw_noop = raw_zmq("no-op", "noop", n, RAW_NOOP_BATCH)
    cpu = [tm_run("cpu 1 ms", "cpu", ncpu)] + [pool("cpu 1 ms", "cpu", ncpu, c)
                                                for c in CHUNKSIZES]
    # Each tm-run row beside its limit, so that a noisy moment hits both.
    sleep = {conc: (tm_run("sleep 10 ms", "sleep", nsleep, "--concurrency", str(conc)),
                    gevent_pool("sleep 10 ms", "sleep", nsleep, conc)) for conc in SLEEP_GOALS}
    sleep_pool = pool("sleep 10 ms", "sleep", max(1, nsleep // SLEEP_POOL_DIVISOR),
                      SLEEP_POOL_CHUNKSIZE)
    kb = [(tm_run("1 KB jobs", "kb", k, label=f"tm-run {SLAVES}"), raw_zmq("1 KB jobs", "kb", k),
           raw_zmq("1 KB jobs", "kb", k, heap="kept")) for k in (small, large)]
    spawn = [spawn_join(args.spawn_slaves)] if args.scale else []
    commands = [*fixed, *noop, raw_noop, *cpu, *(c for pair in sleep.values() for c in pair),
                sleep_pool, *(c for row in kb for c in row), *spawn]

    rows: list[Row] = list(commands)
    many: dict[int, list[loadgen.RunResult]] = {}
    many_options = loadgen_options(args) if args.scale else None
    limit = ""
    if many_options is not None:
        limit = "; " + loadgen.raise_file_limit(max(args.many_slaves))
        rows += [ManySlaves(k, many_options, many) for k in args.many_slaves]
    with contextlib.ExitStack() as stack:
        postgres = PostgresRows(args.pg_rows, args.pg_concurrency, stack) if args.postgres \
            else None
        if postgres is not None:
            rows.append(postgres)
        print(f"# Python {platform.python_version()} ({sys.executable}), {os.cpu_count()} "
              f"CPUs, {platform.platform()}; {args.repeat} runs per row"
              f"{', --quick' if args.quick else ''}{limit}", file=sys.stderr)
        for r in range(1, args.repeat + 1):
            for c in rows:
                if c.timed_out:
                    continue
                wall = c.run_once(args.timeout)
                took = f"{wall:7.2f}s" if wall is not None else "did not finish"
                print(f"# run {r}/{args.repeat}: {c.workload:11} {c.label:28} {c.jobs:>10,} "
                      f"{c.unit:6} {took}", file=sys.stderr, flush=True)

    table = Table()
    report_fixed(table, *fixed)
    report_noop(table, noop, raw_noop)
    report_cpu(table, cpu)
    for conc, goal in SLEEP_GOALS.items():
        report_sleep(table, conc, goal, *sleep[conc])
    table.add(sleep_pool, _of_ideal(sleep_pool, SLAVES / SLEEP_JOB_S),
              label=sleep_pool.label + " [3]")
    report_kb(table, kb)
    for c in spawn:
        joined = c.inner_s
        table.add(c, "" if joined is None else
                  f"all joined in {joined:.2f}s (goal ≤ {SPAWN_GOAL_S:g}s: "
                  f"{verdict(joined <= SPAWN_GOAL_S)})")
    table.print()
    print_notes(args, cpu)
    problems = list(table.problems)
    if many_options is not None:
        print("\nMany slaves: loadgen.py, one real tm-master and simulated slaves "
              "(see README.rst)")
        problems += loadgen.report(many, many_options)
    if postgres is not None:
        print("\nPostgreSQL: postgres_bench.py (quoted: no goal)")
        problems += postgres.report()
    for line in problems:
        print(line)
    return 1 if problems else 0


def _of_ideal(c: Command, ideal: float) -> str:
    return f"{c.rate / ideal:.0%} of ideal {_fmt_int(ideal)}/s"


def report_fixed(table: Table, tm: Command, pool_row: Command) -> None:
    """One job: tm-run's whole command against the goal, and as a multiple of Pool's."""
    compared = ""
    if tm.measured:
        ratio = f" = {tm.wall / pool_row.wall:.1f}x Pool's" if pool_row.measured else ""
        compared = (f"{tm.wall:.2f}s{ratio} (goal ≤ {FIXED_GOAL_S:.2f}s: "
                    f"{verdict(tm.wall <= FIXED_GOAL_S)})")
    table.add(tm, compared)
    table.add(pool_row, "start-up + shutdown, 1 job")


def report_noop(table: Table, noop: list[Command], raw: Command) -> None:
    """No-op jobs: tm-run against the best Pool chunksize (the goal), and raw ZeroMQ."""
    tm, pools = noop[0], noop[1:]
    best = _best(pools)
    ratio = share(tm, best)
    table.add(tm, "" if ratio is None else
              f"{ratio:.2f}x the best Pool (chunksize {best.argv[-2]}) "
              f"(goal ≥ {NOOP_GOAL:g}x: {verdict(ratio >= NOOP_GOAL)})")
    for c in pools:
        mark = " [1]" if c.argv[-2] == "1" else ""
        table.add(c, "best Pool" if c is best else "", label=c.label + mark)
    of_raw = share(tm, raw)
    table.add(raw, "" if of_raw is None else f"tm-run at {of_raw:.0%} of it (no goal)")


def report_cpu(table: Table, cpu: list[Command]) -> None:
    """CPU-bound jobs: tm-run and the best Pool as shares of the ideal two-core rate."""
    ideal = SLAVES / CPU_JOB_S
    best = _best(cpu[1:])
    got = cpu[0].rate / ideal
    table.add(cpu[0], f"{_of_ideal(cpu[0], ideal)} (goal ≥ {CPU_GOAL:.0%}: "
                      f"{verdict(got >= CPU_GOAL)})")
    table.add(best, _of_ideal(best, ideal), label=best.label + " [2]")


def report_sleep(table: Table, conc: int, goal: float, tm: Command, bare: Command) -> None:
    """Sleeping jobs at one concurrency: tm-run as a share of the bare gevent pools."""
    ideal = SLAVES * conc / SLEEP_JOB_S
    got = share(tm, bare)
    table.add(tm, "" if got is None else
              f"{got:.0%} of the bare pools (goal ≥ {goal:.0%}: {verdict(got >= goal)}); "
              f"{_of_ideal(tm, ideal)}")
    table.add(bare, _of_ideal(bare, ideal))


def report_kb(table: Table, kb: list[tuple[Command, Command, Command]]) -> None:
    """1 KB jobs: tm-run as a share of raw ZeroMQ, and the master's memory, flat or not.

    The goal is judged against raw ZeroMQ with the heap kept as tm-run keeps it: without, the
    raw script pays for fresh pages for every batch it pickles, a cost of the C library's, not
    of moving jobs, and tm-run no longer pays it. The plain script's rate is shown beside."""
    first = kb[0][0]
    for tm, raw, kept in kb:
        parts = []
        got, plain = share(tm, kept), share(tm, raw)
        if got is not None:
            parts.append(f"{got:.0%} of raw ZeroMQ with the heap kept (goal ≥ {RAW_GOAL:.0%}: "
                         f"{verdict(got >= RAW_GOAL)})")
        if plain is not None:
            parts.append(f"{plain:.0%} of plain raw ZeroMQ")
        if tm.measured:
            parts.append(f"peak master RSS {tm.peak / MIB:.1f} MiB (typical "
                         f"{statistics.median(tm.typical) / MIB:.1f})")
        if tm is not first and tm.measured and first.measured:
            growth = tm.peak / first.peak
            parts.append(f"{growth:.2f}x the {_fmt_int(first.jobs)}-job peak (goal flat, "
                         f"within {FLAT_RSS_TOLERANCE:.0%}: "
                         f"{verdict(abs(growth - 1) <= FLAT_RSS_TOLERANCE)})")
        table.add(tm, "; ".join(parts))
        table.add(raw, "for information: the C heap as the system sets it")
        table.add(kept, "the limit")


def print_notes(args: argparse.Namespace, cpu: list[Command]) -> None:
    """What the columns and the marks of the table mean."""
    others = ", ".join(f"chunksize {c.argv[-2]}: {_fmt_int(c.rate)}/s" for c in cpu[1:])
    print(f"\nwall s: median of {args.repeat} runs of the whole command, start-up included; "
          "spread: (slowest - fastest) / median; master s: the run's time as tm-run's master "
          "logs it (from its start to the last acknowledgement: no interpreter start-up, no "
          "shutdown).")
    print(f"[1] chunksize 1 runs {CHUNKSIZE_1_DIVISOR}x fewer jobs (one pipe round trip per "
          "job would take minutes); its rate is comparable, its wall time is not.")
    print(f"[2] best of chunksizes {', '.join(map(str, CHUNKSIZES))} ({others}).")
    print(f"[3] runs {SLEEP_POOL_DIVISOR}x fewer jobs (one sleep per process at a time); its "
          f"rate is comparable, its wall time is not. Pool uses chunksize "
          f"{SLEEP_POOL_CHUNKSIZE}.")
    print("Sleeping jobs: gevent Pool(C) x 2 is a bare gevent pool in each of two processes, "
          "monkey-patched as slaves are (gevent_pool_run.py); ideal = processes x concurrency "
          "/ 10 ms. Raw ZeroMQ pickles batches to two consumer processes that "
          "unpickle and acknowledge them (raw_zmq.py). Master RSS: kernel high-water "
          "mark (VmHWM) of the tm-run process, which is the master (its slaves are children), "
          f"polled every {RSS_SAMPLE_S * 1000:.0f} ms; typical: the median of its RSS samples "
          "(psutil), i.e. what it holds most of the time; \"flat\" compares the peaks. "
          "tm-spawn: a tm-master of an endless no-op stream, then one tm-spawn of that many "
          "slaves; the time from tm-spawn's start to the master's last \"joined\" line "
          "(spawn_join.py); jobs counts slaves.")


if __name__ == "__main__":
    sys.exit(main())
