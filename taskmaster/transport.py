"""With curve.py (the keys) and gate.py (who may connect), the only module that touches
ZeroMQ: socket set-up, and ZeroMQ errors turned into ours.

No retries and no sleeps hide in here; what to do when a peer is gone is the caller's call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import gevent
import gevent.hub
import gevent.monkey
import zmq
import zmq.green as gzmq

from .config import (
    LISTEN_BACKLOG,
    MAX_MESSAGE_BYTES,
    MESSAGE_SLACK_BYTES,
    RECONNECT_FIRST_MS,
    RECONNECT_MAX_MS,
)
from .curve import Curve, load_curve
from .errors import InternalError, TransportError
from .gate import Gate
from .heap import keep_message_blocks
from .protocol import BODY_FRAME, HEARTBEAT_SUFFIX, Gone, Seal
from .settings import signing_key

log = logging.getLogger(__name__)


# Flags as plain ints: ZeroMQ's enum flags cost more to combine than a frame costs to send.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE) | _NOBLOCK
_POLLIN = int(zmq.POLLIN)
_WAIT_BACKSTOP_S = 1.0
"""Longest the master's socket waits for its descriptor before it looks for itself."""


def _fail(action: str, address: str, e: zmq.ZMQError) -> TransportError:
    hints: dict[int | None, str] = {
        zmq.EADDRINUSE: "another process listens there: stop it or pick another --address",
        zmq.EADDRNOTAVAIL: "that address is not on this host: bind a local address",
        zmq.EINVAL: "expected tcp://HOST:PORT",
        zmq.EPROTONOSUPPORT: "expected tcp://HOST:PORT",
    }
    hint = hints.get(e.errno, "check --address")
    return TransportError(f"cannot {action} {address}: {e.strerror}; {hint}")


class _Cooperative:
    """A plain ZeroMQ socket, made cooperative here rather than by zmq.green: that wraps every
    frame in bookkeeping of its own (about 30 us a message each way, against 5) and wakes the
    hub for every arrival, even while no one waits to receive. Here only a receive with
    nothing there waits, on the socket's descriptor, and nothing else watches it. One
    greenlet at a time may wait; any may take and send, none of which ever waits."""

    def __init__(self, sock: zmq.Socket[bytes], *, keep_body: bool = False) -> None:
        """``keep_body``: the body frame of a message comes as a view of ZeroMQ's own memory,
        not a copy (a slave unpickles up to a megabyte of jobs from it). Only for a socket
        whose messages start with no identity frame (a DEALER's): the body is counted from
        the first."""
        self.sock = sock
        self._keep_body = keep_body
        self._loop = gevent.get_hub().loop
        self._readable = self._loop.io(cast("int", sock.get(zmq.FD)), 1)  # 1: readable
        self._waiter: gevent.hub.Waiter[None] | None = None
        """The waiting receive's, while one waits."""
        self._recheck_due = False

    def take(self) -> list[Any] | None:
        """The next message's frames if one is there, else None, without waiting."""
        recv = self.sock.recv
        try:
            frame = recv(_NOBLOCK, copy=False)
        except zmq.Again:
            return None
        message: list[Any] = [frame.bytes]
        keep = self._keep_body
        # A frame says whether more follow (a socket option would cost an enum each time);
        # ZeroMQ delivers a message whole, so the rest of it is there.
        while frame.more:
            frame = recv(_NOBLOCK, copy=False)
            message.append(frame.buffer if keep and len(message) == BODY_FRAME
                           else frame.bytes)
        return message

    def wait(self, timeout_s: float) -> None:
        """Until something may have arrived, ``timeout_s`` at most, or until `interrupt`.
        Called right after a receive found nothing, which has taken in all ZeroMQ had to say:
        the descriptor signals what comes next."""
        assert self._waiter is None, "one greenlet at a time may wait"
        waiter = self._waiter = gevent.hub.Waiter()
        timer = self._loop.timer(timeout_s)
        self._readable.start(waiter.switch, None)
        timer.start(waiter.switch, None)
        try:
            waiter.get()
        finally:
            self._readable.stop()
            timer.close()
            self._waiter = None

    def interrupt(self) -> None:
        """End a wait now (once the hub runs), as if something had arrived."""
        self._loop.run_callback(self._wake)

    def _wake(self) -> None:
        if self._waiter is not None:
            self._waiter.switch(None)

    def send(self, frames: list[bytes]) -> None:
        """Queue a whole message, never waiting (ZMQError when it cannot be queued now)."""
        send = self.sock.send
        try:
            for frame in frames[:-1]:
                send(frame, _MORE)
            send(frames[-1], _NOBLOCK)
        finally:
            self.recheck_soon()

    def recheck_soon(self) -> None:
        # ZeroMQ signals its descriptor on an edge, and a send takes in what ZeroMQ has to say
        # as a receive does: it may take the signal of a message that has just arrived, and a
        # receive waiting on the descriptor would sleep on with the message there. So once a
        # waiting receive can run (the hub is about to wait), look whether something is there;
        # a send never switches greenlets, so no one can start waiting before that look.
        if not self._recheck_due:
            self._recheck_due = True
            self._loop.run_callback(self._recheck)

    def _recheck(self) -> None:
        self._recheck_due = False
        waiter = self._waiter
        if waiter is not None and not self.sock.closed and \
                int(self.sock.get(zmq.EVENTS)) & _POLLIN:
            waiter.switch(None)

    def close(self, linger_s: float) -> None:
        self._readable.close()
        self.sock.close(linger=int(linger_s * 1000))


