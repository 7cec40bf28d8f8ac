"""Steering live runs with real processes: tm-ctl against tm-master (with tm-spawn's slaves)
and against tm-run (found by its state file), --rate, and --max-failures.

Every job module appends each executed job to a ledger file, so that "nothing lost" is a
comparison of sets; each process is started through the `procs` fixture and killed by PID at
the end; every wait is bounded.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from test_faults import check_ledger, state
from test_supervision import Run

from procs import Proc, Procs, wait_for
from taskmaster.config import IDLE_BEAT_S

START_S = 20.0
RUN_S = 90.0
CTL_S = 15.0
"""Bound on one tm-ctl command (its own answer timeout is 5 s)."""


def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.secret"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    path.chmod(0o600)
    return path


def ctl(procs: Procs, *args: str, env: dict[str, str] | None = None) -> Proc:
    """tm-ctl, run to its end: the Proc carries ``code`` and its output."""
    return procs.run("tm-ctl", *args, timeout=CTL_S, env=env)


def status(procs: Procs, *where: str) -> dict[str, object]:
    proc = ctl(procs, "status", "--json", *where)
    assert proc.code == 0, proc.output  # type: ignore[attr-defined]
    return json.loads(proc.output.strip().splitlines()[-1])


def test_status_pause_resume_and_stop_steer_tm_master_with_three_slaves(
        procs: Procs, tmp_path: Path) -> None:
    # About 600 jobs/s on 3 slaves of 4 greenlets: the run is still going when it is stopped.
    run, n = Run(procs, tmp_path), 4000
    secret = secret_file(tmp_path)
    env = run.env(SLEEP_S=0.02)
    master = run.master(f"count={n}", "--secret-file", str(secret), env=env)
    assert run.address is not None
    spawn = run.spawn(3, "-c", "4", "--secret-file", str(secret), env=env)
    where = ("--address", run.address, "--secret-file", str(secret))
    wait_for(lambda: len(status(procs, *where)["slaves"]) == 3, START_S,  # type: ignore[arg-type]
             "three slaves in status", master, spawn)
    run.wait_ledger(100, master, spawn)

    text = ctl(procs, "status", *where)
    print("\n" + text.output)  # the closing note quotes it
    assert text.code == 0, text.output  # type: ignore[attr-defined]
    assert "running: ledger_jobs:get_jobs(count='4000')" in text.output
    assert len([line for line in text.output.splitlines() if line.startswith("    ")]) == 4
    s = status(procs, *where)
    for key in ("state", "finished", "failed", "rate", "rate_limit", "slaves", "buffered",
                "leased", "resume_seq", "uptime_s", "total", "eta_s"):
        assert key in s, key
    assert s["state"] == "running" and s["rate_limit"] is None and s["total"] is None
    assert {"name", "concurrency", "done", "held", "rate", "last_heard_s"} <= set(
        s["slaves"][0])  # type: ignore[index]

    paused = ctl(procs, "pause", *where)
    assert paused.code == 0 and "paused" in paused.output, paused.output  # type: ignore[attr-defined]
    # What slaves held when the pause came still finishes; then nothing moves for 5 s.
    wait_for(lambda: status(procs, *where)["leased"] == 0, START_S, "leases back", master)
    held_still = status(procs, *where)
    ran = len(run.jobs())
    time.sleep(5)
    s = status(procs, *where)
    assert s["state"] == "paused" and s["paused_by"] == "tm-ctl"
    assert s["finished"] == held_still["finished"] and s["leased"] == 0
    assert len(run.jobs()) == ran, "jobs ran while paused"
    assert len(s["slaves"]) == 3  # type: ignore[arg-type]
    # Holding nothing, a slave beats every IDLE_BEAT_S (and after each PING, as often).
    assert all(row["last_heard_s"] < IDLE_BEAT_S + 2  # type: ignore[index, union-attr]
               for row in s["slaves"])

    resumed = ctl(procs, "resume", *where)
    assert resumed.code == 0 and "resumed" in resumed.output  # type: ignore[attr-defined]
    run.wait_ledger(ran + 100, master, spawn)
    stopped = ctl(procs, "stop", *where)
    assert stopped.code == 0 and "stopping" in stopped.output  # type: ignore[attr-defined]
    assert master.wait(RUN_S) == 143, master.output
    assert "stopped by tm-ctl stop; state saved" in master.output
    again = run.master(f"count={n}", "--secret-file", str(secret), env=env)
    assert again.wait(RUN_S) == 0, again.output
    assert spawn.wait(30) == 0, spawn.output
    check_ledger("tm-ctl pause, resume, stop, restart", run.jobs(), set(range(n)))


def test_tm_ctl_finds_tm_run_by_its_state_file_and_changes_its_rate(
        procs: Procs, tmp_path: Path) -> None:
    run, n = Run(procs, tmp_path), 2000
    tm_run = run.tm_run(2, f"count={n}", "--rate", "20")
    run.wait_ledger(10, tm_run)
    control = Path(str(run.state) + ".ctl")
    assert control.stat().st_mode & 0o777 == 0o600  # it would hold a secret tm-run made
    s = status(procs, "--state-file", str(run.state))
    assert s["rate_limit"] == 20 and len(s["slaves"]) == 2  # type: ignore[arg-type]
    # A secret in tm-ctl's environment (a shell's, for other runs) is not this run's: on
    # tm-run's own unsigned socket it must not sign what the master would then drop.
    changed = ctl(procs, "rate", "off", "--state-file", str(run.state),
                  env={"TASKMASTER_SECRET": "x" * 32})
    assert changed.code == 0, changed.output  # type: ignore[attr-defined]
    assert "rate limit none (was 20 jobs/s)" in changed.output
    assert tm_run.wait(RUN_S) == 0, tm_run.output
    assert not control.exists(), "the control file outlived its master"
    check_ledger("tm-run steered by state file", run.jobs(), set(range(n)))
    gone = ctl(procs, "status", "--state-file", str(run.state))
    assert gone.code == 1, gone.output  # type: ignore[attr-defined]
    assert "no master is running with state file" in gone.output


def test_rate_limit_holds_the_whole_run_to_its_rate(procs: Procs, tmp_path: Path) -> None:
    # 4 slaves that could go thousands of jobs a second, held to 50 jobs/s for 6 s.
    run, n, rate = Run(procs, tmp_path, "timed_jobs"), 300, 50.0
    tm_run = run.tm_run(4, f"count={n}", "--rate", str(rate))
    assert tm_run.wait(RUN_S) == 0, tm_run.output
    times = sorted(float(line.split()[1]) for line in run.ledger.read_text().splitlines())
    assert len(times) == n
    # After the first second (the bucket starts empty and fills at the rate), steady.
    steady = [t for t in times if t >= times[0] + 1.0]
    achieved = (len(steady) - 1) / (steady[-1] - steady[0])
    print(f"\n[--rate {rate:g}] achieved {achieved:.1f} jobs/s over {steady[-1] - steady[0]:.1f}s")
    assert 0.9 * rate <= achieved <= 1.05 * rate


def test_max_failures_count_stops_a_failure_storm_and_a_restart_resumes(
        procs: Procs, tmp_path: Path) -> None:
    run, n = Run(procs, tmp_path), 20_000
    env = run.env(FAIL_EVERY=1, SLEEP_S=0.001)  # every job fails
    tm_run = run.tm_run(2, f"count={n}", "--max-retries", "0", "--max-failures", "10", env=env)
    assert tm_run.wait(RUN_S) == 1, tm_run.output
    assert "(--max-failures 10)" in tm_run.output and "stopping: " in tm_run.output
    recorded = run.records()
    # Stopped, the slaves hand back what they have not begun, and finish the batches they
    # have: each holds about SLAVE_WORK_AHEAD_S of work (some 1 000 of these jobs) at most.
    assert 10 <= len(recorded) < n // 5, len(recorded)
    assert len({r["seq"] for r in recorded}) == len(recorded)
    cp = state(run.state)
    resume = int(cp["resume_seq"]) if cp["has_last"] else 0  # type: ignore[call-overload]
    # Fixed: the same command resumes, and runs every job not settled yet.
    again = run.tm_run(2, f"count={n}", "--max-failures", "10")
    assert again.wait(RUN_S) == 1, again.output  # the recorded failures stay failures
    settled = {int(r["seq"]) for r in recorded}  # type: ignore[call-overload]
    # A job settled after the resume point may run again (DESIGN 2): the jobs a slave handed
    # back unbegun can lie before failures the other slave recorded meanwhile. No other
    # recorded failure runs again.
    jobs = run.jobs()
    reran = {seq for seq in settled if seq >= resume} & set(jobs)
    check_ledger("--max-failures N, then resumed", jobs, (set(range(n)) - settled) | reran,
                 note=f"{len(reran)} recorded after the resume point ran again")


def test_max_failures_percent_waits_for_a_hundred_settled_jobs(
        procs: Procs, tmp_path: Path) -> None:
    run, n = Run(procs, tmp_path), 20_000
    # Half of them fail. Jobs of 1 ms, so that what still runs once the limit is hit (what
    # the slaves hold: 0.2 s of work each) is some thousands, as it would be for real jobs:
    # instant ones come in batches of thousands, and on a fast machine half the run was out.
    env = run.env(FAIL_EVERY=2, SLEEP_S=0.001)
    tm_run = run.tm_run(2, f"count={n}", "--max-retries", "0", "--max-failures", "20%",
                        env=env)
    assert tm_run.wait(RUN_S) == 1, tm_run.output
    assert "--max-failures 20%" in tm_run.output
    assert 50 <= len(run.records()) < n // 4


@pytest.mark.parametrize("args, code, words", [
    (("status", "--address", "tcp://127.0.0.1:9", "--timeout", "1"), 1, "no answer from a master"),
    (("status", "--state-file", "nowhere.tmstate"), 1, "no master is running"),
    (("explode",), 2, "Invalid value for 'COMMAND'"),
    (("rate",), 2, "rate needs a value"),
    (("rate", "fast"), 2, "rate must be a positive number"),
    (("rate", "0"), 2, "rate must be a positive number"),
    (("pause", "now"), 2, "pause takes no value"),
    (("stop", "--json"), 2, "--json is for status"),
])
def test_bad_input_is_one_line_and_its_exit_status(procs: Procs, args: tuple[str, ...],
                                                   code: int, words: str) -> None:
    started = time.monotonic()
    proc = ctl(procs, *args)
    assert proc.code == code, proc.output  # type: ignore[attr-defined]
    assert words in proc.output
    assert "Traceback" not in proc.output
    assert time.monotonic() - started < 10


def test_a_request_without_the_secret_is_dropped_and_counted(procs: Procs,
                                                             tmp_path: Path) -> None:
    run = Run(procs, tmp_path)
    secret = secret_file(tmp_path)
    master = run.master("count=100", "--secret-file", str(secret))
    assert run.address is not None
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("another secret, not the run's own\n")
    for secret_args in (("--secret-file", str(wrong)), ()):
        refused = ctl(procs, "stop", "--address", run.address, "--timeout", "1", *secret_args)
        assert refused.code == 1 and "no answer" in refused.output  # type: ignore[attr-defined]
    s = status(procs, "--address", run.address, "--secret-file", str(secret))
    assert s["state"] == "running" and s["dropped"] >= 2  # type: ignore[operator]
    master.signal(signal.SIGTERM)
    assert master.wait(RUN_S) == 143
