"""The wire contract: every message round-trips, and whatever does not fit is a ProtocolError
raised before anything is unpickled."""

from __future__ import annotations

import json
import pickle
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmaster import protocol as p

EPOCH = b"E" * p.EPOCH_BYTES
KEY = b"k" * 32
ERR = p.JobError("ValueError", "bad", "Traceback ...")

MESSAGES: list[p.Message] = [
    p.Ready(1, 200, 10, "host", 4242, 1 << 20),
    p.Ready(1, 200, 10, "host", 4242, 1 << 20, 300_000),
    p.Ack((p.BatchDone(7), p.BatchDone(8, ((0, ERR), (3, ERR)))), 50),
    p.Heartbeat("host:1:abc", "nonce"),
    p.Heartbeat("host:1:abc", "nonce", frozenset({1, 2}), frozenset({2}), True, 12, 30),
    p.Bye((4, 5)),
    p.Gone("host:1:abc", -9),
    p.Gone("host:1:abc", None, (7, 3, ERR)),
    p.Welcome(3, "nonce"),
    p.Welcome(3, "nonce", 30_000),
    p.Jobs(9, [0, "", {}, None], True),
    p.Ping(),
    p.Stop(),
    p.Done(10, 2, None),
    p.Done(10, 2, "nonce"),
    p.Control("ctl:host:1:ab", "nonce", "status"),
    p.Control("ctl:host:1:ab", "nonce", "rate", 12.5),
    p.Answer("nonce", True, "paused"),
    p.Answer("nonce", False, "", {"state": "running", "slaves": [{"done": 3}]}),
]
ALL_KINDS = p.SLAVE_KINDS | p.MASTER_KINDS | p.CONTROL_KINDS


@pytest.mark.parametrize("key", [None, KEY], ids=["unsigned", "signed"])
@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: p.Message, key: bytes | None) -> None:
    frames = p.encode(message, epoch=EPOCH, counter=5, key=key)
    envelope = p.decode(frames, key=key, kinds=ALL_KINDS)
    assert (envelope.epoch, envelope.counter, envelope.message) == (EPOCH, 5, message)


def test_a_seal_counts_up_and_carries_its_epoch() -> None:
    seal = p.Seal(KEY, EPOCH)
    first, second = (p.decode(seal(p.Ping()), key=KEY, kinds=ALL_KINDS) for _ in range(2))
    assert (first.counter, second.counter) == (1, 2) and first.epoch == EPOCH


def test_wrong_key_is_rejected() -> None:
    frames = p.encode(p.Ping(), epoch=EPOCH, counter=1, key=KEY)
    with pytest.raises(p.ProtocolError, match="signature"):
        p.decode(frames, key=b"x" * 32, kinds=ALL_KINDS)


def test_unsigned_message_is_rejected_when_a_key_is_set() -> None:
    with pytest.raises(p.ProtocolError, match="signature"):
        p.decode(p.encode(p.Ping(), epoch=EPOCH, counter=1), key=KEY, kinds=ALL_KINDS)


def test_signed_message_is_rejected_without_a_key() -> None:
    with pytest.raises(p.ProtocolError, match="no shared secret"):
        p.decode(p.encode(p.Ping(), epoch=EPOCH, counter=1, key=KEY), key=None,
                 kinds=ALL_KINDS)


def test_tampered_kind_header_or_body_is_rejected() -> None:
    frames = p.encode(p.Ack((), 1), epoch=EPOCH, counter=1, key=KEY)
    for i, forged in enumerate([p.READY, frames[1][:-1] + b"\x02", b"[[],2]"]):
        bad = list(frames)
        bad[i] = forged
        with pytest.raises(p.ProtocolError):
            p.decode(bad, key=KEY, kinds=ALL_KINDS)


