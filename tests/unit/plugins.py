"""Test plugins, loaded by ``module:Class`` like a user's own analysis."""
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
