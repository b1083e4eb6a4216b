"""Property-based fuzzing of bsread messages through a real PUSH socket into a real ``bsread://`` source.

Main header fields, channel metadata (type, shape, compression, encoding), values and part counts
are drawn freely; after each fuzzed batch a valid sentinel message follows. Properties: reading
never raises, every fuzzed message gives exactly one item (a Frame or a BadInput with a specific
kind, never the catch-all ``bad_message``), and the sentinel arrives intact.
"""
from __future__ import annotations

import hashlib
import json
import struct
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tango_dqm.frames import BadInput, Frame
from tests.helpers import free_port
from tests.unit.test_source_bsread import make_sender, opened

pytestmark = pytest.mark.timeout(120)

IMAGE = np.arange(24 * 16, dtype=np.uint16).reshape(16, 24)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                         st.text(max_size=6))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=5)
types = st.one_of(st.sampled_from(["uint16", "uint8", "float64", "int32", "string", "bool", "UINT16"]), json_values)
shapes = st.one_of(st.lists(st.integers(-2, 40), min_size=0, max_size=3), st.just([24, 16]),
                   st.just([2**32, 2**32]), json_values)
compressions = st.one_of(st.sampled_from([None, "none", "bitshuffle_lz4", "lz4", "zstd"]), json_values)


def channel(name: str, draw) -> dict:
    ch = {"name": name}
    for key, strategy in (("type", types), ("shape", shapes), ("compression", compressions),
                          ("encoding", st.sampled_from(["little", "big", 7]))):
        if draw(st.booleans()):
            ch[key] = draw(strategy)
    return ch


@st.composite
def messages(draw) -> list[list[bytes]]:
    out = []
    for _ in range(draw(st.integers(1, 6))):
        channels = [channel("img", draw)] + ([channel("x", draw)] if draw(st.booleans()) else [])
        data_header = json.dumps({"htype": "bsr_d-1.1", "channels": channels}).encode()
        main = {"htype": "bsr_m-1.1", "pulse_id": draw(st.one_of(st.integers(0, 2**64), json_values)),
                "hash": draw(st.one_of(st.just(hashlib.md5(data_header).hexdigest()), st.text(max_size=4)))}
        if draw(st.booleans()):
            main["global_timestamp"] = draw(json_values)
        parts = [json.dumps(main).encode(), data_header]
        for _ in channels:
            parts += [draw(st.one_of(st.binary(max_size=64), st.just(IMAGE.tobytes()))), struct.pack("<qq", 1, 2)]
        out.append(parts[:draw(st.integers(1, len(parts)))])  # possibly truncated part list
    return out


def sentinel(pulse_id: int) -> list[bytes]:
    dh = json.dumps({"htype": "bsr_d-1.1", "channels": [{"name": "img", "type": "uint16", "shape": [24, 16]}]})
    main = {"htype": "bsr_m-1.1", "pulse_id": pulse_id, "hash": "sentinel-" + str(pulse_id)}
    return [json.dumps(main).encode(), dh.encode(), IMAGE.tobytes(), struct.pack("<qq", 1, 2)]


def test_fuzzed_bsread_messages_each_give_one_item_and_never_raise():
    port = free_port()
    sender = make_sender(port)
    src = opened(f"bsread://127.0.0.1:{port}?channel=img")
    stop = threading.Event()
    items = src.items(stop)
    counter = iter(range(10**12, 10**13))
    try:
        @settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
        @given(messages())
        def check(batch):
            end = next(counter)
            for parts in batch + [sentinel(end)]:
                sender.stream.socket.send_multipart(parts)
            got = []
            deadline = time.monotonic() + 10
            for item in items:
                assert time.monotonic() < deadline, got
                if item is None:
                    continue
                assert isinstance(item, (Frame, BadInput)), item
                if isinstance(item, BadInput):  # classified: the catch-all "bad_message" means a check is missing
                    assert item.kind != "bad_message" and item.stream == "bsread", item
                if isinstance(item, Frame) and item.frame_id == end:
                    np.testing.assert_array_equal(item.data, IMAGE)
                    break
                got.append(item)
            assert len(got) == len(batch), [getattr(g, "kind", g) for g in got]

        check()
    finally:
        stop.set()
        items.close()
        src.close()
        sender.close()
