"""Security: authentication, replay protection, exposure checks, Curve, secrets kept secret.

Process tests run real `tm-master` / `tm-slave` / `tm-run` over ZeroMQ on loopback ports the
masters pick themselves (port 0, read back from their log), with the ledger job module (each
executed job appended to $LEDGER) as the proof of what ran. Rogue peers and a fake master are
plain pyzmq sockets in this process, also on loopback only (the fake master on a port it picks).
The one non-loopback use is the exposure check, which is exercised with a tripwire target
(its import exits the process at once), so no socket is made even if the check were broken.

The last part drives the master's message handling in-process (no sockets) with a table of
attacks and with hypothesis-generated messages.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pickle
import re
import secrets
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

import psutil
import pytest
import zmq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from master_parts import SLAVE, Parts

from procs import ANY_PORT, Proc, Procs, listening_on, read_ledger, wait_for
from taskmaster import protocol as p
from taskmaster.config import MAX_MESSAGE_BYTES
from taskmaster.gate import peer_ids
from taskmaster.settings import signing_key

NO_EPOCH = p.NO_EPOCH
DROPPED = r"dropped a message from "
WRONG_KEY = signing_key(b"not the secret of this run, 32b!")


# -- helpers ------------------------------------------------------------------------------------


def env(**extra: str) -> dict[str, str]:
    """The child environment: no security settings leak in from the caller's environment."""
    return {"TASKMASTER_SECRET": "", "TASKMASTER_CURVE": "", "TASKMASTER_INSECURE": "", **extra}


def new_secret(tmp_path: Path, name: str) -> tuple[Path, bytes]:
    """A fresh secret in a file (mode 0600); returns the file and the secret's signing key."""
    value = secrets.token_hex(16)
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    key = signing_key(value.encode())
    assert key is not None
    return path, key


def master(procs: Procs, tmp_path: Path, count: int, *extra: str,
           state: str = "run") -> tuple[Proc, str]:
    """A master that is listening on a loopback port it picked, and the address it bound."""
    proc = procs.start("tm-master", "ledger_jobs", f"count={count}", "--address", ANY_PORT,
                       "--no-progress", "--state-file", str(tmp_path / f"{state}.tmstate"),
                       *extra, env=env())
    return proc, listening_on(proc)


def slave(procs: Procs, address: str, ledger: Path, *extra: str, **knobs: str) -> Proc:
    return procs.start("tm-slave", "ledger_jobs", "--address", address, "--no-progress",
                       *extra, env=env(LEDGER=str(ledger), **knobs))


def assert_complete(ledger: Path, count: int) -> None:
    ran = {int(line) for line in read_ledger(ledger)}
    missing = sorted(set(range(count)) - ran)
    assert not missing, f"{len(missing)} jobs never ran, e.g. {missing[:10]}"


def joined(proc: Proc) -> int:
    return len(re.findall(r"slave \S+ joined", proc.output))


@contextlib.contextmanager
def zmq_context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


def dealer(ctx: zmq.Context, address: str, identity: bytes | None = None,
           linger_ms: int = 0) -> zmq.Socket:
    """A rogue peer: a plain DEALER connected to the master's loopback address."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDTIMEO, 10_000)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    sock.connect(address)
    return sock


def recv_within(sock: zmq.Socket, timeout_s: float) -> list[bytes] | None:
    if sock.poll(int(timeout_s * 1000)):
        return sock.recv_multipart()
    return None


class Raw(NamedTuple):
    """A message as framed: its kind and header, and its body as plain data."""

    kind: bytes
    epoch: bytes
    counter: int
    body: Any


def raw(frames: list[bytes], key: bytes | None, kinds: frozenset[bytes]) -> Raw:
    return Raw(*p.unpack(frames, key=key, kinds=kinds))


def knock(sock: zmq.Socket, name: str, nonce: str, key: bytes | None,
          timeout_s: float = 10.0) -> Raw:
    """Ask the master for a WELCOME, as a slave does; return it (this reveals the epoch)."""
    sock.send_multipart(p.pack(p.HEARTBEAT, [name, nonce, None, None, False, 0, 0], epoch=NO_EPOCH,
                               counter=1, key=key))
    frames = recv_within(sock, timeout_s)
    assert frames is not None, f"no WELCOME within {timeout_s}s"
    welcome = raw(frames, key, p.MASTER_KINDS)
    assert welcome.kind == p.WELCOME
    return welcome


class PickleBomb:
    """Unpickling this creates a marker file: the proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


# -- 1, 2: mismatched secrets -------------------------------------------------------------------


def test_wrong_secret_slave_runs_nothing_and_the_run_completes_without_it(
        procs: Procs, tmp_path: Path) -> None:
    count = 2000
    good, _ = new_secret(tmp_path, "a.secret")
    bad, _ = new_secret(tmp_path, "b.secret")
    bad_ledger, good_ledger = tmp_path / "intruder.ledger", tmp_path / "honest.ledger"
    m, address = master(procs, tmp_path, count, "--secret-file", str(good))
    intruder = slave(procs, address, bad_ledger, "--secret-file", str(bad))
    m.expect(DROPPED + r".*signature", timeout=20)
    assert joined(m) == 0 and m.proc.poll() is None
    assert read_ledger(bad_ledger) == []

    # 10 greenlets x 10 ms a job: the run takes a couple of seconds, all with the intruder on.
    honest = slave(procs, address, good_ledger, "--secret-file", str(good), SLEEP_S="0.01")
    assert m.wait(60) == 0, m.output
    assert honest.wait(30) == 0, honest.output
    assert_complete(good_ledger, count)
    # The intruder was there for the whole run and ran nothing; the master never took it in.
    assert read_ledger(bad_ledger) == []
    assert joined(m) == 1
    assert intruder.proc.poll() is None, "the intruder was told the run is done"


