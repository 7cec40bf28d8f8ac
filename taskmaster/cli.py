"""The four commands. Each one parses, validates into a config, builds, runs, maps to a status."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from .config import (
    DEFAULT_ADDRESS,
    DEFAULT_BUFFER_SIZE,
    DEFAULT_CONCURRENCY,
    DEFAULT_LEASE_TIMEOUT_S,
    DEFAULT_LINGER_S,
    DEFAULT_MASTER_TIMEOUT_S,
    DEFAULT_MAX_BUFFER_MB,
    DEFAULT_MAX_DEATHS,
    DEFAULT_MAX_MESSAGE_MB,
    DEFAULT_MAX_RETRIES,
    DEFAULT_STOP_WAIT_S,
    SECRET_ENV,
    MasterConfig,
    SlaveConfig,
    check_connectable,
    load_secret,
)
from .errors import (
    EXIT_FAILED,
    EXIT_REPLACE,
    EXIT_SIGINT,
    ConfigError,
    Outcome,
    TaskmasterError,
    UserCodeError,
)
from .green import switch_on
from .target import Target, parse_kwargs

log = logging.getLogger("taskmaster")

MIB = 1024 * 1024
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def _option(*decls: str, **kwargs: Any) -> Callable[[Any], Any]:
    """A click option that also reads TASKMASTER_<NAME> from the environment."""
    name = max(decls, key=len).lstrip("-").split("/")[0].upper().replace("-", "_")
    kwargs.setdefault("envvar", f"TASKMASTER_{name}")
    kwargs.setdefault("show_default", True)
    return click.option(*decls, **kwargs)


def _common(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        _option("--secret-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                help=f"File holding the shared secret (or set ${SECRET_ENV})."),
        _option("--insecure", is_flag=True,
                help="Allow a non-loopback address without a shared secret."),
        _option("--curve", "curve_dir", type=click.Path(file_okay=False, path_type=Path),
                default=None, envvar="TASKMASTER_CURVE",
                help="Encrypt with CurveZMQ, keys from this directory (see tm-keygen)."),
        _option("--log-level", default="INFO",
                type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)),
        _option("--no-progress", is_flag=True, help="No progress bar or progress log lines."),
        _option("--max-message-mb", type=int, default=DEFAULT_MAX_MESSAGE_MB,
                help="Largest message of jobs, in MiB: batches are cut to fit, and a job "
                     "alone over it is recorded as failed. The same on master and slaves."),
    ]):
        f = opt(f)
    return f


def _security(opts: dict[str, Any], secret: bytes | None = None) -> dict[str, Any]:
    """The security settings shared by every command, validated (``secret``: one of the
    run's own, when there is neither a --secret-file nor $TASKMASTER_SECRET)."""
    if opts["insecure"]:
        log.warning("--insecure: messages are not authenticated; anyone who can reach the "
                    "address can read jobs and forge results")
    return {"secret": load_secret(opts["secret_file"]) or secret,
            "insecure": opts["insecure"], "curve_dir": opts["curve_dir"]}


def _address(default: str | None = DEFAULT_ADDRESS) -> Callable[[Any], Any]:
    return _option("--address", default=default,
                   help="ZeroMQ endpoint, tcp://HOST:PORT." if default else
                   "ZeroMQ endpoint (default: a free local port).")


def _slave_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        _option("--concurrency", "-c", type=int, default=DEFAULT_CONCURRENCY,
                help="Greenlets calling handle_job in each slave."),
        _option("--master-timeout", type=float, default=DEFAULT_MASTER_TIMEOUT_S,
                help="Seconds without a master before a slave gives up."),
        _option("--job-timeout", type=float, default=None,
                help="Seconds one handle_job call may take (counts as a failed attempt)."),
        _option("--no-monkey-patch", is_flag=True,
                help="Do not let gevent patch the standard library in slaves."),
        _option("--max-jobs-per-slave", "max_jobs", type=int, default=None,
                envvar="TASKMASTER_MAX_JOBS_PER_SLAVE",
                help="Jobs after which a slave makes way for a fresh process."),
        _option("--max-memory", "max_memory", type=int, default=None,
                help="Resident MB over which a slave makes way for a fresh process."),
    ]):
        f = opt(f)
    return f


