"""Scripting client for a DataQualityMonitor device: plain Python calls, Python exceptions.

The stable import name is ``tango_dqm.client`` (it re-exports this module lazily, so the
core package never imports ``tango``)::

    from tango_dqm.client import MonitorClient, InvalidValue

    dqm = MonitorClient("dqm/monitor/demo")
    dqm.set_roi("roi_signal", [462, 100, 462, 100])
    scan_id = dqm.start(progress=lambda s: print(s["counters"]["completedEvents"]))
    print(scan_id, dqm.snapshot()["verdict"], dqm.results()["signal_sum"])
    dqm.archive()

Device errors become exceptions: :class:`InvalidValue` (a refused write; the message is
the rule that was broken, the old value stays), :class:`CommandNotAllowed`,
:class:`NotConfigured`, :class:`ScanFault` (the scan ended in FAULT; the message is the
device's Status), :class:`MonitorTimeout`; all derive from :class:`MonitorError`.
Nothing here runs in the device: it works against any DataQualityMonitor over the network.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import tango
from tango import DevState

__all__ = ["MonitorClient", "MonitorError", "InvalidValue", "CommandNotAllowed", "NotConfigured",
           "ScanFault", "MonitorTimeout", "COUNTERS", "STATIC_ATTRIBUTES"]

#: how long MonitorClient.start waits for a scan to finish unless told otherwise (s)
DEFAULT_SCAN_TIMEOUT = 3600.0
_DEFAULT = object()  # start(timeout=...) not given: the client's scan_timeout

#: counters in :meth:`MonitorClient.snapshot`
COUNTERS = ("totalEvents", "completedEvents", "droppedEvents", "badEvents", "eventRate")

#: the device's own attributes; every other read-only attribute is an analysis result
STATIC_ATTRIBUTES = frozenset({
    "State", "Status", "totalEvents", "completedEvents", "droppedEvents", "badEvents", "eventRate",
    "latency", "scanId", "deployedVersions", "verdict", "verdictReport", "verdictCoverage", "outputFile",
    "referenceVersion", "runSummary", "parameterLog", "httpUrl", "sample", "operator", "proposal",
    "scanMetadata",
})

_INVALID_VALUE_REASONS = frozenset({
    "DQM_InvalidValue", "API_WAttrOutsideLimit", "API_IncompatibleAttrArgumentType",
    "API_IncompatibleArgumentType", "API_AttrNotWritable", "API_WrongNumberOfArgs",
})


class MonitorError(RuntimeError):
    """A DataQualityMonitor refused a request or failed; ``desc`` is the device's explanation."""

    def __init__(self, message: str, *, device: str = "", reason: str = "", desc: str = "", origin: str = ""):
        super().__init__(message)
        self.device = device
        self.reason = reason
        self.desc = desc or message
        self.origin = origin


class InvalidValue(MonitorError, ValueError):
    """A parameter or ROI write was refused; the message is the rule broken, the old value stays."""


class CommandNotAllowed(MonitorError):
    """The command is not allowed in the device's current state (e.g. Reset while RUNNING)."""


class NotConfigured(MonitorError):
    """The device has a configuration error (state FAULT from Init) or lacks a needed property."""


class ScanFault(MonitorError):
    """The scan ended in FAULT; the message holds the device's Status (what failed, how to recover)."""


class MonitorTimeout(MonitorError, TimeoutError):
    """The device did not reach the expected state in time."""


_REASON_CLASSES: dict[str, type[MonitorError]] = {
    "DQM_CommandNotAllowed": CommandNotAllowed,
    "API_CommandNotAllowed": CommandNotAllowed,
    "DQM_NotConfigured": NotConfigured,
    **{reason: InvalidValue for reason in _INVALID_VALUE_REASONS},
}


def _state(value: DevState | str) -> DevState:
    if isinstance(value, DevState):
        return value
    try:
        return DevState.names[str(value).upper()]
    except KeyError:
        raise ValueError(f"unknown Tango state {value!r}; use one of {sorted(DevState.names)}") from None


