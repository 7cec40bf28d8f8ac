"""The retry loop as a person runs it: a run with failures, then the same command with
--retry-failures, fixed a little more each time, until it exits 0 — and what starting the
original run again says along the way. Real tm-run processes; every attempt of handle_job is
written to a file, so that each round is seen to run exactly the jobs still failed.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from procs import Proc, Procs, wait_for
from taskmaster.retry import Rounds

RUN_S = 60.0
BROKEN = set(range(0, 100, 10))


class Loop:
    def __init__(self, procs: Procs, tmp_path: Path) -> None:
        self.procs, self.tmp = procs, tmp_path
        self.attempts = tmp_path / "attempts.txt"
        self.state = tmp_path / "run.tmstate"
        self.failures = tmp_path / "run.failures.jsonl"

    def start(self, fixed: int, *args: str, slow: float = 0.0) -> Proc:
        self.attempts.unlink(missing_ok=True)
        return self.procs.start(
            "tm-run", "retry_jobs", "2", "--max-retries", "0", "--state-file", str(self.state),
            "--no-progress", *args,
            env={"ATTEMPTS": str(self.attempts), "FIXED": str(fixed), "SLEEP_S": str(slow)})

    def run(self, fixed: int, *args: str) -> tuple[int, Proc, set[int]]:
        """Start and wait; exit status, the process, the jobs it called handle_job with."""
        proc = self.start(fixed, *args)
        code = proc.wait(RUN_S)
        return code, proc, self.attempted()

    def attempted(self) -> set[int]:
        if not self.attempts.exists():
            return set()
        return {int(line) for line in self.attempts.read_text().split()}

    def retry(self, fixed: int) -> tuple[int, Proc, set[int]]:
        return self.run(fixed, "--retry-failures", str(self.failures))


def test_the_same_command_again_runs_the_jobs_still_failed_until_it_exits_0(
        procs: Procs, tmp_path: Path) -> None:
    loop = Loop(procs, tmp_path)
    code, first, ran = loop.run(fixed=0)
    assert code == 1 and ran == set(range(100)), first.output
    assert re.search(r"10 jobs failed for good \(ValueError 10\); .* run them again with "
                     rf"--retry-failures {re.escape(str(loop.failures))}", first.output)

    code, again, ran = loop.run(fixed=0)
    assert code == 1 and not ran, again.output
    assert re.search(r"run already complete, per .*: 90 finished, 10 jobs still failed, "
                     rf"recorded in {re.escape(str(loop.failures))}", again.output)

    # Round 1 retries the ten; 0-20 are fixed now, so seven fail again.
    code, round1, ran = loop.retry(fixed=3)
    assert (code, ran) == (1, BROKEN), round1.output
    assert "start the same command again" in round1.output
    # Round 2, nothing fixed since: exactly the seven still failed, again.
    code, round2, ran = loop.retry(fixed=3)
    assert (code, ran) == (1, BROKEN - {0, 10, 20}), round2.output
    assert "a new round of retries: the 7 jobs still failed" in round2.output
    # Round 3: three more fixed, four left.
    code, round3, ran = loop.retry(fixed=6)
    assert (code, ran) == (1, BROKEN - {0, 10, 20}), round3.output
    code, round4, ran = loop.retry(fixed=10)
    assert (code, ran) == (0, {60, 70, 80, 90}), round4.output
    code, done, ran = loop.retry(fixed=10)
    assert (code, ran) == (0, set()), done.output
    assert "nothing left to retry" in done.output

    code, original, ran = loop.run(fixed=10)
    assert (code, ran) == (0, set()), original.output
    assert "those have since run again without failing" in original.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["run.failures.jsonl", "run.retry.previous.jsonl", "run.retry.source",
                     "run.retry.tmstate", "run.tmstate"], "no name grew a suffix, no lock was left"


def test_a_round_stopped_mid_way_resumes_where_it_was(procs: Procs, tmp_path: Path) -> None:
    """A round of retries killed mid-way (SIGKILL of tm-run): the same command resumes the
    round and runs only what it had not finished; nothing is lost."""
    loop = Loop(procs, tmp_path)
    first = loop.start(0, "count=1000")
    assert first.wait(RUN_S) == 1, first.output
    # 100 recorded failures; retry them slowly, and kill the round once some have run.
    retry = loop.start(10, "count=1000", "--retry-failures", str(loop.failures), "-c", "1",
                       slow=0.05)
    # One job at a time on each slave, so that the checkpoint moves as they are done.
    wait_for(lambda: len(loop.attempted()) >= 60, RUN_S, "60 jobs retried", retry)
    retry.kill()
    before = loop.attempted()
    code, resumed, ran = loop.run(10, "count=1000", "--retry-failures", str(loop.failures))
    assert code == 1, resumed.output  # 100..990 are still broken (FIXED=10 fixes 0..90)
    broken = set(range(0, 1000, 10))
    assert before | ran == broken, f"jobs never retried: {sorted(broken - before - ran)}"
    assert len(ran) < len(broken), "the round started over instead of resuming"


def test_reset_keeps_the_old_files_and_says_so(procs: Procs, tmp_path: Path) -> None:
    loop = Loop(procs, tmp_path)
    assert loop.run(fixed=0)[0] == 1
    code, reset, ran = loop.run(10, "--reset")
    assert (code, ran) == (0, set(range(100))), reset.output
    assert re.search(r"--reset: starting over; kept the old files as \S+run\.tmstate\.old, "
                     r"\S+run\.failures\.jsonl\.old", reset.output), reset.output
    assert (tmp_path / "run.tmstate.old").exists()
    assert (tmp_path / "run.failures.jsonl.old").read_text().count("\n") == 10


def test_retries_start_over_when_the_run_they_retry_has_recorded_more(
        procs: Procs, tmp_path: Path) -> None:
    """The run is stopped mid-way; its failures so far are retried until none is left; the
    run is then resumed and records more: retrying again runs the new ones (the rounds start
    over from the changed file), and nothing claims they have all run."""
    loop = Loop(procs, tmp_path)
    first = loop.start(0, "count=1000", "-c", "1", slow=0.005)
    wait_for(lambda: loop.failures.exists() and loop.failures.read_text().count("\n") >= 5,
             RUN_S, "5 failure records", first)
    first.proc.send_signal(signal.SIGINT)
    assert first.wait(RUN_S) == 130, first.output
    recorded = {int(json.loads(line)["seq"]) for line in loop.failures.read_text().splitlines()}
    code, retry, ran = loop.run(100, "count=1000", "--retry-failures", str(loop.failures))
    assert (code, ran) == (0, recorded), retry.output
    code, resumed, _ = loop.run(0, "count=1000")
    assert code == 1, resumed.output
    everything = set(range(0, 1000, 10))
    code, again, ran = loop.run(100, "count=1000", "--retry-failures", str(loop.failures))
    assert code == 0, again.output
    assert "has changed since its retries began" in again.output, again.output
    assert ran == everything, f"not retried: {sorted(everything - ran)[:10]}"


@pytest.mark.parametrize("name", ["run.failures.jsonl", "bad.jsonl"])
def test_a_retrys_own_files_name_the_same_rounds(tmp_path: Path, name: str) -> None:
    original = tmp_path / name
    original.write_text("")
    rounds = Rounds.of(original)
    assert rounds.original == original
    for own in (rounds.failures, rounds.previous):
        assert Rounds.of(own) == rounds, own
    assert ".retry.retry" not in str(Rounds.of(rounds.failures).failures)
