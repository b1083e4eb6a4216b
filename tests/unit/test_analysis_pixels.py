"""The pixels analysis: known hot, dead and saturated pixels are found exactly."""
from __future__ import annotations


import numpy as np
import pytest

from tango_dqm import Frame, Params, load_analysis
from tango_dqm.engine import Engine, EngineConfig, EngineState
from tests.helpers import run_scan

SPEC = "tango_dqm.analysis.pixels:Pixels"
SHAPE = (96, 128)
HOT = [(5, 7), (40, 64), (41, 64), (95, 127), (0, 0)]  # includes a 2-pixel cluster and corners
DEAD = [(10, 100), (60, 3)]
SATURATED = (50, 20)  # saturates in one frame only
ZINGER = (70, 30)  # one cosmic-ray hit in one frame: not hot
BEAM = (48, 70)  # a smooth beam spot must not be "hot" with the local reference


@pytest.fixture(scope="module")
def analysis():
    return load_analysis(SPEC)()


def params(analysis, **values) -> Params:
    return Params({p.name: p.validate(values.get(p.name, p.default)) for p in analysis.parameters})


def make_frames(n=30, seed=0, beam=True, dtype=np.uint16, hot_factor=3.0, hot_add=0.0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    base = 1000.0 + (3000.0 * np.exp(-0.5 * (((x - BEAM[1]) / 20) ** 2 + ((y - BEAM[0]) / 20) ** 2)) if beam else 0.0)
    frames = []
    for i in range(n):
        f = base + rng.normal(0, 20, SHAPE)
        for p in HOT:  # a hot pixel: a gain (factor) and/or a pedestal (add) above its neighbours
            f[p] = f[p] * hot_factor + hot_add
        for p in DEAD:
            f[p] = 0
        if i == 3:
            f[SATURATED] = 65535  # one saturating event: not a hot pixel
        if i == 7:
            f[ZINGER] += 20000
        frames.append(np.rint(np.clip(f, 0, 65535)).astype(dtype))
    return frames


def run(analysis, frames, p):
    acc = analysis.new_accumulator()
    for i, f in enumerate(frames):
        acc = analysis.accumulate(acc, analysis.process(Frame(f, i), p), p)
    return acc


def positions(mask) -> set[tuple[int, int]]:
    return {tuple(int(v) for v in ij) for ij in np.argwhere(mask)}


def test_saturation_parameter_is_shared_with_roi(analysis):
    from tango_dqm.analysis.roi import RoiStats  # the test may look; the plugin may not import it

    mine = next(p for p in analysis.parameters if p.name == "saturation_level")
    theirs = next(p for p in RoiStats.parameters if p.name == "saturation_level")
    assert mine == theirs


def test_saturated_per_frame(analysis):
    frames = make_frames(5)
    for level in (65535, 1500, 1):
        for f in frames:
            r = analysis.process(Frame(f, 0), params(analysis, saturation_level=level)).results
            assert r["pixels_saturated"] == int(np.count_nonzero(f >= level))


def test_hot_dead_saturated_found_exactly(analysis):
    frames = make_frames()
    out = analysis.finish(run(analysis, frames, params(analysis)))
    pmap = out["pixels_map"]
    assert pmap.dtype == np.uint8 and pmap.shape == SHAPE
    assert positions(pmap == 1) == set(HOT)
    assert positions(pmap == 2) == set(DEAD)
    assert positions(pmap == 3) == {SATURATED}
    assert pmap[ZINGER] == 0 and pmap[BEAM] == 0
    assert out["pixels_hot"] == len(HOT) and out["pixels_dead"] == len(DEAD)
    assert out["pixels_saturated_run"] == 1
    assert out["pixels_status"] == "OK" and out["pixels_frames"] == 30
    stack = np.stack(frames).astype(np.float64)
    np.testing.assert_allclose(out["pixels_mean_map"], stack.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out["pixels_std_map"], stack.std(axis=0), rtol=1e-5, atol=1e-3)


def test_global_reference_flags_the_beam_local_does_not(analysis):
    frames = make_frames()
    glob = analysis.finish(run(analysis, frames, params(analysis, pixels_hot_reference="global")))
    assert BEAM in positions(glob["pixels_map"] == 1)  # why "local" is the default
    dark = make_frames(beam=False, seed=4)
    for ref in ("global", "local", "either"):
        out = analysis.finish(run(analysis, dark, params(analysis, pixels_hot_reference=ref)))
        assert positions(out["pixels_map"] == 1) == set(HOT), ref


def test_hot_sigma_and_dead_threshold(analysis):
    frames = make_frames()
    out = analysis.finish(run(analysis, frames, params(analysis, hot_sigma=1e5, dead_threshold=500.0)))
    assert out["pixels_hot"] == 0  # 3x, but not 1e5 standard errors above the neighbours
    assert positions(out["pixels_map"] == 2) == set(DEAD)  # the rest never stays below 500
    # a whole frame below the level is no signal, not dead: dead needs a live neighbourhood
    out = analysis.finish(run(analysis, frames, params(analysis, dead_threshold=70000.0)))
    assert out["pixels_dead"] == 0


def test_hot_ratio_requires_a_relative_excess(analysis):
    # +400 on ~1000 is very significant (20 sigma per frame) but only 1.4x its neighbours
    frames = make_frames(hot_factor=1.0, hot_add=400.0)
    out = analysis.finish(run(analysis, frames, params(analysis)))
    assert out["pixels_hot"] == 0
    out = analysis.finish(run(analysis, frames, params(analysis, hot_ratio=1.2)))
    # the pair at (40, 64) sits in the beam (~3650 counts): +400 is only 1.11x there
    assert positions(out["pixels_map"] == 1) == set(HOT) - {(40, 64), (41, 64)}
    out = analysis.finish(run(analysis, frames, params(analysis, hot_ratio=1.05)))
    assert positions(out["pixels_map"] == 1) == set(HOT)


def test_dead_needs_a_live_neighbourhood(analysis):
    frames = make_frames(beam=False)
    for f in frames:
        f[80:83, 100:103] = 0  # a dead 3x3 block: each of its pixels has a live 5x5 neighbourhood
        f[0:96, 120:122] = 0  # a dead double column
    out = analysis.finish(run(analysis, frames, params(analysis)))
    expected = set(DEAD) | {(r, c) for r in range(80, 83) for c in range(100, 103)} | \
        {(r, c) for r in range(96) for c in (120, 121)}
    assert positions(out["pixels_map"] == 2) == expected


def test_insufficient_below_min_frames(analysis):
    frames = make_frames(5)
    out = analysis.finish(run(analysis, frames, params(analysis)))
    assert out["pixels_status"] == "INSUFFICIENT" and out["pixels_frames"] == 5
    assert out["pixels_hot"] is None and out["pixels_map"] is None
    out = analysis.finish(run(analysis, frames, params(analysis, pixels_min_frames=5)))
    assert out["pixels_status"] == "OK"
    empty = analysis.finish(analysis.new_accumulator())
    assert empty["pixels_status"] == "INSUFFICIENT" and empty["pixels_frames"] == 0


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32])
def test_merge_equals_single_accumulator(analysis, dtype):
    frames = make_frames(24, dtype=dtype)
    p = params(analysis)
    whole = analysis.finish(run(analysis, frames, p))
    a, b, c = run(analysis, frames[:5], p), run(analysis, frames[5:17], p), run(analysis, frames[17:], p)
    for merged in (analysis.merge(analysis.merge(a, b), c), analysis.merge(a, analysis.merge(b, c)),
                   analysis.merge(analysis.new_accumulator(), analysis.merge(analysis.merge(a, b), c))):
        out = analysis.finish(merged)
        assert out.keys() == whole.keys()
        for k, v in whole.items():
            np.testing.assert_array_equal(out[k], v, err_msg=k)
    assert positions(whole["pixels_map"] == 1) == set(HOT)
    assert a.n == 5  # merge left its inputs alone


