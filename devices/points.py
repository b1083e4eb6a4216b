"""Scan points on the Tango side: the ``point_<result>`` attributes and their values.

The rules (which frames make a point, how each result is summarised) live in
``tango_dqm.points``; the commands StartPoint/EndPoint are in ``monitor.py``.
"""
from __future__ import annotations

import math
from typing import Any

import tango
from tango import AttrQuality

from tango_dqm.plugin import POINT_PREFIX, Result
from tango_dqm.points import PointRecord

from .mapping import _props


def point_attr(result: Result) -> tango.Attr:
    """The read-only ``point_<result>`` attribute: the result summarised over the last point."""
    kind = result.dtype.kind
    numeric = kind in "iuf"
    dtype = (tango.CmdArgType.DevDouble if numeric
             else tango.CmdArgType.DevBoolean if kind == "b" else tango.CmdArgType.DevString)
    attr = tango.Attr(POINT_PREFIX + result.name, dtype, tango.AttrWriteType.READ)
    label = result.label or result.name
    fmt = result.format if numeric and result.format and "d" not in result.format else ("%.6g" if numeric else "")
    props = _props(f"{label} ({result.point_aggregate} per point)", result.unit,
                   f"{result.name} summarised over the frames of the last scan point ({result.point_aggregate}); "
                   "INVALID before the first point and for a point without frames", fmt)
    attr.set_default_properties(props)
    return attr


def point_value(result: Result, record: PointRecord | None) -> tuple[Any, AttrQuality]:
    """(value, quality) of ``point_<result>`` for the last latched point."""
    kind = result.dtype.kind
    empty = math.nan if kind in "iuf" else (False if kind == "b" else "")
    value = None if record is None else record.values.get(result.name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return empty, AttrQuality.ATTR_INVALID
    if kind in "iuf":
        return float(value), AttrQuality.ATTR_VALID
    return (bool(value) if kind == "b" else str(value)), AttrQuality.ATTR_VALID
