"""tm-master, tm-slave, tm-spawn, tm-run and tm-keygen (tm-ctl is ctl.py). Each one parses,
validates into a config, builds, runs, maps to a status."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from .config import SLAVES_PER_CPU_WARNING
from .ctl import ctl
from .errors import (
    EXIT_REPLACE,
    BrokenTargetError,
    ConfigError,
    Outcome,
    TaskmasterError,
    user_traceback,
)
from .green import switch_on
from .options import (
    GroupedOption,
    address_option,
    command,
    common_options,
    execute,
    master_options,
    option,
    setup_logging,
    slave_options,
)
from .settings import (
    MasterConfig,
    OwnRun,
    SlaveConfig,
    check_connectable,
    master_config,
    slave_config,
)
from .spawn import slave_argv
from .target import Target, parse_kwargs

log = logging.getLogger("taskmaster")

def _master_config(target: str, pairs: tuple[str, ...], address: str, opts: dict[str, Any],
                   no_progress: bool, secret: bytes | None = None,
                   same_user: bool = False) -> MasterConfig:
    return master_config(Target.parse(target, "get_jobs"), parse_kwargs(pairs), address, opts,
                         progress=not no_progress, secret=secret, same_user=same_user)


def _slave_config(target: str, address: str, opts: dict[str, Any], no_progress: bool,
                  secret: bytes | None = None, same_user: bool = False) -> SlaveConfig:
    return slave_config(Target.parse(target, "handle_job"), address, opts,
                        progress=not no_progress, secret=secret, same_user=same_user)


def _load(spec: str, default_func: str) -> Callable[..., Any]:
    target = Target.parse(spec, default_func)
    try:
        return target.load()
    except TaskmasterError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's module itself failed to import
        raise BrokenTargetError(f"importing target {spec!r} raised {type(e).__name__}: {e}",
                                user_traceback(e)) from None


@command("tm-master")
@click.argument("target")
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...")
@address_option()
@master_options
@common_options
def master(target: str, pairs: tuple[str, ...], address: str, log_level: str,
           no_progress: bool, **opts: Any) -> None:
    """Serve the jobs of TARGET's get_jobs (module, module:func or path/file.py[:func])."""
    setup_logging(log_level)

    def body() -> Outcome:
        cfg = _master_config(target, pairs, address, opts, no_progress)
        switch_on()
        from .master import Master

        return Master(cfg, _load(target, "get_jobs")).run()

    execute("tm-master", body)


@command("tm-slave")
@click.argument("target")
@address_option()
@slave_options
@common_options
# tm-run's restarted slaves: its own socket is unsigned, and only its user's master may serve.
@click.option("--same-user", is_flag=True, hidden=True)
def slave(target: str, address: str, log_level: str, no_progress: bool, same_user: bool,
          **opts: Any) -> None:
    """Run TARGET's handle_job on jobs from the master, in a pool of greenlets."""
    setup_logging(log_level)

    def body() -> int:
        from .spawn import PARENT_ENV, TAG_ENV, die_with_parent

        cfg = _slave_config(target, check_connectable(address), opts, no_progress,
                            same_user=same_user)
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

    execute("tm-slave", body)


@command("tm-spawn")
@click.argument("target")
@click.argument("n", type=click.IntRange(min=1))
@address_option()
@slave_options
@common_options
def spawn(target: str, n: int, address: str, log_level: str, no_progress: bool,
          **opts: Any) -> None:
    """Run N supervised local slaves of TARGET."""
    setup_logging(log_level)

    def body() -> int:
        cfg = _slave_config(target, check_connectable(address), opts, no_progress)
        switch_on()
        from .spawn import Supervisor
        from .transport import Notifier

        # The slaves are forks of this process, which imports the target once: a fork costs
        # milliseconds where a fresh interpreter costs a third of a second (and a bad target is
        # one line here, not N slaves dying). Restarts, and unpatched slaves, are fresh ones.
        fork: Callable[[str], int] | None = None
        if not opts["no_monkey_patch"]:
            handle_job = _load(target, "handle_job")

            def fork(tag: str) -> int:
                _serve_as_slave(dataclasses.replace(cfg, tag=tag, supervised=True), handle_job)

        notifier: Notifier | None = None

        def gone(name: str, status: int) -> None:
            if notifier is not None:
                notifier.gone(name, status)

        # Forked before any socket of ours exists here: a fork must not inherit one.
        supervisor = Supervisor(slave_argv(target, address, opts, log_level), n, fork=fork,
                                on_exit=gone)
        # Each death is told to the master at once, not after its silence.
        notifier = Notifier(cfg.address, cfg.secret, cfg.curve_dir)
        try:
            return supervisor.wait()
        finally:
            notifier.close()

    execute("tm-spawn", body)