@pytest.mark.parametrize(("master_secret", "slave_secret", "why"), [
    (True, False, r"signature \(wrong or missing shared secret\)"),
    (False, True, r"signed message, but no shared secret is set here"),
], ids=["master-signed/slave-not", "master-not/slave-signed"])
def test_secret_on_one_side_only_runs_nothing(procs: Procs, tmp_path: Path, master_secret: bool,
                                               slave_secret: bool, why: str) -> None:
    secret, _ = new_secret(tmp_path, "run.secret")
    ledger = tmp_path / "ledger"
    m, address = master(procs, tmp_path, 100,
                        *(["--secret-file", str(secret)] if master_secret else []))
    s = slave(procs, address, ledger, "--master-timeout", "3",
              *(["--secret-file", str(secret)] if slave_secret else []))
    m.expect(DROPPED + ".*" + why, timeout=20)
    # The slave gets no answer at all, so it gives up after --master-timeout, having run nothing.
    assert s.wait(30) == 1, s.output
    assert "no master at" in s.output
    assert read_ledger(ledger) == []
    assert joined(m) == 0 and m.proc.poll() is None


# -- 3: rogue peers against a live signed run ---------------------------------------------------


FLOOD = 20_000


def test_rogue_peer_during_a_signed_run(procs: Procs, tmp_path: Path) -> None:
    count = 3500
    secret, key = new_secret(tmp_path, "run.secret")
    ledger, marker = tmp_path / "ledger", tmp_path / "UNPICKLED"
    m, address = master(procs, tmp_path, count, "--secret-file", str(secret))
    # 10 greenlets x 40 ms a job: the run lasts at least 14 s, longer than the master's
    # 10 s between two "dropped" log lines, so the second one shows the count.
    s = slave(procs, address, ledger, "--secret-file", str(secret), "--concurrency", "10",
              SLEEP_S="0.04")
    m.expect(r"slave \S+ joined", timeout=20)

    bomb = pickle.dumps(PickleBomb(marker))
    hdr = p.pack(p.ACK, None, epoch=NO_EPOCH)[1]
    with zmq_context() as ctx:
        rogue = dealer(ctx, address, b"rogue-1")
        attacks: list[list[bytes]] = [
            # garbage and wrong frame counts
            [b"\x00\xffgarbage"], [os.urandom(300)], [b""], [b"ACK"], [b"ACK", hdr, b"[]"],
            [b"ACK", hdr, b"[]", b"", b"extra"], [b"x"] * 50,
            # unknown kinds, including the master's own kinds and a pickle bomb as JOBS
            [b"NOPE", hdr, b"{}", b""], [p.JOBS, hdr, bomb, b""],
            [p.WELCOME, hdr, b'[1,"n"]', b""],
            [p.JOBS, hdr, bomb, p._mac(key, p.JOBS, hdr, bomb)],
            # valid-looking but unsigned, and signed with the wrong key (a knock among them)
            p.pack(p.HEARTBEAT, ["rogue-1", "unsigned-knock", None, None, False, 0, 0],
                   epoch=NO_EPOCH, counter=1),
            p.pack(p.ACK, [[[1, []]], 100], epoch=NO_EPOCH, counter=2),
            p.pack(p.HEARTBEAT, ["rogue-1", "wrong-key-knock", None, None, False, 0, 0],
                   epoch=NO_EPOCH, counter=3, key=WRONG_KEY),
            p.pack(p.ACK, [[[1, []]], 100], epoch=NO_EPOCH, counter=4, key=WRONG_KEY),
            # a pickle bomb as the body of a slave kind: unsigned, and signed with the right key
            [p.ACK, hdr, bomb, b""], [p.ACK, hdr, bomb, p._mac(key, p.ACK, hdr, bomb)],
            # a body just over the cap (under the socket's MAXMSGSIZE, so it reaches the check)
            [p.ACK, hdr, b" " * (MAX_MESSAGE_BYTES + 1), b""],
        ]
        for frames in attacks:
            rogue.send_multipart(frames)
        # The first answer the rogue gets must be to its signed knock, not to the unsigned or
        # wrong-key ones sent before it (the master answers in order).
        welcome = knock(rogue, "rogue-1", "signed-knock", key)
        assert welcome.body[1] == "signed-knock"
        # Replays: a correctly signed ACK for a bogus batch, with a counter this sender used.
        replay = p.pack(p.ACK, [[[1, []]], 0], epoch=welcome.epoch, counter=1, key=key)
        rogue.send_multipart(replay)
        rogue.send_multipart(replay)
        rogue.send_multipart(p.pack(p.ACK, [[[2, []]], 0], epoch=welcome.epoch, counter=0,
                                    key=key))
        # Too big for MAXMSGSIZE: libzmq drops this connection.
        huge = dealer(ctx, address)
        huge.send_multipart([p.ACK, hdr, bytes(MAX_MESSAGE_BYTES + 64 * 1024), b""])
        # The flood.
        flood = dealer(ctx, address)
        for _ in range(FLOOD):
            flood.send_multipart([b"flood"])

        def dropped_so_far() -> int:
            return max(map(int, re.findall(r"\((\d+) dropped so far\)", m.output)), default=0)

        def tick() -> None:
            rogue.send_multipart([b"tick"])

        # Every message above is dropped and counted, but for the knock and the one too big
        # for the socket. The master logs drops at most every 10 s: keep dropping (a tick each
        # round) until it logs a count that covers them all. The master must not exit meanwhile.
        expected = len(attacks) + 3 + FLOOD
        wait_for(lambda: dropped_so_far() >= expected, 25,
                 f"the master to log {expected} drops during the attack", m,
                 between=tick, step_s=0.25)
        assert m.wait(60) == 0, m.output
        assert s.wait(30) == 0, s.output
        # Nothing after the WELCOME reached the rogue: no jobs, no second WELCOME.
        assert recv_within(rogue, 0) is None
    assert_complete(ledger, count)
    assert not marker.exists(), "the master unpickled a network message"
    assert joined(m) == 1
    assert "internal error" not in m.output
    print("\n" + "\n".join(line for line in m.lines if "dropped" in line))


