"""Disks that will not take a write, with real processes and real small disks.

The README's **Disks** promise (section "Delivery and failures"): when the state file or the
failures file cannot be written, the run pauses (no new jobs go out, the slaves finish what they
hold and keep their heartbeats), the master says so naming the file and the error, and the run
goes on by itself once the disk takes the write; a failure record is written whole or not at
all; a torn last line is skipped with a warning by ``--retry-failures``; stopped while paused,
the master says which checkpoint the state file still holds; a file that cannot be used at all
stops the master before anything runs, with one line, exit 2.

Every test runs real `tm-master` / `tm-slave` / `tm-run` processes (through the `procs`
fixture) over loopback ZeroMQ, on a tmpfs of a few hundred KB that the `disks` fixture mounts
(and always unmounts). A disk is made full with a filler file that takes every free block, and
made whole again by deleting it. The ledger the job modules write (one line per executed job)
is the proof that no job was lost; failure records are checked one by one.

The unit-level side of the pause (records held unsettled, the resume point held back) is in
test_master_parts.py, and the reading of a torn file in test_state.py: these tests are about
whole runs on real disks.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_faults import (
    LEASE_TIMEOUT,
    SUMMARY,
    Run,
    check_ledger,
    count_lines,
    run_with_failures,
    slave_name,
    state,
)

from procs import ANY_PORT, Proc, Procs, listening_on, read_ledger, wait_for
from taskmaster.state import encode_job
from taskmaster.target import Target, default_state_path

START_S = 20.0
"""Longest a process may take to start, join, or get a run to a given point on a loaded host."""
RUN_S = 60.0
"""Longest a (small) run may take to end once it can."""
QUICK_S = 20.0
"""Longest a command that must refuse to start may take to do so."""
DISK_SIZE = "256k"

ENOSPC_TEXT = os.strerror(errno.ENOSPC)  # "No space left on device"


@pytest.fixture(scope="module", autouse=True)
def _summary() -> Iterator[None]:
    """Print the rows `check_ledger` recorded for this module's tests (with ``-s``)."""
    first = len(SUMMARY)
    yield
    rows = SUMMARY[first:]
    if rows:
        print("\n\ndisk summary (jobs lost / jobs run more than once / recovery)")
        for o in rows:
            rec = f"{o.recover_s:.1f}s" if o.recover_s is not None else "-"
            print(f"{o.fault:<48} {o.jobs:>6} {o.lost:>5} {o.twice:>6} {rec:>8}  {o.note}")


# -- small disks --------------------------------------------------------------------------------

_MS_RDONLY, _MS_REMOUNT, _MNT_DETACH = 1, 32, 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _mount_call(source: str, target: Path, fstype: str, flags: int, data: str) -> int:
    if _libc.mount(source.encode(), str(target).encode(), fstype.encode(), flags,
                   data.encode()) == 0:
        return 0
    return ctypes.get_errno()


class Disks:
    """tmpfs disks one test mounts (mount(2), as ``mount -t tmpfs -o size=...``); `cleanup`
    unmounts every one, lazily (``umount -l``) if it is still busy."""

    def __init__(self, procs: Procs, root: Path) -> None:
        self.procs = procs
        self.root = root
        self.mounted: list[Path] = []

    def mount(self, name: str = "disk", size: str = DISK_SIZE) -> Path:
        where = self.root / name
        where.mkdir()
        err = _mount_call("tmpfs", where, "tmpfs", 0, f"size={size},mode=0755")
        if err in (errno.EPERM, errno.EACCES):
            pytest.skip(f"cannot mount a tmpfs here ({errno.errorcode[err]}): these tests "
                        "need root (or CAP_SYS_ADMIN) to make small real disks")
        if err:
            raise OSError(err, f"mount -t tmpfs -o size={size} tmpfs {where}: {os.strerror(err)}")
        self.mounted.append(where)
        return where

    def read_only(self, where: Path) -> None:
        """``mount -o remount,ro``."""
        err = _mount_call("tmpfs", where, "tmpfs", _MS_REMOUNT | _MS_RDONLY, "")
        if err:
            raise OSError(err, f"mount -o remount,ro {where}: {os.strerror(err)}")

    def cleanup(self) -> None:
        # Processes that still have files open there first (a failed test leaves some).
        self.procs.cleanup()
        while self.mounted:
            where = self.mounted.pop()
            if _libc.umount2(str(where).encode(), 0) != 0:
                _libc.umount2(str(where).encode(), _MNT_DETACH)


