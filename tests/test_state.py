"""Durable files on a real filesystem: atomic checkpoint, lock, corrupt state, failure log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskmaster.errors import StateError
from taskmaster.ledger import Failure
from taskmaster.protocol import JobError
from taskmaster.records import FailureLog, count_failures, read_failures
from taskmaster.state import Checkpoint, StateFile, check_identity, encode_job

IDENTITY = {"target": "jobs:get_jobs", "kwargs": {"count": "10"}, "retry_failures": None}


def test_checkpoint_round_trip_with_any_picklable_job(tmp_path: Path) -> None:
    path = tmp_path / "run.tmstate"
    with StateFile(path) as state:
        assert state.load() is None
        state.save(Checkpoint(resume_seq=42, last_seq=41, last_job=("db", 0), has_last=True,
                              finished=41, identity=IDENTITY))
        cp = state.load()
    assert cp is not None
    assert (cp.resume_seq, cp.last_seq, cp.last_job, cp.finished) == (42, 41, ("db", 0), 41)
    assert cp.identity == IDENTITY
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed into place


def test_falsy_resume_job_is_kept(tmp_path: Path) -> None:
    with StateFile(tmp_path / "s") as state:
        state.save(Checkpoint(resume_seq=0, last_job=0, has_last=True))
        cp = state.load()
    assert cp is not None and cp.has_last and cp.last_job == 0


def test_a_version_1_state_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "old.tmstate"
    path.write_text(json.dumps({
        "version": 1, "resume_seq": 7, "resume_job": encode_job(7), "has_resume": True,
        "finished": 7, "failed": 0, "failed_before": 0, "complete": False,
        "target": "jobs", "kwargs": {}}))
    with StateFile(path) as state:
        cp = state.load()
    assert cp is not None
    assert (cp.resume_seq, cp.last_seq, cp.last_job, cp.has_last) == (7, 7, 7, True)
    assert cp.identity is None  # not comparable: never refused for it


@pytest.mark.parametrize("content", [b"", b"garbage", b'{"version": 99}', b'{"version": 2}'])
def test_corrupt_state_is_an_error_not_a_fresh_start(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "s"
    path.write_bytes(content)
    with StateFile(path) as state, pytest.raises(StateError, match=r"corrupt.*--reset"):
        state.load()


def test_another_runs_state_file_is_refused_naming_what_differs(tmp_path: Path) -> None:
    path = tmp_path / "s.tmstate"
    cp = Checkpoint(identity=IDENTITY, has_last=True, resume_seq=3, finished=3)
    check_identity(cp, dict(IDENTITY), path)  # the same run
    other = {**IDENTITY, "kwargs": {"count": "20"}}
    # A run that did nothing yet may be taken over (it only wrote where it would start).
    check_identity(Checkpoint(identity=IDENTITY), other, path)
    with pytest.raises(StateError) as e:
        check_identity(cp, other, path)
    message = str(e.value)
    assert "kwargs was count=10, now count=20" in message
    assert "--reset" in message and "--state-file" in message and "\n" not in message


def test_second_process_cannot_take_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "s"
    code = ("import sys; from pathlib import Path; from taskmaster.state import StateFile\n"
            "StateFile(Path(sys.argv[1])).lock()")
    with StateFile(path):
        other = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                               text=True, timeout=30)
    assert other.returncode != 0
    assert "in use by another master (pid" in other.stderr
    again = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                           timeout=30)
    assert again.returncode == 0  # released on close


def test_a_fork_does_not_keep_the_lock(tmp_path: Path) -> None:
    """tm-run forks its slaves while it holds the lock; a slave that outlives its master must
    not keep the next master out."""
    path = tmp_path / "s"
    state = StateFile(path)
    state.lock()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only sleeps
        import time

        time.sleep(5)
        os._exit(0)
    try:
        state.unlock()
        code = ("import sys; from pathlib import Path; from taskmaster.state import StateFile\n"
                "StateFile(Path(sys.argv[1])).lock()")
        other = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                               text=True, timeout=30)
        assert other.returncode == 0, other.stderr
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)


def failure(seq: int, job: object, origin: int = -1) -> Failure:
    return Failure(seq, job, 4, b"host:1", JobError("ValueError", "m", "Traceback..."), origin)


def test_failure_log_lines_carry_the_job_back(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    log = FailureLog(path)
    log.record([failure(7, {"id": 7}), failure(1, "x", origin=30)])
    log.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["seq"] for r in records] == [7, 30]  # a retried job keeps its first number
    assert records[0]["exception"] == "ValueError" and records[0]["attempts"] == 4
    assert list(read_failures(path)) == [(7, {"id": 7}), (30, "x")]
    assert count_failures(path) == 2


def test_a_torn_last_record_is_skipped_every_complete_one_is_read(tmp_path: Path,
                                                                  caplog) -> None:
    path = tmp_path / "f.jsonl"
    log = FailureLog(path)
    log.record([failure(1, "a"), failure(2, "b")])
    log.close()
    whole = path.read_text()
    path.write_text(whole + whole.splitlines()[0][:40])  # the disk filled mid-record
    assert list(read_failures(path)) == [(1, "a"), (2, "b")]
    assert count_failures(path) == 2
    assert "incomplete" in caplog.text
    # A broken line before the end is corruption, not a torn write.
    path.write_text("garbage\n" + whole)
    with pytest.raises(StateError, match="line 1"):
        list(read_failures(path))


def test_reading_failures_is_streamed(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    log = FailureLog(path)
    log.record([failure(i, i) for i in range(1000)])
    log.close()
    records = read_failures(path)
    assert next(records) == (0, 0)  # a generator: nothing beyond what is asked is decoded
    assert sum(1 for _ in records) == 999