def test_unsigned_loopback_master_survives_a_malformed_ready(procs: Procs,
                                                            tmp_path: Path) -> None:
    """Without a secret (loopback only), any local process can talk to the master: a READY of
    the right shape holding a number JSON allows but int() does not must not bring it down.
    (Every READY here is broken, so the rogues never get credit and never hold a job.)"""
    count = 300
    ledger = tmp_path / "ledger"
    m, address = master(procs, tmp_path, count)
    with zmq_context() as ctx:
        for name, bodies in {
            "rogue-2": [[float("inf"), 1, "rogue", 1, 1, 0], [float("-inf"), 1, "rogue", 1, 1, 0],
                        [float("nan"), 1, "rogue", 1, 1, 0]],  # credit
            "rogue-3": [[1, 1, "rogue", 1e999, 1, 0]],  # pid
            "rogue-4": [[1, float("inf"), "rogue", 1, 1, 0]],  # concurrency
            "rogue-5": [[1, 1, "rogue", 1, float("inf"), 0]],  # message size
            "rogue-6": [[1, 1, "rogue", 1, 1, float("inf")], [1, 1, "rogue", 1, 1, -1]],  # patience
        }.items():
            rogue = dealer(ctx, address, name.encode())
            welcome = knock(rogue, name, "n1", None)
            for counter, body in enumerate(bodies, 2):
                rogue.send_multipart(p.pack(p.READY, [welcome.body[0], *body],
                                            epoch=welcome.epoch, counter=counter))
        s = slave(procs, address, ledger)
        code = m.wait(60)
        assert "internal error" not in m.output, m.output
        assert code == 0, m.output
    assert s.wait(30) == 0, s.output
    assert_complete(ledger, count)


def test_replayed_heartbeat_does_not_keep_a_dead_slave_alive(procs: Procs,
                                                             tmp_path: Path) -> None:
    """A heartbeat captured on the wire, replayed after its slave died (from new connections),
    must not keep that slave's leases alive: the slave is still declared lost."""
    secret, key = new_secret(tmp_path, "run.secret")
    m, address = master(procs, tmp_path, 100, "--secret-file", str(secret),
                        "--lease-timeout", "2")
    victim = slave(procs, address, tmp_path / "ledger", "--secret-file", str(secret),
                   "--concurrency", "2", SLEEP_S="60")
    m.expect(r"slave \S+ joined", timeout=20)
    ident = victim.expect(r"slave (\S+): \d+ greenlets").group(1)
    with zmq_context() as ctx:
        # The epoch is in every message the master sends; a sniffer would copy the victim's
        # heartbeat verbatim. Here it is rebuilt with the key: the same bytes.
        epoch = knock(dealer(ctx, address, b"observer"), "observer", "n", key).epoch
        captured = p.pack(p.HEARTBEAT, [ident, "an old nonce", None, None, True, 0, 0], epoch=epoch,
                          counter=1, key=key)
        victim.kill()

        def replay() -> None:
            dealer(ctx, address, linger_ms=1000).send_multipart(captured)

        wait_for(lambda: re.search(r"slave \S+ lost \(silent", m.output), 8,
                 "the dead slave to be lost (replayed heartbeats must not keep it alive)", m,
                 between=replay, step_s=0.2)


# -- the slave's side: a fake master ------------------------------------------------------------


def test_slave_rejects_forged_and_replayed_master_messages(procs: Procs, tmp_path: Path) -> None:
    secret, key = new_secret(tmp_path, "run.secret")
    ledger, marker = tmp_path / "ledger", tmp_path / "UNPICKLED"
    bomb = PickleBomb(marker)
    epoch, old_epoch = b"E" * 8, b"O" * 8
    with zmq_context() as ctx:
        fake = ctx.socket(zmq.ROUTER)
        fake.setsockopt(zmq.LINGER, 0)
        fake.bind("tcp://127.0.0.1:*")  # a port the system picks, bound before the slave starts
        address = fake.getsockopt_string(zmq.LAST_ENDPOINT)
        s = slave(procs, address, ledger, "--secret-file", str(secret))
        seen: list[Raw] = []

        def from_slave(kind: bytes, timeout_s: float = 15.0) -> Raw:
            """The next message of ``kind`` from the slave's own socket (beats skipped)."""
            deadline = time.monotonic() + timeout_s
            while True:
                left = deadline - time.monotonic()
                frames = recv_within(fake, max(0.0, left))
                assert frames is not None, f"no {kind!r} from the slave:\n{s.output}"
                who, *rest = frames
                msg = raw(rest, key, p.SLAVE_KINDS)  # the slave signs
                if who.endswith(b"/heartbeat"):
                    continue
                seen.append(msg)
                if msg.kind == kind:
                    return msg

        knock_ = from_slave(p.HEARTBEAT)
        ident, nonce = knock_.body[0].encode(), knock_.body[1]

        def send(kind: bytes, body: Any, counter: int, k: bytes | None = key,
                 ep: bytes = epoch) -> list[bytes]:
            frames = p.pack(kind, body, epoch=ep, counter=counter, key=k)
            fake.send_multipart([ident, *frames])
            return frames

        send(p.JOBS, (1, [bomb], False), 1, k=None)  # unsigned pickle
        send(p.JOBS, (1, [bomb], False), 2, k=WRONG_KEY)  # wrongly signed pickle
        s.expect(r"dropped a message from the master: .*signature")
        send(p.WELCOME, [111, "not the nonce", 0], 3)  # a WELCOME for another knock
        welcome = send(p.WELCOME, [222, nonce, 0], 4)
        ready = from_slave(p.READY)
        assert ready.body[0] == 222, "the slave accepted a WELCOME that did not echo its nonce"

        def acked() -> Any:
            """The batches the slave's next acknowledgement of any acknowledges (a piece done
            in a batch not finished yet sends only its room: no batches)."""
            while not (batches := from_slave(p.ACK).body[0]):
                pass
            return batches

        jobs5 = send(p.JOBS, (1, [5, 6], False), 10)
        assert acked() == [[1, []]]
        fake.send_multipart([ident, *jobs5])  # replayed verbatim
        send(p.JOBS, (2, [7], False), 9)  # a lower counter
        send(p.JOBS, (3, [8], False), 20, ep=old_epoch)  # an earlier run's epoch
        fake.send_multipart([ident, *welcome])  # a replayed WELCOME must not reset the slave
        send(p.JOBS, (4, [9], False), 11)
        batches = acked()
        assert batches == [[4, []]], f"expected only batch 4 acknowledged, got {batches}"
        s.expect(r"dropped a replayed message from the master")
        assert sorted(int(j) for j in read_ledger(ledger)) == [5, 6, 9]
        assert [msg.kind for msg in seen].count(p.READY) == 1

        send(p.DONE, [3, 0, None], 12)
        assert s.wait(20) == 0, s.output
    print("\n" + "\n".join(line for line in s.lines if "dropped" in line))
    assert not marker.exists(), "the slave unpickled an unauthenticated message"


