"""Scan metadata in the engine: validation, RequiredMetadata at Start (not Live), recorded in the file."""
from __future__ import annotations

import json
import time

import h5py
import pytest

from tango_dqm.engine import METADATA_MAX_BYTES, Engine, EngineConfig, EngineError, EngineState


def _engine(tmp_path, required=()):
    return Engine(EngineConfig(["sim://?frames=3&shape=8x8"], output_directory=str(tmp_path),
                               required_metadata=list(required)))


def _wait_end(engine: Engine) -> None:
    deadline = time.monotonic() + 30
    while engine.state is EngineState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.state is EngineState.CLOSE, engine.status()


def test_set_metadata_validates_and_keeps_the_old_value(tmp_path):
    e = _engine(tmp_path)
    try:
        e.set_metadata({"sample": "Si", "hv": 1200, "tags": ["a", "b"]})
        for bad, rule in (({"": "x"}, "non-empty strings"), ({1: "x"}, "non-empty strings"),
                          ({"x": float("nan")}, "JSON values"), ({"x": object()}, "JSON values"),
                          ({"x": "y" * METADATA_MAX_BYTES}, "at most"), (["sample"], "mapping")):
            with pytest.raises(ValueError, match=rule):
                e.set_metadata(bad)
        assert e.metadata == {"sample": "Si", "hv": 1200, "tags": ["a", "b"]}
        copy = e.metadata
        copy["tags"].append("c")  # a copy: the engine's value does not change
        assert e.metadata["tags"] == ["a", "b"]
    finally:
        e.close()


def test_required_metadata_refuses_start_not_live_and_is_recorded(tmp_path):
    e = _engine(tmp_path, required=["sample", "pmt_serial"])
    try:
        with pytest.raises(EngineError, match="not set: sample, pmt_serial"):
            e.start()
        e.set_metadata({"sample": "Si", "pmt_serial": "  "})  # blank is not set
        with pytest.raises(EngineError, match=r"not set: pmt_serial \(RequiredMetadata\)"):
            e.start()
        assert e.state is EngineState.ON
        e.set_metadata({"sample": "Si", "pmt_serial": "SN-7"})
        e.start()
        _wait_end(e)
        with h5py.File(e.output_file, "r") as f:
            assert json.loads(f["entry/provenance/metadata_json"][()]) == {"sample": "Si", "pmt_serial": "SN-7"}
            assert f["entry/provenance/mode"][()].decode() == "scan"
        e.set_metadata({})
        e.start(live=True)  # Live is not refused: alignment runs come before the sample is known
        e.stop()
        _wait_end(e)
        with h5py.File(e.output_file, "r") as f:
            assert f["entry/provenance/mode"][()].decode() == "live"
    finally:
        e.close()
