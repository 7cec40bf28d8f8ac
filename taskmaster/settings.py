"""The validated configurations of a master and a slave, and the checks on who may reach a
run: its address, the shared secret, and the refusal to expose a run without one.

Nothing here does I/O but `load_secret`. The numbers they default to are in config.py.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import secrets
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .config import (
    DEFAULT_ADDRESS,
    DEFAULT_BUFFER_BYTES,
    DEFAULT_BUFFER_SIZE,
    DEFAULT_CONCURRENCY,
    DEFAULT_LEASE_TIMEOUT_S,
    DEFAULT_LINGER_S,
    DEFAULT_MASTER_TIMEOUT_S,
    DEFAULT_MAX_BUFFER_MB,
    DEFAULT_MAX_DEATHS,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_STOP_WAIT_S,
    HEARTBEAT_INTERVAL_S,
    MIN_SECRET_BYTES,
    SECRET_ENV,
)
from .errors import ConfigError
from .limits import MaxFailures, check_rate
from .target import Target, default_state_path, failures_path_for

log = logging.getLogger("taskmaster")


def is_loopback_address(address: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback host."""
    parts = urlsplit(address)
    if parts.scheme in ("ipc", "inproc"):
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(address: str) -> str:
    """Validate a ZeroMQ endpoint; raise ConfigError with the expected form otherwise.

    Port 0 (or ``*``) asks the system for a free port: the master logs the one it got.
    """
    # urlsplit rejects "*" as a port number.
    parts = urlsplit(address.removesuffix(":*") + ":0" if address.endswith(":*") else address)
    if parts.scheme in ("ipc", "inproc") and (parts.netloc or parts.path):
        return address
    try:
        ok = parts.scheme == "tcp" and bool(parts.hostname) and parts.port is not None
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(
            f"bad address {address!r}: expected tcp://HOST:PORT, e.g. {DEFAULT_ADDRESS}")
    return address


def asks_for_a_port(address: str) -> bool:
    """True for a tcp address whose port the system picks at bind time (0 or ``*``)."""
    return address.startswith("tcp://") and address.rsplit(":", 1)[-1] in ("0", "*")


def check_megabytes(option: str, n_bytes: int) -> None:
    if n_bytes < 1024 * 1024:
        raise ConfigError(f"{option} must be at least 1, got {n_bytes / (1024 * 1024):g}")


def check_connectable(address: str) -> str:
    """A slave's address must name its master's port: port 0 is only for a master to bind."""
    if asks_for_a_port(address):
        raise ConfigError(f"bad address {address!r}: a slave connects to its master's port; "
                          "port 0 (any free port) is for the master to bind")
    return address


def load_secret(secret_file: Path | None) -> bytes | None:
    """The shared secret, from --secret-file or $TASKMASTER_SECRET; None when neither is set.

    Never from a command-line value: every user of a host can read every command line.
    """
    if secret_file is not None:
        try:
            secret = secret_file.read_bytes().strip()
        except OSError as e:
            raise ConfigError(f"cannot read --secret-file {secret_file}: {e.strerror}") from None
        where = f"--secret-file {secret_file}"
    elif os.environ.get(SECRET_ENV):
        secret, where = os.environ[SECRET_ENV].strip().encode(), f"${SECRET_ENV}"
    else:
        return None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"the secret in {where} is {len(secret)} bytes; use at least {MIN_SECRET_BYTES}, "
            "e.g. python -c 'import secrets; print(secrets.token_hex(32))'")
    return secret


def signing_key(secret: bytes | None) -> bytes | None:
    """The HMAC key for a secret: derived, so the secret itself is used for nothing else."""
    if secret is None:
        return None
    return hashlib.sha256(b"taskmaster message signing v1\0" + secret).digest()


def check_exposure(address: str, secret: bytes | None, insecure: bool, role: str) -> None:
    """Refuse to talk off loopback without a secret, unless the user insists (--insecure)."""
    if secret is not None or is_loopback_address(address) or insecure:
        return
    verb = "bind" if role == "master" else "connect to"
    raise ConfigError(
        f"refusing to {verb} non-loopback {address} without a shared secret: anyone who "
        f"can reach it could read or forge jobs; set ${SECRET_ENV} or --secret-file "
        "(or pass --insecure on a network you trust)")