def _master_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        _option("--size", type=int, default=DEFAULT_BUFFER_SIZE, help="Jobs buffered in memory."),
        _option("--max-buffer-mb", type=int, default=DEFAULT_MAX_BUFFER_MB,
                help="What the master holds of jobs, buffered and leased, in MiB (pickled)."),
        _option("--state-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                help="Checkpoint file (default: named from target and arguments, in .)."),
        _option("--failures-file", type=click.Path(dir_okay=False, path_type=Path),
                default=None, help="Failed-job records (default: beside the state file)."),
        _option("--reset", is_flag=True, help="Forget the saved state and start over."),
        _option("--lease-timeout", type=float, default=DEFAULT_LEASE_TIMEOUT_S,
                help="Seconds of silence before a slave's jobs go to others."),
        _option("--max-retries", type=int, default=DEFAULT_MAX_RETRIES,
                help="Retries of a job whose handle_job raised."),
        _option("--max-deaths", type=int, default=DEFAULT_MAX_DEATHS,
                help="Slave deaths a job may cause before it is recorded as failed."),
        _option("--linger", type=float, default=DEFAULT_LINGER_S,
                help="After the run, seconds to stay telling late slaves it is done."),
        _option("--stop-wait", type=float, default=DEFAULT_STOP_WAIT_S,
                help="On SIGINT/SIGTERM, seconds to wait for leased jobs."),
        _option("--retry-failures", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                default=None, envvar=None,
                help="Run exactly the jobs recorded in this failures file, again."),
    ]):
        f = opt(f)
    return f


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)


def _execute(name: str, body: Callable[[], int | Outcome]) -> NoReturn:
    """Run a command body and exit with its status; our errors become one clear line."""
    try:
        result = body()
        code = result.exit_code if isinstance(result, Outcome) else result
    except UserCodeError as e:
        click.echo(f"{name}: {e}\n{e.user_traceback.rstrip()}", err=True)
        code = EXIT_FAILED
    except TaskmasterError as e:
        log.debug("details", exc_info=True)
        click.echo(f"{name}: error: {e}", err=True)
        code = e.exit_code
    except KeyboardInterrupt:
        # Ctrl-C before the run began to listen for it (while loading, say): nothing ran.
        click.echo(f"{name}: interrupted", err=True)
        code = EXIT_SIGINT
    sys.exit(code)


def _load(spec: str, default_func: str) -> Callable[..., Any]:
    target = Target.parse(spec, default_func)
    try:
        return target.load()
    except TaskmasterError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's module itself failed to import
        raise UserCodeError(f"importing target {spec!r} raised {type(e).__name__}: {e}",
                            traceback.format_exc()) from None


def _master_config(target: str, pairs: tuple[str, ...], address: str, opts: dict[str, Any],
                   no_progress: bool, secret: bytes | None = None) -> MasterConfig:
    return MasterConfig(
        target=Target.parse(target, "get_jobs"), kwargs=parse_kwargs(pairs), address=address,
        size=opts["size"], state_path=opts["state_file"], failures_path=opts["failures_file"],
        reset=opts["reset"], lease_timeout_s=opts["lease_timeout"],
        max_retries=opts["max_retries"], max_deaths=opts["max_deaths"],
        stop_wait_s=opts["stop_wait"], retry_failures=opts["retry_failures"],
        max_message_bytes=opts["max_message_mb"] * MIB,
        max_buffer_bytes=opts["max_buffer_mb"] * MIB, linger_s=opts["linger"],
        progress=not no_progress, **_security(opts, secret))