@pytest.mark.parametrize("frames", [
    [], [b"ACK"], [b"ACK", b"", b"", b"", b""],
    [b"NOPE", bytes(16), b"1", b""],
    [b"ACK", b"short", b"1", b""],
    [b"ACK", bytes(16), b"not json", b""],
    [b"JOBS", bytes(16), b"not a pickle", b""],
])
def test_malformed_frames_raise_protocol_error(frames: list[bytes]) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode(frames, key=None, kinds=ALL_KINDS)


def test_oversized_body_is_rejected_before_decoding() -> None:
    frames = p.encode(p.Jobs(1, ["x" * 1000]), epoch=EPOCH, counter=1)
    with pytest.raises(p.ProtocolError, match="exceeds"):
        p.decode(frames, key=None, kinds=ALL_KINDS, max_bytes=100)


def test_only_the_expected_direction_is_accepted() -> None:
    with pytest.raises(p.ProtocolError, match="unknown"):
        p.decode(p.encode(p.Jobs(1, [1]), epoch=EPOCH, counter=1), key=None,
                 kinds=p.SLAVE_KINDS)


@pytest.mark.parametrize(("kind", "body"), [
    (p.READY, [1, 2, 3, "h", 4, 5]),  # a field missing
    (p.READY, [1, 2, 3, "h", 4, 5, 6, 7]),  # one too many
    (p.READY, [1, float("inf"), 3, "h", 4, 5, 6]),  # JSON allows it, a count must not
    (p.READY, [1, -1, 3, "h", 4, 5, 6]),
    (p.READY, [True, 2, 3, "h", 4, 5, 6]),  # bool is an int to isinstance()
    (p.READY, [1, 2, 3, 17, 4, 5, 6]),  # host not text
    (p.READY, [1, 2**70, 3, "h", 4, 5, 6]),
    (p.READY, [1, 2, 3, "h", 4, 5, 0.5]),  # patience in whole milliseconds
    (p.ACK, {"done": [], "window": 1}),
    (p.ACK, [[[1, [[0, ["E", "m"]]]]], 1]),  # an error of two fields
    (p.ACK, [[[1, [[0, {"type": "E"}]]]], 1]),
    (p.ACK, [[[1, [[-1, ["E", "m", "t"]]]]], 1]),
    (p.ACK, [[[1, 0]], 1]),  # failures not a list
    (p.ACK, [[1], 1]),
    (p.HEARTBEAT, ["s", "n", [1, "2"], None, False, 0, 0]),
    (p.HEARTBEAT, ["s", "n", 5, None, False, 0, 0]),
    (p.HEARTBEAT, [["s"], "n", None, None, False, 0, 0]),
    (p.HEARTBEAT, ["s", "n", None, None, 0, 0, 0]),  # the flag not a bool
    (p.HEARTBEAT, ["s", "n", None, None, False, -1, 0]),
    (p.HEARTBEAT, ["s", "n", None, None, False, 0]),
    (p.GONE, ["s", 1.5, None]),
    (p.GONE, ["s", 300, None]),
    (p.GONE, ["s", None, [1, 2]]),
    (p.GONE, ["s", None, [1, -2, ["E", "m", "t"]]]),
    (p.BYE, [1, 2.5]),
    (p.BYE, {"a": 1}),
    (p.WELCOME, [1, 2, 3]),
    (p.WELCOME, [1, "n"]),  # a field missing
    (p.WELCOME, [1, "n", -1]),
    (p.DONE, [1, 2, 3]),
    (p.JOBS, (1, [1])),
    (p.JOBS, (1, [], False)),  # no jobs
    (p.JOBS, ("1", [1], False)),
    (p.JOBS, (1, (1, 2), False)),  # a tuple is not the list a master sends
    (p.JOBS, (1, [1], 1)),
    (p.JOBS, [1, [1], False]),
])
def test_each_field_is_checked_for_type_and_range(kind: bytes, body: Any) -> None:
    frames = p.pack(kind, body, epoch=EPOCH, counter=1, key=KEY)
    with pytest.raises(p.ProtocolError):
        p.decode(frames, key=KEY, kinds=ALL_KINDS)


