"""ROI statistics: signal and background regions, full-frame extrema, saturation.

| parameter          | type | default | meaning                                        |
|--------------------|------|---------|------------------------------------------------|
| roi_signal         | roi  | []      | signal region [offset_x, size_x, offset_y, size_y]; [] disables |
| roi_background     | roi  | []      | background region, same format                 |
| saturation_level   | int  | 65535   | pixels >= this count as saturated              |
| mask               | file | ""      | pixels to exclude from the ROI statistics (shared) |
| dark               | file | ""      | image subtracted before the ROI statistics (shared) |

Results (scalars): ``signal_{sum,mean,std,min,max}``, ``background_{...}``,
``net_signal`` = signal_sum - background_mean * signal area (signal_sum when the
background ROI is disabled), ``frame_min``, ``frame_max``, ``saturated_pixels``.
A disabled ROI gives NaN for its results.
"""
from __future__ import annotations

from typing import Any

from tango_dqm import Analysis, Frame, Parameter, Params, Result
from tango_dqm.accumulators import ScalarSeries
from tango_dqm.corrections import DARK, MASK, region_values
from tango_dqm.kernels import region_stats, min_max_count_above

_STATS = ("sum", "mean", "std", "min", "max")
_NAN = float("nan")


def _region_results(prefix: str, label: str) -> list[Result]:
    return [Result(f"{prefix}_{s}", float, unit="counts", label=f"{label} {s}") for s in _STATS]


class RoiStats(Analysis):
    """Signal/background ROI statistics, net signal and saturation on every frame."""

    name = "roi"
    version = "1"
    parameters = [
        Parameter("roi_signal", "roi", [], label="Signal ROI",
                  description="[offset_x, size_x, offset_y, size_y]; [] disables"),
        Parameter("roi_background", "roi", [], label="Background ROI",
                  description="[offset_x, size_x, offset_y, size_y]; [] disables"),
        Parameter("saturation_level", int, 65535, unit="counts", label="Saturation level",
                  description="pixels at or above this value count as saturated", min=0),
        MASK,
        DARK,
    ]
    results = [
        *_region_results("signal", "Signal"),
        *_region_results("background", "Background"),
        Result("net_signal", float, unit="counts", label="Net signal",
               description="signal_sum - background_mean * signal area"),
        Result("frame_min", float, unit="counts", label="Frame minimum"),
        Result("frame_max", float, unit="counts", label="Frame maximum"),
        Result("saturated_pixels", int, unit="pixels", label="Saturated pixels"),
    ]

    def process(self, frame: Frame, params: Params) -> dict[str, Any]:
        image = frame.data
        out: dict[str, Any] = {}
        signal = self._region(image, params, params.roi_signal, "roi_signal", "signal", out)
        background = self._region(image, params, params.roi_background, "roi_background", "background", out)
        if signal is None:
            out["net_signal"] = _NAN
        elif background is None:
            out["net_signal"] = signal.sum
        else:
            out["net_signal"] = signal.sum - background.mean * signal.count
        mn, mx, nsat = min_max_count_above(image, params.saturation_level)
        out["frame_min"], out["frame_max"], out["saturated_pixels"] = mn, mx, nsat
        return out

    @staticmethod
    def _region(image, params: Params, roi, param_name: str, prefix: str, out: dict[str, Any]):
        if roi is None:
            out.update({f"{prefix}_{s}": _NAN for s in _STATS})
            return None
        roi.check_fits(image.shape, param_name)  # RoiError names the rule
        stats = region_stats(region_values(image, params, roi.slices()))  # dark-subtracted, unmasked pixels
        out.update({f"{prefix}_{s}": getattr(stats, s) for s in _STATS})
        return stats

    def new_accumulator(self) -> ScalarSeries:
        return ScalarSeries()

    def accumulate(self, acc: ScalarSeries, frame_results: dict[str, Any]) -> ScalarSeries:
        return acc.add(frame_results)

    def merge(self, a: ScalarSeries, b: ScalarSeries) -> ScalarSeries:
        return a.merged(b)

    def finish(self, acc: ScalarSeries) -> dict[str, Any]:
        return acc.summary()


__all__ = ["RoiStats"]
