"""What a person watching a run sees: one progress line on a terminal, a log line otherwise.

The line fits the terminal, whatever its width (from 60 columns up) and as it is resized: the
fields that matter most come first, and those that do not fit are left out, least useful first
(buffered and leased, then slaves, failed, the ETA, the rate); the bar takes what room is left.
Rate and ETA are this session's: after a resume, the jobs finished before it are in the count
but not in the speed. Log lines are printed above the line (progressbar2 holds stderr while the
bar is shown), and when the run ends the line is cleared for the summary.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import PROGRESS_LOG_INTERVAL_S, RATE_WINDOW_S

if TYPE_CHECKING:
    import progressbar

log = logging.getLogger("taskmaster.progress")

BAR_MIN = 10
"""Narrowest bar worth drawing, in columns."""


@dataclass(frozen=True)
class Snapshot:
    """The run's numbers at one moment."""

    done: int
    failed: int
    total: int | None
    buffered: int
    leased: int
    slaves: int
    dropped: int = 0
    paused: str = ""
    """Why no jobs go out now, when none do."""


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 job``, ``2 jobs`` (``many``: the plural, when not ``word`` + s)."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {many or word + 's'}"


def clock(seconds: float) -> str:
    """0:07, 12:34, 3:02:01."""
    s = int(seconds + 0.5)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class Speed:
    """This session's rate (over the last `RATE_WINDOW_S`) and what it makes of the rest."""

    def __init__(self, now: float, done: int) -> None:
        self._samples: list[tuple[float, int]] = [(now, done)]

    def add(self, now: float, done: int) -> None:
        self._samples.append((now, done))
        while len(self._samples) > 2 and self._samples[1][0] <= now - RATE_WINDOW_S:
            self._samples.pop(0)

    @property
    def rate(self) -> float:
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 - t0 >= 0.5 else 0.0

    def eta_s(self, total: int | None) -> float | None:
        done, rate = self._samples[-1][1], self.rate
        if total is None or rate <= 0:
            return None
        return max(0, total - done) / rate


CLEAR_TO_END = "\x1b[K"
"""Erases what is left of the row: a line drawn shorter than the last (the terminal narrowed,
a field dropped) leaves nothing of it behind."""


def fit(head: str, rest: list[str], width: int, value: float, total: Any) -> str:
    """``head``, then as many of ``rest`` (most useful first) as fit in ``width``, with a bar
    between them when there is room for one."""
    fields = list(rest)
    line = " ".join([head, *fields])
    while len(line) > width and fields:
        fields.pop()
        line = " ".join([head, *fields])
    room = width - len(line) - 3  # " |" + bar + "|"
    if isinstance(total, int) and total > 0 and room >= BAR_MIN:
        filled = int(room * min(1.0, value / total))
        bar = "|" + "#" * filled + " " * (room - filled) + "|"
        return " ".join([head, bar, *fields])
    return line[:width]


class Progress:
    """Call `update()` often; it redraws the line or, without a terminal, logs now and then."""

    def __init__(self, snapshot: Callable[[], Snapshot], enabled: bool = True) -> None:
        self._snapshot = snapshot
        self._enabled = enabled
        self._last_log = time.monotonic()
        self._speed: Speed | None = None
        self._bar: progressbar.ProgressBar | None = None
        self._tty = enabled and sys.stderr.isatty()
        self._last: Snapshot | None = None

    def update(self) -> None:
        if not self._enabled:
            return
        s = self._last = self._snapshot()
        now = time.monotonic()
        if self._speed is None:
            self._speed = Speed(now, s.done)
        self._speed.add(now, s.done)
        if self._tty:
            if self._bar is None:
                # Made at the first update: the stream tells its length once it is open.
                self._bar = _bar(s.total)
                self._bar.start()
            elif s.total and self._bar.max_value is _unknown_length():
                self._bar.max_value = s.total  # the stream told its length late
            head, rest = self._fields()
            self._bar.update(min(s.done, s.total) if s.total else s.done, force=True,
                             head=head, rest=tuple(rest))
        elif now - self._last_log >= PROGRESS_LOG_INTERVAL_S:
            self._last_log = now
            head, rest = self._fields()
            log.info("%s", ", ".join([head, *rest]))

    def _fields(self) -> tuple[str, list[str]]:
        s, speed = self._last, self._speed
        assert s is not None and speed is not None
        if s.total:
            # Rounded down: 100% means done.
            head = f"{s.done:,}/{s.total:,} {100 * s.done // s.total}%"
        else:
            head = f"{s.done:,} done"
        rest = [f"{speed.rate:,.0f}/s"]
        eta = speed.eta_s(s.total)
        if s.paused:
            rest.insert(0, f"PAUSED ({s.paused})")
        elif eta is not None:
            rest.append(f"ETA {clock(eta)}")
        if s.failed:
            rest.append(f"{s.failed:,} failed")
        rest.append(plural(s.slaves, "slave"))
        rest += [f"{s.buffered:,} buffered", f"{s.leased:,} leased"]
        if s.dropped:
            rest.append(plural(s.dropped, "message") + " dropped")
        return head, rest

    def close(self) -> None:
        """Clear the line (the end of the run is said in words, not by a stale bar)."""
        if self._bar is not None:
            bar, self._bar = self._bar, None
            # Whatever was logged since the last redraw is written out first, above it.
            bar.update(bar.value, force=True)
            width = bar.term_width
            bar.finish(end="\r" + " " * width + "\r")


def _bar(total: int | None) -> progressbar.ProgressBar:
    """A progressbar2 bar drawing one `fit` line on stderr. progressbar2 is imported here,
    not with the module: only a terminal shows a bar, and the import is a noticeable part of
    a command's start-up."""
    import progressbar
    import progressbar.widgets

    class RunLine(progressbar.widgets.AutoWidthWidgetBase):
        """The whole line, from the bar's variables ``head`` and ``rest`` (see `fit`), fitted
        to the width it is given (progressbar2 gives a column less than the terminal's: a full
        row would wrap on some terminals)."""

        def __call__(self, progress: Any, data: Any, width: int = 0) -> str:
            variables = data["variables"]
            return fit(variables["head"], list(variables["rest"]), width,
                       data.get("value") or 0, data.get("max_value")) + CLEAR_TO_END

    return progressbar.ProgressBar(
        max_value=total or progressbar.UnknownLength, widgets=[RunLine()],
        variables={"head": "", "rest": ()}, fd=sys.stderr, redirect_stderr=True)


def _unknown_length() -> Any:
    import progressbar

    return progressbar.UnknownLength
