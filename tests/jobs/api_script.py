"""A script that runs itself with `taskmaster.run`, its functions in ``__main__``.

Environment: LEDGER (each executed job appended), COUNT, SLEEP_S, EXIT_ON (os._exit on that
job, once: a marker file beside the ledger says it happened), OPTIONS (JSON keyword options),
LOG_LEVEL (logging shown at that level).
It prints the result's fields as one JSON line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import taskmaster


def get_jobs(last=0, count=1000):
    yield from range(int(last), int(count))


def handle_job(job):
    time.sleep(float(os.environ.get("SLEEP_S", "0")))
    marker = Path(os.environ["LEDGER"] + ".exited")
    if os.environ.get("EXIT_ON") == str(job) and not marker.exists():
        marker.touch()
        os._exit(3)
    fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{job}\n".encode())
    finally:
        os.close(fd)


if __name__ == "__main__":
    if os.environ.get("LOG_LEVEL"):  # a library's logs are the caller's to show
        logging.basicConfig(level=os.environ["LOG_LEVEL"])
    options = json.loads(os.environ.get("OPTIONS", "{}"))
    result = taskmaster.run(get_jobs, handle_job, int(sys.argv[1]),
                            kwargs={"count": int(os.environ.get("COUNT", "1000"))}, **options)
    print("RESULT " + json.dumps({
        "finished": result.finished, "failed": result.failed, "elapsed_s": result.elapsed_s,
        "exit_status": result.exit_status, "state_file": str(result.state_file),
        "failures_file": str(result.failures_file), "complete": result.complete}))
    sys.exit(result.exit_status)
