"""Bad configuration and bad plugins: FAULT with a Status naming the fix, never a dead server,
never half an attribute set; the plugin example of docs/plugins.md works in a real device."""
from __future__ import annotations

import re
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tango
from tango.test_context import DeviceTestContext

from tango_dqm.devices.monitor import DataQualityMonitor

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
SIM = "sim://?frames=20&shape=32x32"
BASE = {"State", "Status", "totalEvents", "verdict", "runSummary"}


def context(**props):
    properties = {"Sources": [SIM], "Analyses": ["roi"], **props}
    return DeviceTestContext(DataQualityMonitor, properties=properties, process=True, host="127.0.0.1", timeout=60)


def assert_fault(p, *fragments: str) -> None:
    """FAULT iff Status says what failed and how to recover; no analysis attribute left."""
    assert p.state() == tango.DevState.FAULT
    status = p.status()
    assert status.startswith("FAULT: configuration error: ")
    assert "run Init" in status
    for fragment in fragments:
        assert fragment in status, status
    names = set(p.get_attribute_list())
    assert names >= BASE
    assert not names & {"roi_signal", "signal_sum", "threshold_pixels"}, names
    with pytest.raises(tango.DevFailed, match="configuration error"):
        p.Start()


def wait_for(p, state, timeout=30.0):
    deadline = time.monotonic() + timeout
    while p.state() != state:
        assert time.monotonic() < deadline, p.status()
        time.sleep(0.02)


@pytest.mark.parametrize("case", ["file", "uncreatable", "relative", "relative_reference", "deep_checks"])
def test_bad_property_at_start_gives_fault_not_exit(tmp_path, case):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    props, expected = {
        "file": ({"OutputDirectory": str(a_file)}, ["OutputDirectory", "exists and is not a directory"]),
        "uncreatable": ({"OutputDirectory": str(a_file / "sub")}, ["OutputDirectory", "cannot be created"]),
        "relative": ({"OutputDirectory": "results"}, ["OutputDirectory 'results' is a relative path"]),
        "relative_reference": ({"ReferenceDirectory": "refs"}, ["ReferenceDirectory 'refs' is a relative path"]),
        "deep_checks": ({"QualityChecks": ["[" * 100_000]}, ["QualityChecks"]),
    }[case]
    with context(**props) as p:  # the server came up: the property did not make it exit
        assert_fault(p, *expected)
        p.Init()  # same values: same FAULT, same message
        assert_fault(p, *expected)


BAD_PLUGINS = textwrap.dedent('''
    from tango_dqm import Analysis, Parameter, Result


    class _Base(Analysis):
        version = "1"

        def process(self, frame, params, context):
            return {}


    class FloatLimitsOnInt(_Base):
        name = "float_limits"
        results = [Result("fl_count", int, warning=(None, 99.5))]


    class BadName(_Base):
        name = "bad_name"
        results = [Result("bad-name", float)]


    class DeviceName(_Base):
        name = "device_name"
        results = [Result("TotalEvents", float)]


    class CaseClash(_Base):
        name = "case_clash"
        parameters = [Parameter("cc_level", float, 1.0)]
        results = [Result("CC_Level", float)]


    class ComplexResult(_Base):
        name = "complex_result"
        results = [Result("cr_value", complex)]


    class AlarmOnImage(_Base):
        name = "alarm_image"
        results = [Result("ai_map", float, kind="image", alarm=(0, 1))]


    class FractionalIntBound(_Base):
        name = "int_bound"
        parameters = [Parameter("ib_level", int, 1, min=0.5)]


    class InvertedRange(_Base):
        name = "inverted"
        results = [Result("inv_value", float, warning=(10, 1))]


    class MultiLineUnit(_Base):
        name = "multiline"
        results = [Result("ml_value", float, unit="counts\\nper s")]
    ''')

RULES = {
    "FloatLimitsOnInt": ("fl_count", "warning max of an int result must be an integer"),
    "BadName": ("bad-name", "valid Tango attribute name"),
    "DeviceName": ("TotalEvents", "attribute of the monitor device itself"),
    "CaseClash": ("CC_Level", "clashes with parameter 'cc_level'"),
    "ComplexResult": ("cr_value", "has no Tango type"),
    "AlarmOnImage": ("ai_map", "alarm limits need a numeric scalar result"),
    "FractionalIntBound": ("ib_level", "min of an int parameter must be an integer"),
    "InvertedRange": ("inv_value", "warning min (10) must be below its max (1)"),
    "MultiLineUnit": ("ml_value", "unit must be one line"),
}


@pytest.fixture
def bad_plugins(tmp_path, monkeypatch):
    (tmp_path / "bad_dqm_plugins.py").write_text(BAD_PLUGINS)
    monkeypatch.syspath_prepend(str(tmp_path))  # the forked server process inherits sys.path
    yield "bad_dqm_plugins"
    sys.modules.pop("bad_dqm_plugins", None)


@pytest.mark.parametrize("cls", sorted(RULES))
def test_bad_plugin_refused_at_load_in_core(bad_plugins, cls):
    from tango_dqm import PluginError, load_analysis

    name, rule = RULES[cls]
    with pytest.raises(PluginError) as info:
        load_analysis(f"{bad_plugins}:{cls}")
    message = str(info.value)
    assert f"({bad_plugins}:{cls})" in message and f"'{name}'" in message and rule in message, message
    assert "\n" not in message


@pytest.mark.parametrize("cls", ["FloatLimitsOnInt", "CaseClash", "DeviceName"])
def test_bad_plugin_gives_fault_and_no_half_built_attributes(bad_plugins, cls):
    name, rule = RULES[cls]
    with context(Analyses=["roi", f"{bad_plugins}:{cls}"]) as p:
        assert_fault(p, f"'{name}'", rule)


def test_replay_refuses_the_same_plugin(bad_plugins, tmp_path):
    from tango_dqm.engine import Engine, EngineConfig
    from tango_dqm.plugin import PluginError

    with pytest.raises(PluginError, match="warning max of an int result must be an integer"):
        Engine(EngineConfig([SIM], [f"{bad_plugins}:FloatLimitsOnInt"]))


def docs_code_blocks() -> list[str]:
    text = (ROOT / "docs" / "plugins.md").read_text()
    return [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "(Analysis)" in b]


def test_docs_plugin_examples_work_in_a_real_device(tmp_path, monkeypatch):
    blocks = docs_code_blocks()
    assert blocks, "docs/plugins.md has no example plugin"
    specs = []
    for i, code in enumerate(blocks):
        module = f"docs_plugin_example_{i}"
        (tmp_path / f"{module}.py").write_text(code)
        specs += [f"{module}:{c}" for c in re.findall(r"^class (\w+)\(Analysis\)", code, re.M)]
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "docs_plugin_example_0:Threshold" in specs
    with context(Sources=["sim://?frames=20&shape=64x64"], Analyses=specs) as p:
        assert p.state() == tango.DevState.ON, p.status()
        alarms = p.get_attribute_config("threshold_pixels").alarms
        assert (alarms.max_warning, alarms.max_alarm) == ("100", "1000")
        p.threshold_level = 500.0
        p.Start()
        wait_for(p, tango.DevState.CLOSE)
        assert p.completedEvents == 20
        assert p.threshold_pixels >= 0 and 0 <= p.threshold_fraction <= 1
        assert p.threshold_pixels_per_frame >= 0
    for i in range(len(blocks)):
        sys.modules.pop(f"docs_plugin_example_{i}", None)
