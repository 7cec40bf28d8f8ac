"""How the commands read their options and report their errors: one place for both.

Every option has a section in --help (`GROUPS`), its default, and a ``TASKMASTER_<NAME>``
variable, shown there; a bad value, and which variable it came from, is one line. Our own errors
become one line and their exit code; a user's own exception keeps its traceback (their frames).
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from click.core import ParameterSource

from . import __version__
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
    DEFAULT_MAX_MESSAGE_MB,
    DEFAULT_MAX_RETRIES,
    DEFAULT_STOP_WAIT_S,
    SECRET_ENV,
)
from .errors import EXIT_SIGINT, Outcome, TaskmasterError, UserCodeError

log = logging.getLogger("taskmaster")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


GROUPS = ("Run", "Slave", "Connection", "Security", "Output", "General")
"""The sections of each command's --help, in this order."""


class GroupedOption(click.Option):
    """An option that knows which section of --help it belongs in."""

    def __init__(self, *args: Any, group: str = "General", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group


class GroupedCommand(click.Command):
    """A command whose --help lists its options by section (`GROUPS`)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "group", "General"), []).append(record)
        for group in GROUPS:
            if group in sections:
                with formatter.section(f"{group} options"):
                    formatter.write_dl(sections[group])


def command(name: str) -> Callable[[Callable[..., Any]], click.Command]:
    """A command of ours: grouped --help, -h, and --version."""
    def make(f: Callable[..., Any]) -> click.Command:
        f = click.version_option(__version__, "--version", prog_name=name,
                                 message="%(prog)s %(version)s")(f)
        return click.command(cls=GroupedCommand,
                             context_settings={"help_option_names": ["-h", "--help"]})(f)
    return make


_GROUP_OF = {
    "Run": ("size", "max-buffer-mb", "state-file", "failures-file", "reset", "lease-timeout",
            "max-retries", "max-deaths", "linger", "stop-wait", "retry-failures", "rate",
            "max-failures"),
    "Slave": ("concurrency", "master-timeout", "job-timeout", "no-monkey-patch",
              "max-jobs-per-slave", "max-memory"),
    "Connection": ("address", "max-message-mb"),
    "Security": ("secret-file", "insecure", "curve"),
    "Output": ("log-level", "no-progress"),
}
_GROUP = {option: group for group, options in _GROUP_OF.items() for option in options}


def option(*decls: str, **kwargs: Any) -> Callable[[Any], Any]:
    """A click option, in its section of --help, that also reads TASKMASTER_<NAME> from the
    environment (and says so in --help)."""
    group = _GROUP[next(d for d in decls if d.startswith("--")).lstrip("-")]
    name = max(decls, key=len).lstrip("-").split("/")[0].upper().replace("-", "_")
    kwargs.setdefault("envvar", f"TASKMASTER_{name}")
    kwargs.setdefault("show_default", True)
    kwargs.setdefault("show_envvar", True)
    return click.option(*decls, cls=GroupedOption, group=group, **kwargs)


def common_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        option("--secret-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                help=f"File holding the shared secret (or set ${SECRET_ENV})."),
        option("--insecure", is_flag=True,
                help="Allow a non-loopback address without a shared secret."),
        option("--curve", "curve_dir", type=click.Path(file_okay=False, path_type=Path),
                default=None, envvar="TASKMASTER_CURVE",
                help="Encrypt with CurveZMQ, keys from this directory (see tm-keygen)."),
        option("--log-level", default="INFO",
                help="How much to say: DEBUG adds every failed attempt and our own details, "
                     "WARNING only what needs you.",
                type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)),
        option("--no-progress", is_flag=True, help="No progress bar or progress log lines."),
        option("--max-message-mb", type=int, default=DEFAULT_MAX_MESSAGE_MB,
                help="Largest message of jobs, in MiB: batches are cut to fit, and a job "
                     "alone over it is recorded as failed. The same on master and slaves."),
    ]):
        f = opt(f)
    return f


def address_option(default: str | None = DEFAULT_ADDRESS) -> Callable[[Any], Any]:
    return option("--address", default=default,
                   help="ZeroMQ endpoint, tcp://HOST:PORT." if default else
                   "ZeroMQ endpoint (default: a free local port).")


def slave_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        option("--concurrency", "-c", type=int, default=DEFAULT_CONCURRENCY,
                help="Greenlets calling handle_job in each slave."),
        option("--master-timeout", type=float, default=DEFAULT_MASTER_TIMEOUT_S,
                help="Seconds without a master before a slave gives up."),
        option("--job-timeout", type=float, default=None,
                help="Seconds one handle_job call may take (counts as a failed attempt)."),
        option("--no-monkey-patch", is_flag=True,
                help="Do not let gevent patch the standard library in slaves."),
        option("--max-jobs-per-slave", "max_jobs", type=int, default=None,
                envvar="TASKMASTER_MAX_JOBS_PER_SLAVE",
                help="Jobs after which a slave makes way for a fresh process."),
        option("--max-memory", "max_memory", type=int, default=None,
                help="Resident MB over which a slave makes way for a fresh process."),
        # tm-run's slaves share its terminal, where its master already says every failure.
        click.option("--quiet-failures", is_flag=True, hidden=True),
    ]):
        f = opt(f)
    return f


def master_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        option("--size", type=int, default=None, help="Jobs buffered in memory.",
               show_default=f"{DEFAULT_BUFFER_SIZE}, or {DEFAULT_BUFFER_BYTES >> 20} MiB of "
                            "them if fewer"),
        option("--max-buffer-mb", type=int, default=DEFAULT_MAX_BUFFER_MB,
                help="What the master holds of jobs, buffered and leased, in MiB (pickled)."),
        option("--state-file", type=click.Path(path_type=Path), default=None,
                help="Checkpoint file (default: named from target and arguments, in .)."),
        option("--failures-file", type=click.Path(path_type=Path),
                default=None, help="Failed-job records (default: beside the state file)."),
        option("--reset", is_flag=True, help="Forget the saved state and start over."),
        option("--lease-timeout", type=float, default=DEFAULT_LEASE_TIMEOUT_S,
                help="Seconds of silence before a slave's jobs go to others."),
        option("--max-retries", type=int, default=DEFAULT_MAX_RETRIES,
                help="Retries of a job whose handle_job raised."),
        option("--max-deaths", type=int, default=DEFAULT_MAX_DEATHS,
                help="Slave deaths a job may cause before it is recorded as failed."),
        option("--linger", type=float, default=DEFAULT_LINGER_S,
                help="After the run, seconds to stay telling late slaves it is done."),
        option("--stop-wait", type=float, default=DEFAULT_STOP_WAIT_S,
                help="On SIGINT/SIGTERM, seconds to wait for leased jobs."),
        option("--retry-failures", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                default=None, envvar=None,
                help="Run exactly the jobs recorded in this failures file, again, as a run "
                     "of its own (its files beside FILE; --state-file and --failures-file "
                     "name the run it retries). Again after that: the jobs still failed."),
        option("--rate", type=float, default=None,
                help="At most this many jobs a second, across all slaves (change it live "
                     "with tm-ctl rate)."),
        option("--max-failures", default=None, metavar="N|P%",
                help="Stop (state saved, exit 1) once N jobs of this session failed for good, "
                     "or once more than P% of the last 1000 settled jobs failed."),
    ]):
        f = opt(f)
    return f


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when it writes: the progress line takes stderr over
    while it is shown, to print log lines above itself."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(level: str) -> None:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def execute(name: str, body: Callable[[], int | Outcome]) -> NoReturn:
    """Run a command body and exit with its status; our errors become one clear line."""
    try:
        result = body()
        code = result.exit_code if isinstance(result, Outcome) else result
    except UserCodeError as e:
        trace = e.user_traceback.rstrip()
        click.echo(f"{name}: {e}" + (f"\n{trace}" if trace else ""), err=True)
        code = e.exit_code
    except TaskmasterError as e:
        log.debug("details", exc_info=True)
        click.echo(f"{name}: error: {e}{_from_environment(str(e))}", err=True)
        code = e.exit_code
    except KeyboardInterrupt:
        # Ctrl-C before the run began to listen for it (while loading, say): nothing ran.
        click.echo(f"{name}: interrupted", err=True)
        code = EXIT_SIGINT
    # The body has closed what it opened (the stream, the state file, the sockets), so the
    # interpreter's last garbage collection at exit would only walk every object it holds:
    # a tenth of a short run's time, for memory the process gives back as it ends anyway.
    gc.freeze()
    sys.exit(code)


def _from_environment(message: str) -> str:
    """`` (set by $TASKMASTER_X)`` when an option that ``message`` names took its value from
    the environment: the command line the user looks at does not show it."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return ""
    for param in ctx.command.params:
        if (isinstance(param, click.Option) and param.name is not None
                and ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT
                and any(opt in message for opt in param.opts)):
            return f" (set by ${param.envvar})"
    return ""
