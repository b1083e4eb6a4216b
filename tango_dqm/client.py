"""Scripting client for DataQualityMonitor devices: the stable import name.

::

    from tango_dqm.client import MonitorClient, MonitorError, InvalidValue

    dqm = MonitorClient("dqm/monitor/demo")
    scan_id = dqm.start()            # blocks until the scan has finished (CLOSE)
    print(dqm.snapshot())            # state, status, counters, verdict, every result

The implementation lives in :mod:`tango_dqm.devices.client`, because only
``tango_dqm.devices`` may import ``tango``: this module loads it on first use of a
name, so importing ``tango_dqm`` (the core) never pulls in ``tango``. See
:class:`tango_dqm.devices.client.MonitorClient` for the full API.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["MonitorClient", "MonitorError", "InvalidValue", "CommandNotAllowed", "NotConfigured",
           "ScanFault", "MonitorTimeout", "COUNTERS", "STATIC_ATTRIBUTES"]

_IMPLEMENTATION = "tango_dqm.devices.client"


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(importlib.import_module(_IMPLEMENTATION), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