@dataclass
class MasterConfig:
    """Everything `tm-master` needs, validated."""

    target: Target
    kwargs: dict[str, Any] = field(default_factory=dict)
    """For get_jobs: strings from KEY=VALUE words, or plain values given to `taskmaster.run`."""
    address: str = DEFAULT_ADDRESS
    size: int = DEFAULT_BUFFER_SIZE
    buffer_bytes: int | None = DEFAULT_BUFFER_BYTES
    """The buffer's own bound in pickled bytes, that of the default --size; None: --size holds
    alone (within --max-buffer-mb), as `master_config` makes it when --size was given."""
    state_path: Path = field(default=None)  # type: ignore[assignment] # set in __post_init__
    failures_path: Path = field(default=None)  # type: ignore[assignment] # likewise
    reset: bool = False
    lease_timeout_s: float = DEFAULT_LEASE_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    max_deaths: int = DEFAULT_MAX_DEATHS
    stop_wait_s: float = DEFAULT_STOP_WAIT_S
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_buffer_bytes: int = DEFAULT_MAX_BUFFER_MB * 1024 * 1024
    linger_s: float = DEFAULT_LINGER_S
    progress: bool = True
    retry_failures: Path | None = None
    rate: float | None = None
    """At most so many jobs a second handed out, across all slaves (--rate)."""
    max_failures: MaxFailures | None = None
    """Stop the run once its failures pass this bound (--max-failures)."""
    secret: bytes | None = field(default=None, repr=False)
    own_secret: bool = False
    """The secret is the run's own (tm-run made it): tm-ctl finds it in the control file."""
    secret_file: Path | None = None
    insecure: bool = False
    curve_dir: Path | None = None
    same_user: bool = False
    """Only this user's processes may connect, on the kernel's word (tm-run's own socket):
    see gate.py."""

    def __post_init__(self) -> None:
        check_address(self.address)
        check_exposure(self.address, self.secret, self.insecure, "master")
        check_rate(self.rate, "--rate")
        if self.size < 1:
            raise ConfigError(f"--size must be at least 1, got {self.size}")
        # (Comparisons a NaN fails: click takes "nan" as a float.)
        if self.max_retries < 0 or self.max_deaths < 1 or not self.stop_wait_s >= 0:
            raise ConfigError("--max-retries must be 0 or more, --max-deaths 1 or more, "
                              "--stop-wait 0 or more")
        check_megabytes("--max-message-mb", self.max_message_bytes)
        check_megabytes("--max-buffer-mb", self.max_buffer_bytes)
        if not self.lease_timeout_s > HEARTBEAT_INTERVAL_S:
            raise ConfigError(
                f"--lease-timeout must exceed the heartbeat interval ({HEARTBEAT_INTERVAL_S}s)"
            )
        if self.retry_failures is not None:
            from .retry import Rounds

            # A retry is a run of its own, its files named after the file it retries (and a
            # retry's own files name the same rounds: see retry.py). --state-file and
            # --failures-file name the run it retries: the same command line, with
            # --retry-failures added, is the retry.
            rounds = Rounds.of(self.retry_failures)
            self.retry_failures = rounds.original
            self.state_path, self.failures_path = rounds.state, rounds.failures
        if self.state_path is None:
            self.state_path = default_state_path(self.target, self.kwargs)
        if self.failures_path is None:
            self.failures_path = failures_path_for(self.state_path)

    @property
    def identity(self) -> dict[str, object]:
        """What makes two runs the same run: a state file belongs to exactly one."""
        # Values as the command line gives them: count=300 from Python is the word count=300.
        kwargs = {k: str(v) for k, v in sorted(self.kwargs.items())}
        return {"target": self.target.identity, "kwargs": kwargs,
                "retry_failures": (str(self.retry_failures.resolve())
                                   if self.retry_failures is not None else None)}

    @property
    def security(self) -> str:
        """How the run's messages are protected, in a few words for the log."""
        curve = ", Curve-encrypted" if self.curve_dir else ""
        if self.same_user:
            return "unsigned: only this user's processes may connect, on the kernel's word" + curve
        if self.secret is None:
            return "no shared secret: loopback only" if not self.insecure else "INSECURE: unsigned"
        return "signed with the shared secret" + curve


@dataclass
class SlaveConfig:
    """Everything `tm-slave` needs, validated."""

    target: Target
    address: str = DEFAULT_ADDRESS
    concurrency: int = DEFAULT_CONCURRENCY
    master_timeout_s: float = DEFAULT_MASTER_TIMEOUT_S
    job_timeout_s: float | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_jobs: int | None = None
    """Jobs after which the slave makes way for a fresh process (--max-jobs-per-slave)."""
    max_memory_mb: int | None = None
    """Resident memory over which it does (--max-memory)."""
    progress: bool = True
    """Log what this slave has done every few seconds (tm-spawn and tm-run turn it off: their
    master shows the run's progress)."""
    report_failures: bool = True
    """Log failed attempts here (tm-run's slaves leave that to their master)."""
    tag: str | None = None
    """The last part of its name, when its supervisor chose it (to know the name)."""
    parent_pid: int | None = None
    """Its supervisor, to die with."""
    supervised: bool = False
    """A supervisor replaces it when it asks (else it execs itself anew)."""
    secret: bytes | None = field(default=None, repr=False)
    insecure: bool = False
    curve_dir: Path | None = None
    same_user: bool = False
    """Talk only to a master of this user, on the kernel's word (tm-run's own socket)."""

    def __post_init__(self) -> None:
        check_address(self.address)
        check_exposure(self.address, self.secret, self.insecure, "slave")
        if self.same_user and not self.address.startswith("ipc://"):
            # Only a local socket names its peer's user: over TCP no master could be let in.
            raise ConfigError(f"address {self.address!r}: a slave that talks only to its own "
                              "user's master needs a local ipc:// address")
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {self.concurrency}")
        if not self.master_timeout_s > 0 or (self.job_timeout_s is not None
                                             and not self.job_timeout_s > 0):
            raise ConfigError("--master-timeout and --job-timeout must be positive")
        if (self.max_jobs is not None and self.max_jobs < 1) or (
                self.max_memory_mb is not None and self.max_memory_mb < 1):
            raise ConfigError("--max-jobs-per-slave and --max-memory must be at least 1")
        check_megabytes("--max-message-mb", self.max_message_bytes)


