"""The floor under tm-run's cost: ``raw_zmq.py KIND COUNT [CONSUMERS [BATCH [HEAP]]]``.

Moves the same jobs as ``tm-run benchmarks/KIND_jobs.py`` (the stream and callback of
``jobs.py``) with nothing but ZeroMQ and pickle: this process pulls the stream, pickles it in
batches of BATCH jobs (default `BATCH`) and sends each batch from a ROUTER socket on 127.0.0.1
to one of CONSUMERS (default 2) forked consumer processes, DEALERs that unpickle the batch,
call the callback on each job and acknowledge the batch. A consumer holds at most `WINDOW`
batches not yet acknowledged, so memory stays bounded as a slave's window bounds it. No
leases, signatures, checkpoints or heartbeats: what tm-run does beyond this is its own cost.
HEAP ``kept`` tells the C heap to keep message-sized blocks as tm-run's processes do
(``taskmaster.heap``): with 1 KB jobs, a batch is half a megabyte, and without it each one is
pickled into fresh pages from the kernel.
Prints how many jobs were acknowledged; bench.py times this whole command, interpreter
start-up included, as it times tm-run.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

from jobs import CALLBACKS, STREAMS

BATCH = 500
WINDOW = 8
"""Batches a consumer may hold unacknowledged: enough that neither side waits on the other
over loopback (a batch travels in microseconds), few enough that 1 KB jobs hold a few MiB."""
SILENCE_S = 30
"""A side that hears nothing for this long gives up (a consumer died, or the producer did),
so that the script, run by hand, cannot hang."""
HOST = "tcp://127.0.0.1"
STOP = b""
"""Producer to consumer: no more batches. Consumer to producer, the first message: ready."""


def consume(address: str, callback: Callable[[Any], Any]) -> int:
    """A consumer's life: say ready, then run and acknowledge batches until told to stop."""
    import zmq  # here, after the fork: a ZeroMQ context must not cross one

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, SILENCE_S * 1000)
    sock.connect(address)
    sock.send(STOP)
    try:
        while (frame := sock.recv()) != STOP:
            batch = pickle.loads(frame)
            for job in batch:
                callback(job)
            sock.send(len(batch).to_bytes(4, "little"))
    except zmq.Again:
        return 1
    finally:
        sock.close(linger=1000)
        ctx.term()
    return 0


def produce(jobs: Iterator[Any], count: int, sock: Any, consumers: int, size: int) -> int:
    """Serve every batch, each consumer within its credit; the number of jobs acknowledged."""
    import zmq

    credit: dict[bytes, int] = {}
    acked = 0
    exhausted = False
    try:
        while acked < count or len(credit) < consumers:
            ident, frame = sock.recv_multipart()
            if frame == STOP:
                credit[ident] = WINDOW
            else:
                acked += int.from_bytes(frame, "little")
                credit[ident] += 1
            while credit[ident] and not exhausted:
                batch = list(islice(jobs, size))
                if not batch:
                    exhausted = True
                    break
                sock.send_multipart([ident, pickle.dumps(batch, pickle.HIGHEST_PROTOCOL)],
                                    copy=False)
                credit[ident] -= 1
    except zmq.Again:
        print(f"raw_zmq: nothing heard for {SILENCE_S}s after {acked:,} jobs", file=sys.stderr)
    for ident in credit:
        sock.send_multipart([ident, STOP])
    return acked


def main(argv: list[str]) -> int:
    """Fork the consumers, serve the stream, print the count of jobs acknowledged."""
    kind, count = argv[0], int(argv[1])
    consumers = int(argv[2]) if len(argv) > 2 else 2
    size = int(argv[3]) if len(argv) > 3 else BATCH
    if argv[4:5] == ["kept"]:
        from taskmaster.heap import keep_message_blocks

        keep_message_blocks()  # before the forks, which keep it
    # Forked before this process has a ZeroMQ context; each learns the port through a pipe
    # once the producer has bound one.
    children: list[tuple[int, int]] = []
    for _ in range(consumers):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write_fd)
            code = 1
            try:
                address = os.read(read_fd, 256).decode()
                code = consume(address, CALLBACKS[kind]) if address else 1
            finally:
                os._exit(code)
        os.close(read_fd)
        children.append((pid, write_fd))

    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.RCVTIMEO, SILENCE_S * 1000)
    port = sock.bind_to_random_port(HOST)
    for _, write_fd in children:
        os.write(write_fd, f"{HOST}:{port}".encode())
        os.close(write_fd)
    try:
        acked = produce(iter(STREAMS[kind](None, count)), count, sock, consumers, size)
    finally:
        sock.close(linger=1000)
        ctx.term()
        statuses = [os.waitpid(pid, 0)[1] for pid, _ in children]
    print(acked)
    return 0 if acked == count and not any(statuses) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
