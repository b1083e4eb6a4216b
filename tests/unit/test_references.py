"""ReferenceStore: versions, exact round trips, backgrounds, no pickle, no path escapes."""
import os
import threading

import h5py
import numpy as np
import pytest

from tango_dqm.quality import QualityMonitor, ReferenceCheck, Verdict
from tango_dqm.references import ReferenceStore, ReferenceStoreError


@pytest.fixture
def store(tmp_path):
    return ReferenceStore(tmp_path / "refs")


def arrays(seed):
    rng = np.random.default_rng(seed)
    return {
        "spectrum": rng.integers(0, 1000, 256).astype(np.int64),
        "image": rng.integers(0, 65535, (16, 24), dtype=np.uint16),
        "floats": np.array([0.1, -2.5e-300, np.nan, np.inf, 1 / 3]),
        "mask": rng.random((4, 5)) > 0.5,
        "extremes": np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max]),
        "scalar": np.float32(2.75),
    }


def assert_same(a, b):
    assert a.dtype == np.asarray(b).dtype and a.shape == np.asarray(b).shape
    assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def test_versions_increment_and_arrays_round_trip_exactly(store):
    first, second = arrays(1), arrays(2)
    i1 = store.save("roi_hist", first, scan_id="scan_0001", meta={"energy_keV": 12.4, "note": "good"}, created=1e9)
    i2 = store.save("roi_hist", second, scan_id="scan_0002")
    i3 = store.save("roi_hist", first, scan_id="scan_0003")
    assert (i1.version, i2.version, i3.version) == (1, 2, 3)
    assert [v.version for v in store.versions("roi_hist")] == [1, 2, 3]
    assert [v.scan_id for v in store.versions("roi_hist")] == ["scan_0001", "scan_0002", "scan_0003"]
    assert store.latest("roi_hist").version == 3

    old = store.load("roi_hist", version=1)
    assert old.info.version == 1 and old.info.scan_id == "scan_0001" and old.info.created == 1e9
    assert dict(old.info.meta) == {"energy_keV": 12.4, "note": "good"}
    assert set(old.arrays) == set(first)
    for k in first:
        assert_same(old[k], first[k])
    latest = store.load("roi_hist")
    assert latest.info.version == 3 and latest.info.scan_id == "scan_0003"
    mid = store.load("roi_hist", version=2)
    for k in second:
        assert_same(mid[k], second[k])
    assert store.names() == ["roi_hist"]


def test_files_are_hdf5_not_pickle(store):
    info = store.save("h", {"x": np.arange(3)})
    assert info.path.parent.parent.parent == store.directory
    assert h5py.is_hdf5(info.path)
    with open(info.path, "rb") as f:
        assert f.read(8) == b"\x89HDF\r\n\x1a\n"
    with h5py.File(info.path) as f:
        assert f.attrs["version"] == 1 and list(f["x"][...]) == [0, 1, 2]


def test_background_is_its_own_namespace(store):
    dark = np.random.default_rng(5).integers(90, 110, (8, 8), dtype=np.uint16)
    store.save("det1", {"spectrum": np.ones(4)})
    assert store.save_background("det1", dark, scan_id="dark_001").version == 1
    assert store.save_background("det1", dark + 1).version == 2
    image, info = store.load_background("det1", version=1)
    assert_same(image, dark) and info.scan_id == "dark_001" and info.kind == "background"
    assert_same(store.load_background("det1")[0], dark + 1)
    assert [v.version for v in store.versions("det1")] == [1]          # the reference is untouched
    assert store.names("background") == ["det1"]


@pytest.mark.parametrize("name", ["../evil", "..", "a/b", "/etc/passwd", "a\\b", "", ".hidden", "x..y",
                                  "sub/../../up", "a b", None, 3])
def test_names_with_path_escapes_are_refused(store, tmp_path, name):
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ReferenceStoreError):
        store.save(name, {"x": np.arange(3)})
    with pytest.raises(ReferenceStoreError):
        store.load(name)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("key", ["../x", "a/b", "..", ""])
def test_array_names_are_confined_too(store, key):
    with pytest.raises(ReferenceStoreError, match="array name"):
        store.save("ok", {key: np.arange(3)})
    assert store.versions("ok") == []


def test_symlink_out_of_the_directory_is_refused(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.directory / "reference").mkdir()
    os.symlink(outside, store.directory / "reference" / "evil")
    with pytest.raises(ReferenceStoreError, match="outside the reference directory"):
        store.save("evil", {"x": np.arange(3)})
    assert list(outside.iterdir()) == []


def test_only_numeric_arrays_no_objects(store):
    with pytest.raises(ReferenceStoreError, match="no pickle"):
        store.save("o", {"x": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ReferenceStoreError, match="dtype"):
        store.save("o", {"x": np.array(["text"])})
    with pytest.raises(ReferenceStoreError, match="meta"):
        store.save("o", {"x": np.arange(2)}, meta={"f": object()})
    assert store.versions("o") == []


def test_missing_reference_and_version(store):
    assert store.latest("nothing") is None
    with pytest.raises(ReferenceStoreError, match="no reference named 'nothing'"):
        store.load("nothing")
    store.save("r", {"x": np.arange(3)})
    with pytest.raises(ReferenceStoreError, match="no version 7; versions: 1"):
        store.load("r", version=7)


def test_concurrent_saves_get_distinct_versions(store):
    errors = []

    def save(i):
        try:
            store.save("shared", {"x": np.full(10, i)}, scan_id=f"s{i}")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    infos = store.versions("shared")
    assert [i.version for i in infos] == list(range(1, 9))
    assert sorted(i.scan_id for i in infos) == sorted(f"s{i}" for i in range(8))
    for info in infos:  # each version holds the array of the writer that got it
        assert np.all(store.load("shared", info.version)["x"] == int(info.scan_id[1:]))


def test_a_stored_reference_feeds_the_quality_monitor(store):
    rng = np.random.default_rng(7)
    edges = np.linspace(-5, 5, 101)
    store.save("run_ref", {"spectrum": np.histogram(rng.normal(0, 1, 20_000), edges)[0]}, scan_id="scan_ref")
    mon = QualityMonitor([ReferenceCheck("spectrum", method="chi2")])
    assert mon.set_references(store.load("run_ref").arrays) == ["spectrum_chi2"]
    good = np.histogram(rng.normal(0, 1, 10_000), edges)[0]
    shifted = np.histogram(rng.normal(0.2, 1, 10_000), edges)[0]
    assert mon.evaluate_references({"spectrum": good})[0].verdict is Verdict.OK
    assert mon.evaluate_references({"spectrum": shifted})[0].verdict is Verdict.ERROR
