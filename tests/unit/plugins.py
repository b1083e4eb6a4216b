"""Test plugins, loaded by ``module:Class`` like a user's own analysis."""
import hashlib
import threading

import numpy as np

from tango_dqm import Analysis, FrameOutput, Parameter, Result


class FailOnFrame3(Analysis):
    """Raises on frame 3; counts frames in its accumulator."""

    name = "fail_on_3"
    parameters = [Parameter("fail_frame", int, 3, min=0)]
    results = [Result("fail_test_value", float)]

    def process(self, frame, params, context):
        if frame.frame_id == params.fail_frame:
            raise RuntimeError("boom on purpose")
        return {"fail_test_value": float(frame.frame_id)}

    def new_accumulator(self):
        return 0

    def accumulate(self, acc, output, params):
        return acc + 1

    def merge(self, a, b):
        return a + b

    def finish(self, acc):
        return {"fail_test_frames": acc}


class Scale(Analysis):
    """Mean of the frame times a live ``scale`` parameter."""

    name = "scale"
    parameters = [Parameter("scale", float, 1.0, unit="a.u.", label="Scale", min=0.0, max=100.0),
                  Parameter("scale_mode", "enum", "linear", choices=("linear", "square"))]
    results = [Result("scaled_mean", float, unit="a.u.")]

    def process(self, frame, params, context):
        m = float(frame.data.mean())
        return {"scaled_mean": (m if params.scale_mode == "linear" else m * m) * params.scale}


class IntensityHistogram(Analysis):
    """Histogram of the frame values in 64 bins of width 4 (a spectrum), accumulated over the run."""

    name = "test_hist"
    results = [Result("test_hist_counts", "int64", kind="spectrum")]

    def process(self, frame, params, context):
        values = frame.data.ravel().astype("int64") // 4
        return {"test_hist_counts": np.bincount(np.clip(values, 0, 63), minlength=64)}

    def new_accumulator(self):
        return np.zeros(64, np.int64)

    def accumulate(self, acc, output, params):
        return acc + output.results["test_hist_counts"]

    def merge(self, a, b):
        return a + b

    def finish(self, acc):
        return {"test_hist_counts": acc}


class FrameRecorder(Analysis):
    """Records every frame's id and content digest (test-only analysis)."""

    name = "recorder"
    results = [Result("rec_frame_id", int), Result("rec_digest", str)]

    def process(self, frame, params, context):
        return {"rec_frame_id": int(frame.frame_id),
                "rec_digest": hashlib.sha1(np.ascontiguousarray(frame.data).tobytes()).hexdigest()}

    def new_accumulator(self):
        return []

    def accumulate(self, acc, output, params):
        acc.append((output.results["rec_frame_id"], output.results["rec_digest"]))
        return acc

    def merge(self, a, b):
        return a + b

    def finish(self, acc):
        return {"recorded": list(acc)}


class AnnulusMean(Analysis):
    """Mean of the pixels in an annulus around the frame centre: the mask comes from prepare(),
    rebuilt only when a radius changes (``annulus_scale`` does not need a new mask)."""

    name = "annulus"
    parameters = [Parameter("annulus_inner", float, 2.0, unit="pixels", min=0.0, format="%.1f", label="Inner radius",
                            description="pixels at least this far from the centre are in the annulus"),
                  Parameter("annulus_outer", float, 6.0, unit="pixels", min=0.0, format="%.1f", label="Outer radius",
                            description="pixels closer than this to the centre are in the annulus"),
                  Parameter("annulus_scale", float, 1.0, dimensionless=True, format="%.3g", label="Scale",
                            description="factor applied to the mean")]
    results = [Result("annulus_mean", float, unit="counts", format="%.4g", label="Annulus mean",
                      description="mean pixel value in the annulus, times annulus_scale")]
    prepare_parameters = ("annulus_inner", "annulus_outer")

    def prepare(self, params):
        return {"inner": params.annulus_inner, "outer": params.annulus_outer, "masks": {}}

    def process(self, frame, params, context):
        shape = frame.data.shape[-2:]
        mask = context["masks"].get(shape)
        if mask is None:  # one mask per frame shape, kept in the context (not on self)
            y, x = np.indices(shape)
            r = np.hypot(y - (shape[0] - 1) / 2, x - (shape[1] - 1) / 2)
            mask = context["masks"][shape] = (r >= context["inner"]) & (r < context["outer"])
        values = frame.data[..., mask]
        mean = float(values.mean()) if values.size else float("nan")
        return FrameOutput({"annulus_mean": mean * params.annulus_scale}, private=int(values.size))

    def new_accumulator(self):
        return {"frames": 0, "pixels": 0}

    def accumulate(self, acc, output, params):
        return {"frames": acc["frames"] + 1, "pixels": acc["pixels"] + output.private}

    def merge(self, a, b):
        return {"frames": a["frames"] + b["frames"], "pixels": a["pixels"] + b["pixels"]}

    def finish(self, acc):
        return {"annulus_pixels": acc["pixels"]}


