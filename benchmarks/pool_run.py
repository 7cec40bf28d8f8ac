"""The baseline: ``python benchmarks/pool_run.py KIND COUNT CHUNKSIZE [PROCESSES]``.

Runs the same stream and callback as ``tm-run benchmarks/KIND_jobs.py`` through
``multiprocessing.Pool(PROCESSES).imap_unordered`` and prints how many jobs it ran. bench.py
times this whole command, so interpreter start-up counts on both sides.
"""

from __future__ import annotations

import multiprocessing
import sys

from jobs import CALLBACKS, STREAMS


def main(argv: list[str]) -> int:
    """Run the jobs; print the count of results received."""
    kind, count, chunksize = argv[0], int(argv[1]), int(argv[2])
    processes = int(argv[3]) if len(argv) > 3 else 2
    done = 0
    with multiprocessing.Pool(processes) as pool:
        for _ in pool.imap_unordered(CALLBACKS[kind], STREAMS[kind](None, count),
                                     chunksize=chunksize):
            done += 1
    print(done)
    return 0 if done == count else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
