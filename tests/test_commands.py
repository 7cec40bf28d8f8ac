"""The four commands as a user runs them: real processes, real ZeroMQ on loopback, real files.

Every test starts `python -m taskmaster master|slave|spawn|run ...` through the `procs` fixture,
in its own tmp_path, with job modules from tests/jobs that append each executed job to a ledger
file. A master binds a 127.0.0.1 port the system picks (port 0) and slaves get the address it
logs. Each test checks the exit status and the line or ledger content that shows the command did
what its contract says.
"""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from procs import ANY_PORT, Proc, Procs, listening_on, read_ledger, wait_for
from taskmaster.config import MAX_WINDOW_JOBS

START_S = 20.0
"""Bound on a process getting as far as its first log line."""
RUN_S = 60.0
"""Bound on a whole (small) run."""
QUICK_S = 15.0
"""Bound on a command that must exit without running anything."""

NO_PROGRESS = "--no-progress"
SETUP_SLAVES = "1"
"""Slaves of a `tm-run` whose only purpose is to get a run done: one cannot miss the run's end.
(With two, a slave that has not joined by the time the other finished a small run is not told
the run is complete: tm-run then waits its 5 s grace and SIGTERMs it.)"""

SCRIPT = '''\
"""A job script loaded by path: two job streams and two handlers, each leaving its own mark."""

import os


def _write(text):
    fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\\n").encode())
    finally:
        os.close(fd)


def get_jobs(last=0, count="50"):
    yield from range(int(last), int(count))


def make_jobs(last=1000, count="60"):
    yield from range(int(last), 1000 + int(count))


def handle_job(job):
    _write(f"handle {job}")


def do_job(job):
    _write(f"do {job}")
'''

STRICT_SCRIPT = '''\
def get_jobs(last=0, count="10"):
    yield from range(int(last), int(count))


def handle_job(job):
    pass
'''


# -- helpers ------------------------------------------------------------------------------------


def ledger_env(tmp_path: Path, name: str = "ledger.txt", **extra: str) -> tuple[Path, dict]:
    ledger = tmp_path / name
    return ledger, {"LEDGER": str(ledger), **extra}


def ledger_ints(path: Path) -> list[int]:
    return [int(line) for line in read_ledger(path)]


def twice(lines: list[Any]) -> int:
    """Executions beyond the first: how many jobs ran more than once, counted with repeats."""
    return len(lines) - len(set(lines))


def problem_lines(proc: Proc) -> list[str]:
    """Output lines that are not routine INFO log lines (so: errors, warnings, tracebacks)."""
    return [line for line in proc.lines if line.strip() and " INFO " not in line]


def state_file_of(proc: Proc) -> Path:
    """The state file a master says it uses."""
    return Path(proc.expect(r"state file: (.+?\.tmstate)", timeout=1).group(1))


def start_master(procs: Procs, *args: str, address: str = ANY_PORT,
                 env: dict | None = None) -> tuple[Proc, str]:
    """A master that is listening, and the address it bound (by default on a port the system
    picked; a restart passes the address its predecessor bound, so that slaves rejoin)."""
    master = procs.start("tm-master", *args, "--address", address, NO_PROGRESS, env=env)
    return master, listening_on(master, timeout=START_S)


def read_checkpoint(state: Path) -> dict:
    """The state file's contents ({} before the first checkpoint). It is replaced atomically,
    so a read sees a whole checkpoint."""
    try:
        return json.loads(state.read_text())
    except FileNotFoundError:
        return {}


def count_lines(proc: Proc, pattern: str) -> int:
    rx = re.compile(pattern)
    return sum(1 for line in list(proc.lines) if rx.search(line))


# -- 1. master and slave as separate processes --------------------------------------------------


def test_master_and_slave_run_the_whole_stream(procs: Procs, tmp_path: Path) -> None:
    ledger, env = ledger_env(tmp_path)
    master, address = start_master(procs, "ledger_jobs", "count=2000", env=env)
    slave = procs.start("tm-slave", "ledger_jobs", "--address", address, NO_PROGRESS, env=env)

    assert master.wait(RUN_S) == 0, master.output
    assert slave.wait(RUN_S) == 0, slave.output
    master.expect(r"run complete: 2000 finished, 0 failed", timeout=1)
    slave.expect(r"run complete \(2000 finished, 0 failed\)", timeout=1)
    jobs = ledger_ints(ledger)
    assert set(jobs) == set(range(2000))
    assert twice(jobs) == 0


