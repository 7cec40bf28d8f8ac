"""How long N slaves of one tm-spawn take to join: ``python benchmarks/spawn_join.py [N]``.

Starts a real tm-master of ``benchmarks/noop_jobs.py`` with an endless stream (loadgen.py's
`MasterProcess`: a secret file and a state file in a temporary directory, tcp on 127.0.0.1),
then ``tm-spawn benchmarks/noop_jobs.py N`` (default 200) against it, and counts the master's
``slave ... joined`` lines, as the tests count joins, until there are N. The slaves get work as
they join, as they would on a real run, so the later ones join a busy master. Prints
``J of N slaves joined in S s``, timed from tm-spawn's start to the master's Nth join line,
then stops tm-spawn (its slaves go with it) and the master, by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadgen import JOB_MODULE, MasterProcess, die_with_parent

JOINED = re.compile(rb"slave \S+ joined")
RESULT = "{joined} of {slaves} slaves joined in {seconds:.2f}s"
RESULT_LINE = re.compile(r"(\d+) of (\d+) slaves joined in ([\d.]+)s")
"""What this prints, and how bench.py reads it."""
DEFAULT_SLAVES = 200
GOAL_S = 5.0
POLL_S = 0.01
"""How often the master's log is read: the figure is this precise."""
STOP_S = 15.0
"""How long tm-spawn gets to stop its slaves after SIGTERM before they are killed."""


def count_joins(log: Path) -> int:
    return len(JOINED.findall(log.read_bytes()))


def spawn_and_wait(master: MasterProcess, n: int, timeout_s: float) -> tuple[int, float]:
    """Start tm-spawn, wait for N joins (or the timeout); the joins seen and the seconds."""
    argv = [sys.executable, "-m", "taskmaster", "spawn", str(JOB_MODULE), str(n),
            "--address", master.address, "--secret-file", str(master.secret),
            "--no-progress", "--log-level", "warning"]
    before = count_joins(master.log)
    with open(master.tmp / "spawn.log", "w") as out:
        started = time.perf_counter()
        # A session of its own, so that its slaves (its forks, in its process group) can be
        # stopped together, by its process group's id and nothing broader.
        spawn = subprocess.Popen(argv, cwd=master.tmp, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=die_with_parent)
    try:
        joined = 0
        while (elapsed := time.perf_counter() - started) < timeout_s:
            joined = count_joins(master.log) - before
            if joined >= n or spawn.poll() is not None:
                break
            time.sleep(POLL_S)
        return joined, elapsed
    finally:
        stop(spawn)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM tm-spawn (it passes it on to its slaves); kill its group if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_S)
    except subprocess.TimeoutExpired:
        # Its group while it still exists (so the id is still its own); its forked slaves
        # die with it anyway (PR_SET_PDEATHSIG).
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    """One master, one tm-spawn of N slaves; print how long they took to join."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slaves", type=int, nargs="?", default=DEFAULT_SLAVES)
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds to wait for every slave to join")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tm-spawn-join-") as tmp:
        master = MasterProcess(Path(tmp), [])
        try:
            joined, seconds = spawn_and_wait(master, args.slaves, args.timeout)
        finally:
            master.stop()
    print(RESULT.format(joined=joined, slaves=args.slaves, seconds=seconds)
          + f" (goal <= {GOAL_S:.0f}s)")
    return 0 if joined == args.slaves else 1


if __name__ == "__main__":
    sys.exit(main())
