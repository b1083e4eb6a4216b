"""ROI statistics: signal and background regions, full-frame extrema, saturation.

| parameter          | type | default | meaning                                        |
|--------------------|------|---------|------------------------------------------------|
| roi_signal         | roi  | []      | signal region [offset_x, size_x, offset_y, size_y]; [] disables |
| roi_background     | roi  | []      | background region, same format                 |
| saturation_level   | int  | 65535   | pixels >= this count as saturated              |
| mask               | file | ""      | pixels to exclude from the ROI statistics (shared) |
| dark               | file | ""      | image subtracted before the ROI statistics (shared) |
| roi_normalisation  | str  | ""      | `i0` (a stream of the event) or `meta:NAME` (a channel of the frame) |

Results (scalars): ``signal_{sum,mean,std,min,max}``, ``background_{...}``,
``net_signal`` = signal_sum - background_mean * signal area (signal_sum when the
background ROI is disabled), ``net_signal_normalised`` (net_signal divided by the
normalisation value), ``frame_min``, ``frame_max``, ``saturated_pixels``.
A disabled ROI gives NaN for its results.
"""
from __future__ import annotations

from typing import Any

from tango_dqm import (
    DARK,
    MASK,
    Analysis,
    Frame,
    FrameOutput,
    Parameter,
    Params,
    Result,
    ScalarSeries,
    frame_min_max_count,
    region_stats,
    region_values,
)

_STATS = ("sum", "mean", "std", "min", "max")
_NAN = float("nan")


_STAT_TEXT = {"sum": "sum of the", "mean": "mean of the", "std": "standard deviation of the",
              "min": "smallest of the", "max": "largest of the"}


# per scan point: counts add up, extremes stay extremes, the rest is averaged
_POINT = {"sum": "sum", "mean": "mean", "std": "mean", "min": "min", "max": "max"}


def _region_results(prefix: str, label: str) -> list[Result]:
    return [Result(f"{prefix}_{s}", float, unit="counts", label=f"{label} {s}", format="%.6g",
                   description=f"{_STAT_TEXT[s]} dark-corrected, unmasked pixel values in the {prefix} ROI "
                               "(NaN when the ROI is disabled)", point=_POINT[s])
            for s in _STATS]


def normaliser(frame: Frame, spec: str) -> float | None:
    """The value to divide by: ``meta:NAME`` (a scalar channel travelling with the frame, as
    bsread sends them) or the first value of stream ``spec`` in this event (an I0 monitor)."""
    if not spec:
        return None
    if spec.startswith("meta:"):
        value = frame.meta.get(spec[5:])
    else:
        partner = frame.stream_frame(spec)
        value = None if partner is None else partner.data.reshape(-1)[0]
    try:
        value = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if value == value and value != 0.0 else None


class RoiStats(Analysis):
    """Signal/background ROI statistics, net signal and saturation on every frame."""

    name = "roi"
    version = "1"
    parameters = [
        Parameter("roi_signal", "roi", [], label="Signal ROI", unit="pixels", format="%d",
                  description="[offset_x, size_x, offset_y, size_y]; [] disables"),
        Parameter("roi_background", "roi", [], label="Background ROI", unit="pixels", format="%d",
                  description="[offset_x, size_x, offset_y, size_y]; [] disables"),
        Parameter("saturation_level", int, 65535, unit="counts", label="Saturation level", format="%d",
                  description="pixels at or above this value count as saturated", min=0),
        Parameter("roi_normalisation", str, "", label="Normalisation",
                  description="divide net_signal by: a stream of the event (e.g. i0) or a scalar channel "
                              "of the frame (meta:NAME); empty: off"),
        MASK,
        DARK,
    ]
    results = [
        *_region_results("signal", "Signal"),
        *_region_results("background", "Background"),
        Result("net_signal", float, unit="counts", label="Net signal", format="%.6g",
               description="signal_sum - background_mean * signal area", point="sum"),
        Result("net_signal_normalised", float, label="Normalised net signal", format="%.6g", dimensionless=True,
               description="net_signal / the roi_normalisation value (NaN when off or missing)"),
        Result("frame_min", float, unit="counts", label="Frame minimum", format="%.6g",
               description="smallest pixel value of the whole frame", point="min"),
        Result("frame_max", float, unit="counts", label="Frame maximum", format="%.6g",
               description="largest pixel value of the whole frame", point="max"),
        Result("saturated_pixels", int, unit="pixels", label="Saturated pixels", format="%d",
               description="pixels of the whole frame at or above saturation_level", point="max"),
    ]

    def process(self, frame: Frame, params: Params, context: Any = None) -> FrameOutput:
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
        norm = normaliser(frame, params.roi_normalisation)
        out["net_signal_normalised"] = out["net_signal"] / norm if norm else _NAN
        mn, mx, nsat = frame_min_max_count(frame, params.saturation_level)  # shared with pixels
        out["frame_min"], out["frame_max"], out["saturated_pixels"] = mn, mx, nsat
        return FrameOutput(out)

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

    def accumulate(self, acc: ScalarSeries, output: FrameOutput, params: Params) -> ScalarSeries:
        return acc.add(output.results)

    def merge(self, a: ScalarSeries, b: ScalarSeries) -> ScalarSeries:
        return a.merged(b)

    def finish(self, acc: ScalarSeries) -> dict[str, Any]:
        return acc.summary()


__all__ = ["RoiStats"]
