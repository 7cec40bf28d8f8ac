"""The PostgreSQL migration against a real server that the tests start themselves: it completes
row by row and page by page with every row exactly right, and a run SIGKILLed mid-way resumes."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path
from types import ModuleType

import pg_server
import psycopg
import pytest
from pg_server import PostgresServer, PostgresUnavailableError

from procs import Procs, wait_for

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "migrate_postgres.py"
ROWS = 20_000
SLAVES, CONCURRENCY = 2, 8


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("migrate_postgres", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = load_example()
DOMAINS: tuple[str, ...] = example.DOMAINS


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One server for the whole session, in a temporary directory, on a Unix socket only."""
    try:
        srv = pg_server.start(tmp_path_factory.mktemp("postgres"))
    except PostgresUnavailableError as e:
        pytest.skip(f"no PostgreSQL server can run on this machine: {e}")
    yield srv
    srv.stop()


@pytest.fixture
def dsn(server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A database of the test's own on the session's server."""
    name: str = request.node.name
    return server.create_database(re.sub(r"\W+", "_", name).lower()[:60])


def expected_domain(row_id: int) -> str:
    """What the migration must write, worked out independently of its SQL."""
    return DOMAINS[row_id % len(DOMAINS)].lower()


def table(dsn: str) -> list[tuple[int, str, str | None]]:
    with psycopg.connect(dsn) as con:
        return con.execute("SELECT id, email, email_domain FROM users ORDER BY id").fetchall()


def pending(dsn: str) -> int:
    with psycopg.connect(dsn) as con:
        row = con.execute("SELECT count(*) FROM users WHERE email_domain IS NULL").fetchone()
    assert row is not None
    return int(row[0])


def assert_all_migrated(dsn: str, ids: range | list[int],
                        kept: AbstractSet[int] = frozenset()) -> None:
    """Every row of ``ids`` is there, unchanged but for its domain, which is right; the rows of
    ``kept`` had one before the run, and keep it."""
    assert pending(dsn) == 0
    rows = table(dsn)
    assert [row[0] for row in rows] == list(ids)
    wrong = [row for row in rows if row[1] != f"user{row[0]}@{DOMAINS[row[0] % len(DOMAINS)]}"
             or row[2] != ("kept" if row[0] in kept else expected_domain(row[0]))]
    assert not wrong, f"{len(wrong)} rows wrong, the first: {wrong[:5]}"
    assert rows[0][:3] == (1, "user1@mail.EXAMPLE.org", "mail.example.org")


def migrate_args(dsn: str, *extra: str) -> tuple[str, ...]:
    return (str(SCRIPT), str(SLAVES), "--concurrency", str(CONCURRENCY), f"dsn={dsn}",
            f"rows={ROWS}", "--no-progress", *extra)


class ConnectionPeak:
    """The most connections to one database seen at once, sampled while a run goes on."""

    def __init__(self, dsn: str) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._con = psycopg.connect(dsn, autocommit=True)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            row = self._con.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()").fetchone()
            self.peak = max(self.peak, row[0] if row else 0)

    def close(self) -> int:
        self._stop.set()
        self._thread.join(5)
        self._con.close()
        return self.peak


def test_the_driver_waits_cooperatively_under_gevent(server: PostgresServer) -> None:
    """The premise of the example: in a patched process, 32 greenlets each waiting 0.1 s on the
    server take about 0.1 s, not 3.2 s (psycopg must have picked a wait that yields)."""
    code = f"""
from gevent import monkey; monkey.patch_all()
import time, gevent, psycopg, psycopg.waiting
def sleep():
    with psycopg.connect({server.dsn()!r}) as con:
        con.execute("SELECT pg_sleep(0.1)")
start = time.perf_counter()
gevent.joinall([gevent.spawn(sleep) for _ in range(32)], raise_error=True)
print(psycopg.waiting.wait.__name__, time.perf_counter() - start)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    wait, elapsed = out.stdout.split()
    # Half the 3.2 s of waits in a row: room for a busy machine, none for a blocking driver.
    assert wait != "wait_c" and float(elapsed) < 1.6, out.stdout


def test_row_by_row_migration_completes_and_a_rerun_says_complete(procs: Procs,
                                                                  dsn: str) -> None:
    """The demo table is created on first use; each row gets its own UPDATE; greenlets hold
    connections of their own, at most one each."""
    peak = ConnectionPeak(dsn)
    try:
        run = procs.run("tm-run", *migrate_args(dsn, "mode=row"), timeout=60)
    finally:
        connections = peak.close()
    assert run.proc.returncode == 0, run.output
    assert f"run complete: {ROWS // example.DEFAULT_PAGE['row']} finished, 0 failed" in run.output
    assert_all_migrated(dsn, range(1, ROWS + 1))
    # More than one per slave: the greenlets really ran side by side. No more than one per
    # greenlet, and the master's own for cutting pages.
    assert SLAVES + 1 < connections <= SLAVES * CONCURRENCY + 1, connections
    again = procs.run("tm-run", *migrate_args(dsn, "mode=row"), timeout=60)
    assert again.proc.returncode == 0 and "already complete" in again.output, again.output


def test_page_migration_skips_gaps_and_leaves_done_rows_alone(procs: Procs, dsn: str) -> None:
    """Pages walk the primary key over ids that deletes left unused, and only NULLs change."""
    with example.connect(dsn) as con:
        example.create_demo(con, ROWS)
        con.execute("DELETE FROM users WHERE id % 7 = 0")
        con.execute("UPDATE users SET email_domain = 'kept' WHERE id % 11 = 0")
    ids = [i for i in range(1, ROWS + 1) if i % 7]
    run = procs.run("tm-run", *migrate_args(dsn, "mode=page", "page=100"), timeout=60)
    assert run.proc.returncode == 0, run.output
    assert f"run complete: {-(-len(ids) // 100)} finished, 0 failed" in run.output
    assert_all_migrated(dsn, ids, kept={i for i in ids if i % 11 == 0})


def test_a_run_killed_mid_way_is_resumed_by_the_same_command(procs: Procs, dsn: str,
                                                             tmp_path: Path) -> None:
    """SIGKILL of tm-run and all its slaves mid-run (their open transactions die with them);
    the same command again resumes and leaves every row right."""
    state = tmp_path / "run.tmstate"
    # The rate (jobs a second, 20 rows each) keeps the run going for seconds, so that the kill
    # comes mid-run however fast the machine is.
    args = migrate_args(dsn, "mode=row", "--rate", "200", "--state-file", str(state))
    first = procs.start("tm-run", *args)
    wait_for(lambda: state.exists() and json.loads(state.read_text())["resume_seq"] > 0, 60,
             "a checkpoint past the first page", first)
    first.kill()
    left = pending(dsn)
    assert 0 < left < ROWS, left
    second = procs.run("tm-run", *args, timeout=60)
    assert second.proc.returncode == 0, second.output
    assert "resuming at job #" in second.output
    assert_all_migrated(dsn, range(1, ROWS + 1))


def test_two_runs_over_halves_of_the_table_share_its_creation_and_do_every_row_once(
        procs: Procs, dsn: str) -> None:
    """What to do past one master: several, each over a share of the key space (``start`` and
    ``stop``), each with a state file of its own. Started together, one creates the table
    while the other waits for it; between them every row is migrated."""
    half = ROWS // 2 + 1
    runs = [procs.start("tm-run", *migrate_args(dsn, "page=100", *share))
            for share in (("stop=" + str(half),), ("start=" + str(half),))]
    for run in runs:
        assert run.wait(60) == 0, run.output
    assert "run complete: 100 finished, 0 failed" in runs[0].output, runs[0].output
    assert "run complete: 100 finished, 0 failed" in runs[1].output, runs[1].output
    states = {p.name for p in procs.cwd.glob("*.tmstate")}
    assert len(states) == 2, states
    assert_all_migrated(dsn, range(1, ROWS + 1))
