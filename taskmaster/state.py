"""Durable files: the checkpoint (written atomically, under a lock) and the failure records."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pickle
import socket
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

from .errors import StateError
from .ledger import Failure

STATE_VERSION = 1


@dataclass
class Checkpoint:
    """What a restarted master needs: where to resume and what has been done so far."""

    resume_seq: int = 0
    resume_job: Any = None
    has_resume: bool = False
    """False on a fresh run (get_jobs is called without `last`) and once the run is complete."""
    finished: int = 0
    failed: int = 0
    failed_before: int = 0
    """Recorded failures before the resume point: with it, a restart counts each job once
    (jobs after the resume point run again and are counted again)."""
    complete: bool = False
    target: str = ""
    kwargs: dict[str, str] | None = None


def encode_job(job: Any) -> str:
    """A job as base64 pickle text, for JSON files."""
    return base64.b64encode(pickle.dumps(job, pickle.HIGHEST_PROTOCOL)).decode("ascii")


def decode_job(text: str) -> Any:
    return pickle.loads(base64.b64decode(text))


def safe_repr(value: Any, limit: int = 500) -> str:
    """repr() that never raises and never floods a log line."""
    try:
        text = repr(value)
    except Exception as e:  # noqa: BLE001 - a user's broken __repr__ must not stop us
        text = f"<unrepresentable {type(value).__name__}: {e}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class StateFile:
    """The checkpoint file of one run, locked for as long as this object is open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._lock_fd: int | None = None

    def __enter__(self) -> StateFile:
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    def lock(self) -> None:
        """Take the run's lock, or raise StateError naming who holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StateError(f"cannot open {self._lock_path}: {e.strerror}; "
                             "choose a writable --state-file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StateError(
                f"state file {self.path} is in use by another master ({holder}); "
                "stop that master, or give this run its own --state-file"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            # The lock file stays: unlinking it would race with a master taking it right now.
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> Checkpoint | None:
        """The last checkpoint, None when there is none; StateError when it is unreadable."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"cannot read state file {self.path}: {e.strerror}") from None
        try:
            data = json.loads(raw)
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"unknown version {data.get('version')!r}")
            job = decode_job(data["resume_job"]) if data["has_resume"] else None
            return Checkpoint(
                resume_seq=int(data["resume_seq"]), resume_job=job,
                has_resume=bool(data["has_resume"]), finished=int(data["finished"]),
                failed=int(data["failed"]), failed_before=int(data.get("failed_before", 0)),
                complete=bool(data["complete"]),
                target=str(data.get("target", "")), kwargs=data.get("kwargs"),
            )
        except Exception as e:  # noqa: BLE001 - whatever is wrong, the answer is the same
            raise StateError(
                f"state file {self.path} is corrupt ({type(e).__name__}: {e}); "
                "inspect it, or start the run over with --reset"
            ) from None

    def save(self, cp: Checkpoint) -> None:
        """Replace the checkpoint atomically: a crash leaves the old one or the new one."""
        # Encoded first: a job that cannot be pickled raises here, before anything is written.
        job = encode_job(cp.resume_job) if cp.has_resume else None
        data = {f.name: getattr(cp, f.name) for f in fields(cp)}
        data["version"] = STATE_VERSION
        data["resume_job"] = job
        data["resume_repr"] = safe_repr(cp.resume_job) if cp.has_resume else None
        data["updated"] = time.time()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    def remove(self) -> None:
        """Forget the run (for --reset)."""
        self.path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FailureLog:
    """Failed jobs as JSON Lines, appended and flushed to disk before they count as finished."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def record(self, failures: list[Failure]) -> None:
        if not failures:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        for f in failures:
            self._file.write(json.dumps({
                "seq": f.seq,
                "job_repr": safe_repr(f.job),
                "job": encode_job(f.job),
                "exception": f.error.get("type", ""),
                "message": f.error.get("message", ""),
                "traceback": f.error.get("traceback", ""),
                "attempts": f.attempts,
                "slave": (f.slave or b"").decode(errors="replace"),
                "time": time.time(),
            }) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_failures(path: Path) -> list[tuple[int, Any]]:
    """(sequence number, job) of every record in a failures file, in file order."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise StateError(f"cannot read failures file {path}: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out.append((int(rec["seq"]), decode_job(rec["job"])))
        except Exception as e:  # noqa: BLE001
            raise StateError(f"failures file {path}, line {n}: unreadable record ({e})") from None
    return out
