"""examples/recurring.py, scaled down, with real processes: a schedule whose master is SIGKILLed
mid-round and started again runs every due time of it at least once, and none before it is due.

Each case runs ``tm-run recurring_jobs 2 tasks=N period=P until=U`` (tests/jobs/recurring_jobs.py:
the example's get_jobs and handle_job, with a ledger of every job run and the wall time it ran,
and a file saying where each session's stream began), kills the whole tm-run (master and
slaves) with SIGKILL mid-round, starts the same command again and lets it run to ``until``.
``until`` is a time a few periods ahead, computed here once and passed as KEY=VALUE, so the
restart is the same run (the same identity, the same end). The proof, from the ledger of both
sessions: the set of jobs run is exactly the schedule from the first session's first job to
``until``, each job ran at or after its due time, and the restart began with the job its
checkpoint named.

Two cases, for the two shapes a checkpoint takes:

* busy: 2 000 tasks every 2 s, a job due every millisecond, each taking 20 ms: jobs are in
  flight at any moment, and the master is killed on a checkpoint that names the earliest
  unfinished one; the restarted stream yields it first, and it runs.
* asleep: 20 tasks every 2 s, a job due every 100 ms, each done in a moment: the master is
  killed on a checkpoint that says every job yielded had finished, the stream asleep until its
  next due time (as between two rounds of a schedule with a gap). The checkpoint then names
  the last job finished; the restarted stream yields it first again, and the master drops it
  (it ran) and goes on with the next.
"""

from __future__ import annotations

import ast
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from procs import Proc, Procs, read_ledger, wait_for
from taskmaster.state import decode_job

SLAVES = "2"
START_S = 20.0
"""Longest the first session may take to start and get to the kill, on a loaded machine."""
RUN_S = 30.0
"""Longest the restarted session may take, past ``until``, to catch up and end."""
POLL_S = 0.02

Job = tuple[float, int]


@dataclass(frozen=True)
class Case:
    tasks: int
    period_s: float
    ahead_s: float
    """``until`` is this far ahead of the first start: the first session starts in about a
    second, so the schedule runs about (ahead_s - 1) / period_s rounds."""
    kill_after: int
    """Jobs in the ledger before the kill: well into the first round."""
    in_flight: bool
    """Kill on a checkpoint that names an unfinished job (True), or one that says every job
    yielded so far had finished (False)."""
    job_s: float = 0.0
    concurrency: int = 10


CASES = {
    # 2 slaves x 50 greenlets at 20 ms a job: 5 000 jobs/s for a schedule of 1 000 a second.
    "busy": Case(tasks=2000, period_s=2.0, ahead_s=7.0, kill_after=1000, in_flight=True,
                 job_s=0.02, concurrency=50),
    "asleep": Case(tasks=20, period_s=2.0, ahead_s=5.0, kill_after=5, in_flight=False),
}


def checkpoint(path: Path) -> dict[str, object]:
    """The state file as it is now ({} before the first write; writes are atomic renames)."""
    try:
        cp: dict[str, object] = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return cp


def schedule(tasks: int, period: float, first: Job, until: float) -> set[Job]:
    """Every job from ``first`` (inclusive, in tuple order) to before ``until``, as the example's
    docstring defines its schedule: task i is due at ``k * period + i * period / tasks``.
    Written out here rather than taken from the example, in the same expression, so the very
    same floats."""
    jobs: set[Job] = set()
    for task in range(tasks):
        k = math.floor(first[0] / period) - 1  # a round before `first`, filtered out below
        while (due := k * period + task * period / tasks) < until:
            if (due, task) >= first:
                jobs.add((due, task))
            k += 1
    return jobs


