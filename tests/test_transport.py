"""The master's and a slave's sockets on real loopback sockets: whole messages both ways, and a
receive that waits is woken for a message even when one of the socket's own sends saw it
arrive."""

from __future__ import annotations

import time
from collections.abc import Iterator

import gevent
import pytest
import zmq

from taskmaster.errors import TransportError
from taskmaster.transport import MasterSocket, SlaveSocket

PEER = b"peer:1:abc"


@pytest.fixture
def pair() -> Iterator[tuple[MasterSocket, zmq.Socket[bytes]]]:
    """A master's socket and a plain DEALER connected to it (the master knows it: it has
    heard from it)."""
    master = MasterSocket("tcp://127.0.0.1:0")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.IDENTITY, PEER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.setsockopt(zmq.RCVTIMEO, 5000)
    peer.connect(master.address)
    peer.send(b"hello")
    with gevent.Timeout(5):
        assert master.recv() == (PEER, [b"hello"])
    try:
        yield master, peer
    finally:
        peer.close()
        ctx.term()
        master.close()


def test_messages_go_whole_both_ways(pair: tuple[MasterSocket, zmq.Socket[bytes]]) -> None:
    master, peer = pair
    sent = [[b"kind", b"", bytes(range(256)) * 40, b"m" * n] for n in range(200)]
    for frames in sent:
        peer.send_multipart(frames)
    with gevent.Timeout(5):
        got = [master.recv() for _ in sent]  # waiting for some, finding others there
    assert got == [(PEER, frames) for frames in sent]
    for frames in sent:
        assert master.send(PEER, frames)
    assert [peer.recv_multipart() for _ in sent] == sent
    assert master.send(PEER, [b"one frame"]) and peer.recv_multipart() == [b"one frame"]
    assert not master.send(b"nobody", [b"x"]), "a peer that is not connected"


def test_a_waiting_receive_wakes_for_what_arrived_while_the_socket_sent(
        pair: tuple[MasterSocket, zmq.Socket[bytes]]) -> None:
    """ZeroMQ signals arrivals on an edge of its file descriptor, and a send handles the
    signal when it comes first: the receive waiting in the hub must be told all the same,
    not sleep on with the message there (until the socket next looks for itself, 1 s on)."""
    master, peer = pair
    for n in range(5):
        receiver = gevent.spawn(master.recv)
        gevent.sleep(0.01)  # it waits now
        peer.send(b"%d" % n)
        time.sleep(0.05)  # not the hub's sleep: the arrival is signalled while no one looks
        assert master.send(PEER, [b"ping"])  # and handled by the send
        with gevent.Timeout(0.5, AssertionError("a waiting receive slept through a message")):
            assert receiver.get() == (PEER, [b"%d" % n])
        assert peer.recv_multipart() == [b"ping"]


