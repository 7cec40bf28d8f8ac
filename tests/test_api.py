"""`taskmaster.run` from Python: a script whose functions live in ``__main__``, a module's
functions (as a Django-style management command has them), stop and resume, restarts of a
slave that died, and configuration errors raised as ours.

Runs go in child processes (a run forks its slaves from the process that calls it, and
patches it for gevent): each is started through the `procs` fixture and killed by PID at the
end; every job appends itself to a ledger, and the sets are compared.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click
import pytest
from test_faults import check_ledger

import taskmaster
from procs import JOBS, Proc, Procs, read_ledger, wait_for
from taskmaster.errors import ConfigError

RUN_S = 60.0


def script(procs: Procs, tmp_path: Path, processes: int = 2, **env: object) -> Proc:
    proc = Proc([sys.executable, str(JOBS / "api_script.py"), str(processes)], tmp_path,
                {"LEDGER": str(tmp_path / "ledger.txt"), **{k: str(v) for k, v in env.items()}})
    procs.started.append(proc)
    return proc


def result_of(proc: Proc) -> dict[str, object]:
    line = next(line for line in proc.lines if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def jobs(tmp_path: Path) -> list[int]:
    return [int(line) for line in read_ledger(tmp_path / "ledger.txt")]


def test_a_script_runs_its_own_functions_and_gets_a_result(procs: Procs, tmp_path: Path) -> None:
    proc = script(procs, tmp_path, COUNT=3000, OPTIONS=json.dumps({"concurrency": 4}))
    assert proc.wait(RUN_S) == 0, proc.output
    result = result_of(proc)
    assert (result["finished"], result["failed"], result["exit_status"], result["complete"]) \
        == (3000, 0, 0, True)
    # The same state file as `tm-run api_script.py 2 count=3000` would use.
    state = Path(str(result["state_file"]))
    assert state.parent == tmp_path and state.name.startswith("api_script-get_jobs-")
    assert json.loads(state.read_text())["complete"] is True
    check_ledger("taskmaster.run from __main__", jobs(tmp_path), set(range(3000)))
    again = script(procs, tmp_path, COUNT=3000)
    assert again.wait(RUN_S) == 0, again.output
    assert result_of(again)["finished"] == 3000 and len(jobs(tmp_path)) == 3000  # nothing ran


def test_a_stopped_run_says_so_and_the_next_call_resumes(procs: Procs, tmp_path: Path) -> None:
    n = 4000
    proc = script(procs, tmp_path, COUNT=n, SLEEP_S=0.002)
    wait_for(lambda: len(jobs(tmp_path)) >= 200, RUN_S, "200 jobs run", proc)
    proc.signal(signal.SIGINT)
    assert proc.wait(RUN_S) == 130, proc.output
    stopped = result_of(proc)
    assert stopped["exit_status"] == 130 and not stopped["complete"]
    assert 0 < int(stopped["finished"]) < n  # type: ignore[call-overload]
    again = script(procs, tmp_path, COUNT=n)
    assert again.wait(RUN_S) == 0, again.output
    check_ledger("taskmaster.run stopped, resumed", jobs(tmp_path), set(range(n)))


def test_a_slave_that_died_is_restarted_from_the_script_file(procs: Procs,
                                                             tmp_path: Path) -> None:
    # The first slaves are forks; a restart is a fresh interpreter, which finds handle_job in
    # the script's file (as a module, not as __main__: the script does not run itself again).
    # Long enough (about 3 s on one slave) for the restart, a second after the death, to join.
    proc = script(procs, tmp_path, 2, COUNT=6000, EXIT_ON=100, SLEEP_S=0.01, LOG_LEVEL="INFO")
    assert proc.wait(RUN_S) == 0, proc.output
    assert (tmp_path / "ledger.txt.exited").exists()
    assert "died with 3; restarting" in proc.output
    assert proc.output.count(" joined (concurrency 10)") == 3, proc.output  # 2 forks, 1 fresh
    check_ledger("taskmaster.run, a slave died", jobs(tmp_path), set(range(6000)))


def test_functions_of_a_module_run_as_a_management_command_would(procs: Procs,
                                                                  tmp_path: Path) -> None:
    code = ("import sys, taskmaster, ledger_jobs\n"
            "r = taskmaster.run(ledger_jobs.get_jobs, ledger_jobs.handle_job, 2,"
            " kwargs={'count': '1500'}, max_retries=0)\n"
            "print('RESULT', r.finished, r.failed, r.exit_status)\n"
            "sys.exit(r.exit_status)\n")
    proc = Proc([sys.executable, "-c", code], tmp_path,
                {"LEDGER": str(tmp_path / "ledger.txt"), "FAIL_EVERY": "100"})
    procs.started.append(proc)
    assert proc.wait(RUN_S) == 1, proc.output  # 15 failures recorded: exit status 1
    assert "RESULT 1485 15 1" in proc.output
    state = next(tmp_path.glob("ledger_jobs-get_jobs-*.tmstate"))
    assert json.loads(state.read_text())["complete"] is True
    check_ledger("taskmaster.run of a module", jobs(tmp_path),
                 {j for j in range(1500) if j % 100})


def nameless() -> object:
    """A function no fresh interpreter could import (as one typed into a REPL)."""
    def f(*args: object, **kwargs: object) -> None:
        pass
    f.__module__ = "__a_session_of_its_own__"
    return f


@pytest.mark.parametrize("call, words", [
    (lambda: taskmaster.run(print, print, 2, bogus=1), "takes no option 'bogus'"),
    (lambda: taskmaster.run(print, print, 0), "processes must be"),
    (lambda: taskmaster.run(print, print, 2, kwargs={"x": [1]}), "values must be"),
    (lambda: taskmaster.run(print, print, 2, kwargs={"last": 1}), "'last'"),
    (lambda: taskmaster.run(print, print, 2, size=0), "--size must be at least 1"),
    (lambda: taskmaster.run(print, print, 2, max_failures="lots"), "--max-failures must be"),
    (lambda: taskmaster.run(print, print, 2, rate=-1), "--rate must be"),
    (lambda: taskmaster.run("get_jobs", print, 2), "get_jobs must be a function"),
    (lambda: taskmaster.run(print, print, 2, concurrency="ten"), "concurrency='ten': expected"),
    (lambda: taskmaster.run(print, print, 2, size=2.5), "size=2.5: expected int"),
    (lambda: taskmaster.run(print, print, 2, reset=1), "reset=1: expected bool"),
    (lambda: taskmaster.run(print, print, 2, address="tcp://127.0.0.1:0"), "needs the port"),
    (lambda: taskmaster.run(nameless(), print, 2), "pass state_file"),
    (lambda: taskmaster.run(print, nameless(), 2, state_file="x", max_jobs_per_slave=5),
     "define it at the top of a file or module"),
])
def test_configuration_errors_raise_ours_before_anything_starts(call: object,
                                                                words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        call()  # type: ignore[operator]


def test_the_options_are_tm_runs_by_the_same_names_and_defaults() -> None:
    from taskmaster import api
    from taskmaster.cli import run as tm_run

    command_line = {name: api._CLICK_NAMES.get(name, name) for name in api.OPTIONS}
    ctx = click.Context(tm_run)  # a default as click resolves it (a flag's may be a sentinel)
    defaults = {param.name: param.get_default(ctx) for param in tm_run.params}
    for name, click_name in command_line.items():
        assert click_name in defaults, f"{name}: not an option of tm-run"
        assert api.OPTIONS[name] == defaults[click_name], name
    left = set(defaults) - set(command_line.values())
    assert left == {"script", "n", "pairs", "log_level", "quiet_failures", "version"}


def test_only_the_default_size_bounds_the_buffer_in_bytes_too() -> None:
    """Without --size the buffer holds 50 000 jobs, and no more than 8 MiB of them; a --size
    given (on the command line, from the environment, or to `run`) holds alone, whatever it is:
    a stream that comes in bursts may want a deeper buffer."""
    from taskmaster import api
    from taskmaster.config import DEFAULT_BUFFER_BYTES, DEFAULT_BUFFER_SIZE
    from taskmaster.settings import master_config
    from taskmaster.target import Target

    def config(size: int | None) -> tuple[int, int | None]:
        opts = {api._CLICK_NAMES.get(name, name): value for name, value in api.OPTIONS.items()}
        cfg = master_config(Target.parse("jobs", "get_jobs"), {}, "tcp://127.0.0.1:3050",
                            {**opts, "size": size}, progress=False)
        return cfg.size, cfg.buffer_bytes

    assert DEFAULT_BUFFER_BYTES == 8 * 1024 * 1024
    assert config(None) == (DEFAULT_BUFFER_SIZE, DEFAULT_BUFFER_BYTES) == (50_000, 8 << 20)
    assert config(DEFAULT_BUFFER_SIZE) == (50_000, None)
    assert config(200_000) == (200_000, None)
