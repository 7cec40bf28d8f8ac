"""What a person reads when their module or input is wrong: one clear line (and their own
frames), the documented status, nothing of ours, nothing stale left behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from procs import Procs

RUN_S = 30.0


def no_leftovers(tmp_path: Path) -> None:
    assert not list(tmp_path.glob("*.lock")), "a stale lock file was left"


@pytest.mark.parametrize("how", ["syntax", "import"])
def test_a_broken_target_module_is_exit_2_with_the_users_frames_only(
        procs: Procs, tmp_path: Path, how: str) -> None:
    tm = procs.start("tm-run", "broken_jobs", "1", "--no-progress", env={"BROKEN": how})
    assert tm.wait(RUN_S) == 2, tm.output
    first = tm.lines[0]
    assert re.match(r"tm-run: importing target 'broken_jobs' raised (SyntaxError|"
                    r"ModuleNotFoundError): ", first), tm.output
    assert "taskmaster" not in "\n".join(tm.lines[1:]), f"our frames shown:\n{tm.output}"
    assert "<frozen" not in tm.output and "importlib" not in tm.output, tm.output
    assert "broken_jobs.py" in tm.output or "broken_module.py" in tm.output, tm.output
    no_leftovers(tmp_path)


@pytest.mark.parametrize(("how", "shown"), [("none", "None"), ("int", "5")])
def test_get_jobs_returning_a_non_iterable_is_exit_2_one_line(
        procs: Procs, tmp_path: Path, how: str, shown: str) -> None:
    tm = procs.start("tm-run", "broken_jobs", "1", "--no-progress", env={"BROKEN": how})
    assert tm.wait(RUN_S) == 2, tm.output
    errors = [line for line in tm.lines if " ERROR " in line]
    assert re.search(rf"get_jobs returned {shown}, which is not iterable", errors[0]), tm.output
    assert "Traceback" not in tm.output, tm.output
    no_leftovers(tmp_path)


def test_an_unpicklable_job_is_one_line_without_our_traceback(procs: Procs,
                                                              tmp_path: Path) -> None:
    tm = procs.start("tm-run", "broken_jobs", "1", "--no-progress",
                     env={"BROKEN": "unpicklable"})
    assert tm.wait(RUN_S) == 1, tm.output
    assert re.search(r"ERROR .*job #1 .*cannot be pickled \(TypeError: .*\); get_jobs must "
                     r"yield picklable values", tm.output), tm.output
    assert "Traceback" not in tm.output, tm.output
    no_leftovers(tmp_path)


def test_keygen_never_overwrites_keys_without_force(procs: Procs, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    first = procs.start("tm-keygen", str(keys))
    assert first.wait(RUN_S) == 0, first.output
    secret = (keys / "master.key_secret").read_bytes()
    again = procs.start("tm-keygen", str(keys))
    assert again.wait(RUN_S) == 2, again.output
    assert again.lines == [f"tm-keygen: error: {keys}/master.key exists: keys are already in "
                           f"{keys}; --force replaces them (whoever holds the old ones can no "
                           "longer connect)"], again.output
    assert (keys / "master.key_secret").read_bytes() == secret, "the keys were overwritten"
    forced = procs.start("tm-keygen", str(keys), "--force")
    assert forced.wait(RUN_S) == 0, forced.output
    assert (keys / "master.key_secret").read_bytes() != secret


def test_keygen_into_a_place_it_cannot_write_is_one_line(procs: Procs, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad = procs.start("tm-keygen", str(blocker / "keys"))
    assert bad.wait(RUN_S) == 2, bad.output
    assert len(bad.lines) == 1 and bad.lines[0].startswith(
        f"tm-keygen: error: cannot write keys in {blocker / 'keys'}: "), bad.output
