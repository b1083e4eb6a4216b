"""The dynamic attribute set built offline (devices.mapping.describe_attributes) is the one a real
DataQualityMonitor builds, for every installed analysis, and it shows what Jive and Taranta need."""
from __future__ import annotations

import warnings

import pytest
import tango
from tango.test_context import DeviceTestContext
from tango_dqm.devices.mapping import describe_attributes, device_attribute_names
from tango_dqm.devices.monitor import DataQualityMonitor

from tango_dqm.plugin import DEVICE_ATTRIBUTES, PluginError, registered_analyses

pytestmark = pytest.mark.timeout(120)

_UNSET = ("", "Not specified", "No description")


def _device_view(cfg: tango.AttributeInfoEx) -> dict:
    limits = {"min_value": cfg.min_value, "max_value": cfg.max_value,
              "min_warning": cfg.alarms.min_warning, "max_warning": cfg.alarms.max_warning,
              "min_alarm": cfg.alarms.min_alarm, "max_alarm": cfg.alarms.max_alarm}
    return {"data_type": str(tango.CmdArgType.values[cfg.data_type]), "data_format": str(cfg.data_format),
            "writable": cfg.writable != tango.AttrWriteType.READ, "label": cfg.label, "unit": cfg.unit,
            "description": cfg.description, "format": cfg.format,
            "limits": {k: v for k, v in limits.items() if v not in _UNSET}}


def _offline_view(info) -> dict:
    return {"data_type": info.data_type, "data_format": info.data_format, "writable": info.writable,
            "label": info.label, "unit": info.unit, "description": info.description, "format": info.format,
            "limits": dict(info.limits)}


def _same_limits(offline: dict, device: dict) -> bool:
    # Tango normalises numbers it stores ("1e+15" for "1000000000000000.0"): compare as numbers
    return offline.keys() == device.keys() and all(float(offline[k]) == float(device[k]) for k in offline)


def test_offline_attribute_set_is_what_the_device_builds():
    names = registered_analyses()
    offline = describe_attributes(names)
    assert {i.analysis for i in offline} == set(names)
    props = {"Sources": ["sim://?frames=1&shape=64x64"], "Analyses": names}
    with DeviceTestContext(DataQualityMonitor, properties=props, process=True, host="127.0.0.1", timeout=60) as p:
        assert p.state() == tango.DevState.ON, p.status()
        assert {a.lower() for a in p.get_attribute_list()} >= {i.name.lower() for i in offline}
        for info in offline:
            device = _device_view(p.get_attribute_config(info.name))
            expected = _offline_view(info)
            assert _same_limits(expected.pop("limits"), device.pop("limits")), info.name
            if not expected["format"]:  # text, enum, bool, file: Tango's own default (%s, %d)
                expected.pop("format"), device.pop("format")
            assert device == expected, info.name
        counters = p.get_attribute_config("droppedEvents")
        assert (counters.unit, counters.format, counters.label) == ("events", "%d", "Dropped events")
        assert "lost" in counters.description


def test_every_attribute_is_described_for_jive_and_taranta():
    for info in describe_attributes(registered_analyses()):
        assert info.label and info.description, info.name
        if info.data_type not in ("DevString", "DevBoolean", "DevEnum") and info.name not in ("mask", "dark"):
            assert info.format, info.name
    profile = {i.name: i for i in describe_attributes(["profile"])}
    assert profile["profile_x"].description.endswith("x axis: profile_axis_x")
    assert profile["profile_run_y"].description.endswith("x axis: profile_run_axis_y")


def test_old_docs_threshold_limits_reach_tango_as_integers():
    """The old docs' Threshold (int result, limits 100.0 and 1000.0) broke Init; the device now
    gives Tango integers (check-plugin still asks for integers in the declaration)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        infos = {i.name: i for i in describe_attributes(["tests.unit.plugins:OldDocsThreshold"])}
    assert infos["threshold_pixels"].data_type == "DevLong64"
    assert infos["threshold_pixels"].limits == {"max_warning": "100", "max_alarm": "1000"}


def test_the_device_attribute_names_known_to_the_core_are_the_device_class_ones():
    assert set(DEVICE_ATTRIBUTES) == device_attribute_names()
    with pytest.raises(PluginError, match=r"'Latency': the name is an attribute of the monitor device itself"):
        describe_attributes(["tests.unit.plugins:ClashesWithDevice"])
