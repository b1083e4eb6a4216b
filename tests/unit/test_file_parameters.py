"""File-backed parameters: confined to configured directories, size-limited, parsed, never unpickled."""
from __future__ import annotations

import json
import os
import struct

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


# ---- confinement: one function, the right rule -------------------------------------------------


def test_symlink_out_of_the_first_root_is_reported_as_a_link_not_as_missing(tmp_path):
    first, second, out = tmp_path / "a", tmp_path / "b", tmp_path / "outside"
    for d in (first, second, out):
        d.mkdir()
    np.save(out / "x.npy", np.zeros((4, 5)))
    os.symlink(out / "x.npy", first / "x.npy")
    os.symlink(out / "gone.npy", first / "dangling.npy")  # dangling, pointing out
    os.symlink(first / "real.npy", second / "inside_link.npy")  # a link between roots is fine
    np.save(first / "real.npy", np.ones((4, 5)))
    s = ParameterStore([Parameter("mask", "file")], FileAccess([first, second], max_bytes=100_000))
    for name in ("x.npy", "dangling.npy", str(first / "x.npy")):
        with pytest.raises(ParameterError, match="x.npy|dangling.npy") as err:
            s.set("mask", name)
        assert "is a symbolic link leading outside the parameter file directories" in str(err.value)
    assert s.set("mask", "inside_link.npy").sum() == 20
    with pytest.raises(ParameterError, match="does not exist or is not a file"):
        s.set("mask", "nowhere.npy")


def test_confine_is_shared_by_products_and_references(tmp_path):
    from tango_dqm.files import PathConfinementError, confine
    from tango_dqm.references import ReferenceStore, ReferenceStoreError
    from tango_dqm.storage import confined_path

    root, out = tmp_path / "root", tmp_path / "out"
    root.mkdir(), out.mkdir()
    (root / "link").symlink_to(out)
    assert confine("a/b.h5", [root]) == root.resolve() / "a" / "b.h5"
    for bad, rule in (("../x", "is outside the allowed directories"), ("link/x", "symbolic link leading outside")):
        with pytest.raises(PathConfinementError, match=rule):
            confine(bad, [root])
    with pytest.raises(ValueError, match="symbolic link leading outside the output directory"):
        confined_path(root, "link/x.h5")
    store = ReferenceStore(root)
    (root / "reference").mkdir()
    (root / "reference" / "evil").symlink_to(out)
    with pytest.raises(ReferenceStoreError, match="symbolic link leading outside the reference directory"):
        store.save("evil", {"h": np.zeros(3)})


# ---- HDF5: no byte outside the file ------------------------------------------------------------


def _refused(s, value, rule):
    s.set("mask", "good.npy")
    with pytest.raises(ParameterError, match=rule):
        s.set("mask", value)
    assert s.file_paths["mask"] == "good.npy" and s.get("mask").sum() == 20  # old value kept


@pytest.fixture
def hstore(store, tmp_path):
    s, d = store
    np.save(d / "good.npy", np.ones((4, 5)))
    secret = tmp_path / "secret.h5"  # outside the allowed directory
    with h5py.File(secret, "w") as f:
        f["data"] = np.full((4, 5), 7.0)
    return s, d, secret


def test_hdf5_external_link_refused_directly_and_behind_a_soft_link(hstore):
    s, d, secret = hstore
    with h5py.File(d / "ext.h5", "w") as f:
        f["mask"] = h5py.ExternalLink(str(secret), "/data")
        f["soft"] = h5py.SoftLink("/mask")
        f.create_group("g")["deeper"] = h5py.SoftLink("/soft")
        f["grp"] = h5py.ExternalLink(str(secret), "/")
    for target in ("ext.h5#/mask", "ext.h5#/soft", "ext.h5#/g/deeper", "ext.h5#/grp/data"):
        _refused(s, target, "external links are refused in parameter files")
    # without '#': visititems never walks into the external file, so nothing is found there
    _refused(s, "ext.h5", "has 0 datasets")


def test_hdf5_soft_links_inside_the_file_work_and_loops_are_refused(hstore):
    s, d, _ = hstore
    with h5py.File(d / "soft.h5", "w") as f:
        f["a/mask"] = np.ones((4, 5), np.uint8) * 3
        f["alias"] = h5py.SoftLink("/a/mask")
        f["a"]["rel"] = h5py.SoftLink("mask")
        f["loop1"] = h5py.SoftLink("/loop2")
        f["loop2"] = h5py.SoftLink("/loop1")
    assert s.set("mask", "soft.h5#/alias").max() == 3
    assert s.set("mask", "soft.h5#/a/rel").max() == 3
    _refused(s, "soft.h5#/loop1", "follows more than 32 soft links")


def test_hdf5_external_raw_storage_refused(hstore, tmp_path):
    s, d, _ = hstore
    raw = tmp_path / "outside.raw"  # raw bytes outside the allowed directory
    np.full((4, 5), 9.0).tofile(raw)
    with h5py.File(d / "external.h5", "w") as f:
        f.create_dataset("mask", shape=(4, 5), dtype="f8", external=[(str(raw), 0, h5py.h5f.UNLIMITED)])
    _refused(s, "external.h5", "external storage is refused")