# -- 4: exposure off loopback -------------------------------------------------------------------


TRIPWIRE = """\
# Importing this module means the command got past its configuration checks. It exits at
# once with status 99, before any socket exists.
import os

os._exit(99)
"""


def test_non_loopback_without_a_secret_is_refused(procs: Procs, tmp_path: Path) -> None:
    tripwire = tmp_path / "tripwire.py"
    tripwire.write_text(TRIPWIRE)
    secret, _ = new_secret(tmp_path, "run.secret")
    port = "3050"  # never bound nor connected to: each command stops before it makes a socket
    refused = {
        "master 0.0.0.0": ("tm-master", "tcp://0.0.0.0:" + port, "bind"),
        "master *": ("tm-master", "tcp://*:" + port, "bind"),
        "master [::]": ("tm-master", f"tcp://[::]:{port}", "bind"),
        "slave 192.0.2.1": ("tm-slave", "tcp://192.0.2.1:" + port, "connect to"),
        "slave src;dst": ("tm-slave", f"tcp://127.0.0.1;192.0.2.1:{port}", "connect to"),
        "spawn 192.0.2.1": ("tm-spawn", "tcp://192.0.2.1:" + port, "connect to"),
    }
    allowed = {
        "master 0.0.0.0 --insecure": ("tm-master", "tcp://0.0.0.0:" + port, ["--insecure"]),
        "slave 192.0.2.1 --insecure": ("tm-slave", "tcp://192.0.2.1:" + port, ["--insecure"]),
        "master 0.0.0.0 with secret": ("tm-master", "tcp://0.0.0.0:" + port,
                                       ["--secret-file", str(secret)]),
        "slave 192.0.2.1 with secret": ("tm-slave", "tcp://192.0.2.1:" + port,
                                        ["--secret-file", str(secret)]),
    }
    started: dict[str, Proc] = {}
    for name, (cmd, address, _verb) in refused.items():
        n = ["1"] if cmd == "tm-spawn" else []
        started[name] = procs.start(cmd, str(tripwire), *n, "--address", address,
                                    "--no-progress", env=env())
    for name, (cmd, address, extra) in allowed.items():
        started[name] = procs.start(cmd, str(tripwire), "--address", address, "--no-progress",
                                    *extra, env=env())
    codes = {name: proc.wait(30) for name, proc in started.items()}

    for name, (_cmd, address, verb) in refused.items():
        out = started[name].output
        assert codes[name] == 2, f"{name}: exit {codes[name]}\n{out}"
        assert len(started[name].lines) == 1, f"{name}: not one line:\n{out}"
        assert f"refusing to {verb} non-loopback {address}" in out, out
        for fix in ("TASKMASTER_SECRET", "--secret-file", "--insecure"):
            assert fix in out, f"{name}: the message does not name {fix}: {out}"
    for name in allowed:
        # 99: the tripwire target was imported, so the exposure check let it through.
        assert codes[name] == 99, f"{name}: exit {codes[name]}\n{started[name].output}"
        assert "refusing" not in started[name].output


# -- 5: Curve -----------------------------------------------------------------------------------