def _slave_config(target: str, address: str, opts: dict[str, Any],
                  no_progress: bool, secret: bytes | None = None) -> SlaveConfig:
    return SlaveConfig(
        target=Target.parse(target, "handle_job"), address=address,
        concurrency=opts["concurrency"], master_timeout_s=opts["master_timeout"],
        job_timeout_s=opts["job_timeout"], max_message_bytes=opts["max_message_mb"] * MIB,
        max_jobs=opts["max_jobs"], max_memory_mb=opts["max_memory"],
        progress=not no_progress, **_security(opts, secret))


def _slave_argv(target: str, address: str, opts: dict[str, Any], log_level: str) -> list[str]:
    from .spawn import slave_command

    argv = ["--address", address, "--concurrency", str(opts["concurrency"]),
            "--master-timeout", str(opts["master_timeout"]), "--log-level", log_level,
            "--max-message-mb", str(opts["max_message_mb"]), "--no-progress"]
    for option, key in (("--job-timeout", "job_timeout"), ("--max-jobs-per-slave", "max_jobs"),
                        ("--max-memory", "max_memory")):
        if opts[key] is not None:
            argv += [option, str(opts[key])]
    if opts["no_monkey_patch"]:
        argv.append("--no-monkey-patch")
    # The secret itself never goes on a command line: a file's path, or the environment.
    if opts["secret_file"] is not None:
        argv += ["--secret-file", str(opts["secret_file"])]
    if opts["insecure"]:
        argv.append("--insecure")
    if opts["curve_dir"] is not None:
        argv += ["--curve", str(opts["curve_dir"])]
    return slave_command(target, argv)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("target")
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...")
@_address()
@_master_options
@_common
def master(target: str, pairs: tuple[str, ...], address: str, log_level: str,
           no_progress: bool, **opts: Any) -> None:
    """Serve the jobs of TARGET's get_jobs (module, module:func or path/file.py[:func])."""
    _setup_logging(log_level)

    def body() -> Outcome:
        cfg = _master_config(target, pairs, address, opts, no_progress)
        switch_on()
        from .master import Master

        return Master(cfg, _load(target, "get_jobs")).run()

    _execute("tm-master", body)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("target")
@_address()
@_slave_options
@_common
def slave(target: str, address: str, log_level: str, no_progress: bool, **opts: Any) -> None:
    """Run TARGET's handle_job on jobs from the master, in a pool of greenlets."""
    _setup_logging(log_level)

    def body() -> int:
        from .spawn import PARENT_ENV, TAG_ENV, die_with_parent

        cfg = _slave_config(target, check_connectable(address), opts, no_progress)
        # Started by tm-spawn or tm-run: dies with it, and is replaced by it when it asks.
        parent = os.environ.pop(PARENT_ENV, "")
        if parent.isdigit():
            die_with_parent(int(parent))
        cfg = dataclasses.replace(cfg, tag=os.environ.pop(TAG_ENV, None) or None,
                                  parent_pid=int(parent) if parent.isdigit() else None,
                                  supervised=parent.isdigit())
        switch_on(not opts["no_monkey_patch"])
        from .slave import Slave

        code = Slave(cfg, _load(target, "handle_job")).run()
        if code == EXIT_REPLACE and not cfg.supervised:
            # A slave of its own makes way for a fresh process by becoming one.
            from .watchdog import end_process

            end_process(code, supervised=False)
        return code

    _execute("tm-slave", body)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("target")
@click.argument("n", type=click.IntRange(min=1))
@_address()
@_slave_options
@_common
def spawn(target: str, n: int, address: str, log_level: str, no_progress: bool,
          **opts: Any) -> None:
    """Run N supervised local slaves of TARGET."""
    _setup_logging(log_level)

    def body() -> int:
        # The target itself is loaded (and checked) by each slave.
        cfg = _slave_config(target, check_connectable(address), opts, no_progress)
        switch_on()
        from .spawn import Supervisor
        from .transport import Notifier

        # Each death is told to the master at once, not after its silence.
        notifier = Notifier(cfg.address, cfg.secret, cfg.curve_dir)
        try:
            return Supervisor(_slave_argv(target, address, opts, log_level), n,
                              on_exit=notifier.gone).wait()
        finally:
            notifier.close()

    _execute("tm-spawn", body)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("script")