@pytest.fixture
def disks(procs: Procs, tmp_path: Path) -> Iterator[Disks]:
    d = Disks(procs, tmp_path)
    try:
        yield d
    finally:
        d.cleanup()


def fill(disk: Path) -> Path:
    """Take every free block of ``disk`` with a filler file (the disk is then full); its path."""
    path = disk / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 4096):
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0, f"{disk} is not full"
    return path


# -- what the master says -----------------------------------------------------------------------


def paused_rx(path: Path, error: str = ENOSPC_TEXT) -> str:
    """The line the master logs at once when ``path`` cannot be written (checkpointer.py)."""
    return (rf"ERROR \S+: cannot write {re.escape(str(path))}: "
            rf"{re.escape(error)}; the run is paused until it can be \(no new jobs go out; the "
            r"slaves finish what they hold\)$")


def resumed_rx(path: Path) -> str:
    """The line it logs when ``path`` takes the write again."""
    return (rf"WARNING \S+: {re.escape(str(path))} can be written "
            r"again, after (\d+)s; the run goes on$")


ATTEMPT_JOBS = '''\
"""ledger_jobs, with every attempt at a job (a failing one too) appended to $ATTEMPTS first."""
import os

import ledger_jobs
from ledger_jobs import get_jobs


def handle_job(job):
    ledger_jobs.append(os.environ["ATTEMPTS"], job)
    ledger_jobs.handle_job(job)
'''


def attempt_run(procs: Procs, tmp_path: Path) -> tuple[Run, Path]:
    """A `Run` of a job script that also lists every attempt at a job (ledger_jobs lists only
    the jobs that succeeded), and the file of attempts, one job a line."""
    script = tmp_path / "attempt_jobs.py"
    script.write_text(ATTEMPT_JOBS)
    return Run(procs, tmp_path, target=str(script)), tmp_path / "attempts.txt"


def attempts(path: Path) -> list[int]:
    return [int(line) for line in read_ledger(path)]