MIB = 1024 * 1024


def master_config(target: Target, kwargs: dict[str, Any], address: str, opts: dict[str, Any],
                  *, progress: bool, secret: bytes | None = None,
                  same_user: bool = False) -> MasterConfig:
    """The master's configuration from a command's options (by their click names);
    ``secret``: the run's own, when there is neither a --secret-file nor $TASKMASTER_SECRET;
    ``same_user``: see `OwnRun`."""
    return MasterConfig(
        target=target, kwargs=kwargs, address=address,
        size=DEFAULT_BUFFER_SIZE if opts["size"] is None else opts["size"],
        buffer_bytes=DEFAULT_BUFFER_BYTES if opts["size"] is None else None,
        state_path=opts["state_file"], failures_path=opts["failures_file"],
        reset=opts["reset"], lease_timeout_s=opts["lease_timeout"],
        max_retries=opts["max_retries"], max_deaths=opts["max_deaths"],
        stop_wait_s=opts["stop_wait"], retry_failures=opts["retry_failures"],
        max_message_bytes=opts["max_message_mb"] * MIB,
        max_buffer_bytes=opts["max_buffer_mb"] * MIB, linger_s=opts["linger"],
        rate=opts["rate"], max_failures=(MaxFailures.parse(str(opts["max_failures"]))
                                         if opts["max_failures"] is not None else None),
        progress=progress, own_secret=secret is not None,
        secret_file=opts["secret_file"], same_user=same_user, **_security(opts, secret))


def slave_config(target: Target, address: str, opts: dict[str, Any], *, progress: bool,
                 secret: bytes | None = None, same_user: bool = False) -> SlaveConfig:
    """A slave's configuration from a command's options (by their click names)."""
    return SlaveConfig(
        target=target, address=address,
        concurrency=opts["concurrency"], master_timeout_s=opts["master_timeout"],
        job_timeout_s=opts["job_timeout"], max_message_bytes=opts["max_message_mb"] * MIB,
        max_jobs=opts["max_jobs"], max_memory_mb=opts["max_memory"],
        progress=progress, report_failures=not opts["quiet_failures"],
        same_user=same_user, **_security(opts, secret))


def _security(opts: dict[str, Any], secret: bytes | None = None) -> dict[str, Any]:
    """The security settings shared by every command, validated."""
    if opts["insecure"]:
        log.warning("--insecure: messages are not authenticated; anyone who can reach the "
                    "address can read jobs and forge results")
    return {"secret": load_secret(opts["secret_file"]) or secret,
            "insecure": opts["insecure"], "curve_dir": opts["curve_dir"]}


@dataclass
class OwnRun:
    """What tm-run (and `taskmaster.run`) make for a run of their own: an endpoint no other run
    can collide with, known before binding so that the slaves can be forks started while the
    master starts; and a way to keep other local users out of it.

    On Linux (with glibc), without an address or a secret from the user: an abstract socket,
    which the master lets only this user's processes connect to, on the kernel's word
    (``same_user``, see gate.py); its messages go unsigned. Otherwise, unless the user gave a
    secret, one of the run's own: given to the slaves (forks get it in their config, others in
    ``env``), never put in this process's own environment."""

    address: str
    secret: bytes | None
    env: dict[str, str]
    rundir: Path | None = None
    same_user: bool = False

    @classmethod
    def make(cls, address: str | None, secret_file: Path | None) -> OwnRun:
        """``address``: the user's, if they gave one."""
        from .gate import peers_named_by_the_kernel  # not at the top: gate.py imports gevent

        env = dict(os.environ)
        users_secret = secret_file is not None or bool(env.get(SECRET_ENV))
        # The kernel names each peer's user: no secret is needed to keep others out, nor HMAC
        # over every message.
        same_user = address is None and not users_secret and peers_named_by_the_kernel()
        secret = None
        if not users_secret and not same_user:
            env[SECRET_ENV] = secrets.token_hex(32)
            secret = env[SECRET_ENV].encode()
        if address is not None:
            return cls(address, secret, env)
        # On Linux, a socket of the abstract namespace: no file, so nothing to leave behind
        # whatever ends us. Elsewhere, a socket file in a fresh private directory.
        if sys.platform.startswith("linux"):
            return cls(f"ipc://@taskmaster-{secrets.token_hex(8)}", secret, env,
                       same_user=same_user)
        rundir = Path(tempfile.mkdtemp(prefix="tm-run-"))
        return cls(f"ipc://{rundir}/master", secret, env, rundir)

    def cleanup(self) -> None:
        if self.rundir is not None:
            shutil.rmtree(self.rundir, ignore_errors=True)