@click.argument("n", type=click.IntRange(min=1))
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...")
@_option("--address", default=None, envvar=None,
         help="ZeroMQ endpoint (default: a free local port).")
@_master_options
@_slave_options
@_common
def run(script: str, n: int, pairs: tuple[str, ...], address: str | None, log_level: str,
        no_progress: bool, **opts: Any) -> None:
    """Run SCRIPT's get_jobs and handle_job with N local slaves; exit when the run is done."""
    _setup_logging(log_level)

    def body() -> Outcome:
        if Target.parse(script, "get_jobs").func != "get_jobs" or ":" in Path(script).name:
            raise ConfigError(f"tm-run takes a module or file with both get_jobs and handle_job, "
                              f"not a function: {script!r}")
        # A run of our own gets a secret of its own, so that other local users cannot join
        # it: given to our slaves (forks get it in their config, others in their environment),
        # never put in this process's own environment.
        secret = None
        env = dict(os.environ)
        if opts["secret_file"] is None and not env.get(SECRET_ENV):
            env[SECRET_ENV] = secrets.token_hex(32)
            secret = env[SECRET_ENV].encode()
        # Our own endpoint: it cannot collide with another run, and is known before binding,
        # so the slaves start (and spend their start-up) while the master starts too. On
        # Linux, a socket of the abstract namespace: no file, so nothing to leave behind,
        # whatever ends us (the run's secret, not the file's permissions, keeps others out).
        # Elsewhere, a socket file in a fresh private directory.
        rundir = None
        if address is None and not sys.platform.startswith("linux"):
            rundir = tempfile.mkdtemp(prefix="tm-run-")
        own = f"ipc://{rundir}/master" if rundir else f"ipc://@taskmaster-{secrets.token_hex(8)}"

        def cleanup() -> None:
            if rundir is not None:
                shutil.rmtree(rundir, ignore_errors=True)

        try:
            cfg = _master_config(script, pairs, address or own, opts, no_progress, secret)
            slave_cfg = _slave_config(script, cfg.address, opts, True, secret)
            switch_on()
            from .runner import run_here

            get_jobs = _load(script, "get_jobs")
            # A missing one is a usage error here, rather than N slaves that die at start.
            handle_job = _load(script, "handle_job")
            # An unpatched slave cannot be a fork of this patched process.
            fork = None if opts["no_monkey_patch"] else (lambda tag: _serve_as_slave(
                dataclasses.replace(slave_cfg, tag=tag, supervised=True), handle_job))
            return run_here(cfg, get_jobs, n, env=env, fork=fork, cleanup=cleanup,
                            slave_argv=lambda bound: _slave_argv(script, bound, opts, log_level))
        finally:
            cleanup()

    _execute("tm-run", body)


def _serve_as_slave(cfg: SlaveConfig, handle_job: Callable[[Any], Any]) -> NoReturn:
    """A forked slave's whole life (see runner.py), errors reported as tm-slave's own."""
    from .slave import Slave

    _execute("tm-slave", lambda: Slave(cfg, handle_job).run())


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def keygen(directory: Path) -> None:
    """Make CurveZMQ keys in DIRECTORY for --curve: master.key(_secret), slave.key(_secret).

    The master needs master.key_secret; each slave host needs master.key and
    slave.key_secret.
    """
    _setup_logging("INFO")

    def body() -> int:
        from .transport import make_curve_keys

        for path in make_curve_keys(directory):
            click.echo(str(path))
        return 0

    _execute("tm-keygen", body)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Taskmaster: python -m taskmaster {master,slave,spawn,run} ..."""


main.add_command(master)
main.add_command(slave)
main.add_command(spawn)
main.add_command(run)
main.add_command(keygen)
