"""Job module for tests of messages: broken in the way $BROKEN says, at import or in get_jobs.

BROKEN=syntax: compiles a module with a syntax error (as if this file had one); import: imports
a module that does not exist; none / int: get_jobs returns None / 5; unpicklable: get_jobs
yields a job that cannot be pickled (a lock) after job 0.
"""

from __future__ import annotations

import os
import threading

_broken = os.environ.get("BROKEN", "")
if _broken == "syntax":
    exec(compile("def get_jobs(:\n    pass\n", "broken_module.py", "exec"))
elif _broken == "import":
    import no_such_module_anywhere  # type: ignore[import-not-found]  # noqa: F401


def get_jobs(last=None):
    if _broken == "none":
        return None
    if _broken == "int":
        return 5
    return _jobs()


def _jobs():
    yield 0
    if _broken == "unpicklable":
        yield threading.Lock()


def handle_job(job):
    pass
