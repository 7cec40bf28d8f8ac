"""Taskmaster: run a huge, resumable stream of one-off jobs across many machines.

The master pulls jobs lazily from ``get_jobs(last=...)``, keeps only a bounded window of them in
memory, serves them over ZeroMQ to slaves that call ``handle_job(job)`` in a pool of greenlets,
and checkpoints the earliest unfinished job so that any crash resumes where the run was.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

__version__ = "0.1.0"

__all__ = ["RunResult", "__version__", "run", "sized"]


class sized:  # noqa: N801 - reads like the builtin wrappers it stands beside (reversed, zip)
    """Wrap an iterable whose length is known, so the progress bar can show an ETA.

    ``return sized(my_generator(last), total=count - last)`` costs nothing per job: iterating
    it hands out the wrapped iterator itself.
    """

    def __init__(self, iterable: Iterable[Any], total: int) -> None:
        self._iterable = iterable
        self.total = int(total)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._iterable)

    def __length_hint__(self) -> int:
        return self.total


# Last: api.py needs the names above. It imports no gevent or zmq until a run starts.
from .api import RunResult, run  # noqa: E402
