"""The state file: the checkpoint of a run, written atomically under a lock held for the run.

The failure records beside it are in records.py."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import pickle
import socket
import time
import weakref
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import NoMasterError, StateError

log = logging.getLogger(__name__)

STATE_VERSION = 2
"""Version 2 names the job to resume from (``last_job``) apart from the earliest unfinished
one (``resume_seq``): the first may be the job before the second. Version 1 files are read."""


@dataclass
class Checkpoint:
    """What a restarted master needs: where to resume and what has been done so far."""

    resume_seq: int = 0
    """The earliest job not settled (every job before it is)."""
    last_seq: int = 0
    last_job: Any = None
    has_last: bool = False
    """False on a fresh run (get_jobs is called without `last`). Otherwise get_jobs resumes
    from ``last_job``, numbered ``last_seq``: the job at ``resume_seq`` or the one before it."""
    finished: int = 0
    failed: int = 0
    failed_before: int = 0
    """Recorded failures before the resume point: with it, a restart counts each job once
    (jobs after the resume point run again and are counted again)."""
    complete: bool = False
    identity: dict[str, Any] | None = None
    """Target and arguments of the run that wrote it (see `MasterConfig.identity`)."""


def encode_job(job: Any) -> str:
    """A job as base64 pickle text, for JSON files; PicklingError if it cannot be pickled,
    whatever pickling it raised (a user's object may raise anything)."""
    try:
        data = pickle.dumps(job, pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # one error type for "this job does not pickle", whatever it was
        raise pickle.PicklingError(f"{type(e).__name__}: {e}") from e
    return base64.b64encode(data).decode("ascii")


def decode_job(text: str) -> Any:
    return pickle.loads(base64.b64decode(text))


def safe_repr(value: Any, limit: int = 500) -> str:
    """repr() that never raises and never floods a log line."""
    try:
        text = repr(value)
    except Exception as e:  # noqa: BLE001 - a user's broken __repr__ must not stop us
        text = f"<unrepresentable {type(value).__name__}: {e}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_identity(cp: Checkpoint, identity: dict[str, Any], path: Path) -> None:
    """Refuse a state file written by another run (another target or other KEY=VALUEs)."""
    theirs = cp.identity
    if not theirs or not (cp.has_last or cp.finished or cp.failed or cp.complete):
        return  # written before runs recorded who they are, or by one that did nothing
    differs = [key for key in sorted(set(theirs) | set(identity))
               if theirs.get(key) != identity.get(key)]
    if differs:
        said = "; ".join(f"{key} was {_plain(theirs.get(key))}, now {_plain(identity.get(key))}"
                         for key in differs)
        raise StateError(
            f"state file {path} belongs to another run ({said}); start this one over with "
            "--reset, or give it its own --state-file")


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items()) or "none"
    return "none" if value is None else str(value)


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
        if not self.path.parent.is_dir():
            raise StateError(f"cannot use state file {self.path}: its directory does not "
                             "exist; create it, or choose another --state-file")
        while True:
            try:
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise StateError(f"cannot create {self._lock_path}: {e.strerror}; choose a "
                                 "writable place for --state-file") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = (os.pread(fd, 200, 0).decode(errors="replace").strip()
                          or "another process")
                os.close(fd)
                raise StateError(
                    f"state file {self.path} is in use by another master ({holder}); "
                    "stop that master, or give this run its own --state-file") from None
            # The master that held it may have unlinked it between our open and our lock (it
            # does, as it lets go): then this is no longer the lock file; take the new one.
            try:
                if os.stat(self._lock_path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError as e:  # a full disk: not even the holder's name fits
            with contextlib.suppress(OSError):
                os.unlink(self._lock_path)
            os.close(fd)
            raise StateError(f"cannot write state file {self.path}: {e.strerror}; free some "
                             "room, or choose another --state-file") from None
        self._lock_fd = fd
        _LOCKED.add(self)

    def unlock(self) -> None:
        """Let go of the lock, leaving no lock file behind."""
        if self._lock_fd is not None:
            # Unlinked while still held: a master that opened it meanwhile sees, once it has
            # the lock, that the file is gone, and takes a new one.
            with contextlib.suppress(OSError):
                os.unlink(self._lock_path)
            os.close(self._lock_fd)
            self._lock_fd = None
            _LOCKED.discard(self)

    def load(self) -> Checkpoint | None:
        """The last checkpoint, None when there is none; StateError when it is unreadable."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"cannot read state file {self.path}: {e.strerror}") from None
        try:
            return _parse(json.loads(raw))
        except Exception as e:  # noqa: BLE001 - whatever is wrong, the answer is the same
            raise StateError(
                f"state file {self.path} is corrupt ({type(e).__name__}: {e}); "
                "inspect it, or start the run over with --reset"
            ) from None

    def save(self, cp: Checkpoint) -> None:
        """Replace the checkpoint atomically: a crash leaves the old one or the new one."""
        # Encoded first: a job that cannot be pickled raises here, before anything is written.
        job = encode_job(cp.last_job) if cp.has_last else None
        data = {f.name: getattr(cp, f.name) for f in fields(cp)}
        data["version"] = STATE_VERSION
        data["last_job"] = job
        data["last_repr"] = safe_repr(cp.last_job) if cp.has_last else None
        data["updated"] = time.time()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError:
            # A full disk, say: no half-written file left beside the old one, which stands.
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(self.path.parent)

    def remove(self) -> None:
        """Forget the run (for --reset)."""
        self.path.unlink(missing_ok=True)


_LOCKED: weakref.WeakSet[StateFile] = weakref.WeakSet()
"""State files this process holds locked."""


def _close_locks_in_child() -> None:
    # A process forked while we hold a lock must not hold it too (a lock held by a slave
    # would outlive its master): the child closes its copies of the descriptors.
    for state in list(_LOCKED):
        if state._lock_fd is not None:
            os.close(state._lock_fd)
            state._lock_fd = None
    _LOCKED.clear()


os.register_at_fork(after_in_child=_close_locks_in_child)


def _parse(data: dict[str, Any]) -> Checkpoint:
    version = data.get("version")
    if version == 1:
        # Version 1 resumed from the earliest unfinished job itself, and recorded the target
        # as it was typed, which cannot be compared reliably: it is not checked.
        has_last = bool(data["has_resume"])
        last_seq, last_job = int(data["resume_seq"]), data["resume_job"]
        identity = None
    elif version == STATE_VERSION:
        has_last = bool(data["has_last"])
        last_seq, last_job = int(data["last_seq"]), data["last_job"]
        identity = data.get("identity")
        if identity is not None and not isinstance(identity, dict):
            raise ValueError("identity is not an object")
    else:
        raise ValueError(f"unknown version {version!r}")
    return Checkpoint(
        resume_seq=int(data["resume_seq"]), last_seq=last_seq,
        last_job=decode_job(last_job) if has_last else None, has_last=has_last,
        finished=int(data["finished"]), failed=int(data["failed"]),
        failed_before=int(data.get("failed_before", 0)), complete=bool(data["complete"]),
        identity=identity)


def _fsync_dir(path: Path) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ControlFile:
    """``<state file>.ctl``, there while the run's master is: how tm-ctl reaches it by the state
    file alone (``tm-ctl --state-file``), a tm-run on its private endpoint included. Readable by
    its owner only: it may hold the run's own secret (tm-run's), never one the user gave."""

    def __init__(self, state_path: Path) -> None:
        self.path = state_path.with_name(state_path.name + ".ctl")
        self._written = False

    def write(self, address: str, *, secret: bytes | None, secret_file: Path | None,
              curve_dir: Path | None, unsigned: bool = False) -> None:
        """Say how to reach this process's master; a file that cannot be written costs only
        the finding by state file (a warning). ``unsigned``: the master takes no signature
        (tm-run's own socket): whatever secret tm-ctl's environment holds is not the run's."""
        data = {"address": address, "pid": os.getpid(), "host": socket.gethostname(),
                "unsigned": unsigned,
                "secret": secret.decode() if secret is not None else None,
                "secret_file": str(secret_file.resolve()) if secret_file else None,
                "curve_dir": str(curve_dir.resolve()) if curve_dir else None}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            # A file of ours, new, 0600: never one someone else made there beforehand (in a
            # shared directory), nor one a symbolic link points to.
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(tmp, self.path)
            self._written = True
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("cannot write %s (%s): tm-ctl finds this run by --address only",
                        self.path, e.strerror)

    def close(self) -> None:
        """The master is going: no file left to name it (unless another master's by now)."""
        if self._written:
            with contextlib.suppress(OSError, ValueError):
                if json.loads(self.path.read_text())["pid"] == os.getpid():
                    self.path.unlink()
            self._written = False

    def read(self) -> dict[str, Any]:
        """What the running master wrote; NoMasterError when there is none, or it is not
        running (on this host) any more."""
        try:
            if self.path.stat().st_uid not in (os.getuid(), 0):
                raise NoMasterError(f"{self.path} is not yours: it cannot say where your "
                                    "master is (use --address)")
            data = json.loads(self.path.read_text())
            address, pid, host = str(data["address"]), int(data["pid"]), str(data["host"])
        except FileNotFoundError:
            raise NoMasterError(f"no master is running with state file {self.path.name[:-4]} "
                             f"(no {self.path}); is the run going? Else use --address") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise NoMasterError(f"cannot read {self.path} ({e}); use --address") from None
        if host == socket.gethostname() and not _running(pid):
            raise NoMasterError(f"the master of {self.path.name[:-4]} (pid {pid}) is not running "
                             "any more")
        return dict(data, address=address)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
