"""The wire format: round trips, and rejection of anything malformed before unpickling."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmaster import protocol as p

EPOCH = b"E" * p.EPOCH_BYTES
KEY = b"k" * 32


@pytest.mark.parametrize("key", [None, KEY])
def test_round_trip(key: bytes | None) -> None:
    frames = p.pack(p.JOBS, (7, [0, "", {}, None], False), epoch=EPOCH, counter=5, key=key)
    msg = p.unpack(frames, key=key)
    assert (msg.kind, msg.epoch, msg.counter) == (p.JOBS, EPOCH, 5)
    assert msg.body == (7, [0, "", {}, None], False)


def test_wrong_key_is_rejected() -> None:
    frames = p.pack(p.ACK, ([], 1), epoch=EPOCH, key=KEY)
    with pytest.raises(p.ProtocolError, match="signature"):
        p.unpack(frames, key=b"x" * 32)


def test_unsigned_message_is_rejected_when_a_key_is_set() -> None:
    with pytest.raises(p.ProtocolError, match="signature"):
        p.unpack(p.pack(p.ACK, ([], 1), epoch=EPOCH), key=KEY)


def test_signed_message_is_rejected_without_a_key() -> None:
    with pytest.raises(p.ProtocolError, match="no shared secret"):
        p.unpack(p.pack(p.ACK, ([], 1), epoch=EPOCH, key=KEY))


def test_tampered_kind_header_or_body_is_rejected() -> None:
    frames = p.pack(p.ACK, ([], 1), epoch=EPOCH, counter=1, key=KEY)
    for i, forged in enumerate([p.READY, frames[1][:-1] + b"\x02", pickle.dumps(([], 2))]):
        bad = list(frames)
        bad[i] = forged
        with pytest.raises(p.ProtocolError):
            p.unpack(bad, key=KEY)


@pytest.mark.parametrize("frames", [
    [], [b"ACK"], [b"ACK", b"", b"", b"", b""],
    [b"NOPE", bytes(16), pickle.dumps(1), b""],
    [b"ACK", b"short", pickle.dumps(1), b""],
    [b"ACK", bytes(16), b"not a pickle", b""],
])
def test_malformed_frames_raise_protocol_error(frames: list[bytes]) -> None:
    with pytest.raises(p.ProtocolError):
        p.unpack(frames)


def test_oversized_body_is_rejected_before_decoding() -> None:
    frames = p.pack(p.JOBS, (1, ["x" * 1000], False), epoch=EPOCH)
    with pytest.raises(p.ProtocolError, match="exceeds"):
        p.unpack(frames, max_bytes=100)


def test_only_the_expected_direction_is_accepted() -> None:
    with pytest.raises(p.ProtocolError, match="unknown"):
        p.unpack(p.pack(p.JOBS, None, epoch=EPOCH), kinds=p.SLAVE_KINDS)


class _Bomb:
    def __reduce__(self):  # pragma: no cover - must never run
        raise AssertionError("unpickled an unauthenticated message")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_arbitrary_frames_never_unpickle_without_the_key(frames: list[bytes]) -> None:
    # With a key set, random frames can only fail the signature; pickle never sees them.
    try:
        p.unpack(frames, key=KEY)
    except p.ProtocolError:
        pass
    else:  # pragma: no cover
        raise AssertionError("random frames were accepted")
