"""tango-dqm: live data-quality monitoring for detector streams (core, no Tango).

Everything an analysis plugin needs is importable from here, in one line:
``from tango_dqm import Analysis, FrameOutput, Parameter, Result, region_stats, ...``.
"""
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from .accumulators import RunningStats, ScalarSeries
from .corrections import DARK, MASK, corrected, region_values
from .frames import Frame
from .kernels import RegionStats, as_2d, frame_min_max_count, min_max_count_above, region_stats, row_view
from .params import Parameter, ParameterError, Params, ParamType
from .plugin import Analysis, FrameOutput, PluginError, Result, load_analysis
from .roi import Roi, RoiError, parse_roi

try:
    __version__ = _version("tango-dqm")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "DARK", "MASK", "Analysis", "Frame", "FrameOutput", "ParamType", "Parameter", "ParameterError", "Params",
    "PluginError", "RegionStats", "Result", "Roi", "RoiError", "RunningStats", "ScalarSeries", "__version__",
    "as_2d", "corrected", "frame_min_max_count", "load_analysis", "min_max_count_above", "parse_roi", "region_stats",
    "region_values", "row_view",
]
