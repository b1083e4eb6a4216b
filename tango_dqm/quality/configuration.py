"""Checks from plain dicts or JSON (:func:`checks_from_config`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


from .checks import ChannelCheck, Check, LossCheck, RangeCheck, ReferenceCheck, StalenessCheck


CHECK_TYPES: dict[str, type] = {"range": RangeCheck, "staleness": StalenessCheck,
                                 "reference": ReferenceCheck, "channels": ChannelCheck, "loss": LossCheck}
_REQUIRED = {"range": ("result",), "staleness": ("timeout_s",), "reference": ("result",),
             "channels": ("result",), "loss": ()}
_FIELDS = {
    "range": ("result", "warning", "error", "min_entries", "tolerance", "name", "max_frames_listed"),
    "staleness": ("timeout_s", "name", "grace_s"),
    "loss": ("warning", "error", "name", "max_ranges_listed"),
    "reference": ("result", "method", "warning_p", "error_p", "min_entries", "name", "reference"),
    "channels": ("result", "dead_below", "noisy_above", "max_bad_warning", "max_bad_error", "min_frames",
                 "name", "max_listed"),
}


def checks_from_config(config: Any) -> list[Check]:
    """Build checks from plain data: a list of dicts, a list of JSON strings (one per line of a
    Tango string-array property), a JSON string of a list, or one dict. Each dict has ``type``
    (range, staleness, reference, channels) and the fields of that check type.

    Raises ValueError naming the check (``quality check #N``, 1-based, and its name) and the field.
    """
    if isinstance(config, (bytes, bytearray)):
        config = config.decode()
    if isinstance(config, str):
        try:
            config = json.loads(config) if config.strip() else []
        except json.JSONDecodeError as exc:
            raise ValueError(f"quality checks: invalid JSON: {exc}") from None
    if isinstance(config, Mapping):
        config = [config]
    if not isinstance(config, (list, tuple)):
        raise ValueError(f"quality checks: expected a list of check objects, got {type(config).__name__}")
    checks: list[Check] = []
    for i, item in enumerate(config, 1):
        if isinstance(item, str):
            if not item.strip():
                continue  # an empty line of a string-array property
            try:
                item = json.loads(item)
            except json.JSONDecodeError as exc:
                raise ValueError(f"quality check #{i}: invalid JSON: {exc}") from None
        if not isinstance(item, Mapping):
            raise ValueError(f"quality check #{i}: must be an object like "
                             f'{{"type": "range", "result": ..., "warning": [min, max]}}, got {item!r}')
        typ = item.get("type")
        label = f"quality check #{i}"
        if typ not in CHECK_TYPES:
            raise ValueError(f"{label}: field 'type': must be one of {', '.join(CHECK_TYPES)}, got {typ!r}")
        what = item.get("name") or item.get("result")
        label += f" ({typ}{f' {what!r}' if isinstance(what, str) else ''})"
        unknown = sorted(set(item) - {"type"} - set(_FIELDS[typ]))
        if unknown:
            raise ValueError(f"{label}: unknown field(s) {', '.join(map(repr, unknown))}; "
                             f"allowed for {typ}: {', '.join(_FIELDS[typ])}")
        for req in _REQUIRED[typ]:
            if req not in item:
                raise ValueError(f"{label}: field {req!r} is required")
        kwargs = {k: v for k, v in item.items() if k != "type"}
        try:
            checks.append(CHECK_TYPES[typ](**kwargs))
        except ValueError as exc:
            raise ValueError(f"{label}: {exc}") from None
    _check_unique(checks)
    return checks


def _check_unique(checks: Sequence[Check]) -> None:
    seen: set[str] = set()
    for c in checks:
        if c.name in seen:
            raise ValueError(f"quality checks: two checks are named {c.name!r}; give one a distinct 'name'")
        seen.add(c.name)
    if sum(isinstance(c, StalenessCheck) for c in checks) > 1:
        raise ValueError("quality checks: at most one staleness check")
    if sum(isinstance(c, LossCheck) for c in checks) > 1:
        raise ValueError("quality checks: at most one loss check")


# ---- the monitor ----------------------------------------------------------------------------