def complete_records(path: Path) -> list[dict[str, Any]]:
    """The records of a failures file that are whole lines (a line being written is not)."""
    if not path.exists():
        return []
    text = path.read_bytes().decode()
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def whole_file_records(path: Path) -> list[dict[str, Any]]:
    """Every line of a failures file, which must all be whole records."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path} ends with a torn record: {data[-200:]!r}"
    return [json.loads(line) for line in data.decode().splitlines()]


def hold(until: float, *alive: Proc) -> None:
    """Keep a fault in place until ``until`` (time.monotonic): a period the test needs the
    fault to last, not a wait for something to happen. Every process of ``alive`` must stay
    up meanwhile."""
    while (left := until - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))
        gone = [p for p in alive if p.proc.poll() is not None]
        assert not gone, "\n\n".join(f"{p.argv} exited with {p.proc.returncode}:\n{p.output}"
                                     for p in gone)


def litter(directory: Path) -> list[str]:
    """Lock files and half-written state files left in ``directory``."""
    return sorted(p.name for p in directory.iterdir()
                  if p.name.endswith((".lock", ".tmp")))


# -- 1. the failures file's disk fills mid-run ---------------------------------------------------


def test_a_full_disk_for_failure_records_pauses_the_run_until_room_is_made(
        procs: Procs, disks: Disks, tmp_path: Path) -> None:
    """The failures file's disk fills mid-run, while jobs keep failing for good: the master
    logs the pause at once (file and OS error); nothing new goes out (a slave that joins
    meanwhile gets nothing, the others' ledger stands still) while no slave is lost over more
    than --lease-timeout (their heartbeats go on); the state file never points past a failed
    job whose record is not on disk. Once the filler is deleted the run goes on by itself and
    completes: every job ran, every failed job has exactly one whole record, exit 1."""
    n, every = 1000, 10
    failing = set(range(0, n, every))
    disk = disks.mount()
    run, tried = attempt_run(procs, tmp_path)
    run.failures = disk / "run.failures.jsonl"  # the state file stays on a disk with room
    late_ledger = tmp_path / "late-ledger.txt"
    env = run.env(FAIL_EVERY=every, SLEEP_S=0.01, ATTEMPTS=tried)
    master = run.master(f"count={n}", "--max-retries", "0", "--lease-timeout", LEASE_TIMEOUT,
                        "--failures-file", str(run.failures))
    first = run.slave("-c", "5", env=env)
    wait_for(lambda: len(complete_records(run.failures)) >= 10, START_S,
             f"10 failure records in {run.failures}", master, first)
    filler = fill(disk)
    filled = time.monotonic()
    master.expect(paused_rx(run.failures), START_S)
    paused = time.monotonic()
    late = run.slave("-c", "5", env={**env, "LEDGER": str(late_ledger)})
    master.expect(rf"slave {slave_name(late)} joined", START_S)

    # The slaves finish what they held (about 0.2 s of work) well within the first 2 s;
    # after that nothing may run. Longer than --lease-timeout in all.
    hold(paused + 2.0, master, first, late)
    ran_mid = len(run.jobs())
    hold(paused + float(LEASE_TIMEOUT) + 1.5, master, first, late)
    ran_end = len(run.jobs())
    assert ran_mid == ran_end, f"{ran_end - ran_mid} jobs ran in the pause's last seconds"
    assert ran_end < n - len(failing), "the run did not pause: it had (nearly) finished"
    assert read_ledger(late_ledger) == [], "a slave that joined during the pause got jobs"
    assert not re.search(r"slave \S+ lost", master.output), master.output
    for s in (first, late):
        assert not re.search(r"waiting for a master|rejoining", s.output), s.output
    recorded = {int(r["seq"]) for r in complete_records(run.failures)}
    unrecorded = (set(attempts(tried)) & failing) - recorded
    assert unrecorded, "no failed job waits for its record: what paused the run?"
    cp = state(run.state)
    assert int(cp["resume_seq"]) <= min(unrecorded), \
        f"the checkpoint {cp} points past job #{min(unrecorded)}, whose record is not written"

    filler.unlink()
    freed = time.monotonic()
    said = master.expect(resumed_rx(run.failures), START_S)
    recover_s = time.monotonic() - freed
    assert master.wait(RUN_S) == 1, master.output
    done_s = time.monotonic() - freed
    for s in (first, late):
        assert s.wait(15) == 0, s.output
    master.expect(rf"run complete: {n - len(failing)} finished, {len(failing)} failed", 1)
    seqs = Counter(int(r["seq"]) for r in whole_file_records(run.failures))
    assert set(seqs) == failing, sorted(set(seqs) ^ failing)
    assert all(c == 1 for c in seqs.values()), {j: c for j, c in seqs.items() if c > 1}
    assert count_lines(master, paused_rx(run.failures)) == 1, master.output
    late_jobs = [int(line) for line in read_ledger(late_ledger)]
    assert late_jobs, "the slave that joined during the pause never got work after it"
    check_ledger("full disk: failures file", run.jobs() + late_jobs, set(range(n)) - failing,
                 recover_s=recover_s,
                 note=f"said {paused - filled:.1f}s after; paused {freed - paused:.1f}s "
                      f"(it said {said.group(1)}s); {len(unrecorded)} records waited; done "
                      f"{done_s:.1f}s after room")


# -- 2. the state file's disk fills mid-run ------------------------------------------------------


@pytest.mark.parametrize("failing", [False, True], ids=["nothing-fails", "jobs-fail-too"])
def test_a_full_disk_for_the_state_file_pauses_the_run_until_room_is_made(
        procs: Procs, disks: Disks, tmp_path: Path, failing: bool) -> None:
    """The disk of the state file (and of the failures file beside it) fills mid-run: the
    master logs the pause at once (file and OS error), leaves the last checkpoint whole with
    no half-written file beside it, and sends nothing new; once the filler is deleted the run
    goes on by itself and completes with every job run: exit 0, or with jobs failing too, exit
    1 with exactly one whole record for each failed job."""
    # The disk fills after the first checkpoint; the run pauses at the next, up to a second
    # (1000 jobs) later: there are jobs enough left for that.
    n, every = 2000, 10
    failed = set(range(0, n, every)) if failing else set()
    disk = disks.mount()
    run = Run(procs, tmp_path)
    run.state, run.failures = disk / "run.tmstate", disk / "run.failures.jsonl"
    master = run.master(f"count={n}", "--lease-timeout", LEASE_TIMEOUT, "--max-retries", "0")
    slave = run.slave("-c", "10", env=run.env(SLEEP_S=0.01, FAIL_EVERY=every if failing else 0))
    wait_for(lambda: run.state.exists() and state(run.state)["has_last"], START_S,
             f"a checkpoint with a resume point in {run.state}", master, slave)
    filler = fill(disk)
    filled = time.monotonic()
    master.expect(paused_rx(run.state), START_S)
    paused = time.monotonic()
    # The slave finishes what it held (about 0.2 s of work); after that nothing may run.
    hold(paused + 1.0, master, slave)
    ran_mid = len(run.jobs())
    hold(paused + 2.0, master, slave)
    ran_end = len(run.jobs())
    assert ran_mid == ran_end < n - len(failed), \
        f"jobs ran during the pause: {ran_mid} then {ran_end} of {n}"
    cp = state(run.state)  # the checkpoint before the disk filled, whole
    assert cp["has_last"] and not cp["complete"], cp
    assert set(range(int(cp["resume_seq"]))) <= set(run.jobs()) | failed, cp
    assert litter(disk) == ["run.tmstate.lock"], "a half-written state file was left"
    assert not re.search(r"slave \S+ lost", master.output), master.output

    filler.unlink()
    freed = time.monotonic()
    master.expect(resumed_rx(run.state), START_S)
    recover_s = time.monotonic() - freed
    assert master.wait(RUN_S) == (1 if failing else 0), master.output
    done_s = time.monotonic() - freed
    assert slave.wait(15) == 0, slave.output
    for path in (run.state, run.failures):  # each pause it announced, it announced the end of
        assert count_lines(master, paused_rx(path)) == count_lines(master, resumed_rx(path))
    assert state(run.state)["complete"], state(run.state)
    if failing:
        seqs = Counter(int(r["seq"]) for r in whole_file_records(run.failures))
        assert set(seqs) == failed, sorted(set(seqs) ^ failed)
        assert all(c == 1 for c in seqs.values()), {j: c for j, c in seqs.items() if c > 1}
    else:
        assert not run.failures.exists(), "a failures file although nothing failed"
    assert litter(disk) == [], litter(disk)
    check_ledger(f"full disk: state file{', jobs failing' if failing else ''}", run.jobs(),
                 set(range(n)) - failed, recover_s=recover_s,
                 note=f"said {paused - filled:.1f}s after; paused at {ran_end}/{n} jobs; done "
                      f"{done_s:.1f}s after room")


# -- 3. stopped while paused ---------------------------------------------------------------------


@pytest.mark.parametrize("full", ["state", "failures"])
def test_sigint_while_paused_says_which_checkpoint_is_on_disk_and_a_restart_resumes(
        procs: Procs, disks: Disks, tmp_path: Path, full: str) -> None:
    """SIGINT to a master paused on a full disk: it exits 130 saying, truly, which checkpoint
    the state file holds (when the state file is what cannot be written: the last one written,
    its time and resume point; when it is the failures file: the one saved at the stop, which
    does not pass any failed job whose record is unwritten), and leaves no lock file and no
    half-written file; once room is made, a restart resumes at that job and completes with no
    job lost, and every failed job recorded."""
    # A full state file pauses the run at the next checkpoint, up to a second (1000 jobs)
    # after the fill, itself up to a second after the checkpoint it waits for; a full
    # failures file, at once.
    n, every = (3000 if full == "state" else 1500), 10
    disk = disks.mount()
    run, tried = attempt_run(procs, tmp_path)
    env = run.env(SLEEP_S=0.01, ATTEMPTS=tried)
    run.failures = disk / "run.failures.jsonl"
    if full == "state":
        run.state, failing = disk / "run.tmstate", set()
        args: tuple[str, ...] = (f"count={n}",)
    else:
        failing = set(range(0, n, every))
        env["FAIL_EVERY"] = str(every)
        args = (f"count={n}", "--max-retries", "0", "--failures-file", str(run.failures))
    master = run.master(*args)
    slave = run.slave("-c", "10", env=env)
    if failing:
        wait_for(lambda: len(complete_records(run.failures)) >= 10, START_S,
                 f"10 failure records in {run.failures}", master, slave)
    else:
        wait_for(lambda: run.state.exists() and int(state(run.state)["resume_seq"]) > 0,
                 START_S, f"a checkpoint past job #0 in {run.state}", master, slave)
    filler = fill(disk)
    master.expect(paused_rx(run.state if full == "state" else run.failures), START_S)
    master.signal(signal.SIGINT)
    assert master.wait(RUN_S) == 130, master.output
    cp = state(run.state)
    resume = int(cp["resume_seq"])
    if full == "state":
        said = master.expect(
            r"WARNING \S+: stopped by SIGINT; the state could not be saved now; the state file "
            r"holds the one of (\d\d):(\d\d):(\d\d): a restart resumes (at job #(\d+)|from the "
            r"beginning)$", 1)
        assert said.group(4) == f"at job #{resume}" and resume > 0, (said.group(0), cp)
        written = time.localtime(float(cp["updated"]))
        gap = ((int(said.group(1)) * 3600 + int(said.group(2)) * 60 + int(said.group(3)))
               - (written.tm_hour * 3600 + written.tm_min * 60 + written.tm_sec)) % 86400
        assert gap in (0, 1), f"said {said.group(0)!r}; the file was written {cp['updated']}"
        note = f"said the checkpoint at #{resume}"
    else:
        master.expect(r"WARNING \S+: stopped by SIGINT; state saved: restart to resume$", 1)
        unrecorded = ((set(attempts(tried)) & failing)
                      - {int(r["seq"]) for r in whole_file_records(run.failures)})
        assert unrecorded, "no failed job waited for its record: what paused the run?"
        assert resume <= min(unrecorded), \
            f"the checkpoint {cp} points past job #{min(unrecorded)}, whose record is unwritten"
        note = f"{len(unrecorded)} unrecorded failures at the stop"
    assert resume < n and set(range(resume)) <= set(run.jobs()) | failing, cp
    for where in {run.state.parent, disk}:
        assert litter(where) == [], f"left behind: {litter(where)}"

    filler.unlink()
    master = run.master(*args)
    master.expect(rf"resuming at job #{resume}\b", START_S)
    assert master.wait(RUN_S) == (1 if failing else 0), master.output
    assert slave.wait(15) == 0, slave.output
    for where in {run.state.parent, disk}:
        assert litter(where) == [], f"left behind: {litter(where)}"
    if failing:
        # Records of failed jobs past the resume point may come twice (they ran again).
        seqs = Counter(int(r["seq"]) for r in whole_file_records(run.failures))
        assert set(seqs) == failing, sorted(set(seqs) ^ failing)
        note += f"; {sum(c - 1 for c in seqs.values())} recorded twice"
    check_ledger(f"SIGINT while paused ({full} file), restart", run.jobs(),
                 set(range(n)) - failing, note=f"exit 130; {note}; restart resumed at #{resume}")


# -- 4. files that cannot be used at all ---------------------------------------------------------

COUNT = "count=50"


def _refusal_case(case: str, tmp_path: Path, disks: Disks) -> tuple[list[str], Path, str]:
    """Set up ``case``: the options to add, the directory the state file lives in, and the
    regex of the one line the master must print."""
    home = tmp_path / "home"
    home.mkdir()
    state_file, failures = home / "run.tmstate", home / "run.failures.jsonl"
    args = ["--state-file", str(state_file)]
    if case == "state-directory-missing":
        state_file = home / "missing" / "run.tmstate"
        return (["--state-file", str(state_file)], home,
                rf"cannot use state file {re.escape(str(state_file))}: its directory does not "
                r"exist; create it, or choose another --state-file")
    if case == "directory-at-the-default-state-path":
        # procs start commands in tmp_path, where the default state file goes.
        key, value = COUNT.split("=")
        name = default_state_path(Target.parse("ledger_jobs", "get_jobs"), {key: value}).name
        (tmp_path / name).mkdir()
        return ([], tmp_path, rf"cannot read state file {re.escape(str(tmp_path / name))}: "
                              r"Is a directory")
    if case == "directory-as-state-file-option":
        state_file.mkdir()
        return (args, home, rf"cannot read state file {re.escape(str(state_file))}: "
                            r"Is a directory")
    if case == "directory-at-the-failures-path":
        failures.mkdir()
        return (args, home, rf"cannot write failures file {re.escape(str(failures))}: Is a "
                            r"directory; choose another --failures-file")
    if case == "read-only-disk":
        disk = disks.mount()
        disks.read_only(disk)
        state_file = disk / "run.tmstate"
        return (["--state-file", str(state_file)], disk,
                rf"cannot create {re.escape(str(state_file))}\.lock: Read-only file system; "
                r"choose a writable place for --state-file")
    if case == "read-only-disk-for-failures":
        disk = disks.mount()
        disks.read_only(disk)
        failures = disk / "run.failures.jsonl"
        return ([*args, "--failures-file", str(failures)], home,
                rf"cannot write failures file {re.escape(str(failures))}: Read-only file "
                r"system; choose another --failures-file")
    if case in ("full-disk", "full-disk-after-a-killed-master"):
        disk = disks.mount()
        state_file = disk / "run.tmstate"
        if case == "full-disk-after-a-killed-master":
            # A SIGKILLed master leaves its lock file (and the block it holds).
            (disk / "run.tmstate.lock").write_text("pid 1 on elsewhere\n")
        fill(disk)
        return (["--state-file", str(state_file)], disk,
                rf"cannot write state file {re.escape(str(state_file))}: {ENOSPC_TEXT}; free "
                r"some room, or choose another --state-file")
    raise AssertionError(case)


@pytest.mark.parametrize(("command", "case"), [
    ("tm-master", "state-directory-missing"),
    ("tm-master", "directory-at-the-default-state-path"),
    ("tm-master", "directory-as-state-file-option"),
    ("tm-master", "directory-at-the-failures-path"),
    ("tm-master", "read-only-disk"),
    ("tm-master", "read-only-disk-for-failures"),
    ("tm-master", "full-disk"),
    ("tm-master", "full-disk-after-a-killed-master"),
    ("tm-run", "read-only-disk"),
])
def test_an_unusable_state_or_failures_file_stops_the_master_before_anything_runs(
        procs: Procs, disks: Disks, tmp_path: Path, command: str, case: str) -> None:
    """A state or failures file that cannot be used at all (its directory missing, a
    directory in its place, a read-only or full disk): exit 2 with exactly one line (no
    traceback), no lock file nor anything else left behind, nothing run."""
    args, home, message = _refusal_case(case, tmp_path, disks)
    before = sorted(p.name for p in home.iterdir())
    ledger = tmp_path / "ledger.txt"
    env = {"LEDGER": str(ledger)}
    if command == "tm-run":
        proc = procs.run("tm-run", "ledger_jobs", "2", COUNT, *args, "--no-progress", env=env,
                         timeout=QUICK_S)
    else:
        proc = procs.run("tm-master", "ledger_jobs", COUNT, *args, "--address", ANY_PORT,
                         "--no-progress", env=env, timeout=QUICK_S)
    lines = [line for line in proc.lines if line.strip()]
    assert "Traceback" not in proc.output, proc.output
    assert len(lines) == 1, proc.output
    assert re.fullmatch(rf"{command}: error: {message}", lines[0]), lines[0]
    assert proc.code == 2, proc.output  # type: ignore[attr-defined]
    after = sorted(p.name for p in home.iterdir())
    assert not [name for name in after if name.endswith(".lock")], after
    assert after == [name for name in before if not name.endswith(".lock")], \
        f"left behind in {home}: {sorted(set(after) - set(before))}"
    assert not ledger.exists(), "a job ran"


# -- 5. a torn last line in the failures file ----------------------------------------------------


def torn_record(job: int) -> str:
    """The first half of a failure record for ``job``, as a disk that filled mid-record (or a
    machine that went down mid-write) leaves it: no end, no newline."""
    whole = json.dumps({"seq": job, "job_repr": repr(job), "job": encode_job(job),
                        "exception": "ValueError", "message": f"job {job} fails on purpose",
                        "traceback": "Traceback (most recent call last):\n", "attempts": 1,
                        "slave": "host:1:abc", "time": time.time()})
    return whole[: len(whole) // 2]


def torn_warning(path: Path) -> str:
    return (rf"WARNING \S+: failures file {re.escape(str(path))}: the "
            r"last line is incomplete \(a full disk\?\); skipping it$")


def retry(procs: Procs, run: Run, ledger: Path, **env: object) -> tuple[Proc, list[int]]:
    """``tm-master --retry-failures`` on the run's failures file, with one slave that fails
    nothing (more ``env`` for it): the master (ended) and the jobs it ran."""
    master = procs.start("tm-master", "--retry-failures", str(run.failures), run.target,
                         "--address", ANY_PORT, "--no-progress", env=run.env())
    run.address = listening_on(master, START_S)
    slave = run.slave(env={"LEDGER": str(ledger), **{k: str(v) for k, v in env.items()}})
    master.wait(RUN_S)
    slave.wait(15)
    return master, [int(line) for line in read_ledger(ledger)]


def test_retry_failures_skips_a_torn_last_line_with_a_warning_and_runs_every_whole_record(
        procs: Procs, tmp_path: Path) -> None:
    """A failures file whose last line is torn: ``--retry-failures`` warns about it (once)
    and runs exactly the jobs of every whole record, exit 0; the file itself is left as is."""
    n = 100
    run = Run(procs, tmp_path)
    failing = run_with_failures(run, n, every=7)
    torn_job = n + 5  # a job of no whole record: the retry cannot run it
    with open(run.failures, "a") as f:
        f.write(torn_record(torn_job))
    content = run.failures.read_bytes()

    master, retried = retry(procs, run, tmp_path / "retry-ledger.txt")
    assert master.proc.returncode == 0, master.output
    assert count_lines(master, torn_warning(run.failures)) == 1, master.output
    assert sorted(retried) == sorted(failing), "the retry ran other jobs than the whole records"
    master.expect(rf"run complete: {len(failing)} finished, 0 failed", 1)
    assert run.failures.read_bytes() == content
    check_ledger("--retry-failures, torn last line", run.jobs() + retried, set(range(n)),
                 note=f"{len(failing)} whole records retried; torn one skipped with a warning")


def test_the_job_of_a_torn_record_runs_again_when_its_run_resumes(
        procs: Procs, tmp_path: Path) -> None:
    """The master dies while writing a failure record (its last line torn): the job was never
    settled, so the restarted run runs it again and records it whole; afterwards every record
    of the file is readable and ``--retry-failures`` runs every failed job again."""
    n, every = 400, 10
    failing = set(range(0, n, every))
    run, tried = attempt_run(procs, tmp_path)
    args = (f"count={n}", "--max-retries", "0")
    master = run.master(*args)
    slave = run.slave("-c", "2", env=run.env(FAIL_EVERY=every, SLEEP_S=0.01, ATTEMPTS=tried))
    wait_for(lambda: run.state.exists() and int(state(run.state)["resume_seq"]) > 0,
             START_S, "a checkpoint past job #0", master, slave)
    master.kill()
    resume = int(state(run.state)["resume_seq"])
    written = {int(r["seq"]) for r in complete_records(run.failures)}
    torn_job = min(j for j in failing if j >= resume and j not in written)
    with open(run.failures, "a") as f:
        f.write(torn_record(torn_job))
    tries_before = attempts(tried).count(torn_job)

    master = run.master(*args)
    master.expect(rf"resuming at job #{resume}\b", START_S)
    assert master.wait(RUN_S) == 1, master.output
    assert slave.wait(15) == 0, slave.output
    assert attempts(tried).count(torn_job) > tries_before, \
        f"job {torn_job}, of the torn record, did not run again"
    check_ledger("torn record, run resumed", run.jobs(), set(range(n)) - failing,
                 note=f"torn record of job {torn_job}; resumed at #{resume}")
    lines = run.failures.read_text().splitlines()
    unreadable = []
    for number, line in enumerate(lines, 1):
        try:
            json.loads(line)
        except ValueError:
            unreadable.append(number)
    assert not unreadable, f"lines {unreadable} of {len(lines)} of {run.failures} are unreadable"
    master, retried = retry(procs, run, tmp_path / "retry-ledger.txt", ATTEMPTS=tried)
    assert master.proc.returncode == 0, master.output
    assert set(retried) == failing, sorted(set(retried) ^ failing)