def test_hdf5_virtual_dataset_refused(hstore):
    s, d, secret = hstore
    layout = h5py.VirtualLayout(shape=(4, 5), dtype="f8")
    layout[:] = h5py.VirtualSource(str(secret), "data", shape=(4, 5))
    with h5py.File(d / "vds.h5", "w") as f:
        f.create_virtual_dataset("mask", layout, fillvalue=0)
    with h5py.File(d / "vds.h5", "r") as f:  # h5py itself would read the outside file
        assert f["mask"][0, 0] == 7.0
    _refused(s, "vds.h5", r"virtual dataset \(VDS\)")


# ---- decoded size checked before reading -----------------------------------------------------


def _peak_while(fn):
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_unwritten_huge_chunked_dataset_refused_without_allocating(tmp_path):
    d = tmp_path / "params"
    d.mkdir()
    with h5py.File(d / "huge.h5", "w") as f:  # 256 MB decoded, nothing written
        f.create_dataset("mask", shape=(4000, 8000), dtype="f8", chunks=(100, 100))
    assert (d / "huge.h5").stat().st_size < 4000
    s = ParameterStore([Parameter("mask", "file")], FileAccess([d]))  # default limit 64 MiB
    def attempt():
        with pytest.raises(ParameterError, match="decodes to 256000000 bytes, more than the limit"):
            s.set("mask", "huge.h5")
    assert _peak_while(attempt) < 5_000_000


def test_npy_header_checked_before_loading(tmp_path):
    from numpy.lib import format as npy

    d = tmp_path / "params"
    d.mkdir()
    with open(d / "claims.npy", "wb") as fh:  # a header claiming 8 GB, and no data
        npy.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": (2**15, 2**15)})
    np.save(d / "ok.npy", np.zeros((10, 10), np.uint8))
    s = ParameterStore([Parameter("mask", "file")], FileAccess([d], max_bytes=1000))
    def attempt():
        with pytest.raises(ParameterError, match="decodes to 8589934592 bytes, more than the limit of 1000"):
            s.set("mask", "claims.npy")
    assert _peak_while(attempt) < 1_000_000
    assert s.set("mask", "ok.npy").shape == (10, 10)


def test_hdf5_chunk_larger_than_the_limit_refused(store):
    s, d = store
    with h5py.File(d / "bigchunk.h5", "w") as f:  # 4x5 dataset in one 1e6-element chunk
        f.create_dataset("mask", shape=(4, 5), maxshape=(None, None), chunks=(1000, 1000), dtype="f8")
    with pytest.raises(ParameterError, match="has chunks of 8000000 bytes, more than the limit"):
        s.set("mask", "bigchunk.h5")


def test_compressed_chunk_bomb_refused_before_decoding(tmp_path):
    import zlib

    d = tmp_path / "params"
    d.mkdir()
    with h5py.File(d / "bomb.h5", "w") as f:  # one 8 kB chunk whose deflate stream inflates to 100 MB
        ds = f.create_dataset("mask", shape=(1000,), chunks=(1000,), dtype="f8", compression="gzip")
        ds.id.write_direct_chunk((0,), zlib.compress(b"\0" * 100_000_000, 9))
    s = ParameterStore([Parameter("mask", "file")], FileAccess([d]))
    def attempt():
        with pytest.raises(ParameterError,
                           match=r"chunk \(0,\) decodes to at least 8001 bytes, more than its 8000 bytes"):
            s.set("mask", "bomb.h5")
    assert _peak_while(attempt) < 2_000_000


@pytest.mark.parametrize("kwargs", [
    {"compression": "gzip", "shuffle": True, "fletcher32": True},
    {"compression": "gzip", "scaleoffset": 0},
    "bitshuffle", "lz4", "blosc", "zstd", "bzip2",
])
def test_allowed_filters_read_correctly(store, kwargs):
    import hdf5plugin

    s, d = store
    if isinstance(kwargs, str):
        kwargs = {"bitshuffle": hdf5plugin.Bitshuffle(), "lz4": hdf5plugin.LZ4(), "blosc": hdf5plugin.Blosc(),
                  "zstd": hdf5plugin.Zstd(), "bzip2": hdf5plugin.BZip2()}[kwargs]
    mask = np.arange(20, dtype=np.int32).reshape(4, 5)
    with h5py.File(d / "c.h5", "w") as f:
        f.create_dataset("mask", data=mask, chunks=(2, 5), **kwargs)
    assert np.array_equal(s.set("mask", "c.h5"), mask)


def test_filter_without_a_checkable_size_refused(store):
    s, d = store
    with h5py.File(d / "lzf.h5", "w") as f:
        f.create_dataset("mask", data=np.zeros((4, 5)), chunks=(2, 5), compression="lzf")
    with pytest.raises(ParameterError, match=r"uses HDF5 filter 32000 \(lzf\).*allowed filters: bitshuffle"):
        s.set("mask", "lzf.h5")


