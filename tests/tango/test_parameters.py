"""Analysis parameters and results as dynamic Tango attributes."""
from __future__ import annotations

import json
import time

import pytest
import tango

from tests.tango.test_monitor import context, wait_for

pytestmark = pytest.mark.timeout(120)
SCALE = "tests.unit.plugins:Scale"


def test_module_class_plugin_parameters_as_attributes():
    with context(["sim://?frames=5&shape=16x16"], ["roi", SCALE]) as p:
        cfg = p.get_attribute_config("scale")
        assert (cfg.unit, cfg.label, cfg.min_value, cfg.max_value) == ("a.u.", "Scale", "0.0", "100.0")
        assert p.get_attribute_config("scale").writable == tango.AttrWriteType.READ_WRITE
        mode = p.get_attribute_config("scale_mode")
        assert list(mode.enum_labels) == ["linear", "square"]
        assert p.get_attribute_config("scaled_mean").unit == "a.u."
        p.scale = 2.5
        assert p.scale == 2.5
        for bad in (-1.0, 101.0):
            with pytest.raises(tango.DevFailed):
                p.scale = bad
            assert p.scale == 2.5
        with pytest.raises(tango.DevFailed):
            p.scale_mode = 7
        p.scale_mode = 1
        assert p.scale_mode == 1


def test_parameter_written_during_scan_changes_results_from_then_on():
    with context(["sim://?frames=0&shape=16x16&rate=100&noise=0&amplitude=0&background=10"], ["roi", SCALE]) as p:
        p.scale = 1.0
        p.Live()
        deadline = time.monotonic() + 10
        while p.completedEvents < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert p.scaled_mean == pytest.approx(10.0)
        p.scale = 3.0
        time.sleep(0.3)
        assert p.scaled_mean == pytest.approx(30.0)
        p.Stop()
        wait_for(p, tango.DevState.CLOSE)
        log = json.loads(p.parameterLog)
        change = [c for c in log if c["name"] == "scale" and c["value"] == 3.0][-1]
        assert change["applied_at_frame"] is not None and change["applied_at_frame"] >= 5


def test_file_parameter_mask_and_take_background(tmp_path):
    import numpy as np

    from tango_dqm.simulation import FrameGenerator, Scene

    files = tmp_path / "params"
    files.mkdir()
    mask = np.zeros((16, 16), np.uint8)
    mask[0:4, 0:2] = 1  # 8 pixels of the signal ROI excluded
    np.save(files / "mask.npy", mask)
    np.save(tmp_path / "outside.npy", mask)
    sim = "sim://?frames=4&shape=16x16&amplitude=0&background=100&noise=3"
    with context([sim], ["roi", "pixels"], ParameterFileDirectories=[str(files)],
                 OutputDirectory=str(tmp_path / "out")) as p:
        p.roi_signal = [0, 8, 0, 8]
        cfg = p.get_attribute_config("mask")
        assert cfg.data_type == tango.CmdArgType.DevString
        with pytest.raises(tango.DevFailed, match="outside the parameter file directories"):
            p.mask = str(tmp_path / "outside.npy")
        assert p.mask == ""
        p.mask = "mask.npy"
        assert p.mask == "mask.npy"
        p.pixels_min_frames = 2
        p.Start()
        wait_for(p, tango.DevState.CLOSE)
        frame = FrameGenerator(Scene(shape=(16, 16), amplitude=0, background=100, noise=3)).render(3)
        kept = frame[0:8, 0:8][mask[0:8, 0:8] == 0].astype(float)
        assert p.signal_sum == kept.sum() and p.signal_mean == pytest.approx(kept.mean())
        # the mean image of this (dark) scan becomes the dark image of every analysis
        assert p.TakeBackground() == 1
        assert p.dark.endswith("v000001.h5#/background")
        p.Start()
        wait_for(p, tango.DevState.CLOSE)
        assert abs(p.signal_mean) < 5  # dark-subtracted: noise around 0
