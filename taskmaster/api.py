"""`taskmaster.run`: a whole run from Python, as tm-run makes one from a script.

The master runs in this process and its slaves are forks of it, so the functions may be
defined anywhere: in a script's ``__main__``, a Django-style management command, or a REPL
where fork is allowed. Options are the commands' own, as keyword arguments with the same names
(``--max-retries 5`` is ``max_retries=5``); arguments for get_jobs go in ``kwargs``, as
KEY=VALUE words do on the command line. Bad options raise our `ConfigError`; a run that ends
(complete, failed, stopped) returns a `RunResult` with the exit status a command would have.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_LEASE_TIMEOUT_S,
    DEFAULT_LINGER_S,
    DEFAULT_MASTER_TIMEOUT_S,
    DEFAULT_MAX_BUFFER_MB,
    DEFAULT_MAX_DEATHS,
    DEFAULT_MAX_MESSAGE_MB,
    DEFAULT_MAX_RETRIES,
    DEFAULT_STOP_WAIT_S,
)
from .errors import ConfigError
from .settings import OwnRun, asks_for_a_port, master_config, slave_config
from .target import Target

OPTIONS: dict[str, Any] = {
    # Run
    "size": None, "max_buffer_mb": DEFAULT_MAX_BUFFER_MB, "state_file": None,
    "failures_file": None, "reset": False, "lease_timeout": DEFAULT_LEASE_TIMEOUT_S,
    "max_retries": DEFAULT_MAX_RETRIES, "max_deaths": DEFAULT_MAX_DEATHS,
    "linger": DEFAULT_LINGER_S, "stop_wait": DEFAULT_STOP_WAIT_S, "retry_failures": None,
    "rate": None, "max_failures": None,
    # Slave
    "concurrency": DEFAULT_CONCURRENCY, "master_timeout": DEFAULT_MASTER_TIMEOUT_S,
    "job_timeout": None, "no_monkey_patch": False, "max_jobs_per_slave": None,
    "max_memory": None,
    # Connection, Security, Output
    "address": None, "max_message_mb": DEFAULT_MAX_MESSAGE_MB, "secret_file": None,
    "insecure": False, "curve": None, "no_progress": False,
}
"""Every option `run` takes, with its default: tm-run's, by the same names."""
_CLICK_NAMES = {"max_jobs_per_slave": "max_jobs", "curve": "curve_dir"}
"""Options whose name inside the commands differs from the one on their command line."""
_PATHS = ("state_file", "failures_file", "retry_failures", "secret_file", "curve")
_TYPES: dict[str, tuple[type, ...]] = {
    **{name: (int,) for name in ("size", "max_buffer_mb", "max_retries", "max_deaths",
                                 "concurrency", "max_jobs_per_slave", "max_memory",
                                 "max_message_mb")},
    **{name: (int, float) for name in ("lease_timeout", "linger", "stop_wait", "rate",
                                       "master_timeout", "job_timeout")},
    **{name: (bool,) for name in ("reset", "no_monkey_patch", "insecure", "no_progress")},
    **{name: (str, os.PathLike) for name in _PATHS},
    "address": (str,), "max_failures": (str, int),
}
"""What each option may be given as (None is each one's "not set")."""
_PLAIN = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class RunResult:
    """How a run ended: its totals across restarts, and what a command would exit with."""

    finished: int
    failed: int
    elapsed_s: float
    exit_status: int
    """0: every job finished; 1: failures recorded, or an error stopped the run; 130/143:
    stopped by a signal or tm-ctl stop, state saved (calling `run` again resumes)."""
    state_file: Path
    failures_file: Path
    complete: bool = False
    """Every job of the run is settled (finished, or failed and recorded)."""


