"""Every tunable number, once, with its unit in its name; and the validated configurations.

The defaults of the command-line options come first, then the internal constants grouped by
the part that uses them. Nothing here does I/O but `load_secret`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError
from .target import Target, default_state_path, failures_path_for

# -- option defaults ------------------------------------------------------------------------

DEFAULT_ADDRESS = "tcp://127.0.0.1:3050"
DEFAULT_BUFFER_SIZE = 10_000
DEFAULT_CONCURRENCY = 10
DEFAULT_LEASE_TIMEOUT_S = 30.0
DEFAULT_MASTER_TIMEOUT_S = 300.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_DEATHS = 3
DEFAULT_STOP_WAIT_S = 30.0
DEFAULT_LINGER_S = 3.0
"""After a run completes, how long tm-master stays to tell late slaves so."""
DEFAULT_MAX_MESSAGE_MB = 64
DEFAULT_MAX_MESSAGE_BYTES = DEFAULT_MAX_MESSAGE_MB * 1024 * 1024
"""Largest JOBS message: a batch is cut to fit it, a job alone over it fails."""
DEFAULT_MAX_BUFFER_MB = 256
"""What the master may hold of jobs, buffered and leased, in pickled MiB (as estimated from
the sizes of the jobs seen so far)."""

# -- liveness and checkpoints ---------------------------------------------------------------

HEARTBEAT_INTERVAL_S = 1.0
"""Between two heartbeats of a slave, and two PINGs of the master."""
CHECKPOINT_INTERVAL_S = 1.0
PROGRESS_LOG_INTERVAL_S = 5.0
"""Between two progress log lines when the output is not a terminal."""
FAILURE_SUMMARY_S = 5.0
"""Failures after the first of their type are said in counts, at most this often."""
RATE_WINDOW_S = 10.0
"""The rate shown is over this much of the recent past."""
RETRY_BACKOFF_BASE_S = 0.5
RETRY_BACKOFF_MAX_S = 30.0

# -- the master -----------------------------------------------------------------------------

MASTER_TICK_S = 0.25
"""Between two rounds of the master's periodic work (expiry, pings, checkpoints, progress)."""
FEED_TURN_S = 0.01
"""Longest the feeder thread collects jobs before it hands them over: long enough to make
chunks of thousands when the stream is fast, short enough that a slow stream's jobs go out
as they come."""
FEED_STEP_MAX_JOBS = 4096
"""Most jobs the feeder pulls in one C-level step (see feeder.py)."""
FEED_SKIP_STEP_JOBS = 100_000
"""Jobs skipped in one step when a stream is resumed by position: between two steps, the
feeder sees that it should stop."""
FEED_POLL_MAX_S = 0.2
"""Longest the master waits between two looks at a turn of the feeder that is blocked in the
stream (from FEED_TURN_S, doubling while there is nothing new)."""
DONE_LINGER_S = 2.0
"""After the run, how long the master waits for slaves to acknowledge DONE."""
DROP_LOG_INTERVAL_S = 10.0
"""Least time between two log lines about dropped messages: a flood must not flood the log."""
WELCOME_REPEAT_S = 0.5
"""Least time between two WELCOMEs to one slave: knocks are not answered more often."""
DISK_TROUBLE_LOG_INTERVAL_S = 60.0
"""While a file cannot be written, how often the master says so again."""
MAX_TRACKED_SENDERS = 100_000
"""Bound on the replay counters and pending welcomes kept per sender identity."""

# -- dispatch: what the master leases to one slave ------------------------------------------

MAX_BATCH_JOBS = 5000
"""Largest batch in one message (and the unit of acknowledgement)."""
FIRST_BATCH_JOBS = 100
"""Batch size until the pickled size of a job is known."""
MAX_WINDOW_JOBS = 20_000
"""Most jobs one slave may hold at once: the bound on a slave's leases."""
BATCH_BYTES = 512 * 1024
WINDOW_BYTES = 4 * 1024 * 1024
"""The same two bounds in pickled bytes, for large jobs: what the master holds for each slave
(and copies into messages for it) stays a few megabytes whatever the size of a job."""
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest message a master takes from a slave (they are small: acknowledgements with their
errors); what a slave takes is its --max-message-mb."""
MESSAGE_SLACK_BYTES = 4096
"""Headroom beyond the largest body for the kind, header and signature frames."""
MAX_ERROR_CHARS = 100_000
"""Longest error text (a traceback, usually) kept from a slave's report."""
MAX_NAME_CHARS = 256
"""Longest identity, nonce or exception name taken from a message."""
MAX_HOST_CHARS = 200

# -- the slave ------------------------------------------------------------------------------

