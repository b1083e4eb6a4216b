"""Data-quality checks and verdicts (core: numpy and scipy, never ``tango``).

Designed after CMS DQM quality tests and ATLAS ``dqm_algorithms``: a list of small,
declarative checks, each judging one result and giving a :class:`CheckResult`
(name, verdict, value, limits, message, frames); a :class:`QualityMonitor` holds the
checks of one device, is fed every frame, and combines them, the worst verdict winning.

Verdicts, in order of severity (``Verdict`` is an ``IntEnum``; the per-frame flag is
its integer value)::

    OK (0) < INSUFFICIENT (1) < WARNING (2) < ERROR (3) < STALE (4)

- ``OK``: every check has enough statistics and passes.
- ``INSUFFICIENT``: a check cannot judge yet (fewer than ``min_entries`` values, no
  reference loaded, no check configured). It is above OK, so a run is never called OK
  while part of it is unjudged, and below WARNING, so a check that is still filling up
  never hides a WARNING or ERROR found by another check.
- ``WARNING`` / ``ERROR``: a check failed its warning / error limits.
- ``STALE``: no frame for ``timeout_s`` seconds while RUNNING. It is the loudest: every
  other verdict then describes old data, and "the stream stopped while we think we are
  taking data" is what an operator must act on first. The report still lists the
  other failing checks, so an ERROR is never lost behind STALE.

Mapping onto Tango (the device does it; this module never imports ``tango``):

- A :class:`RangeCheck`'s ``warning`` and ``error`` ranges are exactly Tango's
  ``min_warning``/``max_warning`` and ``min_alarm``/``max_alarm`` attribute properties
  (error <-> alarm), with Tango's semantics: a value is outside when it is at or below
  the minimum or at or above the maximum; either side may be open (``None``).
  :meth:`RangeCheck.tango_properties` gives the property strings, and
  :meth:`RangeCheck.from_result` builds a check from a plugin ``Result``'s default
  ``warning``/``alarm`` ranges, so the attribute quality Tango computes per frame and the
  per-frame flag computed here always agree.
- :attr:`Verdict.tango_quality` names the ``AttrQuality`` for the ``verdict`` attribute
  (OK, INSUFFICIENT -> ATTR_VALID; WARNING -> ATTR_WARNING; ERROR, STALE -> ATTR_ALARM).
  Alternatively, publish ``int(verdict)`` in a DevShort attribute with
  :data:`VERDICT_ALARM_PROPERTIES` (max_warning 1, max_alarm 2): Tango then computes the
  quality itself and drives the device to ALARM through a standard attribute alarm.

Determinism: per-frame flags and range, reference and channel verdicts depend only on
frame ids and data. Staleness alone depends on the clock (it is about the live stream,
not the data); it is evaluated at read time with an explicit ``now`` and is never
written into per-frame flags.

Checks are configured from plain dicts or JSON (a Tango string-array property with one
JSON object per line works as is), see :func:`checks_from_config`.
"""
from __future__ import annotations

from .checks import (Check, CheckResult, ChannelCheck, Evidence, LossCheck, RangeCheck, ReferenceCheck, StalenessCheck,
                     format_id_ranges, range_verdict)
from .configuration import CHECK_TYPES, checks_from_config
from .monitor import Coverage, QualityMonitor, QualitySnapshot
from .statistics import chi2_two_histograms, ks_two_histograms
from .verdicts import TANGO_QUALITY, VERDICT_ALARM_PROPERTIES, Verdict, worst

# The layout: verdicts (Verdict, its Tango quality names) <- statistics <- checks <- configuration <- monitor;
# references (the reference store) stands apart and imports none of them.

__all__ = [
    "CHECK_TYPES", "ChannelCheck", "Check", "CheckResult", "Coverage", "Evidence", "LossCheck", "QualityMonitor",
    "QualitySnapshot", "format_id_ranges",
    "RangeCheck", "ReferenceCheck", "range_verdict", "StalenessCheck", "TANGO_QUALITY", "VERDICT_ALARM_PROPERTIES",
    "Verdict", "checks_from_config", "chi2_two_histograms", "ks_two_histograms", "worst",
]
