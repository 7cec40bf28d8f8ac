"""get_jobs off the hub: a stream that blocks in C, or yields slowly, never stalls the master.

Real tm-master / tm-slave / tm-run processes over loopback ZeroMQ, with tests/jobs/stream_jobs.py:
its get_jobs blocks in a C call before each job and writes down when it yielded each one; its
handle_job writes down when each job started. Those two files are the proof.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

from procs import ANY_PORT, Procs, listening_on, wait_for

START_S = 20.0


def times(path: Path) -> dict[int, float]:
    """``job -> time`` from a file of ``<job> <time>`` lines (the first time each job shows)."""
    out: dict[int, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            job, at = line.split()
            out.setdefault(int(job), float(at))
    return out


def test_a_stream_blocking_in_c_stalls_nothing(procs: Procs, tmp_path: Path) -> None:
    """get_jobs blocks 5 s in C before each job, with --lease-timeout 3: the master keeps
    answering heartbeats (no slave is lost), and SIGTERM in the middle of a block stops it
    within a second with its state saved; the restart resumes without running a job twice."""
    yields, ledger, state = tmp_path / "yields", tmp_path / "ledger", tmp_path / "run.tmstate"
    env = {"YIELDS": str(yields), "LEDGER": str(ledger), "GAP_S": "5"}
    args = ["stream_jobs", "count=3", "--state-file", str(state), "--lease-timeout", "3",
            "--no-progress"]
    master = procs.start("tm-master", *args, "--address", ANY_PORT, env=env)
    address = listening_on(master, START_S)
    slave = procs.start("tm-slave", "stream_jobs", "--address", address, "--no-progress",
                        env=env)
    master.expect(r"slave \S+ joined", START_S)
    # Jobs 0 and 1 each came after a 5 s block: 10 s of a blocked stream, over three times the
    # lease timeout, with a slave that has nothing to do.
    wait_for(lambda: 1 in times(ledger), 30, "job 1 to run", master, slave)
    assert not re.search(r"lost|rejoin", master.output + slave.output), (
        f"a blocked stream cost a slave:\n{master.output}\n{slave.output}")

    # Now the stream is in its third block: stop the master there.
    signalled = time.monotonic()
    master.signal(signal.SIGTERM)
    code = master.wait(10)
    took = time.monotonic() - signalled
    assert code == 143, master.output
    assert took < 1.0, f"SIGTERM took {took:.2f}s to stop the master\n{master.output}"
    assert "state saved" in master.output
    cp = json.loads(state.read_text())
    assert (cp["resume_seq"], cp["last_seq"], cp["has_last"]) == (2, 1, True), cp
    assert sorted(times(ledger)) == [0, 1] and 2 not in times(yields)

    env["GAP_S"] = "0.01"
    again = procs.start("tm-master", *args, "--address", address, env=env)
    again.expect(r"resuming at job #2", START_S)
    assert again.wait(30) == 0, again.output
    assert slave.wait(15) == 0, slave.output
    ran = [int(line.split()[0]) for line in ledger.read_text().splitlines()]
    assert ran == [0, 1, 2], f"each job once, in order: {ran}"
    assert "began with" not in again.output  # get_jobs(last=1) yielded 1 first, as it should


def test_a_slow_streams_jobs_go_out_as_they_are_yielded(procs: Procs, tmp_path: Path) -> None:
    """One job a second: each starts on a slave within half a second of its yield (a stream
    pulled a thousand jobs at a time would hold the first for a thousand seconds)."""
    yields, ledger = tmp_path / "yields", tmp_path / "ledger"
    env = {"YIELDS": str(yields), "LEDGER": str(ledger), "GAP_S": "1"}
    run = procs.run("tm-run", "stream_jobs", "1", "count=4", "--no-progress",
                    "--state-file", str(tmp_path / "run.tmstate"), env=env, timeout=60)
    assert run.code == 0, run.output
    yielded, started = times(yields), times(ledger)
    assert sorted(started) == [0, 1, 2, 3], run.output
    delays = {job: started[job] - yielded[job] for job in started}
    print("\nyield-to-start delays:", {j: f"{d * 1000:.0f} ms" for j, d in delays.items()})
    assert all(0 <= d < 0.5 for d in delays.values()), delays
