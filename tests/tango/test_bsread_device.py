"""bsread end to end through the device: images plus scalar channels, plain and bitshuffle_lz4."""
from __future__ import annotations

import json
import time

import pytest
import tango

from tests.helpers import free_port, frames_for_test
from tests.tango.test_monitor import context, wait_for
from tests.unit.test_engine import SIG, expected_roi
from tests.unit.test_source_bsread import make_sender

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("compression", [None, "bitshuffle_lz4"])
def test_bsread_stream_results_equal_numpy_and_gaps_are_dropped(compression, tmp_path):
    port = free_port()
    frames = frames_for_test(16, seed=3)
    pulses = list(range(500, 508)) + list(range(511, 519))  # pulses 508..510 never sent
    energy = [8.0 + 0.1 * i for i in range(16)]
    sender = make_sender(port, compression=compression)
    try:
        with context([f"det=bsread://127.0.0.1:{port}?channel=img&frames=16"], ["roi"],
                     OutputDirectory=str(tmp_path)) as p:
            p.roi_signal = SIG
            p.roi_normalisation = "meta:energy"
            p.Start()
            time.sleep(0.5)  # the PULL socket connects
            for pulse, frame, e in zip(pulses, frames, energy):
                sender.send(data={"img": frame, "energy": e}, pulse_id=pulse)
            wait_for(p, tango.DevState.CLOSE)
            assert (p.completedEvents, p.droppedEvents, p.badEvents) == (16, 3, 0)
            want = expected_roi(frames[-1])
            for name in ("signal_sum", "signal_std", "signal_max", "frame_min", "frame_max"):
                assert p.read_attribute(name).value == pytest.approx(want[name], rel=1e-12), name
            # no background ROI: net_signal is the signal sum, normalised by the energy channel
            assert p.net_signal_normalised == pytest.approx(want["signal_sum"] / energy[-1])
            summary = json.loads(p.runSummary)
            sums = [expected_roi(f)["signal_sum"] for f in frames]
            assert summary["run_signal_sum_max"] == max(sums) and summary["run_signal_sum_min"] == min(sums)
    finally:
        sender.close()
