"""Detector orchestration for Live and Stop: the detectors named in the ``detectors`` property.

Live reaches every selected detector first (nothing is started unless all answer), then
starts the engine, then calls ``Live`` on each detector; when one fails, the detectors
already started are stopped and the engine is stopped too, so nothing is left half
started. Stop stops the detectors a Live started. Proxies come from a factory, so tests
drive this with fake detectors; the device passes :func:`tango_proxy`.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Protocol

import tango

log = logging.getLogger(__name__)

#: how long a detector may take to answer a ping or a command (ms)
TIMEOUT_MS = 3000
#: the monitor's boolean attribute ``live_<stream>`` selects the stream's detector for Live
LIVE_PREFIX = "live_"


def live_attribute(stream: str) -> str:
    """Name of the attribute that selects ``stream``'s detector (``live_<stream>``)."""
    return LIVE_PREFIX + stream


def live_stream(attribute_name: str) -> str:
    """The stream a ``live_<stream>`` attribute selects."""
    return attribute_name[len(LIVE_PREFIX):]


class DetectorProxy(Protocol):
    """What the orchestration uses of a ``tango.DeviceProxy``."""

    def ping(self) -> int: ...

    def command_inout(self, name: str) -> object: ...

    def dev_name(self) -> str: ...


ProxyFactory = Callable[[str], DetectorProxy]


def tango_proxy(name: str) -> DetectorProxy:
    """A real proxy to detector device ``name`` with a short timeout."""
    proxy = tango.DeviceProxy(name)
    proxy.set_timeout_millis(TIMEOUT_MS)
    return proxy


class DetectorError(Exception):
    """Live refused or failed because of a detector; ``reason`` is the DevFailed reason."""

    def __init__(self, reason: str, desc: str):
        super().__init__(desc)
        self.reason = reason
        self.desc = desc


def parse_detectors(text: str, streams: list[str]) -> dict[str, str]:
    """The ``detectors`` property (JSON ``{"stream": "device/name"}``); ValueError names the rule."""
    try:
        mapping = json.loads(text or "{}")
    except ValueError as exc:
        raise ValueError(f"detectors must be JSON like {{\"det\": \"dqm/sim/1\"}}: {exc}") from None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in mapping.items()):
        raise ValueError('detectors must be a JSON object {"stream": "device/name"}')
    unknown = sorted(set(mapping) - set(streams))
    if unknown:
        raise ValueError(f"detectors names streams {unknown} that are not in Sources ({sorted(streams)})")
    return mapping


def _why(exc: Exception) -> str:
    if isinstance(exc, tango.DevFailed):
        return " ".join(exc.args[0].desc.split())
    return f"{type(exc).__name__}: {exc}"


class Detectors:
    """The detectors of one monitor device (stream -> device name) and those a Live started."""

    def __init__(self, names: Mapping[str, str], factory: ProxyFactory = tango_proxy,
                 warn: Callable[[str], None] = log.warning):
        self.names = dict(names)
        self._factory = factory
        self._warn = warn
        self.running: list[DetectorProxy] = []  # started by the last Live, stopped by Stop
        #: why the last Live was refused, shown in Status until a Live or Start succeeds
        self.note = ""

    def selected(self, flags: Mapping[str, bool]) -> dict[str, str]:
        """The detectors whose ``live_<stream>`` flag is set."""
        return {s: d for s, d in self.names.items() if flags.get(s)}

    def start(self, selected: Mapping[str, str], origin: str, start_engine: Callable[[], str],
              stop_engine: Callable[[], None]) -> str:
        """Reach every selected detector, start the engine, then Live on each; all or nothing.

        Raises DetectorError (nothing left started); whatever ``start_engine`` raises passes through."""
        proxies = self._reach(selected, origin)
        scan_id = start_engine()
        started: list[DetectorProxy] = []
        for stream, proxy in proxies.items():
            try:
                proxy.command_inout("Live")
            except Exception as exc:  # noqa: BLE001 - a detector failing its Live rolls everything back
                for other in started:
                    self._stop(other)
                stop_engine()
                self.note = (f"Live on detector {selected[stream]} (stream {stream}) failed: {_why(exc)}; "
                             "check the detector, then Live again")
                raise DetectorError("DQM_DetectorFailed", f"{self.note}. Nothing was started") from None
            started.append(proxy)
        self.running = started
        self.note = ""
        return scan_id

    def stop(self) -> None:
        """Stop the detectors the last Live started (a failure is only warned about)."""
        running, self.running = self.running, []
        for proxy in running:
            self._stop(proxy)

    def _reach(self, selected: Mapping[str, str], origin: str) -> dict[str, DetectorProxy]:
        proxies = {}
        for stream, name in selected.items():
            try:
                proxy = self._factory(name)
                proxy.ping()
            except Exception as exc:  # noqa: BLE001 - unreachable, whatever the cause
                self.note = (f"{origin} refused: detector {name} (stream {stream}) is unreachable ({_why(exc)}); "
                             f"start its server (Astor) or write {live_attribute(stream)} = False, then {origin} again")
                raise DetectorError("DQM_DetectorUnreachable", f"{self.note}. Nothing was started") from None
            proxies[stream] = proxy
        return proxies

    def _stop(self, proxy: DetectorProxy) -> None:
        try:
            proxy.command_inout("Stop")
        except Exception as exc:  # noqa: BLE001 - Stop goes on with the other detectors
            self._warn(f"Stop on detector {proxy.dev_name()} failed: {_why(exc)}")
