"""A one-off data migration on a real server: fill ``users.email_domain`` in PostgreSQL.

Point it at a database of yours with ``dsn=`` (a libpq connection string or URI; empty, the
default, means libpq's own defaults and ``PG*`` environment variables). The demo table is
created there on first use (1 000 000 rows) when the database has no ``users`` table::

    tm-run examples/migrate_postgres.py 2 dsn="dbname=demo"
    tm-run examples/migrate_postgres.py 2 --concurrency 32 mode=row dsn="host=/tmp dbname=demo"
    tm-run examples/migrate_postgres.py 4 page=5000 dsn="postgresql://me@localhost/demo"

``mode=page`` (the default) migrates a page of ``page`` ids (default 1000) with one UPDATE;
``mode=row`` gives each row of a page (default 20 ids) an UPDATE, and a transaction, of its own,
as a migration does whose new value is computed row by row: there the run waits on the server
for every row, and greenlets (``--concurrency``) are what make it fast. Kill it at any moment
and run the same command again: it resumes at the first page not known to be done. Check the
result (0 rows left to migrate, and a sample)::

    psql "dbname=demo" -c "SELECT count(*) FROM users WHERE email_domain IS NULL"
    psql "dbname=demo" -c "SELECT email, email_domain FROM users ORDER BY random() LIMIT 5"

``start=`` and ``stop=`` give a run a share of the ids (``start`` up to, not including,
``stop``): past what one master feeds, start a master (and its slaves) for each share. Each
has a state file of its own, named by its arguments, and resumes on its own (off loopback,
with ``--secret-file`` on masters and slaves alike)::

    tm-master examples/migrate_postgres.py dsn=host=db stop=500000001 --address tcp://10.0.0.5:3050
    tm-master examples/migrate_postgres.py dsn=host=db start=500000001 --address tcp://10.0.0.5:3051

A job is ``(dsn, mode, first_id, last_id)``: one page of primary keys, and where and how to
migrate it, since ``handle_job`` gets nothing but the job. The dsn so travels in every job and
is written to the state file: put no password in it (libpq reads ``PGPASSWORD`` and
``~/.pgpass``, and the slaves of ``tm-run`` inherit its environment). Pages are cut by walking
the primary key (``WHERE id > %s ORDER BY id LIMIT %s``), never by ``OFFSET``, so cutting the
next page costs the same at row 900 000 as at row 0, and ids left unused by deletes are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from taskmaster import sized

if TYPE_CHECKING:
    import psycopg

Job = tuple[str, str, int, int]

DEFAULT_PAGE = {"page": 1000, "row": 20}
"""Ids per job. A row-by-row job is kept small: what a killed run has to do again is whole
jobs, and a job of a thousand round trips would hold one greenlet for a long time."""
DOMAINS = ("Example.com", "mail.EXAMPLE.org", "corp.example.net", "EXAMPLE.io", "home.example")
DOMAIN = "lower(split_part(email, '@', 2))"
END = 2**63 - 1
"""Past every id (the largest bigint): the ``stop`` of a run over all of them."""
DEMO_LOCK = 0x74_6D_64_65_6D_6F
"""The advisory lock that the creation of the demo table holds (any number unlikely to be
another application's)."""

# Both only touch rows still NULL, so a page done twice (a slave killed after its commit and
# before its acknowledgement) changes nothing the second time, and costs only a look.
PAGE_UPDATE = (f"UPDATE users SET email_domain = {DOMAIN} "
               "WHERE id BETWEEN %s AND %s AND email_domain IS NULL")
ROW_UPDATE = f"UPDATE users SET email_domain = {DOMAIN} WHERE id = %s AND email_domain IS NULL"

_idle: dict[str, list[psycopg.Connection[Any]]] = {}
"""Each slave's connections not in use, by dsn. A greenlet takes one for a job and puts it back
after, so a slave opens at most ``--concurrency`` of them, and never lends one to two
greenlets at once (a psycopg connection serialises its users: sharing one would make the
greenlets wait for each other)."""


def connect(dsn: str) -> psycopg.Connection[Any]:
    """A connection in autocommit mode: every statement is a short transaction of its own."""
    # Imported here, not at the top: psycopg picks how it waits for the server when it is
    # first imported, cooperatively only if gevent has patched the standard library by then.
    # A slave patches it before it imports this file, but a script that imports this module
    # before calling taskmaster.run would get a psycopg that blocks the whole slave.
    import psycopg

    return psycopg.connect(dsn, autocommit=True)


def _row(con: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> Any:
    """The one row ``sql`` returns."""
    row = con.execute(sql, params).fetchone()
    assert row is not None
    return row


def _one(con: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> Any:
    """The one value ``sql`` returns."""
    return _row(con, sql, params)[0]


def create_demo(con: psycopg.Connection[Any], rows: int) -> None:
    """Create the demo ``users`` table with ``rows`` rows whose ``email_domain`` is NULL."""
    # Several masters over shares of the table may start at once: one creates it, the others
    # wait for it here and find it made. The lock is the session's, taken before the
    # transaction: a transaction that began before the table was committed can still see
    # none in the catalog after it has waited.
    con.execute("SELECT pg_advisory_lock(%s)", (DEMO_LOCK,))
    try:
        # One transaction (DDL is transactional in PostgreSQL): a creation killed halfway
        # leaves no table, never a half-filled one that the next run would take for the real
        # thing.
        with con.transaction():
            if _one(con, "SELECT to_regclass('users')") is not None:
                return
            con.execute("CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, "
                        "email_domain text NULL)")
            # Generated by the server: a million rows in seconds, none sent over the wire.
            con.execute("INSERT INTO users (id, email) "
                        "SELECT i, 'user' || i || '@' || (%s::text[])[i %% %s + 1] "
                        "FROM generate_series(1, %s) AS i", (list(DOMAINS), len(DOMAINS), rows))
        con.execute("ANALYZE users")
    finally:
        con.execute("SELECT pg_advisory_unlock(%s)", (DEMO_LOCK,))


def pages(con: psycopg.Connection[Any], after: int, per_page: int,
          stop: int = END) -> Iterator[tuple[int, int]]:
    """``(first_id, last_id)`` of each page of ``per_page`` ids greater than ``after`` and
    less than ``stop``."""
    while True:
        # min and max of no rows are NULL: one row always comes back.
        first, last_id = _row(con, "SELECT min(id), max(id) FROM (SELECT id FROM users "
                              "WHERE id > %s AND id < %s ORDER BY id LIMIT %s) AS page",
                              (after, stop, per_page))
        if first is None:
            return
        yield first, last_id
        after = last_id


def migrate_page(con: psycopg.Connection[Any], first: int, last_id: int) -> int:
    """One UPDATE for the page; the rows it changed."""
    return con.execute(PAGE_UPDATE, (first, last_id)).rowcount


def migrate_rows(con: psycopg.Connection[Any], first: int, last_id: int) -> int:
    """One UPDATE, one transaction, per row of the page still to do; the rows it changed."""
    ids = [row[0] for row in con.execute(
        "SELECT id FROM users WHERE id BETWEEN %s AND %s AND email_domain IS NULL ORDER BY id",
        (first, last_id))]
    return sum(con.execute(ROW_UPDATE, (row_id,)).rowcount for row_id in ids)


MIGRATE: dict[str, Callable[[psycopg.Connection[Any], int, int], int]] = {
    "page": migrate_page, "row": migrate_rows}


def get_jobs(last: Job | None = None, dsn: str = "", mode: str = "page",
             page: str | None = None, rows: str = "1000000", start: str = "1",
             stop: str = "") -> sized:
    """Pages of ids still to migrate, from the page ``last`` (inclusive) on: of all the ids,
    or of those from ``start`` up to, not including, ``stop`` (a share of the key space, for
    one of several masters; each has a state file of its own, named by its arguments).

    ``rows`` only matters when the demo table has to be created.
    """
    if mode not in MIGRATE:
        raise ValueError(f"mode must be one of {', '.join(sorted(MIGRATE))}, got {mode!r}")
    per_page = DEFAULT_PAGE[mode] if page is None else int(page)
    if per_page < 1:
        raise ValueError(f"page must be at least 1, got {page}")
    below = int(stop) if stop else END
    con = connect(dsn)
    try:
        if _one(con, "SELECT to_regclass('users')") is None:
            create_demo(con, int(rows))
        after = int(start) - 1 if last is None else last[2] - 1
        remaining = _one(con, "SELECT count(*) FROM users WHERE id > %s AND id < %s",
                         (after, below))
    except BaseException:
        con.close()
        raise

    def jobs(after: int) -> Iterator[Job]:
        try:
            for first, last_id in pages(con, after, per_page, below):
                yield (dsn, mode, first, last_id)
        finally:
            con.close()

    return sized(jobs(after), total=-(-remaining // per_page))


def handle_job(job: Job) -> int:
    """Migrate one page, by page or row by row; idempotent, so a page run twice does no harm."""
    dsn, mode, first, last_id = job
    idle = _idle.setdefault(dsn, [])
    # Opened lazily, in the slave's own process: a connection must never be inherited through
    # a fork, and a slave that gets no job opens none.
    con = idle.pop() if idle else connect(dsn)
    try:
        changed = MIGRATE[mode](con, first, last_id)
    except BaseException:
        # Interrupted (a job timeout, a stop) or failed mid-statement: what state the
        # connection is in is unknown, so it is not put back for the next job.
        con.close()
        raise
    idle.append(con)
    return changed