class NoMerge(Analysis):
    """Accumulates but forgot merge(): the base refuses to drop data."""

    name = "no_merge"
    results = [Result("no_merge_value", float)]

    def process(self, frame, params, context):
        return {"no_merge_value": 1.0}

    def new_accumulator(self):
        return 0

    def accumulate(self, acc, output, params):
        return acc + 1


class OldStyle(Analysis):
    """A plugin API v1 class (deprecated): ``_`` keys carry private data to accumulate."""

    name = "old_style"
    results = [Result("old_mean", float)]

    def process(self, frame, params):
        return {"old_mean": float(frame.data.mean()), "_old_size": int(frame.data.size)}

    def new_accumulator(self):
        return 0

    def accumulate(self, acc, frame_results):
        return acc + frame_results["_old_size"]

    def merge(self, a, b):
        return a + b

    def finish(self, acc):
        return {"old_pixels": acc}


class OldDocsThreshold(Analysis):
    """The Threshold of the old docs/plugins.md, as users copied it: plugin API v1, and an int
    result with float limits, which Tango refuses (the device's Init failed with it)."""

    name = "threshold"
    version = "1"
    parameters = [
        Parameter("threshold_level", float, 1000.0, unit="counts", label="Threshold",
                  description="pixels above this are counted", min=0.0),
        Parameter("threshold_mode", "enum", "above", choices=("above", "below")),
    ]
    results = [
        Result("threshold_pixels", int, unit="pixels", label="Pixels past threshold",
               warning=(None, 100.0), alarm=(None, 1000.0)),
        Result("threshold_fraction", float, label="Fraction past threshold", archive=False),
    ]

    def process(self, frame, params):
        data = frame.data
        if params.threshold_mode == "above":
            n = int(np.count_nonzero(data > params.threshold_level))
        else:
            n = int(np.count_nonzero(data < params.threshold_level))
        return {"threshold_pixels": n, "threshold_fraction": n / data.size}

    def new_accumulator(self):
        return {"frames": 0, "pixels": 0}

    def accumulate(self, acc, frame_results):
        return {"frames": acc["frames"] + 1, "pixels": acc["pixels"] + frame_results["threshold_pixels"]}

    def merge(self, a, b):
        return {"frames": a["frames"] + b["frames"], "pixels": a["pixels"] + b["pixels"]}

    def finish(self, acc):
        return {"threshold_pixels_per_frame": acc["pixels"] / max(acc["frames"], 1)}


class ClashesWithDevice(Analysis):
    """Declares a result named like one of the device's own attributes."""

    name = "clash"
    results = [Result("Latency", float, unit="ms", label="Latency", description="clashes", format="%.2f")]

    def process(self, frame, params, context):
        return {"Latency": 0.0}


INTERIM_STARTED = threading.Event()
INTERIM_RELEASE = threading.Event()


class InterimGate(Analysis):
    """A run map whose interim finish (on the engine's interim-judgement thread) blocks until
    released and gives all-dead channels; the final finish gives all-live ones."""

    name = "interim_gate"
    results = [Result("gate_frames", int), Result("gate_map", np.float64, kind="spectrum", run_summary=True,
                                                  archive=False)]

    def process(self, frame, params, context):
        return FrameOutput({"gate_frames": 1})

    def new_accumulator(self):
        return 0

    def accumulate(self, acc, output, params):
        return acc + 1

    def merge(self, a, b):
        return a + b

    def finish(self, acc):
        if threading.current_thread().name.startswith("dqm-interim"):
            INTERIM_STARTED.set()
            INTERIM_RELEASE.wait(60)
            return {"gate_map": np.zeros(4)}
        return {"gate_map": np.ones(4)}