def test_shape_change_is_an_error_that_names_it(analysis):
    p = params(analysis)
    acc = run(analysis, make_frames(2), p)
    with pytest.raises(ValueError, match="shape changed"):
        analysis.accumulate(acc, analysis.process(Frame(np.zeros((4, 4), np.uint16), 9), p), p)


def test_accumulate_does_not_copy_or_modify_the_frame(analysis):
    f = make_frames(1)[0]
    before = f.copy()
    p = params(analysis)
    r = analysis.process(Frame(f, 0), p)
    assert np.shares_memory(r.private, f)  # the hand-over is a view, not a copy
    analysis.accumulate(analysis.new_accumulator(), r, p)
    np.testing.assert_array_equal(f, before)


def test_declared_results_cover_what_is_published(analysis):
    declared = {r.name for r in analysis.results}
    p = params(analysis)
    r = analysis.process(Frame(make_frames(1)[0], 0), p).results
    assert set(r) <= declared
    assert set(analysis.finish(run(analysis, make_frames(10), p))) <= declared
    assert all(n.startswith("pixels_") for n in declared)


def test_runs_in_the_engine_beside_roi():
    uri = "sim://?frames=20&shape=256x256&hot_pixels=5&dead_pixels=3"
    engine = Engine(EngineConfig(sources=[uri], analyses=["roi", SPEC]))
    assert list(engine.params.declarations).count("saturation_level") == 1  # one shared parameter
    snap = run_scan(engine)
    assert snap.state is EngineState.CLOSE, snap.status
    assert snap.results["pixels_saturated"] == snap.results["saturated_pixels"] == 5  # sim hot = dtype max
    s = snap.summary
    assert s["pixels_status"] == "OK" and s["pixels_frames"] == 20
    assert s["pixels_hot"] == 5 and s["pixels_dead"] == 3 and s["pixels_saturated_run"] == 5
    assert s["pixels_map"].shape == (256, 256)