def test_hdf5_non_numeric_dataset_refused_before_reading(store):
    s, d = store
    with h5py.File(d / "refs.h5", "w") as f:
        f["target"] = np.zeros(3)
        f.create_dataset("mask", data=[f["target"].ref] * 20, dtype=h5py.ref_dtype)
    with pytest.raises(ParameterError, match="is not numeric"):
        s.set("mask", "refs.h5#/mask")


# ---- JSON / YAML: bounded ------------------------------------------------------------------------


# 10**6 list items from 7 short lines: each alias repeats the previous list ten times
_ALIAS_BOMB = "a: &a [1, 2]\n" \
    + "".join(f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcde", "bcdef")) \
    + f"g: [{', '.join(['*f'] * 10)}]\n"


@pytest.mark.parametrize("fmt, text, rule", [
    ("geometry", "[" * 100_000 + "]" * 100_000, "nested too deeply|nested more than 64"),
    ("geometry", "[" * 70 + "]" * 70, "nested more than 64 levels"),
    ("layout", _ALIAS_BOMB, "more than 1000000 values"),
    ("layout", "&a [*a]\n", "nested more than 64 levels"),
    ("layout", "[" * 2000 + "]" * 2000, "nested too deeply|nested more than 64"),
    ("layout", "x: " + "y" * 1_100_000 + "\n", "more than the limit of 1048576 bytes for a yaml file"),
    ("geometry", "[" + "0," * 4_200_000 + "0]", "more than the limit of 8388608 bytes for a json file"),
])
def test_json_yaml_nesting_and_alias_bombs_refused(tmp_path, fmt, text, rule):
    d = tmp_path / "params"
    d.mkdir()
    (d / "f.txt").write_text(text)
    s = ParameterStore([Parameter("geometry", "file", file_format="json"),
                        Parameter("layout", "file", file_format="yaml")], FileAccess([d]))
    with pytest.raises(ParameterError, match=rule):
        s.set(fmt, "f.txt")
    assert s.get(fmt) is None


@pytest.mark.parametrize("plugin, header", [
    ("LZ4", struct.pack(">QI", 10**9, 8192) + b"\0" * 8),  # lz4: total size, block size
    ("Bitshuffle", struct.pack(">QI", 10**9, 8192) + b"\0" * 8),  # bitshuffle+lz4: same header
    ("Blosc", bytes([2, 1, 1, 8]) + struct.pack("<III", 10**9, 8192, 24) + b"\0" * 8),  # blosc: nbytes at 4
    ("Zstd", b"\x28\xb5\x2f\xfd" + bytes([0xA0]) + struct.pack("<I", 10**9) + b"\0" * 8),  # single segment, 4-byte size
])
def test_compressed_chunk_whose_header_claims_too_much_is_refused(store, plugin, header):
    import hdf5plugin

    s, d = store
    with h5py.File(d / "forged.h5", "w") as f:
        ds = f.create_dataset("mask", shape=(1000,), chunks=(1000,), dtype="f8", **getattr(hdf5plugin, plugin)())
        ds.id.write_direct_chunk((0,), header)
    with pytest.raises(ParameterError,
                       match=r"chunk \(0,\) decodes to 1000000000 bytes \(its size header\), more than its 8000"):
        s.set("mask", "forged.h5")


def test_corrupt_compressed_chunk_is_a_clear_error(store):
    s, d = store
    with h5py.File(d / "corrupt.h5", "w") as f:
        ds = f.create_dataset("mask", shape=(4, 5), chunks=(4, 5), dtype="f8", compression="gzip")
        ds.id.write_direct_chunk((0, 0), b"not a deflate stream")
    with pytest.raises(ParameterError, match="mask: cannot read .*corrupt.h5 as array"):
        s.set("mask", "corrupt.h5")


def test_symlink_loops_and_nul_bytes_are_refused_clearly(store):
    s, d = store
    os.symlink(d / "loop_b", d / "loop_a")
    os.symlink(d / "loop_a", d / "loop_b")
    for value, rule in (("loop_a", "loop_a|loop_b"), ("mask\0.npy", "contains a NUL byte")):
        with pytest.raises(ParameterError, match=rule):
            s.set("mask", value)


def test_scaleoffset_parameters_claiming_a_larger_chunk_are_refused(store):
    s, d = store
    with h5py.File(d / "so.h5", "w") as f:  # 37 x 41 = 1517 elements per chunk, in the filter's parameters
        f.create_dataset("mask", data=np.ones((37, 41), np.int32), chunks=(37, 41), scaleoffset=0)
    data = (d / "so.h5").read_bytes()
    stored = struct.pack("<5I", 2, 0, 1517, 0, 4)
    assert data.count(stored) == 1
    # forged: scaleoffset allocates the number of elements its stored parameters give, here 2**31
    (d / "so.h5").write_bytes(data.replace(stored, struct.pack("<5I", 2, 0, 2**31, 0, 4)))
    with h5py.File(d / "so.h5", "r") as f:
        assert f["mask"].id.get_create_plist().get_filter(0)[2][2] == 2**31
    with pytest.raises(ParameterError, match=r"scaleoffset parameters .* do not match its chunks of 1517 x 4 bytes"):
        s.set("mask", "so.h5")
