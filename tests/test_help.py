"""The words around a run: --help and --version on every command, an option's bad value named
with the variable it came from, and what tm-run says (and does not start) when there is no
reason to run."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from procs import Procs

RUN_S = 30.0
COMMANDS = ["tm-master", "tm-slave", "tm-spawn", "tm-run", "tm-keygen"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_version_and_help_in_sections(procs: Procs, tmp_path: Path,
                                                        command: str) -> None:
    version = procs.start(command, "--version")
    assert version.wait(RUN_S) == 0, version.output
    assert re.fullmatch(rf"{command} \d+\.\d+\.\d+", version.output.strip()), version.output
    helped = procs.start(command, "--help")
    assert helped.wait(RUN_S) == 0, helped.output
    sections = re.findall(r"^(\w+) options:$", helped.output, re.M)
    assert sections and sections[-1] == "General", helped.output
    if command != "tm-keygen":
        assert {"Connection", "Security", "Output"} <= set(sections), sections
        text = " ".join(helped.output.split())  # as one line, whatever the wrapping
        assert re.search(r"--log-level \[debug\|info\|warning\|error\] How much to say: .* "
                         r"\[env var: TASKMASTER_LOG_LEVEL; default: INFO\]", text), text


def test_help_of_tm_run_names_each_options_variable_and_default(procs: Procs) -> None:
    helped = procs.start("tm-run", "--help")
    assert helped.wait(RUN_S) == 0
    text = helped.output
    flat = " ".join(text.split())  # as one line, whatever the wrapping
    for option, env, default in [("--size INTEGER", "TASKMASTER_SIZE",
                                  r"\(50000, or 8 MiB of them if fewer\)"),
                                 ("--concurrency INTEGER", "TASKMASTER_CONCURRENCY", "10"),
                                 ("--max-message-mb INTEGER", "TASKMASTER_MAX_MESSAGE_MB", "64")]:
        assert re.search(rf"{option} [^[]*\[env var: {env}; default: {default}\]", flat), flat
    assert text.index("Run options:") < text.index("Slave options:") < \
        text.index("Connection options:") < text.index("Security options:") < \
        text.index("Output options:")


def test_a_bad_value_from_the_environment_names_the_variable(procs: Procs,
                                                             tmp_path: Path) -> None:
    bad = procs.start("tm-run", "screen_jobs", "1", "--state-file", str(tmp_path / "s.tmstate"),
                      env={"TASKMASTER_SIZE": "-5"})
    assert bad.wait(RUN_S) == 2, bad.output
    assert bad.lines == ["tm-run: error: --size must be at least 1, got -5 "
                         "(set by $TASKMASTER_SIZE)"], bad.output
    on_the_line = procs.start("tm-run", "screen_jobs", "1", "--size", "-5")
    assert on_the_line.wait(RUN_S) == 2
    assert on_the_line.lines == ["tm-run: error: --size must be at least 1, got -5"]


def test_tm_run_of_a_complete_run_starts_no_slave_and_many_slaves_are_warned_of(
        procs: Procs, tmp_path: Path) -> None:
    state = tmp_path / "run.tmstate"
    first = procs.start("tm-run", "screen_jobs", "2", "count=20", "--state-file", str(state))
    assert first.wait(RUN_S) == 0, first.output
    many = 4 * (os.cpu_count() or 1) + 1
    again = procs.start("tm-run", "screen_jobs", str(many), "count=20", "--state-file",
                        str(state))
    assert again.wait(RUN_S) == 0, again.output
    assert re.search(rf"WARNING .*{many} slaves on \d+ CPUs: more processes than CPUs help "
                     r"only jobs that wait", again.output), again.output
    assert re.search(r"run already complete, per .*: 20 finished, 0 failed", again.output)
    assert not re.search(r"greenlets, master|local slaves", again.output), \
        f"a complete run started slaves:\n{again.output}"
