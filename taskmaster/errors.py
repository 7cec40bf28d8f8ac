"""The exception tree, the exit codes, and the outcome of a run that commands map to them."""

from __future__ import annotations

import importlib
import os
import signal
import traceback
from dataclasses import dataclass

EXIT_OK = 0
"""Every job finished and none was recorded as failed."""
EXIT_FAILED = 1
"""The run finished with recorded failures, or a runtime error stopped it."""
EXIT_USAGE = 2
"""Bad command line, bad target, unusable state or failures file, another run's state file."""
EXIT_REPLACE = 75
"""A slave asks to be replaced by a fresh process (its --job-timeout watchdog stopped a job
that would not stop, or it recycles itself): its supervisor starts one at once, a tm-slave of
its own execs itself anew."""
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def exit_code_for_signal(signum: int) -> int:
    """130 for SIGINT, 143 for SIGTERM and the signals that count as it (SIGHUP)."""
    return EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM


class TaskmasterError(Exception):
    """Base of our own errors; the message is one line: what, where, and the fix."""

    exit_code = EXIT_FAILED


class ConfigError(TaskmasterError):
    """The user asked for something we cannot do (bad target, option or address)."""

    exit_code = EXIT_USAGE


class StateError(TaskmasterError):
    """The state file is unreadable, corrupt, belongs to another run, or is in use."""

    exit_code = EXIT_USAGE


class TransportError(TaskmasterError):
    """A socket could not be set up or used (address in use, unknown host, ...)."""

    exit_code = EXIT_USAGE


class NoMasterError(TaskmasterError):
    """tm-ctl found no master to talk to (none running, none answering)."""


class FailureLimitError(TaskmasterError):
    """--max-failures: the run stopped itself, its state saved, for too many failures."""


class UserCodeError(TaskmasterError):
    """The user's `get_jobs` raised or yielded something we cannot send.

    Carries the user's formatted traceback so it is shown in full, never wrapped away.
    """

    def __init__(self, message: str, user_traceback: str = "") -> None:
        super().__init__(message)
        self.user_traceback = user_traceback


class BrokenTargetError(UserCodeError):
    """The user's module cannot be imported (a syntax error, an import that fails)."""

    exit_code = EXIT_USAGE


_OURS = (os.path.dirname(os.path.abspath(importlib.__file__ or "")) + os.sep,
         os.path.dirname(os.path.abspath(__file__)) + os.sep, "<frozen ")
"""Where the frames that are not the user's come from: our package, the import machinery."""


def user_traceback(e: BaseException) -> str:
    """``e`` formatted as Python would, from the first frame of the user's own code: the
    frames of ours (and of the import machinery) that led to it say nothing to them."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_OURS):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb))


class InternalError(TaskmasterError):
    """A bug of ours: logged as critical with its traceback, the run stopped, state saved."""


@dataclass(frozen=True)
class Outcome:
    """How a run ended, with its totals (across restarts); `exit_code` is what a command
    exits with."""

    finished: int
    failed: int
    already_complete: bool = False
    """The state file said the run was complete before this start: nothing ran."""
    signal: int | None = None
    """Stopped by this signal (or the like of it), state saved."""
    error: TaskmasterError | None = None
    """Stopped by an error (the user's get_jobs, our own bug, a reason from outside)."""

    @property
    def complete(self) -> bool:
        return self.signal is None and self.error is None

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return self.error.exit_code
        if self.signal is not None:
            return exit_code_for_signal(self.signal)
        return EXIT_FAILED if self.failed else EXIT_OK
