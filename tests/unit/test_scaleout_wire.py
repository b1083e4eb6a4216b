"""The scale-out wire format: bit-exact round trips of every built-in accumulator, and refusals."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tango_dqm import RunningStats, ScalarSeries
from tango_dqm.engine import EngineConfig
from tango_dqm.params import ParameterStore
from tango_dqm.frames import Frame
from tango_dqm.plugin import Runner, instantiate, load_analysis
from tango_dqm.scaleout.message import WorkerMessage, pack, unpack
from tango_dqm.scaleout.wire import MAX_DEPTH, Registry, WireError, decode, encode
from tango_dqm.simulation import FrameGenerator, Scene

BUILT_IN = ["roi", "profile", "pixels", "histogram", "gain"]


def same(a, b) -> bool:
    """Bit-for-bit equality of two decoded values, types included."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        return math.copysign(1, a) == math.copysign(1, b) and (a == b or (a != a and b != b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if hasattr(a, "__slots__") or hasattr(a, "__dataclass_fields__"):
        names = getattr(a, "__slots__", None) or list(a.__dataclass_fields__)
        return all(same(getattr(a, n, None), getattr(b, n, None)) for n in names)
    return a == b


def roundtrip(value, registry):
    tree, buffers = encode(value, registry)
    return decode(tree, [bytes(b) for b in buffers], registry)


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_accumulator_round_trips_bit_exact(name):
    analysis = instantiate(load_analysis(name))
    runner = Runner(analysis)
    params = ParameterStore(analysis.parameters).snapshot_with_version()[0]
    gen = FrameGenerator(Scene(shape=(48, 64), seed=5, zingers=2.0))
    acc = analysis.new_accumulator()
    for i in range(12):
        acc = analysis.accumulate(acc, runner.process(Frame(gen.render(i), i), params), params)
    registry = Registry.for_analyses([analysis])
    back = roundtrip(acc, registry)
    assert same(acc, back)
    assert back is not acc
    # the decoded accumulator works on: merging and finishing give the very same values
    assert same(analysis.finish(analysis.merge(back, back)), analysis.finish(analysis.merge(acc, acc)))


def test_plain_values_keep_their_exact_types_and_bits():
    registry = Registry()
    value = {"i": 2**70, "f": 0.1, "nan": math.nan, "inf": -math.inf, "neg0": -0.0, "s": "ü", "b": True, "n": None,
             (1, 2.5): [1, (2, 3)], 3.0: np.float32(1.5), "u": np.uint16(7),
             "a": np.arange(6, dtype=">i4").reshape(2, 3), "e": np.zeros((0, 4)),
             "rs": RunningStats(3, 1.25, 0.5, -1.0, 2.0), "ss": ScalarSeries({"x": RunningStats()})}
    assert same(roundtrip(value, registry), value)


class NotRegistered:
    __slots__ = ("x",)


def test_unregistered_classes_are_refused_both_ways():
    registry = Registry()
    obj = NotRegistered()
    obj.x = 1
    with pytest.raises(WireError, match="wire_types"):
        encode(obj, registry)
    # a message naming a class that is not registered (e.g. os.system) never resolves it
    for name in ("os:system", "builtins:eval", f"{__name__}:NotRegistered"):
        tree = json.dumps({"o": name, "v": {}}).encode()
        with pytest.raises(WireError, match="not registered"):
            decode(tree, [], registry)
    with pytest.raises(WireError, match="cannot be sent"):
        encode(np.array([object()]), registry)


def test_registered_objects_take_only_their_declared_fields():
    registry = Registry()
    tree = json.dumps({"o": "tango_dqm.accumulators:RunningStats", "v": {"n": {"i": "1"}, "__class__": None}}).encode()
    with pytest.raises(WireError, match="fields"):
        decode(tree, [], registry)


@pytest.mark.parametrize("tree, buffers, rule", [
    ({"a": 0, "dtype": "<f8", "shape": [1000000, 1000000]}, [b""], "larger than"),
    ({"a": 0, "dtype": "<f8", "shape": [3]}, [b"\0" * 16], "needs 24"),
    ({"a": 1, "dtype": "<f8", "shape": [1]}, [b"\0" * 8], "buffer the message does not have"),
    ({"a": 0, "dtype": "|O", "shape": [1]}, [b"\0" * 8], "cannot be sent"),
    ({"a": 0, "dtype": "<f8", "shape": [-1]}, [b""], "shape"),
    ({"l": [{"a": 0, "dtype": "<u1", "shape": [1]}, {"a": 0, "dtype": "<u1", "shape": [1]}]}, [b"x"], "same buffer"),
    ({"l": []}, [b"x"], "no array names"),
    ({"s": "<f8", "hex": "00"}, [], "bad scalar"),
    ({"i": "1e5"}, [], "bad integer"),
    ({"zz": 1}, [], "unknown node"),
])
def test_malformed_trees_are_refused_before_allocation(tree, buffers, rule):
    with pytest.raises(WireError, match=rule):
        decode(json.dumps(tree).encode(), buffers, Registry())


def test_nesting_is_bounded():
    deep: object = 1
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(WireError, match="deeper"):
        encode(deep, Registry())
    text = '{"l":[' * 5000 + ']}' * 5000
    with pytest.raises(WireError):
        decode(text.encode(), [], Registry())


def test_worker_message_round_trip_and_refusals():
    registry = Registry()
    msg = WorkerMessage("dqm/w/1", "scan_1", 3, "RUNNING", {"completed": 2, "dropped": 0, "bad": 1,
                                                           "duplicate": 0, "out_of_order": 0},
                        announced=600, series_ended=False, analyses=["roi"], status="RUNNING ...",
                        batch=[(4, 1.5, {"signal_sum": 10.0, "profile_x": np.arange(3.0)}), (7, 2.0, {})],
                        accs=[ScalarSeries({"signal_sum": RunningStats(2, 5.0, 1.0, 4.0, 6.0)})])
    parts = [bytes(p) for p in pack(msg, registry)]
    got = unpack(parts, registry)
    assert (got.worker, got.scan, got.seq, got.announced, got.analyses) == ("dqm/w/1", "scan_1", 3, 600, ["roi"])
    assert [f for f, _, _ in got.batch] == [4, 7]
    assert same(got.batch[0][2], msg.batch[0][2])
    assert got.accs is None  # kept raw until needed
    assert same(got.accumulators(registry), msg.accs)
    with pytest.raises(WireError, match="buffers"):
        unpack(parts[:-1], registry)
    env = json.loads(parts[0])
    env["counters"]["bad"] = -1
    with pytest.raises(WireError, match="integer"):
        unpack([json.dumps(env).encode(), *parts[1:]], registry)
    with pytest.raises(WireError, match="JSON"):
        unpack([b"\xff", *parts[1:]], registry)


def test_engine_config_default_is_a_stand_alone_monitor():
    assert EngineConfig(["sim://"]).reducer == ""