class MasterSocket:
    """The master's ROUTER socket: bound, addressing each slave by its identity."""

    def __init__(self, address: str, max_bytes: int = MAX_MESSAGE_BYTES,
                 curve: Curve | None = None, same_user: bool = False) -> None:
        """``same_user``: only processes of this user may connect (see gate.py)."""
        keep_message_blocks()
        self._sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
        if curve is not None:
            curve.apply(self._sock, server=True)
        self.gate = Gate.guard(self._sock) if same_user else None
        # Sending to a slave that has gone must raise, not vanish silently: it tells us the
        # slave is gone sooner than the lease timeout would.
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A slave reconnecting after a network cut takes over its identity at once, instead of
        # being refused while the old half-open connection lingers.
        self._sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # What we queue per slave is bounded by its credit, so no high-water mark is needed,
        # and one would silently drop jobs.
        self._sock.setsockopt(zmq.SNDHWM, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_bytes + MESSAGE_SLACK_BYTES)
        self._sock.setsockopt(zmq.LINGER, 0)
        # Each slave connects twice (its heartbeat has a socket of its own): the default
        # queue of 100 connections drops a storm of slaves joining at once into retries.
        self._sock.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
        try:
            self._sock.bind(address)
        except zmq.ZMQError as e:
            self._sock.close()
            raise _fail("listen on", address, e) from None
        self.address: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._io = _Cooperative(self._sock)

    def recv(self, calm_s: float = 0.0) -> tuple[bytes, list[bytes]]:
        """Wait for the next message: (sender identity, its frames). ``calm_s``: when none is
        there yet, let that long pass before taking one, so that all that comes meanwhile is
        taken with one wake of the hub instead of one each."""
        take = self._io.take
        try:
            message = take()
            if message is None and calm_s > 0:
                gevent.sleep(calm_s)
                message = take()
            while message is None:
                # Never for long on the descriptor alone: if an arrival's signal were ever
                # missed, a look now and then finds the message all the same.
                self._io.wait(_WAIT_BACKSTOP_S)
                message = take()
        except zmq.ZMQError as e:
            raise TransportError(f"cannot receive on {self.address}: {e.strerror}") from e
        identity, *frames = message
        return identity, frames

    def send(self, identity: bytes, frames: list[bytes]) -> bool:
        """Queue a message to one slave; False when that slave is not connected."""
        try:
            self._io.send([identity, *frames])
        except zmq.ZMQError as e:
            if e.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                return False
            raise TransportError(f"cannot send on {self.address}: {e.strerror}") from e
        return True

    def close(self, linger_s: float = 0.0) -> None:
        self._io.close(linger_s)


class ControlLine:
    """tm-ctl's line to a master: a plain (not gevent) DEALER, one request at a time."""

    def __init__(self, address: str, identity: bytes, curve: Curve | None = None) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        if curve is not None:
            curve.apply(self._sock, server=False)
        self._sock.setsockopt(zmq.IDENTITY, identity)
        # No IMMEDIATE: the first request waits for the connection rather than be dropped,
        # and a master that is not there shows as no answer within the timeout.
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        try:
            self._sock.connect(address)
        except zmq.ZMQError as e:
            self.close()
            raise _fail("connect to", address, e) from None

    def send(self, frames: list[bytes]) -> None:
        self._sock.send_multipart(frames)

    def recv(self, timeout_s: float) -> list[bytes] | None:
        """The next message, or None when none came within ``timeout_s``."""
        if not self._sock.poll(max(1, int(timeout_s * 1000))):
            return None
        return self._sock.recv_multipart()

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()


