"""The report overlays the reference a scan was judged against on its profiles and histograms.

Scan 1 (simulated spot, 20 frames) becomes reference version 1 (TakeReference); a second engine
loads it from the store as the device does at Init and runs scan 2 with a brighter spot and 30
frames. Scan 2's results file keeps the reference's 1-D arrays; its report draws them over the
run's histogram (scaled to this run's entries, as the reference check compares shapes) and
profiles (as they are), and names the reference's version, scan and time.
"""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from tango_dqm.engine import Engine, EngineConfig, EngineState
from tango_dqm.products.report import page as report_page
from tango_dqm.quality.references import ReferenceStore
from tango_dqm.report import write_report
from tests.unit.test_engine import wait_state

pytestmark = pytest.mark.timeout(180)

CHECK = json.dumps({"type": "reference", "result": "hist_run_counts", "method": "chi2", "warning_p": 0.01,
                    "error_p": 0.001})
PARAMS = {"roi_profile": [8, 48, 8, 48], "roi_histogram": [0, 64, 0, 64], "hist_bins": 64, "hist_max": 4096.0}


def scan(out, amplitude: float, frames: int, store: ReferenceStore | None = None, take: bool = False):
    e = Engine(EngineConfig([f"sim://?shape=64x64&frames={frames}&amplitude={amplitude}&seed=4"],
                            ["roi", "profile", "histogram"], checks=[CHECK], output_directory=str(out)))
    if store is not None and not take:
        ref = store.load("reference")
        e.use_reference(ref.info, dict(ref.arrays))
    for name, value in PARAMS.items():
        e.set_parameter(name, value)
    e.start()
    try:
        wait_state(e, EngineState.CLOSE, timeout=120)
        info = e.take_reference(store) if take else None
        assert e.products.worker.wait_idle(120)
        return e.output_file, info
    finally:
        e.close()


def test_reference_overlay_on_histograms_and_profiles(tmp_path, monkeypatch):
    out, store = tmp_path / "out", ReferenceStore(tmp_path / "refs")
    first, info = scan(out, 800.0, 20, store, take=True)
    assert info.version == 1
    second, _ = scan(out, 2500.0, 30, store)
    with h5py.File(first, "r") as f:
        ref_counts = f["entry/summary/hist_run_counts"][...].astype(np.float64)
        ref_profile = f["entry/summary/profile_run_x"][...]
        first_id = f["entry/title"][()].decode()
    with h5py.File(second, "r") as f:
        prov = f["entry/provenance"]
        np.testing.assert_array_equal(prov["reference_arrays/hist_run_counts"][...], ref_counts)
        np.testing.assert_array_equal(prov["reference_arrays/profile_run_x"][...], ref_profile)
        assert prov["reference/version"][()] == 1 and prov["reference/scan_id"][()].decode() == first_id
        counts = f["entry/summary/hist_run_counts"][...].astype(np.float64)
        quality = prov["quality_report"][()].decode()
    assert "hist_run_counts" in quality  # the reference check judged scan 2 against it
    assert not np.allclose(counts / counts.sum(), ref_counts / ref_counts.sum())  # a brighter spot

    drawn = {}
    real = report_page._plot_curves

    def recording(title, curves, ylabel, out_png, **kw):
        drawn[title] = kw.get("reference")
        return real(title, curves, ylabel, out_png, **kw)

    monkeypatch.setattr(report_page, "_plot_curves", recording)
    text = write_report(second).read_text(encoding="utf-8")
    label, values = drawn["run summary: hist_run_counts"]
    assert label.startswith("reference v1 (scaled to this run's") and f"{counts.sum():.6g} entries" in label
    np.testing.assert_allclose(values, ref_counts * counts.sum() / ref_counts.sum())
    label, values = drawn["run summary: profile_run_x"]
    assert label == "reference v1"
    np.testing.assert_array_equal(values, ref_profile)
    assert f"version 1, name &#x27;reference&#x27;, from scan {first_id}, taken 20" in text
    assert "run summary: hist_run_counts, with reference v1 (scaled" in text

    # the first scan had no reference: none drawn, and the page says how to take one
    drawn.clear()
    text = write_report(first).read_text(encoding="utf-8")
    assert drawn["run summary: hist_run_counts"] is None
    assert "none (no reference taken" in text