def test_a_slave_shows_its_progress_unless_told_not_to(procs: Procs, tmp_path: Path) -> None:
    """tm-slave logs what it has done every few seconds; --no-progress silences that (it once
    did nothing at all)."""
    ledger, env = ledger_env(tmp_path, SLEEP_S="0.01")
    # 2 slaves x 10 greenlets x 10 ms a job: about 7 s of work, past the log interval.
    master, address = start_master(procs, "ledger_jobs", "count=14000", env=env)
    chatty = procs.start("tm-slave", "ledger_jobs", "--address", address, env=env)
    quiet = procs.start("tm-slave", "ledger_jobs", "--address", address, NO_PROGRESS, env=env)
    assert master.wait(RUN_S) == 0, master.output
    assert chatty.wait(RUN_S) == 0 and quiet.wait(RUN_S) == 0
    assert count_lines(chatty, r"\d+ jobs done \(\d+ failed attempts\), \d+ held") >= 1, (
        chatty.output)
    assert count_lines(quiet, r"jobs done") == 0, quiet.output
    assert set(ledger_ints(ledger)) == set(range(14000))


# -- 2. target forms ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("master_target", "slave_target", "expected"),
    [
        pytest.param("ledger_jobs:get_jobs", "ledger_jobs:handle_job",
                     [str(i) for i in range(300)], id="module:func"),
        pytest.param("scripts/myjobs.py", "scripts/myjobs.py:do_job",
                     [f"do {i}" for i in range(50)], id="file.py+file.py:func"),
        pytest.param("scripts/myjobs.py:make_jobs", "scripts/myjobs.py",
                     [f"handle {i}" for i in range(1000, 1060)], id="file.py:func+file.py"),
        pytest.param("{abs}/scripts/myjobs.py:make_jobs", "{abs}/scripts/myjobs.py:do_job",
                     [f"do {i}" for i in range(1000, 1060)], id="absolute-path:func"),
    ],
)
def test_target_forms(procs: Procs, tmp_path: Path, master_target: str, slave_target: str,
                      expected: list[str]) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "myjobs.py").write_text(SCRIPT)
    ledger, env = ledger_env(tmp_path)
    pairs = ["count=300"] if master_target.startswith("ledger_jobs") else []
    master, address = start_master(procs, master_target.format(abs=tmp_path), *pairs, env=env)
    slave = procs.start("tm-slave", slave_target.format(abs=tmp_path), "--address", address,
                        NO_PROGRESS, env=env)

    assert master.wait(RUN_S) == 0, master.output
    assert slave.wait(RUN_S) == 0, slave.output
    master.expect(rf"run complete: {len(expected)} finished, 0 failed", timeout=1)
    assert sorted(read_ledger(ledger)) == sorted(expected)


def test_run_takes_a_script_path(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "myjobs.py").write_text(SCRIPT)
    ledger, env = ledger_env(tmp_path)

    run = procs.run("tm-run", "scripts/myjobs.py", "2", NO_PROGRESS, env=env, timeout=RUN_S)

    assert run.code == 0, run.output
    run.expect(r"run complete: 50 finished, 0 failed", timeout=1)
    assert sorted(read_ledger(ledger)) == sorted(f"handle {i}" for i in range(50))


MARKED_SCRIPT = '''\
"""Notes the pid of every process that imports it, and the pid that ran each job."""

import os
import time


def _append(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (text + "\\n").encode())
    finally:
        os.close(fd)


_append(os.environ["IMPORTS"], str(os.getpid()))


def get_jobs(last=0, count="300"):
    yield from range(int(last), int(count))


def handle_job(job):
    time.sleep(float(os.environ.get("SLEEP_S", "0")))
    _append(os.environ["LEDGER"], f"{job} {os.getpid()}")
'''


def marked_run(procs: Procs, tmp_path: Path, *args: str, **extra: str) -> tuple[Proc, Path, Path]:
    (tmp_path / "marked.py").write_text(MARKED_SCRIPT)
    imports = tmp_path / "imports.txt"
    ledger, env = ledger_env(tmp_path, IMPORTS=str(imports), **extra)
    return procs.start("tm-run", "marked.py", *args, NO_PROGRESS, env=env), ledger, imports


