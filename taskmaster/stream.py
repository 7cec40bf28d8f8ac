"""A run's job stream: how it is opened (get_jobs with its KEY=VALUE arguments, or the records
of a failures file), how it tells its length, how it is resumed (from `last`, checked, or by
position), and how its errors become the user's. The feeder (feeder.py) pulls it."""

from __future__ import annotations

import inspect
import itertools
import logging
import operator
import pickle
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from . import sized
from .config import FEED_SKIP_STEP_JOBS
from .errors import ConfigError, TaskmasterError, UserCodeError, user_traceback
from .records import count_failures, read_failures
from .state import safe_repr

log = logging.getLogger(__name__)

NO_JOB: Any = object()
"""Stands for "no job" where any value, None included, can be a job."""
_PICKLE = pickle.HIGHEST_PROTOCOL
_DEFAULT_EQ = object.__eq__


def takes_last(get_jobs: Callable[..., Any]) -> bool:
    """Whether ``get_jobs`` can be told where to resume (a ``last`` parameter, or ``**kw``);
    a stream that cannot is resumed by position instead."""
    try:
        params = inspect.signature(get_jobs).parameters.values()
    except (TypeError, ValueError):
        return True  # no signature to read (a builtin): the call itself will tell
    return any(p.name == "last" or p.kind is p.VAR_KEYWORD for p in params)


def opener(get_jobs: Callable[..., Any], kwargs: dict[str, Any], *,
           last: Any = NO_JOB) -> Callable[[], Iterable[Any]]:
    """How to open the job stream: ``get_jobs(**kwargs)``, with ``last`` when resuming. Its
    arguments are checked now (bad KEY=VALUE names are a ConfigError); the call itself is
    made in the feeder's thread, where the stream is pulled, since what it opens (a database
    connection, say) may only be used in the thread that opened it."""
    call_kwargs: dict[str, Any] = dict(kwargs)
    if last is not NO_JOB:
        call_kwargs["last"] = last
    try:
        inspect.signature(get_jobs).bind(**call_kwargs)
    except TypeError as e:
        raise ConfigError(f"get_jobs cannot take these arguments: {e}; "
                          "check the KEY=VALUE pairs and get_jobs' parameters") from None
    except ValueError:
        pass  # no signature to check (a builtin); the call itself will tell
    return lambda: get_jobs(**call_kwargs)


def recorded_jobs(path: Path) -> sized:
    """The (sequence number, job) pairs of a failures file, streamed, with their count."""
    return sized(read_failures(path), total=count_failures(path))


def open_stream(open: Callable[[], Iterable[Any]]
                 ) -> tuple[Iterator[Any], int | None] | TaskmasterError:
    """The stream's iterator and the length it tells (None when it does not), or the error
    that ends the run at once."""
    try:
        stream = open()
    except TaskmasterError as e:  # ours: a failures file that cannot be read, say
        return e
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's, reported in full
        return user_error(e)
    try:
        iterator = iter(stream)
    except TypeError:
        return ConfigError(f"get_jobs returned {safe_repr(stream, 60)}, which is not "
                           "iterable; it must yield jobs (or return a list or a generator)")
    except Exception as e:  # noqa: BLE001 - the user's own __iter__
        return user_error(e)
    try:
        hint = operator.length_hint(stream, -1)
    except Exception as e:  # noqa: BLE001 - a user's __length_hint__, or sized(total<0)
        log.warning("get_jobs' result cannot say its length (%s: %s); no ETA shown",
                    type(e).__name__, e)
        hint = -1
    return iterator, hint if hint >= 0 else None


def resume(iterator: Iterator[Any], *, expect: Any, skip: int, pairs: bool,
           closed: Callable[[], bool]) -> tuple[list[Any], TaskmasterError | None]:
    """Begin a resumed stream: check its first job against ``expect`` (the ``last`` it was
    given), and skip the ``skip`` jobs settled already (unless ``closed()`` first). Returns
    the jobs read ahead that are still to run, and the error that ends the run, if any."""
    try:
        first: Any = next(iterator, NO_JOB)
        if first is NO_JOB:
            return [], None
        if expect is not NO_JOB and not same_job(first[1] if pairs else first, expect):
            # Not the job it was given: it may be the next one (a stream that resumes after
            # `last`, not from it), so it runs, rather than be lost; and when `last` itself is
            # not finished (nothing to skip), we have it, and run it first. At worst jobs run
            # again.
            return ([first] if skip else [expect, first]), None
        if not skip:
            return [first], None
        left = skip - 1
        while left > 0 and not closed():
            step = min(left, FEED_SKIP_STEP_JOBS)
            skipped = sum(1 for _ in itertools.islice(iterator, step))
            left -= skipped
            if skipped < step:
                break
    except TaskmasterError as e:
        return [], e
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's, reported in full
        return [], user_error(e)
    return [], None


def same_job(job: Any, expect: Any) -> bool:
    """Whether the stream began with the job it was told to begin with; warns when not. A job
    that does not define equality is compared by its pickle (it was unpickled from the state
    file, so it is never the same object)."""
    try:
        if getattr(type(job), "__eq__", None) is _DEFAULT_EQ:
            same = pickle.dumps(job, _PICKLE) == pickle.dumps(expect, _PICKLE)
        else:
            same = bool(job == expect)
    except Exception:  # noqa: BLE001 - a job that cannot be compared: take it as the one
        return True
    if not same:
        log.warning("get_jobs(last=%s) began with %s: it should yield from `last` on, "
                    "inclusive (for i in range(last, N)). Every job it yields runs, so none is "
                    "lost, but a stream that does not resume where it is told runs jobs "
                    "again, and the counts of this run then include them",
                    safe_repr(expect, 80), safe_repr(job, 80))
    return same


def user_error(e: BaseException) -> UserCodeError:
    """The user's exception, with its traceback from their own first frame on."""
    return UserCodeError(f"get_jobs raised {type(e).__name__}: {e}", user_traceback(e))
