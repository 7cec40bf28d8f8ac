"""A one-off data migration: fill ``users.email_domain`` from ``users.email`` in SQLite.

Run it from the repository root (the demo database is created on first use, 1 000 000 rows)::

    tm-run examples/migrate_sqlite.py 2
    tm-run examples/migrate_sqlite.py 2 db=/path/to/other.db page=2000

Kill it at any moment and run the same command again: it resumes at the first page not known
to be done. Check the result (0 rows left to migrate, and a sample)::

    sqlite3 examples/demo.db "SELECT count(*) FROM users WHERE email_domain IS NULL"
    sqlite3 examples/demo.db "SELECT email, email_domain FROM users ORDER BY random() LIMIT 5"

A job is ``(db_path, first_id, last_id)``: one page of primary keys. Pages are cut by walking
the primary key (``WHERE id > ? ORDER BY id LIMIT ?``), never by ``OFFSET``, so cutting the
next page costs the same at row 900 000 as at row 0, and ids left unused by deletes are skipped.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from taskmaster import sized

Job = tuple[str, int, int]

BUSY_TIMEOUT_MS = 60_000
"""How long a writer waits for another slave's transaction before the attempt fails (and is
retried by taskmaster): generous, because with several slaves writing, waiting is normal."""
DOMAINS = ("Example.com", "mail.EXAMPLE.org", "corp.example.net", "EXAMPLE.io", "home.example")

_connections: dict[str, sqlite3.Connection] = {}


def create_demo(path: Path, rows: int) -> None:
    """Create the demo ``users`` table with ``rows`` rows whose ``email_domain`` is NULL."""
    # Built beside the target and renamed into place, so that a creation killed halfway is
    # never mistaken for a finished database on the next run.
    tmp = path.with_name(path.name + ".creating")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp, isolation_level=None)
    try:
        con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL, "
                    "email_domain TEXT NULL)")
        con.execute("BEGIN")
        con.executemany("INSERT INTO users (id, email) VALUES (?, ?)",
                        ((i, f"user{i}@{DOMAINS[i % len(DOMAINS)]}")
                         for i in range(1, rows + 1)))
        con.execute("COMMIT")
    finally:
        con.close()
    os.replace(tmp, path)


def _connect(path: str) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return con


def get_jobs(last: Job | None = None, db: str = "examples/demo.db", rows: str = "1000000",
             page: str = "500", **kwargs: str) -> sized:
    """Pages of ids still to migrate, from the page ``last`` (inclusive) on.

    ``rows`` only matters when the demo database has to be created.
    """
    # Slaves may run in another directory (or on another host with a shared path): the job
    # carries an absolute path.
    path = Path(db).resolve()
    per_page = int(page)
    if per_page < 1:
        raise ValueError(f"page must be at least 1, got {page}")
    if not path.exists():
        create_demo(path, int(rows))
    con = _connect(str(path))
    # Persistent in the file: set once here, before any slave writes, so that the writers only
    # wait for each other and never for this reader.
    con.execute("PRAGMA journal_mode = WAL")
    after = 0 if last is None else last[1] - 1
    (remaining,) = con.execute("SELECT count(*) FROM users WHERE id > ?", (after,)).fetchone()

    def pages(after: int) -> Iterator[Job]:
        try:
            while True:
                first, last_id = con.execute(
                    "SELECT min(id), max(id) FROM "
                    "(SELECT id FROM users WHERE id > ? ORDER BY id LIMIT ?)",
                    (after, per_page)).fetchone()
                if first is None:
                    return
                yield (str(path), first, last_id)
                after = last_id
        finally:
            con.close()

    return sized(pages(after), total=-(-remaining // per_page))


def handle_job(job: Job) -> int:
    """Fill ``email_domain`` for one page; idempotent, so a page run twice does no harm."""
    path, first, last_id = job
    con = _connections.get(path)
    if con is None:
        con = _connections[path] = _connect(path)
    # One statement in autocommit mode is one short write transaction: the write lock is held
    # only for this page, and a page is never half done.
    return con.execute(
        "UPDATE users SET email_domain = lower(substr(email, instr(email, '@') + 1)) "
        "WHERE id BETWEEN ? AND ?", (first, last_id)).rowcount