@pytest.mark.parametrize(("options", "imports_expected"), [([], 1), (["--no-monkey-patch"], 3)])
def test_run_forks_its_slaves_from_its_own_import(procs: Procs, tmp_path: Path,
                                                  options: list[str],
                                                  imports_expected: int) -> None:
    run, ledger, imports = marked_run(procs, tmp_path, "2", "count=300", *options)

    assert run.wait(RUN_S) == 0, run.output
    jobs = [int(line.split()[0]) for line in read_ledger(ledger)]
    assert sorted(jobs) == list(range(300))
    importers = read_ledger(imports)
    # Forked slaves share tm-run's import; unpatched slaves cannot, and import for themselves.
    assert len(importers) == imports_expected, importers
    assert importers[0] == str(run.pid)
    workers = {line.split()[1] for line in read_ledger(ledger)}
    assert str(run.pid) not in workers


def test_run_restarts_a_killed_forked_slave_as_a_fresh_process(procs: Procs,
                                                                tmp_path: Path) -> None:
    count = 3000
    run, ledger, imports = marked_run(procs, tmp_path, "2", f"count={count}", "--lease-timeout",
                                      "3", SLEEP_S="0.02")
    wait_for(lambda: len(read_ledger(ledger)) >= 300, START_S, "jobs to run", run)
    slaves = psutil.Process(run.pid).children()
    assert len(slaves) == 2
    slaves[0].kill()

    assert run.wait(RUN_S) == 0, run.output
    run.expect(r"slave 0 \(pid \d+\) died with 137; restarting", timeout=1)
    jobs = [int(line.split()[0]) for line in read_ledger(ledger)]
    assert set(jobs) == set(range(count))
    # The replacement imported the script itself: a fork of a serving master would copy it.
    importers = read_ledger(imports)
    assert len(importers) == 2 and importers[0] == str(run.pid), importers
    assert importers[1] not in {str(s.pid) for s in slaves}


LARGE_JOBS_SCRIPT = '''\
"""Jobs of 40 KB each: a few thousand of them are more than one message may carry (64 MiB)."""

import os


def get_jobs(last=None, count="20000"):
    start = 0 if last is None else int.from_bytes(last[:4], "big")
    for i in range(start, int(count)):
        yield i.to_bytes(4, "big") * 10_000


def handle_job(job):
    fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{int.from_bytes(job[:4], 'big')}\\n".encode())
    finally:
        os.close(fd)
'''


def test_run_moves_large_jobs_in_batches_a_slave_accepts(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "large.py").write_text(LARGE_JOBS_SCRIPT)
    ledger, env = ledger_env(tmp_path)

    run = procs.run("tm-run", "large.py", "1", NO_PROGRESS, env=env, timeout=RUN_S)

    assert run.code == 0, run.output
    # Without a bound in bytes, a slave's window of fast jobs grows to batches of 5 000
    # (200 MB): the slave's socket refuses them, and the run never ends.
    assert sorted(ledger_ints(ledger)) == list(range(20_000))


# -- 3. tm-spawn --------------------------------------------------------------------------------


