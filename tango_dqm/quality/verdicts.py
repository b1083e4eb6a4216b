"""Verdicts, their order of severity and their one mapping onto Tango quality names."""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Verdict(enum.IntEnum):
    """Quality verdicts ordered by severity: the worst one wins."""

    OK = 0
    INSUFFICIENT = 1
    WARNING = 2
    ERROR = 3
    STALE = 4

    @property
    def tango_quality(self) -> str:
        """Name of the ``tango.AttrQuality`` member matching this verdict."""
        return TANGO_QUALITY[self]


#: The one Verdict -> Tango quality mapping, as ``tango.AttrQuality`` member names (the core never
#: imports tango; devices/ turns the names into AttrQuality once).
TANGO_QUALITY = {
    Verdict.OK: "ATTR_VALID",
    Verdict.INSUFFICIENT: "ATTR_VALID",
    Verdict.WARNING: "ATTR_WARNING",
    Verdict.ERROR: "ATTR_ALARM",
    Verdict.STALE: "ATTR_ALARM",
}

#: Tango attribute properties for an integer ``verdict`` attribute holding ``int(Verdict)``:
#: WARNING (2) is above max_warning, ERROR (3) and STALE (4) above max_alarm.
VERDICT_ALARM_PROPERTIES = {"max_warning": "1", "max_alarm": "2"}


def worst(verdicts: Iterable[Verdict], default: Verdict = Verdict.OK) -> Verdict:
    """The most severe verdict ("worst case wins"); ``default`` if there is none."""
    return max(verdicts, default=default)


Range = tuple[float | None, float | None]
