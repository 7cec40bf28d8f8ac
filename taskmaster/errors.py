"""The exception tree and the exit codes every command maps its outcome to."""

from __future__ import annotations

EXIT_OK = 0
"""Every job finished and none was recorded as failed."""
EXIT_FAILED = 1
"""The run finished with recorded failures, or a runtime error stopped it."""
EXIT_USAGE = 2
"""Bad command line, bad target, unusable state file: nothing was run."""
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class TaskmasterError(Exception):
    """Base of our own errors; the message is one line: what, where, and the fix."""

    exit_code = EXIT_FAILED


class ConfigError(TaskmasterError):
    """The user asked for something we cannot do (bad target, option or address)."""

    exit_code = EXIT_USAGE


class StateError(TaskmasterError):
    """The state file is unreadable, corrupt, or held by another master."""

    exit_code = EXIT_USAGE


class TransportError(TaskmasterError):
    """A socket could not be set up (address in use, unknown host, ...)."""

    exit_code = EXIT_USAGE


class UserCodeError(TaskmasterError):
    """The user's `get_jobs` raised or yielded something we cannot send.

    Carries the user's formatted traceback so it is shown in full, never wrapped away.
    """

    def __init__(self, message: str, user_traceback: str = "") -> None:
        super().__init__(message)
        self.user_traceback = user_traceback
