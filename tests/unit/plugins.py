"""Test plugins, loaded by ``module:Class`` like a user's own analysis."""
import hashlib

import numpy as np

from tango_dqm import Analysis, Parameter, Result


class FailOnFrame3(Analysis):
    """Raises on frame 3; counts frames in its accumulator."""

    name = "fail_on_3"
    parameters = [Parameter("fail_frame", int, 3, min=0)]
    results = [Result("fail_test_value", float)]

    def process(self, frame, params):
        if frame.frame_id == params.fail_frame:
            raise RuntimeError("boom on purpose")
        return {"fail_test_value": float(frame.frame_id)}

    def new_accumulator(self):
        return 0

    def accumulate(self, acc, frame_results):
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

    def process(self, frame, params):
        m = float(frame.data.mean())
        return {"scaled_mean": (m if params.scale_mode == "linear" else m * m) * params.scale}


class IntensityHistogram(Analysis):
    """Histogram of the frame values in 64 bins of width 4 (a spectrum), accumulated over the run."""

    name = "test_hist"
    results = [Result("test_hist_counts", "int64", kind="spectrum")]

    def process(self, frame, params):
        values = frame.data.ravel().astype("int64") // 4
        return {"test_hist_counts": np.bincount(np.clip(values, 0, 63), minlength=64)}

    def new_accumulator(self):
        return np.zeros(64, np.int64)

    def accumulate(self, acc, frame_results):
        return acc + frame_results["test_hist_counts"]

    def merge(self, a, b):
        return a + b

    def finish(self, acc):
        return {"test_hist_counts": acc}


class FrameRecorder(Analysis):
    """Records every frame's id and content digest (test-only analysis)."""

    name = "recorder"
    results = [Result("rec_frame_id", int), Result("rec_digest", str)]

    def process(self, frame, params):
        return {"rec_frame_id": int(frame.frame_id),
                "rec_digest": hashlib.sha1(np.ascontiguousarray(frame.data).tobytes()).hexdigest()}

    def new_accumulator(self):
        return []

    def accumulate(self, acc, r):
        acc.append((r["rec_frame_id"], r["rec_digest"]))
        return acc

    def merge(self, a, b):
        return a + b

    def finish(self, acc):
        return {"recorded": list(acc)}