def test_long_texts_are_cut_to_their_bound() -> None:
    ready = p.Ready(1, 1, 1, "h" * 10_000, 1)
    decoded = p.decode(p.encode(ready, epoch=EPOCH, counter=1), key=None, kinds=ALL_KINDS)
    assert isinstance(decoded.message, p.Ready) and len(decoded.message.host) == 200


def test_an_exception_with_a_broken_str_becomes_data() -> None:
    class OddError(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    try:
        raise OddError
    except OddError as e:
        error = p.JobError.of(e)
    assert error.type == "OddError" and "unprintable" in error.message
    assert "Traceback" in error.traceback


# -- fuzzing: well-formed, signed envelopes around mutated contents --------------------------

json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**64),
                        st.floats(allow_nan=True), st.text(max_size=8))
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                           max_leaves=12)
kinds = st.sampled_from(sorted(ALL_KINDS - {p.JOBS}))


@settings(max_examples=400, deadline=None)
@given(kind=kinds, body=json_values)
def test_signed_messages_of_any_shape_decode_to_checked_fields_or_are_refused(
        kind: bytes, body: Any) -> None:
    """A peer holding the secret may send any JSON at all: decode yields a message whose
    fields have their declared types, or raises ProtocolError; nothing else escapes."""
    frames = p.pack(kind, body, epoch=EPOCH, counter=1, key=KEY)
    try:
        envelope = p.decode(frames, key=KEY, kinds=ALL_KINDS)
    except p.ProtocolError:
        return
    _assert_well_typed(envelope.message)


def _assert_well_typed(msg: p.Message) -> None:
    for name, value in ((f, getattr(msg, f)) for f in msg.__dataclass_fields__ if f != "KIND"):
        if isinstance(value, bool):
            # Only where a flag is declared (Heartbeat.beat, Jobs.isolate, Answer.ok): never
            # a count or id, which a bool would pass for.
            assert msg.__dataclass_fields__[name].type in ("bool", bool), (name, value)
        elif isinstance(value, int):
            assert type(value) is int and 0 <= value <= p.MOST_COUNT, (name, value)
        elif isinstance(value, frozenset):
            assert all(type(v) is int and v >= 0 for v in value)
        elif isinstance(value, tuple):
            for item in value:
                if isinstance(item, p.BatchDone):
                    assert type(item.bid) is int
                    assert all(type(i) is int and isinstance(e, p.JobError)
                               for i, e in item.failures)
                else:
                    assert type(item) is int
        else:
            assert value is None or isinstance(value, str), (name, value)


def _explode() -> None:  # pragma: no cover - must never run
    raise AssertionError("unpickled an unauthenticated message")


class _Bomb:
    def __reduce__(self) -> Any:
        return (_explode, ())


BOMB = pickle.dumps(_Bomb())
GOOD_JOBS = p.encode(p.Jobs(1, [1, 2], False), epoch=EPOCH, counter=3, key=KEY)


@settings(max_examples=400, deadline=None)
@given(frame=st.integers(0, 3), offset=st.integers(0, 10_000), xor=st.integers(1, 255),
       bomb=st.booleans())
def test_a_mutated_signed_jobs_message_is_never_unpickled(frame: int, offset: int, xor: int,
                                                         bomb: bool) -> None:
    """Take a correctly signed JOBS message (or one whose body is a pickle bomb, signed with
    the right key for the original body) and flip bits anywhere in it: the MAC must fail
    before pickle sees the body."""
    frames = list(GOOD_JOBS)
    if bomb:
        frames[p.BODY_FRAME] = BOMB
    else:
        data = bytearray(frames[frame])
        if not data:
            return
        data[offset % len(data)] ^= xor
        frames[frame] = bytes(data)
    with (mock.patch.object(p.pickle, "loads", side_effect=AssertionError("unpickled")) as loads,
          pytest.raises(p.ProtocolError)):
        p.decode(frames, key=KEY, kinds=ALL_KINDS)
    assert loads.call_count == 0