def run(get_jobs: Callable[..., Any], handle_job: Callable[[Any], Any], processes: int = 2,
        *, kwargs: dict[str, Any] | None = None, **options: Any) -> RunResult:
    """Run ``get_jobs(**kwargs)``'s jobs through ``handle_job`` in ``processes`` local slave
    processes, resumably, as tm-run does; returns when the run ends."""
    opts = _options(options)
    if type(processes) is not int or processes < 1:
        raise ConfigError(f"processes must be a whole number of at least 1, got {processes!r}")
    for name, func in (("get_jobs", get_jobs), ("handle_job", handle_job)):
        if not callable(func):
            raise ConfigError(f"{name} must be a function, got {func!r}")
    get_target, handle_target = _target_of(get_jobs), _target_of(handle_job)
    if get_target.location == "__main__" and opts["state_file"] is None:
        raise ConfigError("get_jobs is not defined in a file (a REPL, python -c), so the run "
                          "has no name to find its state by: pass state_file=... for it")
    if _restart_spec(handle_job) is None and any(
            opts[name] is not None for name in ("max_jobs", "max_memory", "job_timeout")):
        raise ConfigError("max_jobs_per_slave, max_memory and job_timeout replace slaves with "
                          "fresh interpreters, which must import handle_job: define it at the "
                          "top of a file or module")
    if opts["address"] is not None and asks_for_a_port(opts["address"]):
        raise ConfigError(f"address {opts['address']!r}: taskmaster.run forks its slaves "
                          "before the master binds, so it needs the port itself (or no address)")
    # A run of our own, as with tm-run: a private endpoint, and other users kept out of it.
    own = OwnRun.make(opts["address"], opts["secret_file"])
    cfg = master_config(get_target, _kwargs(kwargs), own.address, opts,
                        progress=not opts["no_progress"], secret=own.secret,
                        same_user=own.same_user)
    slave_cfg = slave_config(handle_target, cfg.address, opts, progress=False,
                             secret=own.secret, same_user=own.same_user)
    from .green import switch_on

    # Late (the caller has imported what it imports), but before any greenlet of ours: the
    # forked slaves need it for their greenlets to wait cooperatively.
    switch_on(not opts["no_monkey_patch"])
    import gevent

    from .runner import run_here
    from .slave import Slave
    from .spawn import slave_argv

    def fork(tag: str) -> int:
        return Slave(dataclasses.replace(slave_cfg, tag=tag, supervised=True), handle_job).run()

    def leave(signum: int) -> None:
        # A second Ctrl-C: our slaves are gone; the caller's process is not ours to end.
        main.throw(KeyboardInterrupt)

    def restart_argv(bound: str) -> list[str]:
        spec = _restart_spec(handle_job)
        if spec is None:  # a fresh interpreter could not find it: it says so, and ends
            return [sys.executable, "-c", "import sys; sys.exit('taskmaster: a slave that died "
                    "is not replaced: handle_job is not at the top of a file or module')"]
        return slave_argv(spec, bound, opts, "WARNING", quiet_failures=True,
                          same_user=own.same_user)

    main = gevent.getcurrent()
    started = time.monotonic()
    try:
        outcome = run_here(cfg, get_jobs, processes, env=own.env, fork=fork,
                           cleanup=own.cleanup, leave=leave, slave_argv=restart_argv)
    finally:
        own.cleanup()
    return RunResult(outcome.finished, outcome.failed, time.monotonic() - started,
                     outcome.exit_code, cfg.state_path, cfg.failures_path, outcome.complete)


def _options(options: dict[str, Any]) -> dict[str, Any]:
    """The options by the names the commands use inside (see `settings.master_config`)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"taskmaster.run() takes no option {unknown[0]!r}; its options are "
                          f"tm-run's, by the same names: {', '.join(sorted(OPTIONS))}")
    for name, value in options.items():
        kinds = _TYPES[name]
        if value is not None and (not isinstance(value, kinds) or (
                isinstance(value, bool) and bool not in kinds)):
            raise ConfigError(f"{name}={value!r}: expected "
                              f"{' or '.join(k.__name__ for k in kinds)}")
    given = {**OPTIONS, **options}
    for name in _PATHS:
        if given[name] is not None:
            given[name] = Path(given[name])
    return {_CLICK_NAMES.get(name, name): value for name, value in given.items()} | {
        "quiet_failures": True}


def _kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """get_jobs' arguments: names, and plain values (they name the run in its state file)."""
    out = dict(kwargs or {})
    for key, value in out.items():
        if not isinstance(key, str) or not key.isidentifier() or key == "last":
            raise ConfigError(f"kwargs: {key!r} is not a name get_jobs can take (and 'last' "
                              "is taskmaster's own)")
        if not isinstance(value, _PLAIN):
            raise ConfigError(f"kwargs: {key}={value!r}: values must be str, int, float, bool "
                              "or None (they name the run in its state file)")
    return out


def _target_of(func: Callable[..., Any]) -> Target:
    """Where ``func`` lives, as a target names it: a script by its file (so that tm-run on
    the same script is the same run), a module by its name."""
    name = getattr(func, "__name__", "function")
    module = sys.modules.get(getattr(func, "__module__", "") or "")
    file = getattr(module, "__file__", None)
    if module is not None and module.__name__ == "__main__" and file:
        return Target(f"{file}:{name}", str(file), name)
    location = module.__name__ if module is not None else "__main__"
    return Target(f"{location}:{name}", location, name)


def _restart_spec(handle_job: Callable[[Any], Any]) -> str | None:
    """How a fresh interpreter finds handle_job, to restart a slave that died: by its module
    or file; None for a function of a REPL session, or one not at the top of its module."""
    target = _target_of(handle_job)
    qualname = getattr(handle_job, "__qualname__", "")
    if target.location == "__main__" or qualname != target.func:
        return None
    return target.spec
