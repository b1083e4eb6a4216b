"""The standard analysis set in a real device: per-frame and run-summary results as attributes."""
from __future__ import annotations

import json

import pytest
import tango

from tests.tango.test_monitor import context, wait_for

pytestmark = pytest.mark.timeout(180)


def test_standard_set_runs_in_the_device():
    sim = ("sim://?frames=30&shape=96x128&spot_x=40&spot_y=50&sigma=5&amplitude=3000&background=100"
           "&noise=3&hot_pixels=4&dead_pixels=2")
    with context([sim], ["roi", "profile", "pixels", "histogram", "gain"]) as p:
        p.pixels_min_frames = 10
        p.Start()
        wait_for(p, tango.DevState.CLOSE, timeout=60)
        assert p.completedEvents == 30
        # per frame: the centroid of the projections is the spot (hot pixels pull a little)
        assert p.profile_centroid_x == pytest.approx(40, abs=1.5)
        assert p.profile_centroid_y == pytest.approx(50, abs=1.5)
        assert len(p.profile_x) == 128 and len(p.profile_y) == 96
        # run summary results: strings, spectra, images
        assert p.pixels_status == "OK"
        assert p.pixels_dead == 2
        pixel_map = p.pixels_map
        assert pixel_map.shape == (96, 128) and int((pixel_map == 2).sum()) == 2
        counts = p.hist_run_counts
        assert counts.sum() + p.hist_run_underflow + p.hist_run_overflow == 30 * 96 * 128
        assert p.gain_status in ("OK", "INSUFFICIENT", "FIT_FAILED")
        assert p.read_attribute("gain").quality in (tango.AttrQuality.ATTR_VALID, tango.AttrQuality.ATTR_INVALID)
        summary = json.loads(p.runSummary)
        assert summary["pixels_dead"] == 2 and summary["pixels_status"] == "OK"
        assert isinstance(summary["pixels_map"], str)  # large maps: in the results file
        assert summary["run_frame_max_max"] == 65535  # the hot pixels are saturated


def test_analysis_threads_property():
    """AnalysisThreads reaches the engine: the standard set with 3 threads; a bad value is a clear FAULT."""
    sim = "sim://?frames=40&shape=64x64&spot_x=30&spot_y=30&sigma=4&amplitude=3000&background=100&noise=3"
    with context([sim], ["roi", "profile", "pixels", "histogram"], AnalysisThreads=3) as p:
        p.Start()
        wait_for(p, tango.DevState.CLOSE, timeout=60)
        assert p.completedEvents == 40 and p.droppedEvents == 0
        assert p.profile_centroid_x == pytest.approx(30, abs=1.5)
    with context([sim], ["roi"], AnalysisThreads=-2) as p:
        assert p.state() == tango.DevState.FAULT
        assert "AnalysisThreads" in p.status()