def test_the_untouched_message_does_decode() -> None:
    """The fuzz test above would pass vacuously if the original were refused too."""
    msg = p.decode(GOOD_JOBS, key=KEY, kinds=ALL_KINDS).message
    assert msg == p.Jobs(1, [1, 2], False)


def test_json_bodies_are_compact() -> None:
    frames = p.encode(p.Ack((), 3), epoch=EPOCH, counter=1)
    assert json.loads(frames[p.BODY_FRAME]) == [[], 3]


LONE = "\ud800"  # JSON may carry it ("\\ud800"); no UTF-8 encoding takes it
TEXT_FIELDS = [
    (p.READY, [1, 2, 3, LONE, 4, 5, 6]),
    (p.ACK, [[[1, [[0, [LONE, "m", "t"]]]]], 1]),
    (p.ACK, [[[1, [[0, ["E", LONE, "t"]]]]], 1]),
    (p.ACK, [[[1, [[0, ["E", "m", LONE]]]]], 1]),
    (p.HEARTBEAT, [LONE, "n", None, None, False, 0, 0]),
    (p.HEARTBEAT, ["s", LONE, None, None, False, 0, 0]),
    (p.WELCOME, [1, LONE, 0]),
    (p.DONE, [1, 2, LONE]),
]


@pytest.mark.parametrize(("kind", "body"), TEXT_FIELDS)
def test_text_that_cannot_be_encoded_is_refused(kind: bytes, body: Any) -> None:
    """A lone surrogate in a slave's name once killed the master: the registry encodes names,
    and nothing guarded that (nothing should have to)."""
    frames = p.pack(kind, body, epoch=EPOCH, counter=1)
    assert LONE.encode("unicode_escape") in frames[p.BODY_FRAME]  # it did travel
    with pytest.raises(p.ProtocolError, match="surrogate"):
        p.decode(frames, key=None, kinds=ALL_KINDS)


def test_a_surrogate_escaped_host_name_is_text() -> None:
    # How a slave on a host whose name is not UTF-8 names itself: it must still decode.
    name = b"h\xffst:1:abc".decode("utf-8", "surrogateescape")
    frames = p.encode(p.Heartbeat(name, "n"), epoch=EPOCH, counter=1)
    assert p.decode(frames, key=None, kinds=ALL_KINDS).message == p.Heartbeat(name, "n")


@pytest.mark.parametrize("body, why", [
    (["ctl:h:1:a", "n", "explode", None], "unknown command"),
    (["ctl:h:1:a", "n", "rate", -1], "positive number"),
    (["ctl:h:1:a", "n", "rate", True], "positive number"),
    (["ctl:h:1:a", "n", "rate", 1e300], "positive number"),
    (["ctl:h:1:a", "n", "rate", "5"], "positive number"),
    (["ctl:h:1:a", "n", "status"], "4 fields"),
])
def test_a_control_request_out_of_shape_is_a_protocol_error(body: Any, why: str) -> None:
    frames = p.pack(p.CONTROL, body, epoch=EPOCH, counter=1, key=KEY)
    with pytest.raises(p.ProtocolError, match=why):
        p.decode(frames, key=KEY, kinds=p.SLAVE_KINDS)


def test_a_non_finite_rate_never_decodes() -> None:
    # JSON as Python writes it carries NaN and Infinity; neither is a rate.
    for value in ("NaN", "Infinity"):
        payload = f'["ctl:h:1:a","n","rate",{value}]'.encode()
        frames = p.pack(p.CONTROL, None, epoch=EPOCH, counter=1)
        frames[p.BODY_FRAME] = payload
        with pytest.raises(p.ProtocolError, match="positive number"):
            p.decode(frames, key=None, kinds=p.SLAVE_KINDS)
