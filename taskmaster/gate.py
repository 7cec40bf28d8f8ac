"""Who may connect to tm-run's own socket: processes of this user, on the kernel's word.

tm-run's master listens on a socket of Linux's abstract namespace. It has no file, so no
permissions: any local process can reach it. Before a connection carries any message, ZeroMQ
asks the process's authentication handler (ZAP, ZeroMQ RFC 27) about it. Over a local socket,
libzmq gives the handler the peer's user, group and process ids, as the kernel reports them
(SO_PEERCRED), in the request's address: ``localhost:UID:GID:PID``. Ours lets in only
processes of our own user (and root's). Those are trusted as the user is (a process of the
user's could, as a rule, read the run's memory, secret and all), so tm-run's own runs need no
secret: their messages go unsigned. That saves HMAC over every byte, both ways: a third of
the CPU of a run of 1 KB jobs.

The slaves ask the same of their master: libzmq asks ZAP on the connecting side too. A slave
unpickles what its master sends, and the socket's name is no secret (a restarted slave has it
on its command line; /proc/net/unix lists it while it is bound), so another user who bound it
first, or after our master let go of it, must get no connection from our slaves. (Their
heartbeat sockets may connect: those only send, and a heartbeat says nothing secret.)
"""

from __future__ import annotations

import logging
import os
import sys

import gevent.monkey
import zmq

from .config import DROP_LOG_INTERVAL_S

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"
DOMAIN = b"taskmaster-same-user"


def peers_named_by_the_kernel() -> bool:
    """Whether libzmq here tells a ZAP handler a local peer's user: on Linux with glibc, whose
    getnameinfo libzmq's peer address goes through (with others, as musl's, it may come empty,
    and the gate would refuse our own slaves: there tm-run keeps a secret)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


def peer_ids(address: bytes) -> tuple[int, int] | None:
    """(uid, pid) from a ZAP request's address over a local socket; None from any other."""
    host, *ids = address.decode("ascii", "replace").rsplit(":", 3)
    if host != "localhost" or len(ids) != 3 or not all(i.isdigit() for i in ids):
        return None
    return int(ids[0]), int(ids[2])


class Gate:
    """The process's ZAP handler, for the sockets of one ZeroMQ context that ask for it: a
    real OS thread, started by the first socket that asks, answering until the context ends.

    It only counts whom it turned away (`refused`, `last_refused`): a thread of its own must
    not take the process's logging locks, which gevent made its own; its socket's owner says so.
    """

    _current: Gate | None = None

    def __init__(self, ctx: zmq.Context) -> None:
        self.ctx, self.pid = ctx, os.getpid()
        self.uid = os.geteuid()  # what the kernel names a peer by
        self.refused = 0
        self.last_refused = ""
        self._told, self._quiet_until = 0, float("-inf")
        rep = zmq.Socket(ctx, zmq.REP)  # a plain one even in a green context: a thread's
        rep.setsockopt(zmq.LINGER, 0)
        rep.bind(ZAP_ENDPOINT)  # before any socket that asks for us binds
        start_thread = gevent.monkey.get_original("_thread", "start_new_thread")
        start_thread(self._answer, (rep,))

    @classmethod
    def guard(cls, sock: zmq.Socket) -> Gate:
        """Let ``sock`` connect only with processes of this user; call before it binds or
        connects."""
        gate = cls._current
        # (A fork's copy of the parent's gate has no thread, and its context is not ours.)
        if gate is None or gate.ctx is not sock.context or gate.pid != os.getpid():
            gate = cls._current = cls(sock.context)
        sock.setsockopt(zmq.ZAP_DOMAIN, DOMAIN)
        # Without a handler there, ZeroMQ would let every connection in; with this, none.
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        return gate

    def _answer(self, rep: zmq.Socket) -> None:
        # Whatever ends this thread, a connection waiting for it is refused, never let in.
        try:
            while True:
                request = rep.recv_multipart()
                verdict = self.judge(request)
                rid = request[1] if len(request) > 1 else b""
                reply = [ZAP_VERSION, rid, b"200", b"OK"] if verdict is None else [
                    ZAP_VERSION, rid, b"400", verdict.encode()]
                rep.send_multipart([*reply, b"", b""])
        except zmq.ZMQError:  # the context is ending (ContextTerminated)
            pass
        finally:
            rep.close(linger=0)

    def judge(self, request: list[bytes]) -> str | None:
        """None to let the connection in; else why not (and it is counted)."""
        ids = peer_ids(request[3]) if len(request) >= 6 and request[0] == ZAP_VERSION else None
        if ids is not None and ids[0] in (self.uid, 0):  # (root could do anything anyway)
            return None
        if ids is None:
            self.last_refused = "a peer whose user the kernel did not name"
        else:
            self.last_refused = f"uid {ids[0]} (pid {ids[1]})"
        self.refused += 1
        return "only processes of the run's own user may connect"

    def tell(self, now: float, *, last: bool = False) -> None:
        """Log whom we turned away since the last time (a step of the owner's loop): at
        once, then at most once per DROP_LOG_INTERVAL_S, and what is left ``last``."""
        if self.refused > self._told and (last or now >= self._quiet_until):
            log.warning("refused %d connection(s) with other users' processes (the last: %s): "
                        "only this run's user may take part in it", self.refused - self._told,
                        self.last_refused)
            self._told, self._quiet_until = self.refused, now + DROP_LOG_INTERVAL_S