def ran(ledger: Path) -> list[tuple[float, int, float]]:
    """(due, task, ran_at) for every job run, in both sessions."""
    lines = (line.split() for line in read_ledger(ledger))
    return [(float(due), int(task), float(at)) for due, task, at in lines]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_schedule_killed_mid_round_runs_every_due_time_at_or_after_it(
        procs: Procs, tmp_path: Path, case: Case) -> None:
    state, ledger, starts = (tmp_path / name for name in ("run.tmstate", "ledger.txt",
                                                          "starts.txt"))
    until = f"{time.time() + case.ahead_s:.3f}"
    args = ("recurring_jobs", SLAVES, f"tasks={case.tasks}", f"period={case.period_s}",
            f"until={until}", "--state-file", str(state), "--concurrency",
            str(case.concurrency), "--no-progress")
    env = {"LEDGER": str(ledger), "STARTS": str(starts), "SLEEP_S": str(case.job_s)}

    first = procs.start("tm-run", *args, env=env)
    # What the kill waits for. A state file on disk is not enough: the master writes one at
    # start (to check that it can) with no job in it, and a master killed before its first
    # real checkpoint is restarted as a fresh run, from the first due time after *its* now,
    # so the due times between the two starts would never run (the one window the example's
    # docstring owns up to; not what this test is about). Once a checkpoint names a job
    # (has_last), every job before it has finished and the restart yields from it on, wherever
    # in a round, or between two due times, the kill lands. Jobs in the ledger: the kill comes
    # well into the first round, with jobs done before the checkpoint and after it. The form
    # of the checkpoint (see the cases above) is waited for, not hoped for, so that each case
    # proves what it says whatever the machine's speed.
    def ready() -> dict[str, object] | None:
        cp = checkpoint(state)
        if not cp.get("has_last") or len(read_ledger(ledger)) < case.kill_after:
            return None
        return cp if names_unfinished(cp) == case.in_flight else None

    form = "an unfinished job" if case.in_flight else "the last job, finished"
    wait_for(ready, START_S, f"a checkpoint naming {form}, and {case.kill_after} jobs run", first,
             step_s=POLL_S)
    first.kill()
    # Read after the kill: the master may have written a newer checkpoint since `ready` looked.
    cp = checkpoint(state)
    assert cp["has_last"] and not cp["complete"], cp
    last = decode_job(str(cp["last_job"]))

    second = procs.start("tm-run", *args, env=env)
    assert wait_exit(second, float(until)) == 0, second.output
    second.expect(rf"resuming at job #{cp['resume_seq']}\b", 1)

    begun = [ast.literal_eval(line) for line in read_ledger(starts)]
    assert [b[0] for b in begun] == [None, last], f"sessions began at {begun}"
    assert begun[1][1] == last, f"get_jobs(last={last}) began with {begun[1][1]}"
    first_job = begun[0][1]
    jobs = ran(ledger)
    expected = schedule(case.tasks, case.period_s, first_job, float(until))
    done = {(due, task) for due, task, _ in jobs}
    missing = sorted(expected - done)
    assert not missing, f"{len(missing)} due times never ran, e.g. {missing[:10]}"
    extra = sorted(done - expected)
    assert not extra, f"jobs not in the schedule ran: {extra[:10]}"
    early = [(due, task, at) for due, task, at in jobs if at < due]
    assert not early, f"{len(early)} jobs ran before they were due, e.g. {early[:10]}"
    late = max(at - due for due, _, at in jobs)
    print(f"\n{len(expected)} due times ({len(expected) / case.tasks:.1f} rounds of "
          f"{case.tasks}), all run, none early; {len(jobs) - len(done)} runs again; killed on a "
          f"checkpoint naming {'an unfinished' if names_unfinished(cp) else 'a finished'} job, "
          f"resumed at {last}; at most {late:.2f}s late")


def names_unfinished(cp: dict[str, object]) -> bool:
    """Whether a checkpoint names the earliest unfinished job (else: the last job yielded,
    every job yielded having finished)."""
    return cp["last_seq"] == cp["resume_seq"]


def wait_exit(proc: Proc, until: float) -> int:
    """The exit status of a session that runs the schedule to ``until`` and then ends."""
    return proc.wait(max(0.0, until - time.time()) + RUN_S)