def test_spawn_runs_n_slaves_until_the_master_completes(procs: Procs, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ledger, env = ledger_env(tmp_path, GATE=str(gate))
    master, address = start_master(procs, "gated_jobs", "count=3000", env=env)
    spawn = procs.start("tm-spawn", "gated_jobs", "3", "--address", address, NO_PROGRESS,
                        env=env)
    # No job finishes before the gate opens, so the run cannot end before all three joined.
    wait_for(lambda: count_lines(master, r"slave \S+ joined") >= 3, START_S,
             "three slaves to join", master, spawn)
    assert read_ledger(ledger) == []
    gate.touch()

    assert master.wait(RUN_S) == 0, master.output
    assert spawn.wait(RUN_S) == 0, spawn.output
    master.expect(r"run complete: 3000 finished, 0 failed", timeout=1)
    assert count_lines(master, r"slave \S+ joined") == 3
    assert count_lines(spawn, r"run complete \(3000 finished, 0 failed\)") == 3
    jobs = ledger_ints(ledger)
    assert set(jobs) == set(range(3000))
    assert twice(jobs) == 0


# -- 4. KEY=VALUE -------------------------------------------------------------------------------


def test_run_kwargs_reach_get_jobs_and_name_the_state_file(procs: Procs,
                                                           tmp_path: Path) -> None:
    ledger_a, env_a = ledger_env(tmp_path, "a.txt")
    ledger_b, env_b = ledger_env(tmp_path, "b.txt")

    run_a = procs.run("tm-run", "ledger_jobs", SETUP_SLAVES, "count=300", NO_PROGRESS, env=env_a,
                      timeout=RUN_S)
    run_b = procs.run("tm-run", "ledger_jobs", SETUP_SLAVES, "count=301", NO_PROGRESS, env=env_b,
                      timeout=RUN_S)

    assert run_a.code == 0, run_a.output
    assert run_b.code == 0, run_b.output
    assert sorted(ledger_ints(ledger_a)) == list(range(300))
    assert sorted(ledger_ints(ledger_b)) == list(range(301))
    state_a, state_b = state_file_of(run_a), state_file_of(run_b)
    assert state_a != state_b
    assert state_a.parent == state_b.parent == tmp_path
    assert sorted(tmp_path.glob("*.tmstate")) == sorted([state_a, state_b])


# -- 5. 100 000 jobs ----------------------------------------------------------------------------


def test_run_100k_jobs(procs: Procs, tmp_path: Path) -> None:
    ledger, env = ledger_env(tmp_path)

    run = procs.run("tm-run", "ledger_jobs", "2", "count=100000", NO_PROGRESS, env=env,
                    timeout=RUN_S)

    assert run.code == 0, run.output
    run.expect(r"run complete: 100000 finished, 0 failed", timeout=1)
    lines = read_ledger(ledger)
    print(f"100k run: {len(lines)} executions, {twice(lines)} ran twice")
    assert {int(line) for line in lines} == set(range(100_000))
    assert twice(lines) == 0


# -- 6. SIGKILL of the master mid-run, then restart ---------------------------------------------


def test_master_sigkill_then_restart_resumes(procs: Procs, tmp_path: Path) -> None:
    count, size = 200_000, 1000
    ledger, env = ledger_env(tmp_path, SLEEP_S="0.0002")
    state = tmp_path / "run.tmstate"
    args = ("ledger_jobs", f"count={count}", "--size", str(size), "--state-file", str(state))
    master, address = start_master(procs, *args, env=env)
    slave = procs.start("tm-slave", "ledger_jobs", "--address", address, "--concurrency", "20",
                        NO_PROGRESS, env=env)

    def checkpointed() -> int:
        cp = read_checkpoint(state)
        return cp["resume_seq"] if cp.get("has_last") else 0

    # Kill once jobs have run and a checkpoint past the start exists: mid-run, for sure.
    wait_for(lambda: ledger.exists() and ledger.stat().st_size > 0 and checkpointed() > 0,
             RUN_S, "a checkpoint after some jobs", master, slave)
    saved = checkpointed()
    master.signal(signal.SIGKILL)
    assert master.wait(QUICK_S) == -signal.SIGKILL
    assert "run complete" not in master.output

    restarted, _ = start_master(procs, *args, address=address, env=env)
    resumed = int(restarted.expect(r"resuming at job #(\d+)", timeout=1).group(1))
    assert saved <= resumed < count
    slave.expect(r"rejoining", timeout=START_S)

    assert restarted.wait(RUN_S) == 0, restarted.output
    assert slave.wait(RUN_S) == 0, slave.output
    restarted.expect(r"run complete: \d+ finished, 0 failed", timeout=1)
    lines = read_ledger(ledger)
    dup = twice(lines)
    bound = size + 2 * MAX_WINDOW_JOBS
    print(f"master SIGKILL: resumed at #{resumed} (checkpoint seen #{saved}); "
          f"{len(lines)} executions, {dup} ran twice (bound {bound})")
    assert {int(line) for line in lines} == set(range(count))
    assert dup <= bound


# -- 6b. counters across a restart --------------------------------------------------------------


def test_restart_counts_each_job_once(procs: Procs, tmp_path: Path) -> None:
    """Jobs finished after the resume point run again on restart, but count once."""
    count = 3000
    gate = tmp_path / "gate"
    ledger, env = ledger_env(tmp_path, GATE=str(gate), GATE_ON="10")
    state = tmp_path / "run.tmstate"
    args = ("gated_jobs", f"count={count}", "--size", "1000", "--state-file", str(state))
    master, address = start_master(procs, *args, env=env)
    slave = procs.start("tm-slave", "gated_jobs", "--address", address, "--concurrency", "4",
                        NO_PROGRESS, env=env)

    def finished_past_resume_point() -> dict:
        cp = read_checkpoint(state)
        return cp if cp.get("has_last") and cp["finished"] > cp["resume_seq"] else {}

    # Job 10 holds the resume point while later jobs finish and are checkpointed as finished.
    cp = wait_for(finished_past_resume_point, RUN_S,
                  "a checkpoint with jobs finished past the resume point", master, slave)
    assert cp["resume_seq"] <= 10
    master.signal(signal.SIGKILL)
    assert master.wait(QUICK_S) == -signal.SIGKILL

    restarted, _ = start_master(procs, *args, address=address, env=env)
    resumed = int(restarted.expect(r"resuming at job #(\d+)", timeout=1).group(1))
    assert cp["resume_seq"] <= resumed <= 10
    gate.touch()

    assert restarted.wait(RUN_S) == 0, restarted.output
    assert slave.wait(RUN_S) == 0, slave.output
    jobs = ledger_ints(ledger)
    print(f"restart: checkpoint had resume #{cp['resume_seq']} and {cp['finished']} finished; "
          f"{len(jobs)} executions, {twice(jobs)} ran twice")
    assert set(jobs) == set(range(count))
    assert read_checkpoint(state)["finished"] == count, "the state file counts re-runs twice"
    restarted.expect(rf"run complete: {count} finished, 0 failed", timeout=1)


# -- 7. already complete ------------------------------------------------------------------------


def test_master_of_a_complete_run_says_already_complete(procs: Procs, tmp_path: Path) -> None:
    ledger, env = ledger_env(tmp_path)
    first = procs.run("tm-run", "ledger_jobs", SETUP_SLAVES, "count=500", NO_PROGRESS, env=env,
                      timeout=RUN_S)
    assert first.code == 0, first.output
    assert len(read_ledger(ledger)) == 500

    again = procs.run("tm-master", "ledger_jobs", "count=500", "--address", ANY_PORT,
                      NO_PROGRESS, env=env, timeout=QUICK_S)

    assert again.code == 0, again.output
    again.expect(r"already complete", timeout=1)
    assert "master listening" not in again.output
    assert len(read_ledger(ledger)) == 500


def test_another_runs_state_file_is_refused(procs: Procs, tmp_path: Path) -> None:
    """The same --state-file with other KEY=VALUEs is another run: refused with one line that
    says what differs and the two ways out, never silently resumed."""
    ledger, env = ledger_env(tmp_path)
    state = tmp_path / "shared.tmstate"
    first = procs.run("tm-run", "ledger_jobs", SETUP_SLAVES, "count=300", "--state-file",
                      str(state), NO_PROGRESS, env=env, timeout=RUN_S)
    assert first.code == 0, first.output
    saved = state.read_bytes()

    other = procs.run("tm-master", "ledger_jobs", "count=500", "--state-file", str(state),
                      "--address", ANY_PORT, NO_PROGRESS, env=env, timeout=QUICK_S)
    assert other.code == 2, other.output
    problems = problem_lines(other)
    assert len(problems) == 1 and "Traceback" not in other.output, other.output
    assert "belongs to another run" in problems[0]
    assert "count=300, now count=500" in problems[0]
    assert "--reset" in problems[0] and "--state-file" in problems[0]
    assert state.read_bytes() == saved and len(read_ledger(ledger)) == 300
    # Its own run is still its own: already complete.
    again = procs.run("tm-master", "ledger_jobs", "count=300", "--state-file", str(state),
                      "--address", ANY_PORT, NO_PROGRESS, env=env, timeout=QUICK_S)
    assert again.code == 0 and "already complete" in again.output, again.output


# -- 8. --reset ---------------------------------------------------------------------------------


def test_reset_runs_a_complete_run_again(procs: Procs, tmp_path: Path) -> None:
    ledger, env = ledger_env(tmp_path)
    first = procs.run("tm-run", "ledger_jobs", SETUP_SLAVES, "count=500", NO_PROGRESS, env=env,
                      timeout=RUN_S)
    assert first.code == 0, first.output

    master, address = start_master(procs, "ledger_jobs", "count=500", "--reset", env=env)
    slave = procs.start("tm-slave", "ledger_jobs", "--address", address, NO_PROGRESS, env=env)

    assert master.wait(RUN_S) == 0, master.output
    assert slave.wait(RUN_S) == 0, slave.output
    master.expect(r"run complete: 500 finished, 0 failed", timeout=1)
    assert "already complete" not in master.output
    assert Counter(ledger_ints(ledger)) == Counter({job: 2 for job in range(500)})


# -- 9. corrupt state file ----------------------------------------------------------------------


def test_corrupt_state_file_is_a_clear_error(procs: Procs, tmp_path: Path) -> None:
    ledger, env = ledger_env(tmp_path)
    state = tmp_path / "broken.tmstate"
    state.write_bytes(b"\x00garbage{not json")

    master = procs.run("tm-master", "ledger_jobs", "--state-file", str(state), "--address",
                       ANY_PORT, NO_PROGRESS, env=env, timeout=QUICK_S)

    assert master.code == 2, master.output
    lines = [line for line in master.lines if line.strip()]
    assert len(lines) == 1, master.output
    assert "corrupt" in lines[0] and "--reset" in lines[0]
    assert state.read_bytes() == b"\x00garbage{not json"  # left for the user to inspect
    assert read_ledger(ledger) == []


# -- 10. bad targets and arguments --------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "words", "named"),
    [
        ("tm-master", ["no_such_module_xyz"], "no_such_module_xyz"),
        ("tm-master", ["ledger_jobs:nope"], "nope"),
        ("tm-master", ["nofile.py"], "nofile.py"),
        ("tm-slave", ["no_such_module_xyz"], "no_such_module_xyz"),
        ("tm-slave", ["ledger_jobs:nope"], "nope"),
        ("tm-slave", ["nofile.py"], "nofile.py"),
        ("tm-master", ["ledger_jobs", "notapair"], "notapair"),
        ("tm-master", ["strict.py", "bogus=1"], "bogus"),
    ],
    ids=["master-module", "master-func", "master-file", "slave-module", "slave-func",
         "slave-file", "master-notapair", "master-unexpected-kwarg"],
)
def test_bad_target_or_argument_is_one_clear_line(procs: Procs, tmp_path: Path, command: str,
                                                  words: list[str], named: str) -> None:
    (tmp_path / "strict.py").write_text(STRICT_SCRIPT)
    ledger, env = ledger_env(tmp_path)

    # Neither gets as far as a socket; were one made, a slave's would find no master there.
    address = ANY_PORT if command == "tm-master" else f"ipc://{tmp_path}/master"
    proc = procs.run(command, *words, "--address", address, NO_PROGRESS, env=env,
                     timeout=QUICK_S)

    assert proc.code == 2, proc.output
    problems = problem_lines(proc)
    assert len(problems) == 1, proc.output
    assert problems[0].startswith(f"{command}: error: "), proc.output
    assert named in problems[0]
    assert "Traceback" not in proc.output
    assert read_ledger(ledger) == []


