"""Map declared parameters and results onto Tango attribute definitions.

``describe_attributes`` builds the dynamic attribute set of a device offline, with the same
functions the device uses, so a declaration Tango refuses is found before deployment.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import tango

from tango_dqm.params import Parameter, ParamType
from tango_dqm.plugin import Result

MAX_SPECTRUM = 1 << 16
MAX_IMAGE = 8192

_PARAM_TYPES = {
    ParamType.INT: (tango.CmdArgType.DevLong64, False),
    ParamType.FLOAT: (tango.CmdArgType.DevDouble, False),
    ParamType.BOOL: (tango.CmdArgType.DevBoolean, False),
    ParamType.STR: (tango.CmdArgType.DevString, False),
    ParamType.ENUM: (tango.CmdArgType.DevEnum, False),
    ParamType.INT_ARRAY: (tango.CmdArgType.DevLong64, True),
    ParamType.FLOAT_ARRAY: (tango.CmdArgType.DevDouble, True),
    ParamType.ROI: (tango.CmdArgType.DevLong, True),
    ParamType.FILE: (tango.CmdArgType.DevString, False),
}


def _props(label: str, unit: str, description: str, fmt: str = "") -> tango.UserDefaultAttrProp:
    p = tango.UserDefaultAttrProp()
    if label:
        p.set_label(label)
    if unit:
        p.set_unit(unit)
    if description:
        p.set_description(description)
    if fmt:
        p.set_format(fmt)
    return p


def result_description(result: Result) -> str:
    """The attribute description: the declared text, plus the x axis it is plotted against."""
    text = result.description
    if result.axis:
        text = f"{text}; x axis: {result.axis}" if text else f"x axis: {result.axis}"
    return text


def parameter_attr(param: Parameter) -> tango.Attr:
    """A writable attribute for a parameter; scalars are memorized (arrays go to a property)."""
    dtype, is_array = _PARAM_TYPES[param.type]
    w = tango.AttrWriteType.READ_WRITE
    if is_array:
        size = 4 if param.type is ParamType.ROI else (param.length or MAX_SPECTRUM)
        attr: tango.Attr = tango.SpectrumAttr(param.name, dtype, w, size)
    else:
        attr = tango.Attr(param.name, dtype, w)
    props = _props(param.label, param.unit, param.description, param.format)
    if param.min is not None:
        props.set_min_value(repr(param.min) if param.type is ParamType.FLOAT else str(int(param.min)))
    if param.max is not None:
        props.set_max_value(repr(param.max) if param.type is ParamType.FLOAT else str(int(param.max)))
    if param.type is ParamType.ENUM:
        props.set_enum_labels(list(param.choices))
    attr.set_default_properties(props)
    if not is_array:
        # Tango stores each write in the __value attribute property; the device restores
        # it itself at Init (Tango's memorized_init writes 0 into dynamic attributes re-added
        # by the Init command).
        attr.set_memorized()
        attr.set_memorized_init(False)
    return attr


def memorized_value(param: Parameter, raw: str) -> Any:
    """Parse a ``__value`` attribute property (always a string) into a parameter value."""
    if param.type is ParamType.BOOL:
        return raw.strip().lower() in ("1", "true")
    if param.type in (ParamType.INT, ParamType.ENUM):
        return int(float(raw))
    if param.type is ParamType.FILE:
        return raw.strip()
    if param.type is ParamType.FLOAT:
        return float(raw)
    return raw


def result_attr(result: Result, warning=None, error=None) -> tango.Attr:
    """A read-only attribute for a result, with change (and for scalars archive) events pushed."""
    kind = result.dtype.kind
    if kind in "US":
        dtype = tango.CmdArgType.DevString
    elif kind in "iu":
        dtype = tango.CmdArgType.DevLong64 if result.kind == "scalar" else _array_int_type(result.dtype)
    elif kind == "b":
        dtype = tango.CmdArgType.DevBoolean
    else:
        dtype = tango.CmdArgType.DevDouble if result.dtype.itemsize == 8 or result.kind == "scalar" \
            else tango.CmdArgType.DevFloat
    r = tango.AttrWriteType.READ
    if result.kind == "scalar":
        attr: tango.Attr = tango.Attr(result.name, dtype, r)
    elif result.kind == "spectrum":
        attr = tango.SpectrumAttr(result.name, dtype, r, MAX_SPECTRUM)
    else:
        attr = tango.ImageAttr(result.name, dtype, r, MAX_IMAGE, MAX_IMAGE)
    props = _props(result.label, result.unit, result_description(result), result.format)
    if result.kind == "scalar":
        # defaults: the configured range check, else the plugin's declaration; values
        # stored in the Tango database (edited in Jive) override these
        for (lo, hi), set_lo, set_hi in (
            (warning or result.warning or (None, None), props.set_min_warning, props.set_max_warning),
            (error or result.alarm or (None, None), props.set_min_alarm, props.set_max_alarm),
        ):
            if lo is not None:
                set_lo(_limit(lo, kind, math.ceil))
            if hi is not None:
                set_hi(_limit(hi, kind, math.floor))
    attr.set_default_properties(props)
    attr.set_change_event(True, False)
    if result.kind == "scalar" and result.archive:
        attr.set_archive_event(True, False)
    return attr


def _limit(value: float, kind: str, to_int) -> str:
    """A limit in the format Tango parses for the attribute's type: DevLong64 wants an integer
    ("100", not the "100.0" a range check keeps). A fractional limit from a QualityChecks range
    on an int result is rounded inwards, which flags exactly the same integer values."""
    if kind in "iu":
        return str(int(to_int(value)))
    return repr(float(value))


def _array_int_type(dtype: np.dtype) -> tango.CmdArgType:
    return {1: tango.CmdArgType.DevUChar if dtype.kind == "u" else tango.CmdArgType.DevShort,
            2: tango.CmdArgType.DevUShort if dtype.kind == "u" else tango.CmdArgType.DevShort,
            4: tango.CmdArgType.DevULong if dtype.kind == "u" else tango.CmdArgType.DevLong}.get(
        dtype.itemsize, tango.CmdArgType.DevLong64)


def result_value(result: Result, value: Any) -> tuple[Any, tango.AttrQuality]:
    """The value to give Tango, and INVALID quality when there is none (disabled ROI, no frame yet)."""
    if value is None:
        if result.kind == "scalar":
            return ("" if result.dtype.kind in "US" else 0), tango.AttrQuality.ATTR_INVALID
        return np.zeros((0,) if result.kind == "spectrum" else (0, 0)), tango.AttrQuality.ATTR_INVALID
    if result.dtype.kind in "US":
        return str(value), tango.AttrQuality.ATTR_VALID
    if result.kind == "scalar":
        if isinstance(value, float) and math.isnan(value):
            return value, tango.AttrQuality.ATTR_INVALID
        return value, tango.AttrQuality.ATTR_VALID
    return np.asarray(value), tango.AttrQuality.ATTR_VALID


def parameter_value(param: Parameter, value: Any) -> Any:
    """A canonical parameter value as Tango wants it on read."""
    if param.type is ParamType.ENUM:
        return param.choices.index(value)
    plain = param.to_plain(value)
    if param.is_array:
        return np.asarray(plain, dtype=np.int32 if param.type is ParamType.ROI else
                          (np.int64 if param.type is ParamType.INT_ARRAY else np.float64))
    return plain


@dataclass(frozen=True)
class AttributeInfo:
    """One dynamic attribute as the device builds it (what Jive and Taranta show)."""

    name: str
    analysis: str
    role: str  # "parameter" or "result"
    data_type: str  # Tango type name, e.g. DevDouble
    data_format: str  # SCALAR, SPECTRUM or IMAGE
    writable: bool
    label: str
    unit: str
    description: str
    format: str
    limits: dict[str, str]  # min/max_value, min/max_warning, min/max_alarm that are set


def _info(attr: tango.Attr, analysis: str, role: str) -> AttributeInfo:
    """Read back what Tango kept of the default properties (after its own validation)."""
    props = {p.get_name(): p.get_value() for p in attr.get_user_default_properties()}
    limits = {k: props[k] for k in ("min_value", "max_value", "min_warning", "max_warning", "min_alarm",
                                    "max_alarm") if k in props}
    return AttributeInfo(attr.get_name(), analysis, role, str(tango.CmdArgType.values[attr.get_type()]),
                         str(attr.get_format()), attr.get_writable() != tango.AttrWriteType.READ,
                         props.get("label", ""), props.get("unit", ""), props.get("description", ""),
                         props.get("format", ""), limits)


def device_attribute_names() -> set[str]:
    """Lower-case names of the attributes every DataQualityMonitor (and DataQualityReducer, a monitor
    with a few more) has: State, counters, verdict ..."""
    from tango.server import attribute

    from .reducer import DataQualityReducer  # late: monitor imports this module; the reducer subclasses it
    return {"state", "status"} | {
        (v.attr_name if getattr(v, "attr_name", None) else k).lower()
        for klass in DataQualityReducer.__mro__ for k, v in vars(klass).items() if isinstance(v, attribute)}


def describe_attributes(analyses: Sequence[str], checks: Sequence[Any] = ()) -> list[AttributeInfo]:
    """The parameter and result attributes a DataQualityMonitor with these ``Analyses`` (and
    ``QualityChecks``) adds, built offline exactly as the device does: the engine's
    declarations (shared parameters, clashes refused), then ``parameter_attr`` and
    ``result_attr``, whose ``set_default_properties`` is where Tango refuses a property.

    Raises PluginError (or EngineError) naming the attribute and Tango's reason."""
    from tango_dqm.engine import Engine, EngineConfig  # the engine, as the device configures it
    from tango_dqm.plugin import PluginError

    engine = Engine(EngineConfig(["sim://?frames=1&shape=8x8"], list(analyses), checks=list(checks)))
    try:
        owners = {p.name: a.name for a in reversed(engine.analyses) for p in a.parameters}
        limits = engine.quality.range_limits()
        out = []
        builds: list[tuple[Callable[[], Any], str, str, str]] = [
            (partial(parameter_attr, p), owners[p.name], "parameter", p.name)
            for p in engine.params.declarations.values()]
        builds += [(partial(result_attr, r, *limits.get(n, (None, None))), owner, "result", n)
                   for n, (owner, r) in engine.result_decl.items()]
        for build, owner, role, name in builds:
            try:
                attr = build()
            except tango.DevFailed as exc:
                raise PluginError(f"analysis {owner!r}: {role} {name!r}: Tango refuses the attribute: "
                                  f"{exc.args[0].desc.strip()}") from None
            out.append(_info(attr, owner, role))
        names = [i.name.lower() for i in out]
        clash = sorted({n for n in names if names.count(n) > 1} | (set(names) & device_attribute_names()))
        if clash:
            raise PluginError(f"attribute names used twice or by the device itself (Tango ignores case): {clash}")
        return out
    finally:
        engine.close()
