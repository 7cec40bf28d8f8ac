"""How a run's job stream is opened: get_jobs with its KEY=VALUE arguments, resumed from
`last` or by position, or the records of a failures file. The feeder (feeder.py) pulls it."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import sized
from .config import MasterConfig
from .errors import ConfigError
from .feeder import NO_JOB, Feeder
from .state import Checkpoint, count_failures, read_failures

log = logging.getLogger(__name__)


def takes_last(get_jobs: Callable[..., Any]) -> bool:
    """Whether ``get_jobs`` can be told where to resume (a ``last`` parameter, or ``**kw``);
    a stream that cannot is resumed by position instead."""
    try:
        params = inspect.signature(get_jobs).parameters.values()
    except (TypeError, ValueError):
        return True  # no signature to read (a builtin): the call itself will tell
    return any(p.name == "last" or p.kind is p.VAR_KEYWORD for p in params)


def opener(get_jobs: Callable[..., Any], kwargs: dict[str, str], *,
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


def feeder_for(get_jobs: Callable[..., Any], cfg: MasterConfig, cp: Checkpoint | None,
               retry_source: Path | None = None) -> Feeder:
    """The feeder of a run that starts from ``cp`` (None: from scratch); a retry runs the
    records of ``retry_source``."""
    resume = cp.resume_seq if cp is not None and cp.has_last else 0
    retry_source = retry_source or cfg.retry_failures  # the first round's: the file itself
    if retry_source is not None:
        path = retry_source
        log.info("retrying the jobs recorded in %s%s", path,
                 f", from record #{resume}" if resume else "")
        # A file of records is resumed by position: the records before it are settled.
        return Feeder(lambda: recorded_jobs(path), skip=resume, pairs=True)
    if cp is not None and cp.has_last and takes_last(get_jobs):
        return Feeder(opener(get_jobs, cfg.kwargs, last=cp.last_job), first=cp.last_seq,
                      skip=resume - cp.last_seq, expect=cp.last_job)
    if resume:
        log.info("get_jobs takes no `last`: resuming by position, skipping the %d jobs "
                 "before job #%d", resume, resume)
    return Feeder(opener(get_jobs, cfg.kwargs), skip=resume)