class SlaveSocket:
    """A slave's DEALER socket: connects (and reconnects by itself) to the master. The body of
    a message received is a view of ZeroMQ's memory (see `_Cooperative`), valid as long as
    the view is kept."""

    def __init__(self, address: str, identity: bytes, curve: Curve | None = None,
                 max_bytes: int = MAX_MESSAGE_BYTES, same_user: bool = False) -> None:
        """``same_user``: connect only to a master of this user (see gate.py). (The heartbeat
        socket needs no such check: it only sends, and a heartbeat says nothing secret.)"""
        keep_message_blocks()
        self._ctx = zmq.Context()
        self._sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        self._io = _Cooperative(self._sock, keep_body=True)
        self._woken = False
        self.gate = Gate.guard(self._sock) if same_user else None
        if curve is not None:
            curve.apply(self._sock, server=False)
        self._sock.setsockopt(zmq.IDENTITY, identity)
        # Messages are not queued for a master that is not there: a stale READY or ACK is
        # worthless to the next master, which starts a new epoch anyway.
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_FIRST_MS)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_bytes + MESSAGE_SLACK_BYTES)
        try:
            self._sock.connect(address)
        except zmq.ZMQError as e:
            self.close()
            raise _fail("connect to", address, e) from None

    def recv(self, timeout_s: float) -> list[Any] | None:
        """The next message's frames; None when nothing came within the timeout, or when
        `wake` was called (since the last such None)."""
        deadline = time.monotonic() + timeout_s
        while not self._woken:
            message = self._take()
            if message is not None:
                return message
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._io.wait(left)
        self._woken = False
        return None

    def _take(self) -> list[Any] | None:
        try:
            return self._io.take()
        except zmq.ZMQError as e:
            # Not silently: the slave would wait, heartbeating, for messages that can never
            # come, while its master leased it work.
            raise InternalError(f"cannot receive from the master: {e.strerror}") from None

    def pending(self) -> list[list[Any]]:
        """The messages that have arrived, in order, without waiting for any."""
        out: list[list[Any]] = []
        while (message := self._take()) is not None:
            out.append(message)
        return out

    def wake(self) -> None:
        """Make a waiting `recv` return None now (the next one, if none waits): to notice
        that it is time to exit."""
        self._woken = True
        self._io.interrupt()

    def send(self, frames: list[bytes]) -> bool:
        """Send if the master is connected; False (message dropped) when it is not."""
        try:
            self._io.send(frames)
        except zmq.ZMQError as e:
            if e.errno == zmq.EAGAIN:
                return False
            raise TransportError(f"cannot send to the master: {e.strerror}") from e
        return True

    def close(self, linger_s: float = 0.0) -> None:
        """Close, sending what is queued for up to ``linger_s`` (the goodbye, usually)."""
        self._io.close(linger_s)
        # Only terminating the context waits out the linger. A process that ends without
        # that (a forked slave leaves with os._exit) would drop its last messages.
        self._ctx.term()


class Notifier:
    """A supervisor's line to the master: it tells it, signed like a slave would, that one of
    its slaves is gone (the master would otherwise wait out the slave's silence)."""

    def __init__(self, address: str, secret: bytes | None, curve_dir: Path | None) -> None:
        self._seal = Seal(signing_key(secret))
        self._ctx = gzmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        if curve_dir is not None:
            load_curve(curve_dir, "slave").apply(self._sock, server=False)
        self._sock.setsockopt(zmq.IDENTITY, f"{socket.gethostname()}:{os.getpid()}:spawn".encode())
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            self._sock.connect(address)
        except zmq.ZMQError as e:
            self.close()
            raise _fail("connect to", address, e) from None

    def gone(self, name: str, status: int) -> None:
        with contextlib.suppress(zmq.ZMQError):  # no master there now: it will see silence
            self._sock.send_multipart(self._seal(Gone(name, status)), flags=zmq.NOBLOCK)

    def close(self) -> None:
        self._sock.close(linger=200)
        self._ctx.term()


Beat = Callable[[], "tuple[list[list[bytes]], Callable[[], None] | None]"]
"""What the heartbeat thread does each interval: the messages to send, and, when the process
must end now (its watchdog says so), what ends it once they are on their way."""


def start_heartbeat_thread(address: str, identity: bytes, beat: Beat, interval_s: float,
                           curve: Curve | None = None,
                           connected: Callable[[], None] | None = None) -> Callable[[], None]:
    """Send what ``beat()`` makes every ``interval_s`` from a real OS thread; return a stopper.

    A real thread with its own (non-gevent) socket keeps beating while a user's callback
    holds the CPU without ever yielding to the gevent hub; for the same reason it is where a
    slave's watchdog acts (``beat`` returns how to end the process). ``connected()`` is
    called in that thread, before the next beat, whenever its socket has (re)connected to a
    master: one that restarted, say, which has to hear from the slave to know it.
    """
    start_thread = gevent.monkey.get_original("_thread", "start_new_thread")
    allocate_lock = gevent.monkey.get_original("_thread", "allocate_lock")
    stopped = allocate_lock()
    stopped.acquire()

    def run() -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        if curve is not None:
            curve.apply(sock, server=False)
        sock.setsockopt(zmq.IDENTITY, identity + HEARTBEAT_SUFFIX)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_FIRST_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED)
        sock.connect(address)
        end: Callable[[], None] | None = None
        try:
            # The lock doubles as an interruptible sleep: released means "stop now".
            while end is None and not stopped.acquire(True, interval_s):
                reconnected = False
                while monitor.poll(0):
                    monitor.recv_multipart()
                    reconnected = True
                if reconnected and connected is not None:
                    connected()
                messages, end = beat()
                for frames in messages:
                    # A master that is not there right now gets the next beat instead.
                    with contextlib.suppress(zmq.ZMQError):
                        sock.send_multipart(frames, flags=zmq.NOBLOCK)
        finally:
            # Last words are given a second to leave before the process ends.
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=1000 if end is not None else 0)
            ctx.term()
        if end is not None:
            end()

    start_thread(run, ())
    stop: Callable[[], None] = stopped.release
    return stop
