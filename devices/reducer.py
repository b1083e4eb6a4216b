"""DataQualityReducer: one monitor's interface over several scale-out workers.

The workers are ordinary DataQualityMonitor devices whose ``Reducer`` property is this
device's ``Endpoint``. This device is a DataQualityMonitor whose engine is a
:class:`tango_dqm.scaleout.reducer.ReducerEngine`: the same counters, result attributes
(change and archive events), verdict, Status and products; its commands (Start, Live, Stop,
Reset, Flag, Archive) and parameter writes go to every worker as DeviceProxy calls, each of
which returns at once. Everything the reducer does besides is in the core.
"""
from __future__ import annotations

import json
from typing import Any

import tango
from tango.server import attribute, device_property, run

from tango_dqm.scaleout.reducer import END_TIMEOUT, WORKER_TIMEOUT, ReducerConfig, ReducerEngine

from .monitor import DataQualityMonitor

TIMEOUT_MS = 2000  # below a client's 3 s: the reducer's Start calls its workers at once


class DeviceControl:
    """Drives the workers by name through DeviceProxy (WorkerControl of the reducer engine)."""

    def __init__(self, timeout_ms: int = TIMEOUT_MS):
        self.timeout_ms = timeout_ms

    def _proxy(self, worker: str) -> tango.DeviceProxy:
        try:
            proxy = tango.DeviceProxy(worker)
            proxy.set_timeout_millis(self.timeout_ms)
            return proxy
        except tango.DevFailed as exc:
            raise RuntimeError(_text(exc)) from None

    def _call(self, worker: str, command: str, *args: Any) -> Any:
        try:
            return self._proxy(worker).command_inout(command, *args)
        except tango.DevFailed as exc:
            raise RuntimeError(f"{command} on {worker}: {_text(exc)}") from None

    def start(self, worker: str, live: bool) -> str:
        return str(self._call(worker, "Live" if live else "Start"))

    def stop(self, worker: str) -> None:
        self._call(worker, "Stop")

    def reset(self, worker: str) -> None:
        if self._proxy(worker).state() in (tango.DevState.CLOSE, tango.DevState.FAULT):
            self._call(worker, "Reset")

    def mark(self, worker: str, mark: str, reason: str) -> None:
        if mark == "flagged":
            self._call(worker, "Flag", reason)
        else:
            self._call(worker, "Archive")

    def running(self, worker: str) -> str:
        """"" while the worker is RUNNING, else why not (RuntimeError when it does not answer)."""
        proxy = self._proxy(worker)
        try:
            state = proxy.state()
            return "" if state == tango.DevState.RUNNING else f"in {state}: {proxy.status()}"
        except tango.DevFailed as exc:
            raise RuntimeError(f"{worker} does not answer: {_text(exc)}") from None

    def write(self, worker: str, name: str, value: Any) -> None:
        try:
            self._proxy(worker).write_attribute(name, value)
        except tango.DevFailed as exc:
            raise RuntimeError(f"writing {name} on {worker}: {_text(exc)}") from None


def _text(exc: tango.DevFailed) -> str:
    return " ".join(exc.args[0].desc.split())


class DataQualityReducer(DataQualityMonitor):
    """Merges scale-out DataQualityMonitor workers into the interface of one monitor."""

    Workers = device_property(dtype=(str,), default_value=[],
                              doc="the DataQualityMonitor worker devices (their Reducer property is Endpoint)")
    Endpoint = device_property(dtype=str, default_value="tcp://127.0.0.1:5600",
                               doc="where workers report: the ZeroMQ PULL socket bound here, tcp://host:port "
                                   "(tcp://*:port: every interface); workers' Reducer = tcp://<this host>:port")
    WorkerTimeout = device_property(dtype=float, default_value=WORKER_TIMEOUT,
                                    doc="a running worker silent this many seconds is lost (named in Status; "
                                        "its unreported frames count as lost)")
    EndTimeout = device_property(dtype=float, default_value=END_TIMEOUT,
                                 doc="PUSH streams: after a worker saw the end of series, seconds without a "
                                     "frame before the workers still running are stopped")

    _engine_properties = "Workers/Endpoint/Analyses/QualityChecks/Output"

    def _make_engine(self) -> ReducerEngine:
        self._control = DeviceControl()
        return ReducerEngine(self._engine_config(ReducerConfig, workers=list(self.Workers), endpoint=self.Endpoint,
                                                 worker_timeout=self.WorkerTimeout, end_timeout=self.EndTimeout),
                             self._control, listener=self._listener, thread_context=tango.EnsureOmniThread)

    @property
    def _reducer(self) -> ReducerEngine | None:
        return self.engine if isinstance(self.engine, ReducerEngine) else None

    def _engine_config(self, cls: type = ReducerConfig, **extra: Any) -> Any:
        config = super()._engine_config(cls, **extra)
        config.sources = []  # the workers read the streams
        return config

    def _write_parameter(self, attr: tango.WAttribute) -> None:
        """Checked here first (the old value kept when refused), then written to every worker."""
        super()._write_parameter(attr)
        name, value = attr.get_name(), attr.get_write_value()
        failed = []
        for worker in self._reducer.worker_names if self._reducer is not None else []:
            try:
                self._control.write(worker, name, value)
            except RuntimeError as exc:
                failed.append(str(exc))
        if failed:
            tango.Except.throw_exception(
                "DQM_WorkerRefused", f"{name} set here but not on every worker: {'; '.join(failed)}. "
                "Start the worker (Astor) and write it again", f"write {name}")

    @attribute(dtype=str, doc="JSON list: each worker's name, state, frames reported and why it is lost")
    def workerStates(self) -> str:
        return json.dumps(self._reducer.workers() if self._reducer is not None else [])

    @attribute(dtype=str, doc="the bound endpoint workers report to (their Reducer property)")
    def reducerEndpoint(self) -> str:
        return getattr(self.engine, "endpoint", "") if self.engine is not None else ""


def main(args: list[str] | None = None) -> None:
    """Server entry point: ``DataQualityReducer <instance>``."""
    run((DataQualityReducer,), args=args)


if __name__ == "__main__":
    main()