def test_a_signal_missed_all_the_same_delays_a_message_by_a_second_at_most(
        pair: tuple[MasterSocket, zmq.Socket[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    master, peer = pair
    monkeypatch.setattr(master._io, "recheck_soon", lambda: None)  # as if the look were missed
    receiver = gevent.spawn(master.recv)
    gevent.sleep(0.01)
    peer.send(b"late")
    time.sleep(0.05)
    assert master.send(PEER, [b"ping"])
    with gevent.Timeout(3, AssertionError("a waiting receive slept through a message")):
        assert receiver.get() == (PEER, [b"late"])


def test_a_calm_receive_takes_what_is_there_at_once_and_else_lets_the_moment_pass(
        pair: tuple[MasterSocket, zmq.Socket[bytes]]) -> None:
    master, peer = pair
    peer.send(b"there")
    time.sleep(0.05)
    began = time.monotonic()
    with gevent.Timeout(5):
        assert master.recv(calm_s=1.0) == (PEER, [b"there"])
    assert time.monotonic() - began < 0.5, "a message already there waited"
    gevent.spawn_later(0.05, peer.send, b"soon")
    began = time.monotonic()
    with gevent.Timeout(5):
        assert master.recv(calm_s=0.3) == (PEER, [b"soon"])
    assert time.monotonic() - began >= 0.3
    began = time.monotonic()
    gevent.spawn_later(0.05, peer.send, b"later")
    with gevent.Timeout(5):  # nothing after the calm moment either: wait for it
        assert master.recv(calm_s=0.01) == (PEER, [b"later"])
    assert time.monotonic() - began < 0.5


def test_a_closed_socket_refuses_to_send_and_receive() -> None:
    master = MasterSocket("tcp://127.0.0.1:0")
    master.close()
    with pytest.raises(TransportError):
        master.send(PEER, [b"x"])
    with pytest.raises(TransportError):
        master.recv()


# -- a slave's socket ------------------------------------------------------------------------


@pytest.fixture
def slave_pair() -> Iterator[tuple[SlaveSocket, zmq.Socket[bytes]]]:
    """A slave's socket and a plain ROUTER, its master, that has heard from it."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    master = ctx.socket(zmq.ROUTER)
    master.setsockopt(zmq.LINGER, 0)
    master.setsockopt(zmq.RCVTIMEO, 5000)
    port = master.bind_to_random_port("tcp://127.0.0.1")
    slave = SlaveSocket(f"tcp://127.0.0.1:{port}", PEER)
    try:
        with gevent.Timeout(5):
            while not slave.send([b"hello"]):  # IMMEDIATE: dropped until connected
                gevent.sleep(0.01)
        assert master.recv_multipart() == [PEER, b"hello"]
        yield slave, master
    finally:
        slave.close()
        master.close()
        ctx.term()


def test_a_slave_gets_whole_messages_with_the_body_a_view_of_zeromq_memory(
        slave_pair: tuple[SlaveSocket, zmq.Socket[bytes]]) -> None:
    slave, master = slave_pair
    sent = [[b"kind", b"header", bytes(range(256)) * 2000 + b"%d" % n, b""] for n in range(50)]
    for frames in sent:
        master.send_multipart([PEER, *frames])
    with gevent.Timeout(5):
        first = slave.recv(5)
        got = [first, *slave.pending()]
        while len(got) < len(sent):
            got.append(slave.recv(5))
    assert all(type(m[2]) is memoryview for m in got if m), "a view, not a copy"
    assert [[bytes(f) for f in m] for m in got if m] == sent
    assert all(type(f) is bytes for m in got if m for f in (m[0], m[1], m[3]))
    assert slave.pending() == []


def test_a_slave_receive_wakes_for_what_arrived_while_it_sent(
        slave_pair: tuple[SlaveSocket, zmq.Socket[bytes]]) -> None:
    """As the master's (above): its own send may take the signal of an arrival."""
    slave, master = slave_pair
    for n in range(5):
        receiver = gevent.spawn(slave.recv, 30)
        gevent.sleep(0.01)
        master.send_multipart([PEER, b"%d" % n])
        time.sleep(0.05)
        assert slave.send([b"ping"])
        with gevent.Timeout(0.5, AssertionError("a waiting receive slept through a message")):
            assert receiver.get() == [b"%d" % n]
        assert master.recv_multipart() == [PEER, b"ping"]


def test_a_slave_receive_ends_at_its_timeout_or_when_woken(
        slave_pair: tuple[SlaveSocket, zmq.Socket[bytes]]) -> None:
    slave, master = slave_pair
    began = time.monotonic()
    assert slave.recv(0.2) is None
    assert 0.2 <= time.monotonic() - began < 1.5
    # Woken while it waits: at once.
    gevent.spawn_later(0.05, slave.wake)
    began = time.monotonic()
    with gevent.Timeout(5):
        assert slave.recv(30) is None
    assert time.monotonic() - began < 1.0
    # Woken while no one waits: the next receive says so, once, even with a message there.
    master.send_multipart([PEER, b"there"])
    time.sleep(0.05)
    slave.wake()
    with gevent.Timeout(5):
        assert slave.recv(30) is None
        assert slave.recv(30) == [b"there"]
