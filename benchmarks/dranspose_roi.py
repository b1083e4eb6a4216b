"""dranspose side of bench_replay: a source, an ROI worker and a reducer for ``dranspose replay``.

Runs inside benchmarks/.venv-dranspose (dranspose, numpy, h5py; no tango_dqm), started by
bench_replay as

    dranspose replay -w benchmarks.dranspose_roi:RoiWorker -r benchmarks.dranspose_roi:RoiReducer
                     -s benchmarks.dranspose_roi:H5Source

with DQM_BENCH_H5 (the recorded file), DQM_BENCH_ROIS (JSON: signal and background ROIs,
[offset_x, size_x, offset_y, size_y]) and DQM_BENCH_OUT (where the reducer writes its timing).

The source reads every frame of the file into memory first, as STINS messages (header +
raw part), so only dranspose's event loop, parsing and the worker are timed. The worker
computes what tango-dqm's roi analysis does on every frame: sum, mean, std, min, max of
the signal and background regions, net signal, frame min/max and saturated pixels (numpy).
The reducer keeps the per-frame results and times the first and the last one.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

SATURATION = 65535


class H5Source:
    """All frames of DQM_BENCH_H5 as STINS InternalWorkerMessages, built before the replay starts."""

    def __init__(self) -> None:
        import h5py
        import zmq
        from dranspose.data.stream1 import Stream1End, Stream1Start
        from dranspose.event import InternalWorkerMessage, StreamData

        with h5py.File(os.environ["DQM_BENCH_H5"], "r") as f:
            data = f["/entry/data/data"][()]
        self.messages = [InternalWorkerMessage(event_number=0, streams={
            "det": Stream1Start(filename="", msg_number=0).to_stream_data()})]
        for i, image in enumerate(data):
            header = json.dumps({"htype": "image", "msg_number": i + 1, "frame": i, "shape": list(image.shape),
                                 "type": str(image.dtype), "compression": "none"}).encode()
            frames = [zmq.Frame(header), zmq.Frame(np.ascontiguousarray(image))]
            self.messages.append(InternalWorkerMessage(event_number=i + 1,
                                                       streams={"det": StreamData(typ="STINS", frames=frames)}))
        self.messages.append(InternalWorkerMessage(event_number=len(data) + 1, streams={
            "det": Stream1End(msg_number=len(data) + 1).to_stream_data()}))

    def get_source_generators(self) -> list:
        return [iter(self.messages)]


def _stats(region: np.ndarray, prefix: str) -> dict[str, float]:
    # fast numpy: one exact int64 copy, the sum of squares by einsum (a BLAS dot product
    # spins OpenBLAS threads, which on a loaded 2-core machine is 20x slower)
    values = region.astype(np.int64).ravel()
    n = values.size
    total = float(values.sum())
    mean = total / n
    var = max(float(np.einsum("i,i->", values, values)) / n - mean * mean, 0.0)
    return {f"{prefix}_sum": total, f"{prefix}_mean": mean, f"{prefix}_std": var ** 0.5,
            f"{prefix}_min": float(region.min()), f"{prefix}_max": float(region.max())}


class RoiWorker:
    """The roi analysis as a dranspose worker."""

    def __init__(self, **kwargs: Any) -> None:
        rois = json.loads(os.environ["DQM_BENCH_ROIS"])
        self.rois = {name: (slice(r[2], r[2] + r[3]), slice(r[0], r[0] + r[1])) for name, r in rois.items()}

    def process_event(self, event: Any, parameters: Any = None, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        from dranspose.data.stream1 import Stream1Data
        from dranspose.middlewares import stream1

        if "det" not in event.streams:
            return None
        packet = stream1.parse(event.streams["det"])
        if not isinstance(packet, Stream1Data):
            return None
        image = packet.data
        out: dict[str, Any] = {"frame": packet.frame}
        out.update(_stats(image[self.rois["signal"]], "signal"))
        out.update(_stats(image[self.rois["background"]], "background"))
        area = image[self.rois["signal"]].size
        out["net_signal"] = out["signal_sum"] - out["background_mean"] * area
        out["frame_min"], out["frame_max"] = float(image.min()), float(image.max())
        out["saturated_pixels"] = int(np.count_nonzero(image >= SATURATION))
        return out

    def finish(self, parameters: Any = None) -> None:
        pass


class RoiReducer:
    """Keeps every frame's results; times the first and last, written to DQM_BENCH_OUT at the end."""

    def __init__(self, **kwargs: Any) -> None:
        self.publish: dict[str, Any] = {"results": []}
        self.first: float | None = None
        self.last: float | None = None

    def process_result(self, result: Any, parameters: Any = None) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        if result.payload:
            self.publish["results"].append(result.payload)

    def finish(self, parameters: Any = None) -> None:
        frames = len(self.publish["results"])
        with open(os.environ["DQM_BENCH_OUT"], "w") as f:
            json.dump({"frames": frames, "first": self.first, "last": self.last,
                       "last_net_signal": self.publish["results"][-1]["net_signal"] if frames else None}, f)
