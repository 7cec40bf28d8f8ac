"""Defaults, validated configuration, target loading and the run's identity.

Every tunable number lives here once, with its unit in its name.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import ipaddress
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

DEFAULT_ADDRESS = "tcp://127.0.0.1:3050"
DEFAULT_BUFFER_SIZE = 10_000
DEFAULT_CONCURRENCY = 10
DEFAULT_LEASE_TIMEOUT_S = 30.0
DEFAULT_MASTER_TIMEOUT_S = 300.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_DEATHS = 3
DEFAULT_STOP_WAIT_S = 30.0
HEARTBEAT_INTERVAL_S = 1.0
CHECKPOINT_INTERVAL_S = 1.0
PROGRESS_LOG_INTERVAL_S = 5.0
RETRY_BACKOFF_BASE_S = 0.5
RETRY_BACKOFF_MAX_S = 30.0
MAX_BATCH_JOBS = 5000
"""Largest batch the master puts in one message (and the unit of acknowledgement)."""
MAX_WINDOW_JOBS = 20_000
"""Most jobs one slave may hold at once: the bound on a slave's leases."""
BATCH_BYTES = 512 * 1024
WINDOW_BYTES = 4 * 1024 * 1024
"""The same two bounds in pickled bytes, for large jobs: what the master holds for each slave
(and copies into messages for it) stays a few megabytes whatever the size of a job."""
SLAVE_WORK_AHEAD_S = 0.2
"""How much work, in seconds, a slave asks to hold so that it never waits for the master."""
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

SECRET_ENV = "TASKMASTER_SECRET"
MIN_SECRET_BYTES = 16

STATE_SUFFIX = ".tmstate"
FAILURES_SUFFIX = ".failures.jsonl"


@dataclass(frozen=True)
class Target:
    """Where the user's function lives: ``module``, ``module:func`` or ``path/file.py[:func]``."""

    spec: str
    location: str
    func: str

    @classmethod
    def parse(cls, spec: str, default_func: str) -> Target:
        location, sep, func = spec.rpartition(":") if _has_func(spec) else (spec, "", "")
        if not location or (sep and not func.isidentifier()):
            raise ConfigError(
                f"bad target {spec!r}: expected module, module:function or path/file.py[:function]"
            )
        return cls(spec, location, func or default_func)

    @property
    def is_path(self) -> bool:
        return self.location.endswith(".py") or "/" in self.location or "\\" in self.location

    def load(self) -> Callable[..., Any]:
        """Import the module (or file) and return the function, or raise one clear ConfigError."""
        module = self._load_path() if self.is_path else self._load_module()
        try:
            func = getattr(module, self.func)
        except AttributeError:
            raise ConfigError(
                f"target {self.spec!r}: {self.location} has no function {self.func!r}; "
                f"define it or name another with {self.location}:FUNCTION"
            ) from None
        if not callable(func):
            raise ConfigError(f"target {self.spec!r}: {self.func!r} is not callable")
        return func

    def _load_module(self) -> Any:
        # A module named on the command line is looked up from the current directory too,
        # as `python -m` would.
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        try:
            return importlib.import_module(self.location)
        except ModuleNotFoundError as e:
            if e.name and (self.location == e.name or self.location.startswith(e.name + ".")):
                raise ConfigError(
                    f"target {self.spec!r}: no module named {e.name!r}; "
                    "check the spelling, install it, or run from the directory that holds it"
                ) from None
            raise

    def _load_path(self) -> Any:
        path = Path(self.location)
        if not path.is_file():
            raise ConfigError(f"target {self.spec!r}: no such file {str(path)!r}")
        name = "_taskmaster_target_" + re.sub(r"\W", "_", path.stem)
        loaded = sys.modules.get(name)
        if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() == path.resolve():
            return loaded  # tm-run loads get_jobs and handle_job: one import, as for a module
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"target {self.spec!r}: {str(path)!r} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        # Registered before running so that pickled jobs whose classes live in the script
        # refer to a module name the slave, loading the same file, will also have.
        sys.modules[name] = module
        sys.path.insert(0, str(path.resolve().parent))
        spec.loader.exec_module(module)
        return module


def _has_func(spec: str) -> bool:
    # A Windows drive letter (C:\x.py) is not a function separator.
    head, sep, tail = spec.rpartition(":")
    return bool(sep) and not (len(head) == 1 and tail.startswith(("\\", "/")))


def parse_kwargs(pairs: Sequence[str]) -> dict[str, str]:
    """Turn ``KEY=VALUE`` words into keyword arguments for ``get_jobs`` (values stay strings)."""
    kwargs: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"bad argument {pair!r}: expected KEY=VALUE with KEY a Python name")
        if key == "last":
            raise ConfigError("'last' is set by taskmaster on resume; pass other KEY=VALUE pairs")
        kwargs[key] = value
    return kwargs


def default_state_path(target: Target, kwargs: dict[str, str]) -> Path:
    """The state file for this run: in the current directory, named from target and kwargs."""
    # A file is named by its absolute path: ./jobs.py and jobs.py are the same run.
    location = str(Path(target.location).resolve()) if target.is_path else target.location
    identity = json.dumps([location, target.func, sorted(kwargs.items())])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(target.location).stem if target.is_path
                  else target.location)
    return Path.cwd() / f"{stem}-{target.func}-{digest}{STATE_SUFFIX}"


def failures_path_for(state_path: Path) -> Path:
    """Where failures are recorded when no --failures-file is given: beside the state file."""
    name = state_path.name.removesuffix(STATE_SUFFIX)
    return state_path.with_name(name + FAILURES_SUFFIX)


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
    """Validate a ZeroMQ endpoint; raise ConfigError with the expected form otherwise."""
    # ":*" asks the system for a free port; urlsplit would reject it as a port number.
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
    if secret is not None or is_loopback_address(address):
        return
    if not insecure:
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
    state_path: Path | None = None
    failures_path: Path | None = None
    reset: bool = False
    lease_timeout_s: float = DEFAULT_LEASE_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    max_deaths: int = DEFAULT_MAX_DEATHS
    stop_wait_s: float = DEFAULT_STOP_WAIT_S
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
        if self.lease_timeout_s <= HEARTBEAT_INTERVAL_S:
            raise ConfigError(
                f"--lease-timeout must exceed the heartbeat interval ({HEARTBEAT_INTERVAL_S}s)"
            )
        if self.state_path is None and self.retry_failures is not None:
            # A retry is a run of its own, named after the file it retries.
            name = self.retry_failures.name.removesuffix(FAILURES_SUFFIX)
            self.state_path = self.retry_failures.with_name(name + ".retry" + STATE_SUFFIX)
        if self.state_path is None:
            self.state_path = default_state_path(self.target, self.kwargs)
        if self.failures_path is None:
            self.failures_path = failures_path_for(self.state_path)


@dataclass
class SlaveConfig:
    """Everything `tm-slave` needs, validated."""

    target: Target
    address: str = DEFAULT_ADDRESS
    concurrency: int = DEFAULT_CONCURRENCY
    master_timeout_s: float = DEFAULT_MASTER_TIMEOUT_S
    job_timeout_s: float | None = None
    progress: bool = True
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
