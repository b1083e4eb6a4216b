"""Property-based fuzzing of STINS messages through the real socket path (hypothesis).

Each example starts a real engine on a ``zmq://`` source, and a real PUSH socket on 127.0.0.1
sends a fuzzed sequence: stray series_ends, malformed messages (one defect each, drawn over
the header fields, frame id, type, shape, timestamp, compression, payload and part count)
interleaved with valid frames, then a last valid frame and a series_end. Properties: the engine
ends the scan in CLOSE (never FAULT), every valid frame is analysed with its content, and every
malformed message is counted in badEvents under the kind its defect calls for.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from collections import Counter

import lz4.block
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tango_dqm import compression
from tango_dqm.engine import EngineState
from tango_dqm.frames import INT64_MAX
from tango_dqm.sources.zmq_stins import DTYPES
from tests.unit.test_malformed_stins import run_stins_scan

pytestmark = pytest.mark.timeout(120)

SHAPE = (8, 12)
GOOD = np.arange(math.prod(SHAPE), dtype=np.uint16).reshape(SHAPE)
BAD_ID_BASE = 2**40  # malformed images carry ids far from the valid ones

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                         st.text(max_size=6))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
not_a_count = st.one_of(st.integers(max_value=-1), st.integers(min_value=INT64_MAX + 1, max_value=2**80),
                        st.booleans(), st.none(), st.floats(allow_nan=True), st.text(max_size=6),
                        st.lists(json_scalars, max_size=3))
bad_shapes = st.one_of(
    st.lists(st.integers(1, 64), min_size=0, max_size=0),
    st.lists(st.integers(1, 4), min_size=4, max_size=6),
    st.lists(st.integers(-2**40, 0), min_size=1, max_size=3),
    st.lists(st.one_of(st.floats(), st.text(max_size=3), st.booleans(), st.none()), min_size=1, max_size=3),
    st.text(max_size=8), st.integers(), st.none(), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
huge_shapes = st.lists(st.integers(2**11, 2**70), min_size=2, max_size=3).filter(
    lambda s: math.prod(s) * 2 > 2 * 1024**3)
bad_timestamps = st.one_of(st.none(), st.booleans(), st.text(max_size=6), st.lists(json_scalars, max_size=2),
                           st.sampled_from([math.nan, math.inf, -math.inf]), st.integers(min_value=10**309),
                           st.integers(max_value=-10**309))
bad_compressions = st.one_of(st.text(max_size=8).filter(lambda c: c.lower() not in compression.ALIASES),
                             st.integers(), st.booleans(), st.lists(st.text(max_size=3), max_size=2))


def image(frame_id, **override) -> dict:
    msg = {"htype": "image", "frame": frame_id, "shape": list(SHAPE), "type": "uint16", "compression": "none"}
    msg.update(override)
    return msg


def fails_to_decode(payload: bytes, name: str) -> bool:
    try:
        compression.decode(payload, name, SHAPE, np.uint16)
    except compression.CompressionError:
        return True
    return False


@st.composite
def malformed(draw, index: int) -> tuple[list[bytes], str | frozenset[str]]:
    """One message with one defect, and the kind (or kinds) it must be counted as."""
    fid = BAD_ID_BASE + index
    data = GOOD.tobytes()
    defect = draw(st.sampled_from(["frame", "type", "unknown_type", "shape", "huge_shape", "timestamp",
                                   "compression", "parts", "payload", "compressed_payload", "htype", "header",
                                   "json"]))
    if defect == "frame":
        return [json.dumps(image(draw(not_a_count))).encode(), data], "bad_frame_id"
    if defect == "type":
        value = draw(st.one_of(st.none(), st.booleans(), st.integers(), st.lists(st.text(max_size=3), max_size=2),
                               st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)))
        return [json.dumps(image(fid, type=value)).encode(), data], "bad_type"
    if defect == "unknown_type":
        value = draw(st.text(max_size=10).filter(lambda t: t not in DTYPES))
        return [json.dumps(image(fid, type=value)).encode(), data], "unknown_type"
    if defect == "shape":
        return [json.dumps(image(fid, shape=draw(bad_shapes))).encode(), data], "bad_shape"
    if defect == "huge_shape":
        comp = draw(st.sampled_from(["none", "bslz4", "lz4"]))
        return [json.dumps(image(fid, shape=draw(huge_shapes), compression=comp)).encode(), data], "frame_too_large"
    if defect == "timestamp":
        return [json.dumps(image(fid, timestamp=draw(bad_timestamps))).encode(), data], "bad_timestamp"
    if defect == "compression":
        return [json.dumps(image(fid, compression=draw(bad_compressions))).encode(), data], "unsupported_compression"
    if defect == "parts":
        n = draw(st.sampled_from([0, 2, 3, 5]))
        return [json.dumps(image(fid)).encode()] + [data] * n, "missing_part" if n == 0 else "extra_part"
    if defect == "payload":  # uncompressed, wrong length (truncated or padded)
        size = draw(st.integers(0, 2 * len(data)).filter(lambda n: n != len(data)))
        return [json.dumps(image(fid)).encode(), (data * 2)[:size]], "size_mismatch"
    if defect == "compressed_payload":  # random, truncated, or with a forged size header
        name = draw(st.sampled_from(["bslz4", "lz4"]))
        good = (compression.encode_bslz4(GOOD) if name == "bslz4"
                else lz4.block.compress(data, store_size=False))
        how = draw(st.sampled_from(["random", "truncated", "forged_size", "flipped"]))
        if how == "random":
            payload = draw(st.binary(max_size=300))
        elif how == "truncated":
            payload = good[:draw(st.integers(0, len(good) - 1))]
        elif how == "forged_size" and name == "bslz4":
            payload = struct.pack(">QI", draw(st.integers(0, 2**64 - 1)), 8192) + good[12:]
        else:
            pos = draw(st.integers(0, len(good) - 1))
            payload = good[:pos] + bytes([good[pos] ^ draw(st.integers(1, 255))]) + good[pos + 1:]
        if not fails_to_decode(payload, name):  # a flip may leave it valid: then it is not a defect
            payload = payload[:-1] if payload else b""
        if not fails_to_decode(payload, name):
            payload = b""
        return ([json.dumps(image(fid, compression=name)).encode(), payload],
                frozenset({"corrupt_compressed", "bad_decoded_size"}))
    if defect == "htype":
        value = draw(st.one_of(st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2),
                               st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
        return [json.dumps({"htype": value, "frame": fid}).encode(), data], "bad_htype"
    if defect == "header":
        key = draw(st.sampled_from(["nimages", "frames", "series"]))
        value = draw(not_a_count) if key != "series" else draw(st.one_of(
            st.lists(json_scalars, max_size=3), st.dictionaries(st.text(max_size=3), json_values, max_size=2),
            st.booleans(), st.floats()))
        if key != "series" and value is None:
            value = -1  # null means "not announced", which is valid
        return [json.dumps({"htype": "header", "series": "x", key: value}).encode()], "bad_header"
    # json: bytes that are no JSON object (a UTF-8-invalid prefix, or JSON of another type)
    raw = draw(st.one_of(st.binary(max_size=40).map(lambda b: b"\xff\xff" + b),
                         json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode())))
    return [raw, data], "bad_json"


@st.composite
def sequences(draw):
    """(messages, expected kinds, valid frame ids in order)."""
    messages: list[list[bytes]] = []
    kinds: list[str | frozenset[str]] = []
    for _ in range(draw(st.integers(0, 2))):  # a series_end before anything started the series
        messages.append([json.dumps({"htype": "series_end"}).encode()])
        kinds.append("series_end_without_header")
    valid: list[int] = []
    for i in range(draw(st.integers(1, 12))):
        if draw(st.booleans()):
            messages.append([json.dumps(image(len(valid), timestamp=1.5e9 + len(valid))).encode(),
                             (GOOD + len(valid)).tobytes()])
            valid.append(len(valid))
        else:
            parts, kind = draw(malformed(i))
            messages.append(parts)
            kinds.append(kind)
    messages.append([json.dumps(image(len(valid))).encode(), (GOOD + len(valid)).tobytes()])
    valid.append(len(valid))
    messages.append([json.dumps({"htype": "series_end"}).encode()])
    return messages, kinds, valid


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequences())
def test_fuzzed_stins_sequence_counts_every_bad_message_and_analyses_every_valid_frame(seq):
    messages, kinds, valid = seq
    snap = run_stins_scan(messages)
    assert snap.state is EngineState.CLOSE, snap.status  # never FAULT
    assert [fid for fid, _ in snap.summary["recorded"]] == valid
    digests = [hashlib.sha1((GOOD + i).tobytes()).hexdigest() for i in valid]
    assert [d for _, d in snap.summary["recorded"]] == digests
    assert snap.counters.completed == len(valid)
    assert snap.counters.bad == len(kinds)
    got = Counter(snap.bad_kinds)
    exact = Counter(k for k in kinds if isinstance(k, str))
    for kind, n in exact.items():
        assert got[kind] >= n, (kind, snap.bad_kinds)
    either = [k for k in kinds if not isinstance(k, str)]
    rest = got - exact
    assert sum(rest.values()) == len(either) and all(k in {"corrupt_compressed", "bad_decoded_size"}
                                                      for k in rest), (snap.bad_kinds, kinds)


field_values = st.one_of(json_values, st.integers(0, 40), st.sampled_from(sorted(DTYPES)),
                         st.sampled_from(["none", "bslz4", "lz4", "NONE"]),
                         st.lists(st.integers(1, 6), min_size=1, max_size=3))


@st.composite
def free_form(draw):
    """Image messages whose every field (and the part count and payload) is drawn freely."""
    messages = []
    for _ in range(draw(st.integers(1, 10))):
        msg = draw(st.dictionaries(st.sampled_from(["frame", "shape", "type", "compression", "timestamp", "x"]),
                                   field_values, max_size=6))
        msg["htype"] = "image"
        parts = [json.dumps(msg).encode()] + draw(st.lists(st.binary(max_size=80), max_size=3))
        messages.append(parts)
    return messages


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(free_form())
def test_free_form_image_messages_never_fault_and_each_is_counted_once(messages):
    """Whatever the fields hold, each message is analysed or counted bad, exactly once; never FAULT."""
    last = [json.dumps(image(2**50)).encode(), GOOD.tobytes()]  # a valid frame starts the series ...
    snap = run_stins_scan(messages + [last, [json.dumps({"htype": "series_end"}).encode()]])  # ... and it ends
    assert snap.state is EngineState.CLOSE, snap.status
    assert snap.counters.completed + snap.counters.bad == len(messages) + 1
    assert snap.summary["recorded"][-1] == (2**50, hashlib.sha1(GOOD.tobytes()).hexdigest())