def keygen(directory: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "taskmaster", "keygen", str(directory)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    names = {"master.key", "master.key_secret", "slave.key", "slave.key_secret"}
    assert {f.name for f in directory.iterdir()} == names
    for name in ("master.key_secret", "slave.key_secret"):
        mode = stat.S_IMODE((directory / name).stat().st_mode)
        assert mode & 0o077 == 0, f"{name} is readable by others: {oct(mode)}"


def test_curve_round_trip_with_tm_run(procs: Procs, tmp_path: Path) -> None:
    keys, ledger, count = tmp_path / "keys", tmp_path / "ledger", 2000
    keygen(keys)
    run = procs.run("tm-run", "ledger_jobs", "1", f"count={count}", "--curve", str(keys),
                    "--no-progress", "--state-file", str(tmp_path / "run.tmstate"),
                    timeout=60, env=env(LEDGER=str(ledger)))
    assert run.code == 0, run.output
    assert "Curve-encrypted" in run.output
    assert_complete(ledger, count)


def test_slave_without_the_curve_keys_runs_nothing(procs: Procs, tmp_path: Path) -> None:
    keys, other_keys = tmp_path / "keys", tmp_path / "other-keys"
    keygen(keys)
    keygen(other_keys)
    secret, _ = new_secret(tmp_path, "run.secret")
    count = 500
    m, address = master(procs, tmp_path, count, "--secret-file", str(secret),
                        "--curve", str(keys))
    m.expect("listening on .*Curve-encrypted", timeout=1)
    plain = slave(procs, address, tmp_path / "plain.ledger", "--secret-file", str(secret),
                  "--master-timeout", "3")
    stranger = slave(procs, address, tmp_path / "stranger.ledger", "--secret-file", str(secret),
                     "--master-timeout", "3", "--curve", str(other_keys))
    for s in (plain, stranger):
        assert s.wait(30) == 1, s.output
        assert "no master at" in s.output
    assert read_ledger(tmp_path / "plain.ledger") == []
    assert read_ledger(tmp_path / "stranger.ledger") == []
    assert joined(m) == 0 and m.proc.poll() is None
    # The master was serving all along: a slave with the right keys completes the run.
    ledger = tmp_path / "ledger"
    good = slave(procs, address, ledger, "--secret-file", str(secret), "--curve", str(keys))
    assert m.wait(60) == 0, m.output
    assert good.wait(30) == 0, good.output
    assert_complete(ledger, count)


# -- 6, 7: the secret itself --------------------------------------------------------------------


def test_secret_never_appears_in_output_state_failures_or_command_lines(
        procs: Procs, tmp_path: Path) -> None:
    the_secret = "TOPSECRET-" + secrets.token_hex(16)
    key = signing_key(the_secret.encode())
    assert key is not None
    needles = [the_secret.encode(), key, key.hex().encode()]
    ledger, count = tmp_path / "ledger", 1000
    state, failures = tmp_path / "run.tmstate", tmp_path / "run.failures.jsonl"
    run = procs.start("tm-run", "ledger_jobs", "2", f"count={count}", "--no-progress",
                      "--log-level", "DEBUG", "--max-retries", "0", "--state-file", str(state),
                      env=env(LEDGER=str(ledger), TASKMASTER_SECRET=the_secret,
                              FAIL_EVERY="100", SLEEP_S="0.02"))
    run.expect(r"slave \S+ joined", timeout=20)
    argvs = []
    with contextlib.suppress(psutil.NoSuchProcess):
        for proc in [psutil.Process(run.pid), *psutil.Process(run.pid).children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                argvs.append(" ".join(proc.cmdline()))
    assert len(argvs) >= 2, "the slaves were not seen running"
    assert run.wait(60) == 1, run.output  # jobs failed on purpose: status 1
    assert failures.exists() and state.exists()
    assert len(failures.read_text().splitlines()) == count // 100
    assert "DEBUG" in run.output

    for argv in argvs:
        assert the_secret not in argv, f"the secret is on a command line: {argv}"
    for needle in needles:
        assert needle.decode("latin-1") not in run.output, "the secret is in the output"
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert state in files and failures in files
    for f in files:
        data = f.read_bytes()
        for needle in needles:
            assert needle not in data, f"the secret (or its key) is in {f}"


OWN_ENV_SCRIPT = """\
import os


def get_jobs(last=0):
    # Runs in tm-run's own process: its own secret must not be in its environment, where
    # anything it starts (and anything reading its environment) would find it.
    yield "master env has the secret: %s" % bool(os.environ.get("TASKMASTER_SECRET"))


def handle_job(job):
    fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (job + "\\n").encode())
    os.close(fd)
"""


@pytest.mark.parametrize("given_address", [False, True], ids=["own socket", "given address"])
def test_tm_runs_own_secret_stays_out_of_its_environment(procs: Procs, tmp_path: Path,
                                                         given_address: bool) -> None:
    script, ledger = tmp_path / "own_env.py", tmp_path / "ledger"
    script.write_text(OWN_ENV_SCRIPT)
    address = ["--address", f"ipc://{tmp_path}/given"] if given_address else []
    run = procs.run("tm-run", str(script), "1", "--no-progress", *address, timeout=60,
                    env=env(LEDGER=str(ledger)))
    assert run.code == 0, run.output
    if given_address:  # the run did make a secret
        assert "signed with the shared secret" in run.output
    elif sys.platform.startswith("linux"):  # none needed: see the next test
        assert "unsigned: only this user's processes may connect" in run.output
    assert read_ledger(ledger) == ["master env has the secret: False"]


NOBODY = 65534


def in_a_child(uid: int | None, timeout_s: float, work: Callable[[zmq.Context], bytes]) -> str:
    """What ``work`` says, run with a ZeroMQ context of its own in a forked child as user
    ``uid`` (this process's own if None); ``work`` is bounded by ``timeout_s`` itself."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never this process's context, and out by os._exit
        answer = b"error"
        try:
            os.close(read_end)
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            ctx = zmq.Context()
            answer = work(ctx)
            ctx.destroy(linger=0)
        except Exception as e:  # noqa: BLE001 - said in full: a failure shows its cause
            answer = f"error: {e!r}".encode()
        finally:
            os.write(write_end, answer)
            os._exit(0)
    os.close(write_end)
    try:
        # This is the bound on a child that hangs anyway.
        if not select.select([read_end], [], [], timeout_s + 20)[0]:
            os.kill(pid, signal.SIGKILL)
        answer = os.read(read_end, 4096).decode()
    finally:
        os.close(read_end)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return answer


def knock_from_a_child(address: str, uid: int | None, timeout_s: float) -> str:
    """Knock on the master at ``address`` as user ``uid``: "welcome", or "nothing" if no
    WELCOME came within ``timeout_s``."""
    def knock(ctx: zmq.Context) -> bytes:
        sock = dealer(ctx, address, b"outsider")  # a slave names itself so
        sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
        try:
            sock.send_multipart(p.pack(p.HEARTBEAT, ["outsider", "n", None, None, False, 0, 0],
                                       epoch=NO_EPOCH, counter=1, key=None))
        except zmq.Again:
            # A refused connection may be gone before the knock is queued on it; then DEALER
            # has nowhere to send, waits, and gives up: that too is nothing let in.
            return b"nothing"
        frames = recv_within(sock, timeout_s)
        if frames is None:
            return b"nothing"
        return b"welcome" if raw(frames, None, p.MASTER_KINDS).kind == p.WELCOME else b"other"

    return in_a_child(uid, timeout_s, knock)


def pose_as_master_in_a_child(address: str, uid: int | None, timeout_s: float) -> str:
    """Bind ``address`` as user ``uid`` and wait for a slave's own socket to connect: its
    heartbeat socket names it (and may connect: it only sends, and says nothing that needs
    keeping from anyone); a message to that name goes out only once the slave's socket is
    connected. "connected", or "nothing" if it was not within ``timeout_s``."""
    def pose(ctx: zmq.Context) -> bytes:
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to no one raises
        sock.bind(address)
        name, end = None, time.monotonic() + timeout_s
        while (left := end - time.monotonic()) > 0:
            frames = recv_within(sock, min(left, 0.05))
            if frames is not None and frames[0].endswith(p.HEARTBEAT_SUFFIX):
                name = frames[0][:-len(p.HEARTBEAT_SUFFIX)]
            if name is not None:
                try:
                    sock.send_multipart([name, b"probe"], flags=zmq.NOBLOCK)
                    return b"connected"
                except zmq.ZMQError:  # not connected (EHOSTUNREACH)
                    pass
        return b"nothing"

    return in_a_child(uid, timeout_s, pose)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux's")
@pytest.mark.skipif(os.geteuid() != 0, reason="becoming another user takes root")
def test_only_the_runs_own_user_may_join_tm_runs_own_socket(procs: Procs,
                                                           tmp_path: Path) -> None:
    # tm-run's own socket has no file, so no permissions: any local process can reach it. Its
    # messages go unsigned; what keeps other users out is the user the kernel names for each
    # connection. A process of another user gets nothing, and the master says so.
    ledger, gate, count = tmp_path / "ledger", tmp_path / "gate", 50
    run = procs.start("tm-run", "gated_jobs", "1", f"count={count}", "--no-progress",
                      "--state-file", str(tmp_path / "run.tmstate"),
                      env=env(LEDGER=str(ledger), GATE=str(gate)))
    address = listening_on(run)
    assert address.startswith("ipc://@"), run.output
    assert "unsigned: only this user's processes may connect" in run.output
    assert knock_from_a_child(address, NOBODY, timeout_s=3) == "nothing"
    run.expect(rf"refused \d+ connection\(s\) with other users' processes "
               rf"\(the last: uid {NOBODY} \(pid \d+\)\)", timeout=10)
    # The same knock from this user is let in: the refusal was the user, not the knock.
    assert knock_from_a_child(address, None, timeout_s=10) == "welcome"
    gate.touch()
    assert run.wait(60) == 0, run.output
    assert_complete(ledger, count)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux's")
@pytest.mark.skipif(os.geteuid() != 0, reason="becoming another user takes root")
def test_tm_runs_slaves_talk_only_to_a_master_of_their_own_user(procs: Procs,
                                                                 tmp_path: Path) -> None:
    # A slave unpickles what its master sends, and tm-run's socket name is no secret: a
    # restarted slave has it on its command line, and /proc/net/unix lists it while bound.
    # Another user who binds it first (or after the master let go) gets nothing from ours.
    address = f"ipc://@taskmaster-test-{secrets.token_hex(8)}"
    argv = ("tm-slave", "gated_jobs", "--address", address, "--same-user", "--no-progress")
    slave = procs.start(*argv, env=env(LEDGER=str(tmp_path / "ledger")))
    assert pose_as_master_in_a_child(address, NOBODY, timeout_s=3) == "nothing"
    slave.expect(rf"refused \d+ connection\(s\) with other users' processes "
                 rf"\(the last: uid {NOBODY} \(pid \d+\)\)", timeout=10)
    # (Refused, ZeroMQ may stop reconnecting that socket: so a fresh slave for the next.)
    slave.kill()
    # A master of this user gets a slave started the same way: it was the user refused.
    slave = procs.start(*argv, env=env(LEDGER=str(tmp_path / "ledger")))
    assert pose_as_master_in_a_child(address, None, timeout_s=10) == "connected", slave.output


def test_a_slave_that_talks_only_to_its_own_user_needs_a_local_socket(procs: Procs) -> None:
    slave = procs.run("tm-slave", "gated_jobs", "--address", "tcp://127.0.0.1:1", "--same-user",
                      timeout=30)
    assert slave.code == 2, slave.output
    assert "needs a local ipc:// address" in slave.output


@pytest.mark.parametrize(("address", "ids"), [
    (b"localhost:1000:1001:4242", (1000, 4242)),  # a local socket: uid, gid, pid
    (b"127.0.0.1", None), (b"::1", None), (b"", None),  # TCP names no user
    (b"localhost:x:1:2", None), (b"localhost:1:2", None), (b"otherhost:1:2:3", None),
])
def test_peer_ids_come_only_from_a_local_sockets_credentials(address: bytes,
                                                             ids: tuple[int, int] | None) -> None:
    assert peer_ids(address) == ids


def test_too_short_or_unreadable_secret_is_refused(procs: Procs, tmp_path: Path) -> None:
    tripwire = tmp_path / "tripwire.py"
    tripwire.write_text(TRIPWIRE)
    short = "short-secret-15"  # 15 bytes
    assert len(short) == 15
    short_file = tmp_path / "short.secret"
    short_file.write_text(short + "\n")  # whitespace does not count
    just_right = tmp_path / "ok.secret"
    just_right.write_text("exactly-16-bytes\n")
    # Nothing gets as far as a socket (the tripwire target exits first); were one made, no
    # port is involved.
    address = f"ipc://{tmp_path}/master"
    common = ["--address", address, "--no-progress"]
    cases = {
        "master env": ("tm-master", [], {"TASKMASTER_SECRET": short}, 2),
        "master file": ("tm-master", ["--secret-file", str(short_file)], {}, 2),
        "slave env": ("tm-slave", [], {"TASKMASTER_SECRET": short}, 2),
        "slave file": ("tm-slave", ["--secret-file", str(short_file)], {}, 2),
        "run env": ("tm-run", ["1"], {"TASKMASTER_SECRET": short}, 2),
        "master missing file": ("tm-master", ["--secret-file", str(tmp_path / "nope")], {}, 2),
        "master 16 bytes": ("tm-master", ["--secret-file", str(just_right)], {}, 99),
        "slave 16 bytes env": ("tm-slave", [], {"TASKMASTER_SECRET": "exactly-16-bytes"}, 99),
    }
    started = {}
    for name, (cmd, extra, extra_env, _code) in cases.items():
        args = [str(tripwire), *extra, *common]
        if cmd == "tm-run":
            args = [str(tripwire), *extra, "--no-progress"]
        started[name] = procs.start(cmd, *args, env=env(**extra_env))
    for name, (_cmd, _extra, _env, expected) in cases.items():
        proc = started[name]
        code = proc.wait(30)
        assert code == expected, f"{name}: exit {code}, expected {expected}\n{proc.output}"
        if expected == 2:
            assert len(proc.lines) == 1, f"{name}: not one line:\n{proc.output}"
            assert short not in proc.output, f"{name}: the secret is echoed: {proc.output}"
            assert ("at least 16" in proc.output if "missing" not in name
                    else "cannot read --secret-file" in proc.output), proc.output


# -- 8: the master's message handling, in-process -----------------------------------------------


JOBS = 10


def in_process_master(tmp_path: Path, secret: bytes | None) -> Parts:
    """The master's parts with no socket: 10 jobs, three batches of two leased to SLAVE (ids
    1, 2, 3) after it joined through the real handshake, four buffered."""
    m = Parts(tmp_path, jobs=JOBS, secret=secret)
    m.join(SLAVE, window=0)
    now = time.monotonic()
    for _ in range(3):
        m.ledger.take(SLAVE, 2, now, max_batch=2)
    assert sorted(m.ledger.leases) == [1, 2, 3]
    return m


def receive(m: Parts, messages: list[tuple[bytes, list[bytes]]]) -> mock.MagicMock:
    """Hand ``messages`` to the master's exchange; returns the spy that stood in for
    pickle.loads. Whatever the exchange raises escapes: that is a bug of ours."""
    with mock.patch.object(p.pickle, "loads", side_effect=AssertionError("unpickled")) as loads:
        for sender, frames in messages:
            m.exchange.handle(sender, frames, time.monotonic())
    return loads


SECRET = b"the fuzz secret, long enough!!!"


@pytest.mark.parametrize("secret", [None, SECRET], ids=["unsigned", "signed"])
def test_each_attack_is_dropped_and_counted(tmp_path: Path, secret: bytes | None) -> None:
    m = in_process_master(tmp_path, secret)
    key = m.key
    marker = tmp_path / "UNPICKLED"
    bomb = pickle.dumps(PickleBomb(marker))
    hdr = p.pack(p.ACK, None, epoch=m.epoch, counter=1)[1]
    counter = itertools.count(100)

    def signed(kind: bytes, body: Any, k: bytes | None = key) -> list[bytes]:
        return p.pack(kind, body, epoch=m.epoch, counter=next(counter), key=k)

    attacks: dict[str, tuple[list[bytes], str]] = {
        "one garbage frame": ([b"\x00garbage"], "expected 4 frames"),
        "no frames": ([], "expected 4 frames"),
        "three frames": (signed(p.ACK, [[], 0])[:3], "expected 4 frames"),
        "five frames": ([*signed(p.ACK, [[], 0]), b"x"], "expected 4 frames"),
        "unknown kind": ([b"NOPE", hdr, b"{}", b""], "unknown message kind"),
        "a master kind": (signed(p.WELCOME, [1, "n", 0]), "unknown message kind"),
        "pickle bomb as JOBS": ([p.JOBS, hdr, bomb, b""], "unknown message kind"),
        "short header": ([p.ACK, b"short", b"[]", b""], "bad header size"),
        "oversized body": ([p.ACK, hdr, b" " * (MAX_MESSAGE_BYTES + 1), b""], "exceeds"),
        "wrong key": (signed(p.ACK, [[], 0], WRONG_KEY),
                      "signature" if key else "no shared secret"),
        "bad shape": (signed(p.ACK, {"a": 1}), "ACK: expected a list of 2 fields"),
        "a job the batch does not hold": (signed(p.ACK, [[[1, [[7, ["E", "m", "t"]]]]], 0]),
                                          "names jobs it does not hold"),
        "a heartbeat for another slave": (
            signed(p.HEARTBEAT, ["another:1:x", "n", [], [], False, 0, 0]),
            "names another slave"),
    }
    if key is not None:
        body = [p.ACK, hdr, bomb]
        attacks |= {
            "unsigned": (signed(p.ACK, [[], 0], None), "signature"),
            "truncated signature": ([*body, p._mac(key, *body)[:-1]], "signature"),
            "signed pickle bomb as ACK": ([*body, p._mac(key, *body)], "undecodable body"),
        }
    else:
        attacks["pickle bomb as ACK"] = ([p.ACK, hdr, bomb, b""], "undecodable body")

    outcomes = {}
    for name, (frames, expected) in attacks.items():
        before = m.exchange.dropped
        loads = receive(m, [(SLAVE, frames)])
        assert loads.call_count == 0, f"{name}: pickle.loads was called"
        outcomes[name] = m.exchange.last_drop if m.exchange.dropped > before else "accepted"
        assert m.exchange.dropped == before + 1, f"{name}: dropped {m.exchange.dropped - before}"
        assert expected in m.exchange.last_drop, f"{name}: dropped for {m.exchange.last_drop!r}"
    if key is not None:
        # A replay: the same signed message twice from one sender; the second is dropped.
        frames = signed(p.HEARTBEAT, [SLAVE.decode(), "n", None, None, False, 0, 0])
        receive(m, [(SLAVE, frames), (SLAVE, frames)])
        assert m.exchange.last_drop == "replayed message"
        assert m.exchange.dropped == len(attacks) + 1
    assert not marker.exists()
    assert m.ledger.leased == 6, "an attack moved a lease"
    assert m.ledger.stats.finished + m.ledger.stats.failed + m.unsettled() == JOBS
    print(f"\n{'signed' if key else 'unsigned'}:", json.dumps(outcomes, indent=1))


# hypothesis strategies. Most messages are well-formed envelopes (from the leased-to slave,
# this run's epoch, a fresh counter, the right signature) around bodies of nearly the right
# shape, with the numbers JSON allows and int() may not (inf, nan, huge); the rest are
# mutated, mis-addressed, wrongly signed, or raw frames. Leaves are drawn from small fixed sets
# so that generating an example stays cheap.

NUMBERS = [0, 1, 2, 3, 99, -1, 0.5, 2**63, -(2**70), 1e300, float("inf"), float("-inf"),
           float("nan")]
numbers = st.sampled_from(NUMBERS)
leaves = numbers | st.sampled_from([None, True, "", "x", SLAVE.decode(), "stranger"])
json_values = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["type", "message", "traceback", "a"]), inner, max_size=3),
    max_leaves=6)
errors = st.just(["E", "m", "t"]) | json_values
failures = st.lists(st.tuples(numbers | json_values, errors), max_size=2) | json_values
bids = st.sampled_from([1, 2, 3, 99]) | json_values
bodies = {
    p.ACK: st.tuples(st.lists(st.tuples(bids, failures), max_size=2) | json_values,
                     numbers | json_values),
    p.READY: st.tuples(numbers, numbers, numbers, json_values, numbers, numbers) | json_values,
    p.HEARTBEAT: st.tuples(st.sampled_from([SLAVE.decode(), "stranger"]) | json_values,
                           json_values, st.none() | st.lists(bids, max_size=3) | json_values,
                           st.none() | st.lists(bids, max_size=3) | json_values,
                           st.booleans() | json_values, numbers, numbers),
    p.GONE: st.tuples(st.sampled_from([SLAVE.decode(), "stranger"]) | json_values,
                      st.none() | numbers,
                      st.none() | st.tuples(bids, numbers, errors) | json_values),
    p.BYE: st.lists(bids, max_size=3) | json_values,
}
envelopes = st.tuples(
    st.sampled_from([SLAVE] * 4 + [b"stranger"]) | st.binary(max_size=4),  # sender
    st.sampled_from(["master"] * 4 + ["zero", "other"]),  # epoch
    st.sampled_from([None] * 4 + [0, 1, 2**64 - 1]),  # counter: None = the sender's next
    st.sampled_from(["right"] * 4 + ["wrong", "none"]),  # signature
    st.sampled_from([("keep",)] * 4) | st.tuples(st.just("replace"), st.integers(0, 3),
                                                 st.binary(max_size=16))
    | st.tuples(st.just("flip"), st.integers(0, 3), st.integers(0, 63))
    | st.tuples(st.just("drop"), st.integers(0, 3))
    | st.tuples(st.just("append"), st.binary(max_size=4)),
)
other_kinds = st.sampled_from(sorted(p.MASTER_KINDS | {b"NOPE", b""}))
messages = st.one_of(
    *(st.tuples(st.just(kind), body, envelopes) for kind, body in bodies.items()),
    st.tuples(other_kinds, json_values, envelopes),
    st.tuples(st.just(b"raw"), st.lists(st.binary(max_size=24), max_size=6),
              st.tuples(st.binary(max_size=4))),
)
streams = st.lists(messages, min_size=1, max_size=12)


def build(m: Parts, stream: list[tuple[Any, ...]]) -> list[tuple[bytes, list[bytes]]]:
    counters: dict[bytes, int] = {}
    out = []
    for kind, body, envelope in stream:
        if kind == b"raw":
            out.append((envelope[0], list(body)))
            continue
        sender, epoch, counter, sign, mutation = envelope
        if counter is None:
            counter = counters[sender] = counters.get(sender, 0) + 1
        key = {"right": m.key, "wrong": WRONG_KEY, "none": None}[sign]
        ep = {"master": m.epoch, "zero": NO_EPOCH, "other": b"\x01" * 8}[epoch]
        frames = p.pack(kind, body, epoch=ep, counter=counter, key=key)
        op, *args = mutation
        if op == "replace":
            frames[args[0] % 4] = args[1]
        elif op == "flip" and frames[args[0] % 4]:
            i, f = args[0] % 4, bytearray(frames[args[0] % 4])
            f[args[1] % len(f)] ^= 0x55
            frames[i] = bytes(f)
        elif op == "drop":
            del frames[args[0] % 4]
        elif op == "append":
            frames.append(args[0])
        out.append((sender, frames))
    return out


# Derandomized: the same examples on every run, so a pass or a failure is reproducible.
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
WELL_FORMED = (SLAVE, "master", None, "right", ("keep",))


@pytest.mark.parametrize("secret", [None, SECRET], ids=["unsigned", "signed"])
@FUZZ
@given(stream=streams)
# Found by the search, kept as fixed cases: an infinite credit (JSON allows it, int() not).
@example(stream=[(p.READY, (0, float("inf"), 0, [], 0, 0), WELL_FORMED)])
@example(stream=[(p.ACK, ([], float("inf")), WELL_FORMED)])
def test_fuzzed_messages_never_crash_the_master_nor_get_unpickled(
        tmp_path: Path, secret: bytes | None, stream: list[tuple[Any, ...]]) -> None:
    m = in_process_master(tmp_path, secret)
    msgs = build(m, stream)
    rejected = 0
    for _ident, frames in msgs:
        try:
            p.unpack(frames, key=m.key, kinds=p.SLAVE_KINDS, max_bytes=MAX_MESSAGE_BYTES)
        except p.ProtocolError:
            rejected += 1
    loads = receive(m, msgs)  # raises whatever else escaped the master's handling
    assert loads.call_count == 0, "pickle.loads was called on a message from a slave"
    assert rejected <= m.exchange.dropped <= len(msgs), "a rejected message was not counted"


@pytest.mark.parametrize("secret", [None, SECRET], ids=["unsigned", "signed"])
@FUZZ
@given(stream=streams)
# Found by the search, kept as fixed cases: an ACK of a leased batch whose failure list is not
# a list, and one whose failure names a job outside the batch.
@example(stream=[(p.ACK, ([(1, 0)], 0), WELL_FORMED)])
@example(stream=[(p.ACK, ([(1, [(5, ["E", "m", "t"])])], 0), WELL_FORMED)])
def test_fuzzed_messages_never_lose_a_job(tmp_path: Path, secret: bytes | None,
                                          stream: list[tuple[Any, ...]]) -> None:
    """Whatever arrives, the books balance: every job is finished, failed (and then durably
    recorded) or still pending; a dropped message does not make a job vanish."""
    m = in_process_master(tmp_path, secret)
    receive(m, build(m, stream))  # anything it raises is a bug of ours: the test fails
    ledger = m.ledger
    assert ledger.leased == sum(len(b.jobs) for b in ledger.leases.values())
    stats = ledger.stats
    assert stats.finished + stats.failed + m.unsettled() == JOBS, (
        f"finished {stats.finished} + failed {stats.failed} + unsettled {m.unsettled()} "
        f"!= {JOBS} jobs")
    m.checkpointer.failures.close()
    recorded = (len(m.failures_path.read_text().splitlines())
                if m.failures_path.exists() else 0)
    assert recorded == stats.failed, f"{stats.failed} failed, {recorded} recorded"
