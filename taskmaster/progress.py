"""What a person watching a run sees: a progress bar on a terminal, a log line otherwise."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import progressbar

from .config import PROGRESS_LOG_INTERVAL_S

log = logging.getLogger("taskmaster.progress")


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


class Progress:
    """Call `update()` often; it redraws the bar or, without a terminal, logs now and then."""

    def __init__(self, snapshot: Callable[[], Snapshot], enabled: bool = True) -> None:
        self._snapshot = snapshot
        self._enabled = enabled
        self._started = time.monotonic()
        self._last_log = self._started
        self._last_done = 0
        self._last_rate = 0.0
        self._bar: progressbar.ProgressBar | None = None
        # Made at the first update: the stream tells its length once it is open.
        self._tty = enabled and sys.stderr.isatty()

    @staticmethod
    def _make_bar(total: int | None) -> progressbar.ProgressBar:
        text = progressbar.FormatCustomText(
            " %(rate)d jobs/s | failed %(failed)d | buffered %(buffered)d | "
            "leased %(leased)d | slaves %(slaves)d ",
            dict(rate=0, failed=0, buffered=0, leased=0, slaves=0))
        widgets: list[object] = [progressbar.Counter("%(value)d"), " done |", text, "| ",
                                 progressbar.Timer("%(elapsed)s")]
        if total is not None:
            widgets += [" ", progressbar.Percentage(), " ", progressbar.Bar(), " ",
                        progressbar.ETA()]
        bar = progressbar.ProgressBar(max_value=total or progressbar.UnknownLength,
                                      widgets=widgets, fd=sys.stderr, redirect_stderr=False)
        bar.custom_text = text  # type: ignore[attr-defined]
        return bar

    def update(self) -> None:
        if not self._enabled:
            return
        s = self._snapshot()
        now = time.monotonic()
        if self._tty and self._bar is None:
            self._bar = self._make_bar(s.total)
        if self._bar is not None:
            self._bar.custom_text.update_mapping(  # type: ignore[attr-defined]
                rate=self._rate(s, now), failed=s.failed, buffered=s.buffered,
                leased=s.leased, slaves=s.slaves)
            self._bar.update(min(s.done, s.total) if s.total is not None else s.done)
            return
        if now - self._last_log >= PROGRESS_LOG_INTERVAL_S:
            rate = self._rate(s, now)
            of_total = f"/{s.total}" if s.total is not None else ""
            dropped = f", {s.dropped} messages dropped" if s.dropped else ""
            log.info("%d%s done (%d failed), %.0f jobs/s, buffered %d, leased %d, slaves %d, "
                     "%.0fs elapsed%s", s.done, of_total, s.failed, rate, s.buffered, s.leased,
                     s.slaves, now - self._started, dropped)

    def _rate(self, s: Snapshot, now: float) -> float:
        """Jobs per second since the last call that was at least a second ago."""
        if now - self._last_log >= 1.0:
            self._last_rate = (s.done - self._last_done) / (now - self._last_log)
            self._last_log, self._last_done = now, s.done
        return self._last_rate

    def close(self) -> None:
        if self._bar is not None:
            self.update()
            self._bar.finish(dirty=True)
            self._bar = None
