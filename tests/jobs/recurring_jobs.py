"""Job module for tests of examples/recurring.py: its schedule, with a ledger of what ran when.

get_jobs is the example's. As it yields its first job it appends ``repr((last, first job))``
to $STARTS, so that a test knows where each session's stream began: a fresh one (last None)
at the first due time from its now, a resumed one at ``last`` itself.

handle_job runs the example's handle_job, then appends ``<due> <task> <ran_at>`` to $LEDGER
(``repr`` of the floats, exact; ``ran_at`` is ``time.time()`` as the call began). With SLEEP_S
it sleeps that long first (gevent-friendly), so that jobs are in flight at any moment.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import ledger_jobs

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "recurring.py"


def _load_example() -> ModuleType:  # the example is a script, not in an installed package
    spec = importlib.util.spec_from_file_location("recurring", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["recurring"] = module  # dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


recurring = _load_example()


def get_jobs(last: tuple[float, int] | None = None, **kwargs: str) -> Iterator[tuple[float, int]]:
    jobs = recurring.get_jobs(last, **kwargs)
    first = next(jobs, None)
    ledger_jobs.append(os.environ["STARTS"], repr((last, first)))
    if first is not None:
        yield first
        yield from jobs


def handle_job(job: tuple[float, int]) -> None:
    ran_at = time.time()
    time.sleep(float(os.environ.get("SLEEP_S", "0")))
    recurring.handle_job(job)
    due, task = job
    ledger_jobs.append(os.environ["LEDGER"], f"{due!r} {task} {ran_at!r}")