class MonitorClient:
    """A DataQualityMonitor for scripts: blocking scans, dict snapshots, Python exceptions.

    ``device`` is a device name (``"dqm/monitor/demo"``, ``"tango://host:10000/dqm/monitor/demo"``)
    or an existing :class:`tango.DeviceProxy`. ``timeout`` is the Tango call timeout in
    seconds (each command and attribute read); waits have their own ``timeout`` argument.
    """

    def __init__(self, device: str | tango.DeviceProxy, timeout: float = 10.0, poll_interval: float = 0.1,
                 scan_timeout: float | None = DEFAULT_SCAN_TIMEOUT):
        try:
            self.proxy = device if isinstance(device, tango.DeviceProxy) else tango.DeviceProxy(device)
        except tango.DevFailed as exc:
            raise self._error(exc, f"connect to {device}", device=str(device)) from None
        if timeout:
            self.proxy.set_timeout_millis(int(timeout * 1000))
        self.poll_interval = poll_interval
        #: how long :meth:`start` waits for a scan by default (None: for ever)
        self.scan_timeout = scan_timeout
        self.name = self.proxy.dev_name()
        self._results: list[str] | None = None
        self._verdict_labels: list[str] | None = None

    def __repr__(self) -> str:
        return f"MonitorClient({self.name!r})"

    # ---- error translation ----------------------------------------------------------

    def _error(self, exc: tango.DevFailed, what: str, device: str | None = None) -> MonitorError:
        first = exc.args[0] if exc.args else None
        reason = getattr(first, "reason", "") or ""
        desc = getattr(first, "desc", "") or str(exc)
        origin = getattr(first, "origin", "") or ""
        if reason == "API_DeviceTimedOut":
            return MonitorTimeout(f"{device or self.name}: {what} timed out: {desc.strip()}",
                                  device=device or self.name, reason=reason, desc=desc, origin=origin)
        cls = _REASON_CLASSES.get(reason, MonitorError)
        message = desc.strip() if cls is InvalidValue else f"{device or self.name}: {what} failed: {desc.strip()}"
        return cls(message, device=device or self.name, reason=reason, desc=desc, origin=origin)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except tango.DevFailed as exc:
            raise self._error(exc, what) from None

    def _command(self, name: str, *args: Any) -> Any:
        return self._call(name, self.proxy.command_inout, name, *args)

    # ---- state -----------------------------------------------------------------------

    def state(self) -> DevState:
        return self._call("State", self.proxy.state)

    def status(self) -> str:
        return self._call("Status", self.proxy.status)

    def http_url(self) -> str:
        """URL of the device's read-only HTTP access ("" when its HttpPort property is 0).

        ``h5pyd.File("/", "r", endpoint=url)`` opens the current or last scan's results;
        ``url + "runs/"`` is the run list.
        """
        return self._call("httpUrl", self.proxy.read_attribute, "httpUrl").value or ""

    def wait_state(self, *states: DevState | str, timeout: float | None = 30.0,
                   progress: Callable[[dict[str, Any]], Any] | None = None) -> DevState:
        """Wait until the device is in one of ``states``; returns the state reached.

        Raises :class:`MonitorTimeout` (with the Status) after ``timeout`` seconds (None: no limit).
        ``progress``, if given, is called with a :meth:`snapshot` at every poll.
        """
        if not states:
            raise ValueError("wait_state needs at least one state")
        wanted = {_state(s) for s in states}
        return self._wait(lambda s: s in wanted, timeout, progress,
                          f"one of {sorted(s.name for s in wanted)}")

    def _wait(self, done: Callable[[DevState], bool], timeout: float | None,
              progress: Callable[[dict[str, Any]], Any] | None, what: str) -> DevState:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if progress is not None:
                snap = self.snapshot()
                state = _state(snap["state"])
                progress(snap)
            else:
                state = self.state()
            if done(state):
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise MonitorTimeout(f"{self.name}: not {what} after {timeout:g} s; state {state.name}, "
                                     f"status: {self.status()}", device=self.name, reason="DQM_WaitTimeout")
            time.sleep(self.poll_interval)

    def _wait_end(self, run_id: str, timeout: float | None,
                  progress: Callable[[dict[str, Any]], Any] | None) -> DevState:
        try:
            state = self._wait(lambda s: s != DevState.RUNNING, timeout, progress, "finished")
        except MonitorTimeout as exc:
            raise MonitorTimeout(f"{exc} (the scan {run_id} is still running: stop() ends it)",
                                 device=self.name, reason=exc.reason) from None
        if state == DevState.FAULT:
            status = self.status()
            raise ScanFault(f"{self.name}: scan {run_id} ended in FAULT: {status}", device=self.name,
                            reason="DQM_Fault", desc=status)
        return state

    # ---- commands ----------------------------------------------------------------------

    def start(self, wait: bool = True, timeout: float | None | object = _DEFAULT,
              progress: Callable[[dict[str, Any]], Any] | None = None) -> str:
        """Start a scan; returns its scan id.

        With ``wait`` (default) returns only when the scan has finished (the state has left
        RUNNING, normally to CLOSE: results frozen and readable). ``progress(snapshot)`` is
        called at every poll while waiting and once at the end. Raises :class:`ScanFault`
        with the Status text when the scan ends in FAULT, :class:`MonitorTimeout` after
        ``timeout`` seconds (default ``scan_timeout``, one hour; None waits for ever; the scan
        keeps running), :class:`CommandNotAllowed` when the device is RUNNING or FAULT (run
        :meth:`reset` first) or when ``RequiredMetadata`` keys are not set (see :meth:`set_metadata`).
        """
        scan_id = self._command("Start")
        if wait:
            self._wait_end(scan_id, self.scan_timeout if timeout is _DEFAULT else timeout, progress)  # type: ignore[arg-type]
        return scan_id

    def live(self) -> str:
        """Start a free-running acquisition (no end of series); returns its run id. :meth:`stop` ends it."""
        return self._command("Live")

    def stop(self, wait: bool = True, timeout: float | None = 30.0) -> DevState:
        """Stop the scan or live run; with ``wait``, until the engine has drained (normally CLOSE).

        Raises :class:`ScanFault` if it ends in FAULT. Returns the state reached.
        """
        self._command("Stop")
        if not wait:
            return self.state()
        return self._wait_end(self._call("scanId", self.proxy.read_attribute, "scanId").value, timeout, None)

    def reset(self) -> DevState:
        """CLOSE or FAULT -> ON, clearing results and counters; returns the new state."""
        self._command("Reset")
        return self.state()

    def flag(self, reason: str) -> str:
        """Mark the finished scan bad (``reason`` is required); returns the results file's new path."""
        return self._command("Flag", reason)

    def archive(self) -> str:
        """Mark the finished scan good; returns the results file's new path."""
        return self._command("Archive")

    def take_reference(self) -> int:
        """Store the finished scan's accumulated spectra and maps as the new reference; returns its version."""
        return int(self._command("TakeReference"))

    def take_background(self) -> int:
        """Store the finished (dark) scan's mean image as the new background version; returns its version."""
        return int(self._command("TakeBackground"))

    # ---- parameters ------------------------------------------------------------------

    def set_roi(self, name: str, roi: Sequence[int] | None) -> list[int]:
        """Write an ROI (``[offset_x, size_x, offset_y, size_y]``; ``[]`` or None disables it).

        Raises :class:`InvalidValue` with the rule broken; the device keeps the old value.
        Returns the value the device now holds.
        """
        values = [] if roi is None else list(roi)
        try:
            if any(not float(v).is_integer() for v in values):
                raise ValueError("not integers")
            array = np.asarray(values, dtype=np.int64)
            if array.ndim != 1 or (array.size and (array.min() < -2**31 or array.max() >= 2**31)):
                raise ValueError("not a flat list of 32-bit integers")
        except (TypeError, ValueError, OverflowError):
            raise InvalidValue(f"{name}: an ROI is 4 integers [offset_x, size_x, offset_y, size_y] or [], "
                               f"got {roi!r} (the previous value is kept)", device=self.name,
                               reason="DQM_InvalidValue") from None
        self._write(name, array.astype(np.int32))
        value = self._call(f"read {name}", self.proxy.read_attribute, name).value
        return [] if value is None else [int(v) for v in value]

    def set_parameter(self, name: str, value: Any) -> Any:
        """Write a parameter attribute; enum parameters also take their label. Returns the value read back.

        Raises :class:`InvalidValue` with the rule broken (the old value stays).
        """
        if isinstance(value, str):
            labels = self._enum_labels(name)
            if labels:
                if value not in labels:
                    raise InvalidValue(f"{name}: {value!r} is not one of {labels} (the previous value is kept)",
                                       device=self.name, reason="DQM_InvalidValue")
                value = labels.index(value)
        self._write(name, value)
        return self.parameter(name)

    def set_metadata(self, sample: str | None = None, operator: str | None = None, proposal: str | None = None,
                     **keys: Any) -> dict[str, Any]:
        """Set the scan metadata recorded with the next scans; returns all of it (:meth:`metadata`).

        ``sample``, ``operator`` and ``proposal`` go to their attributes (None: unchanged, "": cleared);
        other keys (e.g. ``pmt_serial="SN123"``) are merged into ``scanMetadata`` (a value None
        removes the key). Raises :class:`InvalidValue` naming the rule (the previous value is kept).
        """
        for name, value in (("sample", sample), ("operator", operator), ("proposal", proposal)):
            if value is not None:
                self._write(name, str(value))
        if keys:
            free = json.loads(self._call("read scanMetadata", self.proxy.read_attribute, "scanMetadata").value or "{}")
            free.update(keys)
            free = {k: v for k, v in free.items() if v is not None}
            try:
                text = json.dumps(free, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise InvalidValue(f"scanMetadata: {exc} (the previous value is kept)", device=self.name,
                                   reason="DQM_InvalidValue") from None
            self._write("scanMetadata", text)
        return self.metadata()

    def metadata(self) -> dict[str, Any]:
        """The scan metadata the next scan records: sample, operator, proposal (when set) and scanMetadata keys."""
        values = self._read(["sample", "operator", "proposal", "scanMetadata"])
        out: dict[str, Any] = {k: values[k] for k in ("sample", "operator", "proposal") if values.get(k)}
        out.update(json.loads(values.get("scanMetadata") or "{}"))
        return out

    def parameter(self, name: str) -> Any:
        """The current value of a parameter attribute (enum parameters as their label)."""
        value = self._call(f"read {name}", self.proxy.read_attribute, name).value
        labels = self._enum_labels(name)
        if labels and value is not None:
            return labels[int(value)]
        return value

    def _enum_labels(self, name: str) -> list[str]:
        config = self._call(f"read the configuration of {name}", self.proxy.get_attribute_config, name)
        return list(config.enum_labels) if config.data_type == tango.CmdArgType.DevEnum else []

    def _write(self, name: str, value: Any) -> None:
        try:
            self.proxy.write_attribute(name, value)
        except tango.DevFailed as exc:
            raise self._error(exc, f"write {name}") from None
        except (TypeError, ValueError) as exc:  # pytango could not convert the value
            raise InvalidValue(f"{name}: {exc} (the previous value is kept)", device=self.name,
                               reason="DQM_InvalidValue") from None

    # ---- reading -----------------------------------------------------------------------

    def result_names(self, refresh: bool = False) -> list[str]:
        """Names of the result attributes: read-only attributes that are not the device's own.

        The set changes only when the device runs Init with other Analyses; ``refresh`` re-reads it.
        """
        if self._results is None or refresh:
            infos = self._call("attribute_list_query", self.proxy.attribute_list_query)
            self._results = [i.name for i in infos
                             if i.writable == tango.AttrWriteType.READ and i.name not in STATIC_ATTRIBUTES]
        return list(self._results)

    def _read(self, names: Iterable[str]) -> dict[str, Any]:
        names = list(names)
        try:
            replies = self.proxy.read_attributes(names)
        except tango.DevFailed as exc:
            raise self._error(exc, "read attributes") from None
        out = {}
        for name, reply in zip(names, replies):
            if reply.has_failed and any(e.reason == "API_AttrNotFound" for e in reply.get_err_stack()):
                raise MonitorError(f"{self.name}: no attribute {name}", device=self.name,
                                   reason="API_AttrNotFound")
            # no value (INVALID quality: disabled ROI, no frame yet) or a failed read -> None
            out[name] = None if reply.has_failed else reply.value
        return out

    def _read_with_results(self, fixed: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
        results = self.result_names()
        try:
            return self._read([*fixed, *results]), results
        except MonitorError as exc:
            if exc.reason != "API_AttrNotFound":
                raise
        results = self.result_names(refresh=True)  # Init changed the attribute set
        return self._read([*fixed, *results]), results

    def snapshot(self) -> dict[str, Any]:
        """State, status, scan id, counters, verdict and every result, read in one call.

        Returns ``{"device", "time", "state" (name), "status", "scan_id", "counters": {...},
        "verdict" (name), "results": {name: value}}``; a result without a value (no frame
        yet, disabled ROI) is None.
        """
        fixed = ("State", "Status", "scanId", *COUNTERS, "verdict")
        values, results = self._read_with_results(fixed)
        state = values["State"]
        return {
            "device": self.name,
            "time": time.time(),
            "state": state.name if isinstance(state, DevState) else str(state),
            "status": values["Status"],
            "scan_id": values["scanId"],
            "counters": {c: values[c] for c in COUNTERS},
            "verdict": self._verdict_name(values["verdict"]),
            "results": {r: values[r] for r in results},
        }

    def results(self) -> dict[str, Any]:
        """Every result attribute's current value (None when it has none)."""
        values, results = self._read_with_results(())
        return {r: values[r] for r in results}

    def _verdict_name(self, value: Any) -> str | None:
        if value is None:
            return None
        if self._verdict_labels is None:
            config = self._call("read the verdict configuration", self.proxy.get_attribute_config, "verdict")
            self._verdict_labels = list(config.enum_labels)
        index = int(value)
        return self._verdict_labels[index] if 0 <= index < len(self._verdict_labels) else str(index)