SLAVE_WORK_AHEAD_S = 0.2
"""How much work, in seconds, a slave asks to hold so that it never waits for the master."""
PIECE_S = 0.05
"""Work one greenlet does in one turn before it lets the others (and the socket) run."""
STEAL_AFTER_S = 0.25
"""A piece still running after this long (a job in it is slow) has the jobs after that job
taken over by an idle greenlet: one slow job holds up only itself."""
SLAVE_STOP_WAIT_S = 30.0
"""On SIGINT/SIGTERM, how long running jobs get to finish before the slave leaves anyway."""
JOIN_RETRY_S = 0.05
"""How often a slave knocks while no master has welcomed it, for the first `JOIN_FAST_S`
(the heartbeat thread keeps knocking every second after that)."""
JOIN_FAST_S = 5.0
SLAVE_WAKE_S = 0.2
"""Longest the slave's loop sleeps without a message, so that it notices it should exit."""
ACK_DELAY_S = 0.1
"""Longest a slave with plenty of queued work holds back an acknowledgement, to send several in
one message: each message wakes the master, and on a host with as many busy slaves as cores
the master's turn is taken from a slave. A slave running low on work acknowledges at once."""
JOB_TIMEOUT_GRACE_S = 1.0
"""How long past --job-timeout a job that will not stop may run before its watchdog replaces
the slave's process (one that yields is stopped at the limit itself)."""
SLAVE_HARD_STOP_S = 5.0
"""After a stop signal's SLAVE_STOP_WAIT_S, how long a slave whose jobs hold its loop gets
before its watchdog makes it leave anyway."""
MEMORY_CHECK_S = 0.5
"""Between two looks at a slave's resident memory (for --max-memory)."""
MASTER_WAIT_LOG_S = 10.0
"""Between two lines of a slave that waits for a master."""
RECONNECT_FIRST_MS = 100
RECONNECT_MAX_MS = 4000
"""Reconnect quickly at first (a restarted master is back within a second), backing off to a
few seconds so that a long outage does not mean a storm of connection attempts."""

# -- supervision (tm-spawn, tm-run) ---------------------------------------------------------

MAX_RESTARTS = 5
"""Deaths in a row after which a slot is given up on."""
GONE_GRACE_S = 1.0
"""After a slave's process is known to be gone, how long its last messages (acknowledgements,
its goodbye, its watchdog's word) have to be read before its leases are taken back: they were
sent before it ended, but may come in after the news of its end, which travels another way."""
SLAVES_PER_CPU_WARNING = 4
"""tm-run warns when asked for more slaves than this many per CPU."""
RESTART_HEALTHY_S = 60.0
"""A slave that ran this long before it died starts its count of deaths afresh."""
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
SUPERVISE_POLL_S = 0.2
SUPERVISOR_STOP_WAIT_S = 40.0
"""How long slaves get to finish their running jobs after a forwarded signal."""
SLAVE_EXIT_GRACE_S = 1.0
"""After a complete run, how long tm-run lets its slaves leave by themselves."""

# -- security -------------------------------------------------------------------------------

SECRET_ENV = "TASKMASTER_SECRET"
MIN_SECRET_BYTES = 16


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
    kwargs: dict[str, str] = field(default_factory=dict)
    address: str = DEFAULT_ADDRESS
    size: int = DEFAULT_BUFFER_SIZE
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
    secret: bytes | None = field(default=None, repr=False)
    insecure: bool = False
    curve_dir: Path | None = None

    def __post_init__(self) -> None:
        check_address(self.address)
        check_exposure(self.address, self.secret, self.insecure, "master")
        if self.size < 1:
            raise ConfigError(f"--size must be at least 1, got {self.size}")
        if self.max_retries < 0 or self.max_deaths < 1 or self.stop_wait_s < 0:
            raise ConfigError("--max-retries must be 0 or more, --max-deaths 1 or more, "
                              "--stop-wait 0 or more")
        check_megabytes("--max-message-mb", self.max_message_bytes)
        check_megabytes("--max-buffer-mb", self.max_buffer_bytes)
        if self.lease_timeout_s <= HEARTBEAT_INTERVAL_S:
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
        return {"target": self.target.identity, "kwargs": dict(sorted(self.kwargs.items())),
                "retry_failures": (str(self.retry_failures.resolve())
                                   if self.retry_failures is not None else None)}

    @property
    def security(self) -> str:
        """How the run's messages are protected, in a few words for the log."""
        if self.secret is None:
            return "no shared secret: loopback only" if not self.insecure else "INSECURE: unsigned"
        return "signed with the shared secret" + (", Curve-encrypted" if self.curve_dir else "")


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

    def __post_init__(self) -> None:
        check_address(self.address)
        check_exposure(self.address, self.secret, self.insecure, "slave")
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.master_timeout_s <= 0 or (self.job_timeout_s is not None
                                          and self.job_timeout_s <= 0):
            raise ConfigError("--master-timeout and --job-timeout must be positive")
        if (self.max_jobs is not None and self.max_jobs < 1) or (
                self.max_memory_mb is not None and self.max_memory_mb < 1):
            raise ConfigError("--max-jobs-per-slave and --max-memory must be at least 1")
        check_megabytes("--max-message-mb", self.max_message_bytes)
