"""ZeroMQ / bsread URI options: refused with a clear rule when the entry is parsed (Init), applied to the socket."""
from __future__ import annotations

import socket

import pytest
import tango
import zmq
from tango.test_context import DeviceTestContext

from tango_dqm.devices.monitor import DataQualityMonitor
from tango_dqm.engine import Engine, EngineConfig
from tango_dqm.sources import SourceError, open_source
from tests.helpers import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("query, match", [
    ("hwm=-1", r"option hwm must be an integer from 1 to 100000, got '-1'"),
    ("hwm=0", r"option hwm must be an integer from 1 to 100000, got '0'"),
    ("hwm=abc", r"option hwm must be an integer from 1 to 100000, got 'abc'"),
    ("hwm=1.5", r"option hwm must be an integer from 1 to 100000"),
    ("hwm=99999999999", r"option hwm must be an integer from 1 to 100000"),
    ("hwm=", r"option hwm must be an integer"),
    ("hwn=4", r"unknown option hwn; zmq:// knows bind, hwm, mode"),
    ("hwm=4&hwm=8", r"option hwm given more than once"),
    ("mode=dealer", r"option mode must be pull or sub"),
    ("bind=maybe", r"bind must be a boolean"),
])
def test_bad_zmq_option_is_refused_at_parse_naming_option_and_rule(query, match):
    with pytest.raises(SourceError, match=match):
        open_source(f"det=zmq://127.0.0.1:5555?{query}")


@pytest.mark.parametrize("query, match", [
    ("channel=img&hwm=-1", r"option hwm must be an integer from 1 to 100000, got '-1'"),
    ("channel=img&queue=4", r"unknown option queue; bsread:// knows bind, channel, frames, hwm"),
    ("channel=img&idle=-2", r"option idle must be a number >= 0.0"),
    ("channel=img&idle=nan", r"option idle must be a number >= 0.0"),
    ("channel=img&frames=-3", r"option frames must be an integer from 0 to"),
    ("channel=img&start=x", r"option start must be an integer from 0 to"),
])
def test_bad_bsread_option_is_refused_at_parse(query, match):
    with pytest.raises(SourceError, match=match):
        open_source(f"bsread://127.0.0.1:5555?{query}")


@pytest.mark.parametrize("entry, match", [
    ("zmq://[::1:5555", "not a valid URI: Invalid IPv6 URL"),
    ("zmq://127.0.0.1:0", r"needs host and port \(1-65535\)"),
    ("zmq://127.0.0.1:70000", "bad port"),
    ("zmq://127.0.0.1:5555?hwm=1_000", "option hwm must be an integer"),
    ("zmq://127.0.0.1:5555?hwm=%D9%A3", "option hwm must be an integer"),  # a non-ASCII digit
])
def test_malformed_entry_is_a_source_error(entry, match):
    with pytest.raises(SourceError, match=match):
        open_source(entry)


def test_engine_refuses_bad_option_at_init_without_opening_a_socket():
    """The engine probes its sources when built (the device's Init): a bind=1 port stays free."""
    port = free_port()
    with pytest.raises(SourceError, match="option hwm must be an integer from 1 to 100000, got '-1'"):
        Engine(EngineConfig([f"det=zmq://127.0.0.1:{port}?bind=1&hwm=-1"]))
    with socket.socket() as s:  # nothing bound it
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize("uri, expected", [("zmq://127.0.0.1:{port}", 16), ("zmq://127.0.0.1:{port}?hwm=3", 3),
                                           ("zmq://127.0.0.1:{port}?mode=sub&hwm=5&bind=1", 5)])
def test_hwm_is_the_socket_receive_high_water_mark(uri, expected):
    src = open_source(uri.format(port=free_port()))
    src.open()
    try:
        assert src.buffer_limit == expected
        assert src._sock.getsockopt(zmq.RCVHWM) == expected
    finally:
        src.close()


def test_bsread_hwm_is_applied():
    src = open_source(f"bsread://127.0.0.1:{free_port()}?channel=img&hwm=4")
    src.open()
    try:
        assert src.buffer_limit == 4
        assert src._src.stream.socket.getsockopt(zmq.RCVHWM) == 4
    finally:
        src.close()
    assert open_source(f"bsread://127.0.0.1:{free_port()}?channel=img").buffer_limit == 16


def test_device_init_with_bad_hwm_is_fault_with_the_rule_and_start_refused():
    """Through a real device server: Init reports the option and its rule; Start never reaches ZeroMQ."""
    port = free_port()
    props = {"Sources": [f"det=zmq://127.0.0.1:{port}?bind=1&hwm=-1"], "Analyses": ["roi"]}
    with DeviceTestContext(DataQualityMonitor, properties=props, process=True, host="127.0.0.1", timeout=60) as p:
        assert p.state() == tango.DevState.FAULT
        status = p.status()
        assert "option hwm must be an integer from 1 to 100000, got '-1'" in status, status
        assert "ZMQError" not in status
        with pytest.raises(tango.DevFailed) as err:
            p.Start()
        assert "ZMQError" not in str(err.value)
        assert p.state() == tango.DevState.FAULT