@command("tm-run")
@click.argument("script")
@click.argument("n", type=click.IntRange(min=1))
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...")
@option("--address", default=None, envvar=None,
         help="ZeroMQ endpoint (default: a free local port).")
@master_options
@slave_options
@common_options
def run(script: str, n: int, pairs: tuple[str, ...], address: str | None, log_level: str,
        no_progress: bool, **opts: Any) -> None:
    """Run SCRIPT's get_jobs and handle_job with N local slaves; exit when the run is done."""
    setup_logging(log_level)

    def body() -> Outcome:
        if Target.parse(script, "get_jobs").func != "get_jobs" or ":" in Path(script).name:
            raise ConfigError(f"tm-run takes a module or file with both get_jobs and handle_job, "
                              f"not a function: {script!r}")
        cpus = os.cpu_count() or 1
        if n > SLAVES_PER_CPU_WARNING * cpus:
            log.warning("%d slaves on %d CPUs: more processes than CPUs help only jobs that "
                        "wait, and greenlets wait more cheaply (--concurrency, now %d each)",
                        n, cpus, opts["concurrency"])
        own = OwnRun.make(address, opts["secret_file"])

        try:
            cfg = _master_config(script, pairs, own.address, opts, no_progress, own.secret,
                                 own.same_user)
            slave_cfg = _slave_config(script, cfg.address, opts, True, own.secret,
                                      own.same_user)
            switch_on()
            from .runner import run_here

            get_jobs = _load(script, "get_jobs")
            # A missing one is a usage error here, rather than N slaves that die at start.
            handle_job = _load(script, "handle_job")
            # An unpatched slave cannot be a fork of this patched process.
            fork = None if opts["no_monkey_patch"] else (lambda tag: _serve_as_slave(
                dataclasses.replace(slave_cfg, tag=tag, supervised=True, report_failures=False),
                handle_job))
            return run_here(cfg, get_jobs, n, env=own.env, fork=fork, cleanup=own.cleanup,
                            slave_argv=lambda bound: slave_argv(script, bound, opts, log_level,
                                                                 quiet_failures=True,
                                                                 same_user=own.same_user))
        finally:
            own.cleanup()

    execute("tm-run", body)


def _serve_as_slave(cfg: SlaveConfig, handle_job: Callable[[Any], Any]) -> NoReturn:
    """A forked slave's whole life (see runner.py), errors reported as tm-slave's own."""
    from .slave import Slave

    execute("tm-slave", lambda: Slave(cfg, handle_job).run())


@command("tm-keygen")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace keys already in DIRECTORY.",
              cls=GroupedOption, group="General")
def keygen(directory: Path, force: bool) -> None:
    """Make CurveZMQ keys in DIRECTORY for --curve: master.key(_secret), slave.key(_secret).

    The master needs master.key_secret; each slave host needs master.key and
    slave.key_secret.
    """
    setup_logging("INFO")

    def body() -> int:
        from .curve import make_curve_keys

        for path in make_curve_keys(directory, force=force):
            click.echo(str(path))
        return 0

    execute("tm-keygen", body)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Taskmaster: python -m taskmaster {master,slave,spawn,run,keygen,ctl} ..."""


main.add_command(master)
main.add_command(slave)
main.add_command(spawn)
main.add_command(run)
main.add_command(keygen)
main.add_command(ctl)
