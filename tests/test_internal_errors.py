"""A bug of ours is a crash, not a dropped message: it is logged as critical and stops the run
with its state saved. The bug is injected (a part that raises) into a real master, in this
process, on a real loopback socket."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import gevent
import pytest
import zmq
from master_parts import SLAVE, Parts

from taskmaster import protocol as p
from taskmaster.errors import EXIT_FAILED, InternalError
from taskmaster.master import Master
from taskmaster.settings import MasterConfig
from taskmaster.target import Target


class BugError(RuntimeError):
    """Stands for a mistake in our own code."""


def test_the_exchange_lets_a_bug_through_instead_of_dropping_the_message(
        tmp_path: Path) -> None:
    m = Parts(tmp_path, jobs=10)
    m.join(SLAVE, window=0)
    (batch,) = m.ledger.take(SLAVE, 5, time.monotonic(), max_batch=5)

    def ack(*args: object, **kwargs: object) -> list:
        raise BugError("a bug in the ledger")

    m.ledger.ack = ack  # type: ignore[method-assign]
    with pytest.raises(BugError):
        m.receive(SLAVE, p.Ack((p.BatchDone(batch.bid),), 0))
    assert m.exchange.dropped == 0


def test_a_bug_in_the_master_stops_the_run_with_its_state_saved(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "run.tmstate"
    cfg = MasterConfig(target=Target.parse("jobs", "get_jobs"), address="tcp://127.0.0.1:0",
                       state_path=state, progress=False)
    master = Master(cfg, lambda last=None: iter(range(100)))
    assert master.open() is None
    address = master.start()

    def handle(*args: object) -> None:
        raise BugError("a bug in handling a message")

    master.exchange.handle = handle  # type: ignore[method-assign]
    ctx = zmq.Context()
    try:
        peer = ctx.socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(address)
        serving = gevent.spawn(master.serve)
        # The first checkpoint is written at the first tick; then a message meets the bug.
        deadline = time.monotonic() + 10
        while not state.exists():
            assert time.monotonic() < deadline, "no checkpoint"
            gevent.sleep(0.01)
        peer.send_multipart(p.encode(p.Heartbeat("peer", "n"), epoch=p.NO_EPOCH, counter=1))
        with caplog.at_level(logging.CRITICAL), gevent.Timeout(10):
            outcome = serving.get()
    finally:
        master.close()
        ctx.destroy(linger=0)
    assert isinstance(outcome.error, InternalError) and outcome.exit_code == EXIT_FAILED
    assert "BugError" in str(outcome.error)
    assert any(r.levelno == logging.CRITICAL and "internal error" in r.getMessage()
               for r in caplog.records)
    saved = json.loads(state.read_text())
    assert not saved["complete"] and saved["finished"] == 0  # the last safe checkpoint
