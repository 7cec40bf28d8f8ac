"""Bare gevent pools, the limit of IO-bound jobs: ``python benchmarks/gevent_pool_run.py``.

``gevent_pool_run.py KIND COUNT CONCURRENCY [PROCESSES]`` does what tm-run's slaves do with
IO-bound jobs, and nothing else: this process is monkey-patched as tm-run's is
(`taskmaster.green.switch_on`, before its slaves fork from it) and imports the ``handle_job``
of ``benchmarks/KIND_jobs.py`` (the very function tm-run calls), then forks PROCESSES children
(default 2). Each runs its share of the COUNT jobs of the kind's stream through a bare
``gevent.pool.Pool(CONCURRENCY).imap_unordered``: no master, no sockets, no batches. Prints
how many jobs ran; bench.py times this whole command, as it times tm-run.
"""

from __future__ import annotations

import importlib
import os
import sys
from itertools import islice

from taskmaster.green import switch_on


def main(argv: list[str]) -> int:
    """Fork the pools, each with its share of the stream; print the count of jobs done."""
    kind, count, concurrency = argv[0], int(argv[1]), int(argv[2])
    processes = int(argv[3]) if len(argv) > 3 else 2
    switch_on()
    # After the patching, in the order tm-run imports the script after its own.
    import gevent.pool
    from gevent import monkey
    from jobs import STREAMS

    # gevent's os.close defers the close to its loop, which this process never runs while it
    # blocks reading the children's pipes: a write end it kept would never give EOF.
    close = monkey.get_original("os", "close")

    handle_job = importlib.import_module(f"{kind}_jobs").handle_job
    children: list[tuple[int, int]] = []
    for i in range(processes):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            close(read_fd)
            done, code = 0, 1
            try:
                share = islice(STREAMS[kind](None, count), i * count // processes,
                               (i + 1) * count // processes)
                for _ in gevent.pool.Pool(concurrency).imap_unordered(handle_job, share):
                    done += 1
                os.write(write_fd, str(done).encode())
                code = 0
            finally:
                os._exit(code)
        close(write_fd)
        children.append((pid, read_fd))
    done, failed = 0, 0
    for pid, read_fd in children:
        with os.fdopen(read_fd) as pipe:
            got = pipe.read()
        done += int(got or 0)
        failed += bool(os.waitpid(pid, 0)[1]) or not got
    print(done)
    return 0 if done == count and not failed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
