"""What a person sees on a real terminal: a pty of 80, 120 and 60 columns, read through pyte.

tm-run's progress is one line that fits the terminal and follows a resize, with done/total, %,
the rate and the ETA first; log lines (the slaves' too) are printed above it, never into it;
when the run ends the line gives way to a summary. Failures do not flood the screen: the first
of each exception type shows its traceback once, later ones are counted.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from terminal import Terminal

from procs import Procs

START_S = 20.0
RUN_S = 60.0
BAR = re.compile(r"^[\d,]+/[\d,]+ \d+% ")


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    made: list[Terminal] = []
    yield made
    for t in made:
        t.close()


def tm_run(terminals: list[Terminal], tmp_path: Path, columns: int, count: int, *args: str,
           **env: object) -> Terminal:
    t = Terminal([sys.executable, "-m", "taskmaster", "run", "screen_jobs", "2",
                  f"count={count}", "-c", "10", "--state-file", str(tmp_path / "run.tmstate"),
                  *args], tmp_path, {k: str(v) for k, v in env.items()}, columns)
    terminals.append(t)
    return t


def bar_rows(t: Terminal) -> list[str]:
    return [row for row in t.lines() if BAR.match(row)]


def show(t: Terminal, title: str) -> None:
    width = t.screen.columns
    print(f"\n--- {title} ({width} columns) " + "-" * max(0, width - len(title) - 20))
    print(t.text())


def test_at_80_columns_one_line_fits_and_the_end_is_a_summary(
        terminals: list[Terminal], tmp_path: Path) -> None:
    """3 000 jobs, 1 % failing for good: while it runs, the bottom row is the one progress line
    (done/total, %, rate, ETA), within 80 columns, log lines above it; at the end the line is
    gone and the summary says what failed, by type, and where the records are. One traceback
    on the whole screen, however many jobs failed."""
    t = tm_run(terminals, tmp_path, 80, 3000, "--max-retries", "1", SLEEP_S=0.01,
               FAIL_EVERY=100)
    t.wait_for(r"^[\d,]+/3,000 \d+% .*/s ETA \d+:\d\d", START_S)
    rows = t.lines()
    show(t, "running")
    assert BAR.match(rows[-1]), "the progress line is not the bottom row"
    assert len(bar_rows(t)) == 1, "more than one progress line: a redraw made a new line"
    assert len(rows[-1]) < 80
    assert t.wait(RUN_S) == 1, t.text()
    show(t, "at the end")
    assert not bar_rows(t), "a stale progress line was left at the end"
    assert "run complete" in t.text(), "the summary is not on the screen at the end"
    raw = t.raw.decode(errors="replace")  # what was written, lines whole
    assert re.search(r"run complete: 2970 finished, 30 failed in [\d.]+s \([\d,]+/s\)", raw)
    assert re.search(r"30 jobs failed for good \(ValueError 30\); their records, tracebacks "
                     r"included, are in \S+run\.failures\.jsonl", raw)
    assert raw.count("Traceback (most recent call last)") == 1, raw
    assert re.search(r"ValueError: \d+ more failures in the last \d+s", raw), raw
    assert "taskmaster/pool.py" not in raw, "one of our frames in the user's traceback"
    assert raw.count("\n") < 40, f"{raw.count(chr(10))} lines for 30 failed jobs"


def test_at_120_columns_more_fields_and_a_resize_to_60_still_fits(
        terminals: list[Terminal], tmp_path: Path) -> None:
    """At 120 columns the line also shows failed, slaves, buffered and leased; resized to 60
    columns it follows (SIGWINCH), keeping done/total and %, dropping what does not fit."""
    t = tm_run(terminals, tmp_path, 120, 4000, SLEEP_S=0.02, FAIL_EVERY=500)
    t.wait_for(r"^[\d,]+/4,000 \d+% \|#* *\| [\d,]+/s ETA \d+:\d\d [\d,]+ failed \d+ slaves "
               r"[\d,]+ buffered [\d,]+ leased", START_S)
    show(t, "running")
    assert len(bar_rows(t)) == 1 and len(bar_rows(t)[0]) < 120
    t.resize(60)
    t.wait_for(r"^[\d,]+/4,000 \d+% [\d,]+/s", 5)
    show(t, "resized")
    [row] = bar_rows(t)
    assert len(row) < 60, row
    assert t.wait(RUN_S) == 1, t.text()


def test_without_a_terminal_the_progress_log_line_has_percent_and_eta(procs: Procs,
                                                                      tmp_path: Path) -> None:
    """Output to a pipe: no bar, a log line every few seconds, with % and the ETA."""
    tm = procs.start("tm-run", "screen_jobs", "2", "count=1400", "-c", "5", "--state-file",
                     str(tmp_path / "run.tmstate"), env={"SLEEP_S": "0.05"})
    line = tm.expect(r"INFO taskmaster\.progress\[\d+\]: [\d,]+/1,400 \d+%, [\d,]+/s, "
                     r"ETA \d+:\d\d, 2 slaves", RUN_S)
    print(f"\n{line.group(0)}")
    assert tm.wait(RUN_S) == 0, tm.output