# -- 11. failing jobs ---------------------------------------------------------------------------


def test_failing_jobs_are_recorded_and_the_run_exits_1(procs: Procs, tmp_path: Path) -> None:
    ledger, env = ledger_env(tmp_path, FAIL_EVERY="100")

    run = procs.run("tm-run", "ledger_jobs", "2", "count=1000", "--max-retries", "3",
                    NO_PROGRESS, env=env, timeout=RUN_S)

    assert run.code == 1, run.output
    run.expect(r"run complete: 990 finished, 10 failed", timeout=1)
    state = state_file_of(run)
    failures_files = list(tmp_path.glob("*.failures.jsonl"))
    assert failures_files == [state.with_name(state.name.removesuffix(".tmstate")
                                              + ".failures.jsonl")]
    records = [json.loads(line) for line in failures_files[0].read_text().splitlines()]
    assert len(records) == 10
    assert sorted(r["seq"] for r in records) == list(range(0, 1000, 100))
    for r in records:
        assert r["job_repr"] == repr(r["seq"])
        assert r["exception"] == "ValueError"
        assert "fails on purpose" in r["traceback"]
        assert r["attempts"] == 4
    jobs = ledger_ints(ledger)
    assert set(jobs) == set(range(1000)) - set(range(0, 1000, 100))
    assert twice(jobs) == 0


# -- 12. a slave started before its master ------------------------------------------------------


def test_slave_started_first_waits_for_its_master(procs: Procs, tmp_path: Path) -> None:
    ledger, env = ledger_env(tmp_path)
    # No master yet, so no port to ask one for: an ipc endpoint the master binds later.
    address = f"ipc://{tmp_path}/master"
    slave = procs.start("tm-slave", "ledger_jobs", "--address", address, NO_PROGRESS, env=env)
    slave.expect(r"slave \S+: \d+ greenlets, master ", timeout=START_S)
    assert slave.proc.poll() is None

    master, _ = start_master(procs, "ledger_jobs", "count=1000", address=address, env=env)

    assert master.wait(RUN_S) == 0, master.output
    assert slave.wait(RUN_S) == 0, slave.output
    master.expect(r"slave \S+ joined", timeout=1)
    master.expect(r"run complete: 1000 finished, 0 failed", timeout=1)
    jobs = ledger_ints(ledger)
    assert set(jobs) == set(range(1000))
    assert twice(jobs) == 0
