"""Durable files on a real filesystem: atomic checkpoint, lock, corrupt state, failure log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from taskmaster.errors import StateError
from taskmaster.ledger import Failure
from taskmaster.state import Checkpoint, FailureLog, StateFile, read_failures


def test_checkpoint_round_trip_with_any_picklable_job(tmp_path: Path) -> None:
    path = tmp_path / "run.tmstate"
    with StateFile(path) as state:
        assert state.load() is None
        state.save(Checkpoint(resume_seq=41, resume_job=("db", 0), has_resume=True, finished=41))
        cp = state.load()
    assert cp is not None and (cp.resume_seq, cp.resume_job, cp.finished) == (41, ("db", 0), 41)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed into place


def test_falsy_resume_job_is_kept(tmp_path: Path) -> None:
    with StateFile(tmp_path / "s") as state:
        state.save(Checkpoint(resume_seq=0, resume_job=0, has_resume=True))
        cp = state.load()
    assert cp is not None and cp.has_resume and cp.resume_job == 0


@pytest.mark.parametrize("content", [b"", b"garbage", b'{"version": 99}', b'{"version": 1}'])
def test_corrupt_state_is_an_error_not_a_fresh_start(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "s"
    path.write_bytes(content)
    with StateFile(path) as state, pytest.raises(StateError, match=r"corrupt.*--reset"):
        state.load()


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


def test_failure_log_lines_carry_the_job_back(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    log = FailureLog(path)
    log.record([Failure(7, {"id": 7}, 4, b"host:1", {"type": "ValueError", "message": "m",
                                                      "traceback": "Traceback..."})])
    log.close()
    record = json.loads(path.read_text())
    assert record["seq"] == 7 and record["exception"] == "ValueError" and record["attempts"] == 4
    assert read_failures(path) == [(7, {"id": 7})]
