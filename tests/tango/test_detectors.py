"""Detector orchestration (devices/detectors.py) with fake detector proxies: all or nothing."""
from __future__ import annotations

import pytest
import tango

from tango_dqm.devices.detectors import DetectorError, Detectors, parse_detectors


def dev_failed(desc: str) -> tango.DevFailed:
    try:
        tango.Except.throw_exception("SIM_Failed", desc, "fake")
    except tango.DevFailed as exc:
        return exc
    raise AssertionError("throw_exception did not raise")


class FakeDetector:
    """Records the commands it gets; fails the ones it is told to."""

    def __init__(self, name: str, log: list[str], fail: tuple[str, ...] = ()):
        self.name, self.log, self.fail = name, log, fail

    def ping(self) -> int:
        if "ping" in self.fail:
            raise dev_failed(f"{self.name} is not exported")
        return 1

    def command_inout(self, command: str) -> None:
        if command in self.fail:
            raise dev_failed(f"{self.name} cannot {command}")
        self.log.append(f"{command} {self.name}")

    def dev_name(self) -> str:
        return self.name


class Rig:
    """Fake detectors behind a factory, and an engine stand-in that records start/stop."""

    def __init__(self, fail: dict[str, tuple[str, ...]] | None = None):
        self.log: list[str] = []
        self.warnings: list[str] = []
        fail = fail or {}
        self.detectors = Detectors({"det": "lab/det/1", "i0": "lab/i0/1"},
                                   lambda name: FakeDetector(name, self.log, fail.get(name, ())),
                                   self.warnings.append)

    def start_engine(self) -> str:
        self.log.append("engine start")
        return "scan_1"

    def stop_engine(self) -> None:
        self.log.append("engine stop")

    def live(self, flags: dict[str, bool] | None = None) -> str:
        selected = self.detectors.selected(flags if flags is not None else {"det": True, "i0": True})
        return self.detectors.start(selected, "Live", self.start_engine, self.stop_engine)


def test_live_starts_the_engine_then_every_selected_detector_and_stop_stops_them():
    rig = Rig()
    assert rig.live() == "scan_1"
    assert rig.log == ["engine start", "Live lab/det/1", "Live lab/i0/1"]
    rig.detectors.stop()
    assert rig.log[3:] == ["Stop lab/det/1", "Stop lab/i0/1"]
    rig.detectors.stop()  # stopped once: a second Stop sends nothing
    assert len(rig.log) == 5 and rig.detectors.note == ""


def test_only_detectors_whose_live_flag_is_set_are_driven():
    rig = Rig()
    rig.live({"det": False, "i0": True})
    assert rig.log == ["engine start", "Live lab/i0/1"]


def test_an_unreachable_detector_refuses_before_anything_starts():
    rig = Rig({"lab/i0/1": ("ping",)})
    with pytest.raises(DetectorError) as info:
        rig.live()
    assert info.value.reason == "DQM_DetectorUnreachable"
    assert "detector lab/i0/1 (stream i0) is unreachable (lab/i0/1 is not exported)" in info.value.desc
    assert "live_i0 = False" in info.value.desc and info.value.desc.endswith("Nothing was started")
    assert rig.log == []  # neither the engine nor the reachable detector was started
    assert "unreachable" in rig.detectors.note  # shown in Status until a Live succeeds
    rig.detectors.names.pop("i0")
    rig.live()
    assert rig.detectors.note == ""


def test_a_failed_live_rolls_back_the_started_detectors_and_the_engine():
    rig = Rig({"lab/i0/1": ("Live",)})
    with pytest.raises(DetectorError) as info:
        rig.live()
    assert info.value.reason == "DQM_DetectorFailed"
    assert "Live on detector lab/i0/1 (stream i0) failed: lab/i0/1 cannot Live" in info.value.desc
    assert rig.log == ["engine start", "Live lab/det/1", "Stop lab/det/1", "engine stop"]
    rig.detectors.stop()  # nothing is left running
    assert rig.log[-1] == "engine stop"


def test_a_failing_stop_is_warned_about_and_the_others_still_stop():
    rig = Rig({"lab/det/1": ("Stop",)})
    rig.live()
    rig.detectors.stop()
    assert rig.log[-1] == "Stop lab/i0/1"
    assert rig.warnings == ["Stop on detector lab/det/1 failed: lab/det/1 cannot Stop"]


def test_an_engine_refusal_passes_through_and_no_detector_starts():
    rig = Rig()

    def refuse() -> str:
        raise RuntimeError("Live is not allowed in RUNNING; Stop first")

    with pytest.raises(RuntimeError, match="Stop first"):
        rig.detectors.start(rig.detectors.selected({"det": True}), "Live", refuse, rig.stop_engine)
    assert rig.log == []


@pytest.mark.parametrize("text,rule", [
    ("{", "must be JSON like"),
    ('["a"]', "must be a JSON object"),
    ('{"det": 3}', "must be a JSON object"),
    ('{"other": "a/b/c"}', "names streams ['other'] that are not in Sources"),
])
def test_detectors_property_rules(text: str, rule: str):
    with pytest.raises(ValueError, match=rule.replace("[", r"\[").replace("]", r"\]")):
        parse_detectors(text, ["det"])
    assert parse_detectors('{"det": "a/b/c"}', ["det"]) == {"det": "a/b/c"}
    assert parse_detectors("", ["det"]) == {}
