"""tango-dqm: live data-quality monitoring for detector streams (core, no Tango)."""
from importlib.metadata import PackageNotFoundError, version as _version

from .frames import Frame
from .params import Parameter, ParameterError, Params, ParamType
from .plugin import Analysis, PluginError, Result, load_analysis
from .roi import Roi, RoiError, parse_roi

try:
    __version__ = _version("tango-dqm")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "Analysis", "Frame", "Parameter", "ParameterError", "Params", "ParamType", "PluginError",
    "Result", "Roi", "RoiError", "load_analysis", "parse_roi", "__version__",
]
