"""Reference policy in the engine: where references live, the latest one used from the start."""
from __future__ import annotations

import numpy as np
import pytest

from tango_dqm.engine import Engine, EngineConfig, EngineState, NotConfiguredError
from tango_dqm.quality.references import ReferenceStore, latest_reference, open_store, reference_folder
from tests.unit.test_engine import wait_state

SOURCE = "sim://?frames=6&shape=16x16&rate=0"


def test_reference_folder_is_the_property_or_output_references():
    assert reference_folder("/refs", "/out") == "/refs"
    assert reference_folder("", "/out") == "/out/references"
    assert reference_folder("", "") == ""
    assert open_store("") is None


def test_take_reference_writes_to_output_references_and_the_next_engine_uses_it(tmp_path):
    out = tmp_path / "out"
    e = Engine(EngineConfig([SOURCE], ["histogram"], output_directory=str(out)))
    try:
        e.start()
        assert wait_state(e, EngineState.CLOSE, EngineState.FAULT) is EngineState.CLOSE, e.status()
        info = e.take_reference()
        summary = e.snapshot().summary
    finally:
        e.close()
    assert info.version == 1 and info.path.parent.parent.parent == out / "references"
    stored = ReferenceStore(out / "references", create=False).load("reference")
    # the arrays stored are the accumulated spectra of the scan, exactly
    assert stored.arrays.keys() and all(np.array_equal(stored[k], summary[k]) for k in stored.arrays)

    again = Engine(EngineConfig([SOURCE], ["histogram"], output_directory=str(out)))
    try:
        assert again.reference == stored.info  # the latest version, loaded at start
        used = again.provenance()["reference"]
        assert (used["version"], used["scan_id"], used["name"]) == (1, info.scan_id, "reference")
    finally:
        again.close()


def test_reference_directory_wins_and_the_latest_version_is_used(tmp_path):
    refs = tmp_path / "refs"
    store = ReferenceStore(refs)
    store.save("reference", {"histogram_counts": np.arange(4)}, scan_id="a")
    store.save("reference", {"histogram_counts": np.arange(4) * 2}, scan_id="b")
    assert latest_reference(str(refs)).info.version == 2
    e = Engine(EngineConfig([SOURCE], ["histogram"], output_directory=str(tmp_path / "out"),
                            reference_directory=str(refs)))
    try:
        assert e.reference is not None and (e.reference.version, e.reference.scan_id) == (2, "b")
        # file parameters may read backgrounds from the reference folder
        assert any(str(refs) == str(r) for r in e.params.files.roots)
    finally:
        e.close()


def test_no_folder_refuses_take_reference_as_not_configured(tmp_path):
    e = Engine(EngineConfig([SOURCE], ["histogram"]))
    try:
        assert e.reference_folder == "" and e.reference is None
        with pytest.raises(NotConfiguredError, match="ReferenceDirectory or OutputDirectory"):
            e.take_reference()
        with pytest.raises(NotConfiguredError, match="ReferenceDirectory or OutputDirectory"):
            e.take_background()
    finally:
        e.close()
