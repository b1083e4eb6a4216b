"""File-backed parameters: confined to configured directories, size-limited, parsed, never unpickled."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from tango_dqm.files import FileAccess
from tango_dqm.params import Parameter, ParameterError, ParameterStore


@pytest.fixture
def store(tmp_path):
    allowed = tmp_path / "params"
    allowed.mkdir()
    decl = [Parameter("mask", "file"), Parameter("geometry", "file", file_format="json"),
            Parameter("layout", "file", file_format="yaml")]
    s = ParameterStore(decl, FileAccess([allowed], max_bytes=100_000))
    s.image_shape = (4, 5)
    return s, allowed


def test_npy_hdf5_json_yaml_are_parsed(store):
    s, d = store
    mask = np.zeros((4, 5), np.uint8)
    mask[1, 2] = 1
    np.save(d / "mask.npy", mask)
    assert np.array_equal(s.set("mask", str(d / "mask.npy")), mask)
    with h5py.File(d / "masks.h5", "w") as f:
        f["a/mask"] = mask * 2
        f["b"] = mask
    assert s.set("mask", "masks.h5#/a/mask").max() == 2  # relative to the directory
    assert s.file_paths["mask"] == "masks.h5#/a/mask"
    assert s.plain()["mask"] == "masks.h5#/a/mask"
    (d / "geo.json").write_text(json.dumps({"pixel_size": 75e-6}))
    assert s.set("geometry", "geo.json") == {"pixel_size": 75e-6}
    (d / "layout.yaml").write_text("modules: 2\nnames: [a, b]\n")
    assert s.set("layout", "layout.yaml") == {"modules": 2, "names": ["a", "b"]}
    assert s.set("mask", "") is None and s.get("mask") is None


@pytest.mark.parametrize("make, rule", [
    (lambda d, out: str(out / "x.npy"), "outside the parameter file directories"),
    (lambda d, out: "../outside/x.npy", "outside the parameter file directories"),
    (lambda d, out: str(d / "link.npy"), "is a symbolic link leading outside the parameter file directories"),
    (lambda d, out: "link.npy", "is a symbolic link leading outside the parameter file directories"),
    (lambda d, out: str(d / "missing.npy"), "does not exist"),
    (lambda d, out: str(d / "big.npy"), "more than the limit"),
    (lambda d, out: str(d / "pickled.npy"), "would need unpickling"),
    (lambda d, out: str(d / "wrong_shape.npy"), "does not match the image shape"),
    (lambda d, out: str(d / "two.h5"), "has 2 datasets"),
    (lambda d, out: str(d / "text.txt"), "expected .npy"),
])
def test_refusals_name_the_rule_and_keep_the_old_value(store, tmp_path, make, rule):
    s, d = store
    out = tmp_path / "outside"
    out.mkdir()
    np.save(out / "x.npy", np.zeros((4, 5)))
    os.symlink(out / "x.npy", d / "link.npy")
    np.save(d / "big.npy", np.zeros((200, 200)))
    np.save(d / "pickled.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    np.save(d / "wrong_shape.npy", np.zeros((3, 3)))
    np.save(d / "good.npy", np.ones((4, 5)))
    with h5py.File(d / "two.h5", "w") as f:
        f["a"], f["b"] = np.zeros((4, 5)), np.zeros((4, 5))
    (d / "text.txt").write_text("hello")
    s.set("mask", "good.npy")
    with pytest.raises(ParameterError, match=rule):
        s.set("mask", make(d, out))
    assert s.file_paths["mask"] == "good.npy" and s.get("mask").sum() == 20


def test_no_directory_configured_is_refused(tmp_path):
    np.save(tmp_path / "m.npy", np.zeros(3))
    s = ParameterStore([Parameter("mask", "file")])
    with pytest.raises(ParameterError, match="no directory is configured"):
        s.set("mask", str(tmp_path / "m.npy"))
