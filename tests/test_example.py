"""The shipped examples run as the README says: the SQLite migration completes and resumes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from procs import Procs, wait_for

ROOT = Path(__file__).resolve().parent.parent


def pending(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT count(*) FROM users WHERE email_domain IS NULL").fetchone()[0]


def test_sqlite_migration_completes_and_a_rerun_says_complete(procs: Procs,
                                                              tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    script = str(ROOT / "examples" / "migrate_sqlite.py")
    args = (script, "2", f"db={db}", "rows=20000", "page=100", "--no-progress")
    run = procs.run("tm-run", *args, timeout=120)
    assert run.code == 0, run.output
    assert "run complete: 200 finished, 0 failed" in run.output
    assert pending(db) == 0
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT email_domain FROM users WHERE id = 1").fetchone() == (
            "mail.example.org",)
    again = procs.run("tm-run", *args, timeout=60)
    assert again.code == 0 and "already complete" in again.output, again.output


def test_sqlite_migration_resumes_from_its_state(procs: Procs, tmp_path: Path) -> None:
    """A run stopped by SIGINT resumes at the first page not known to be done."""
    db, state = tmp_path / "demo.db", tmp_path / "run.tmstate"
    script = str(ROOT / "examples" / "migrate_sqlite.py")
    # 20 000 pages: seconds of work, so that the stop comes mid-run.
    args = (script, "1", f"db={db}", "rows=200000", "page=10", "--size", "50",
            "--state-file", str(state), "--no-progress", "--log-level", "DEBUG")
    first = procs.start("tm-run", *args)
    first.expect(r"slave \S+ joined", timeout=60)
    wait_for(lambda: state.exists() and json.loads(state.read_text())["resume_seq"] > 0, 60,
             "a checkpoint past the first page", first)
    first.signal(2)
    assert first.wait(60) == 130, first.output
    assert "stopped by SIGINT" in first.output
    assert pending(db) > 0
    second = procs.run("tm-run", *args, timeout=120)
    assert second.code == 0, second.output
    assert "resuming at job #" in second.output
    assert pending(db) == 0