def _numpy_maps(frames):
    """Independent reference of the per-pixel accumulators: plain numpy, one frame at a time,
    the float operations in the documented order (neighbours up, down, left, right)."""
    f0 = frames[0]
    exact = f0.dtype.kind in "iu" and f0.dtype.itemsize <= 2
    acc = np.int64 if exact else np.float64
    s = np.zeros(f0.shape, acc)
    ss = np.zeros(f0.shape, acc)
    rs = np.zeros(f0.shape, np.float64)
    rss = np.zeros(f0.shape, np.float64)
    for f in frames:
        v = f.astype(acc)
        s += v
        ss += v * v
        a = f.astype(np.float64)
        t = np.zeros(f.shape)
        c = np.zeros(f.shape)
        t[1:] += a[:-1]
        c[1:] += 1
        t[:-1] += a[1:]
        c[:-1] += 1
        t[:, 1:] += a[:, :-1]
        c[:, 1:] += 1
        t[:, :-1] += a[:, 1:]
        c[:, :-1] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(c > 0, t / np.maximum(c, 1), a)
        r = a - mean
        rs += r
        rss += r * r
    stack = np.sort(np.stack(frames), axis=0)
    return {"sum": s, "sumsq": ss, "max": stack[-1], "max2": stack[-2], "rsum": rs, "rsumsq": rss}


@pytest.mark.parametrize("shape,dtype", [((17, 13), np.uint16), ((1, 50), np.uint16), ((3, 2), np.uint8),
                                         ((20, 9), np.int16), ((8, 11), np.float32), ((6, 7), np.int32)])
@pytest.mark.parametrize("batch", ["analysis", 1, 5, 16])
def test_batched_maps_equal_numpy_bit_for_bit(analysis, shape, dtype, batch):
    """Frames held back and accumulated a batch at a time give exactly the frame-by-frame maps,
    whatever the batch (it follows the frame rate, so it must never change a result)."""
    from tango_dqm.analysis import pixels

    p = params(analysis)

    def add(m, f):
        if batch == "analysis":  # as the engine runs it: the batch the frame rate gives
            return analysis.accumulate(m, analysis.process(Frame(f, 0), p), p)
        m.add(f, (), batch)
        return m

    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    lo, hi = (info.min, info.max) if info is not None and info.bits <= 16 else (-5000, 60000)
    frames = [rng.integers(lo, hi, shape, endpoint=True).astype(dtype) for _ in range(37)]
    if np.dtype(dtype).kind == "f":
        frames = [f + np.float32(0.37) for f in frames]  # non-integer values: the float path's rounding
    m = pixels.PixelMap()
    for f in frames[:20]:
        m = add(m, f)
    assert m.n == 20 and m.sum.dtype == (np.int64 if info is not None and info.bits <= 16 else np.float64)
    for f in frames[20:]:
        m = add(m, f)
    want = _numpy_maps(frames)
    for name, expected in want.items():
        got = getattr(m, name)
        assert got.dtype == expected.dtype, name
        assert got.tobytes() == expected.tobytes(), name  # bit for bit


def test_held_back_frames_count_in_merge_and_copy():
    from tango_dqm.analysis import pixels

    frames = make_frames(7)
    a, b = pixels.PixelMap(), pixels.PixelMap()
    for f in frames[:3]:
        a.add(f, ())
    for f in frames[3:]:
        b.add(f, ())
    whole = _numpy_maps(frames)
    merged = a.merged(b)
    assert merged.n == 7 and merged.sum.tobytes() == whole["sum"].tobytes()
    assert a.copy().sum.tobytes() == _numpy_maps(frames[:3])["sum"].tobytes()
