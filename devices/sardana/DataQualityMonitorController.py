"""A Sardana counter/timer controller whose channels are DataQualityMonitor results per scan point.

Each acquisition of a measurement group is one scan point: StartAll calls the monitor's
``StartPoint`` (and, if ``Trigger`` is set, triggers a software-triggered detector), the
acquisition lasts the integration time, then ``EndPoint`` ends the point and the controller
stays Moving until the monitor's ``pointReady`` says the point's frames are analysed; the
channels then read the latched ``point_<result>`` values. Axis N is the N-th name of the
``Results`` controller property. Configuration: docs/sardana.md.
"""
from __future__ import annotations

import math
import time

import tango
from sardana import State
from sardana.pool.controller import CounterTimerController, DefaultValue, Description, Type

_BUSY = (tango.DevState.RUNNING, tango.DevState.MOVING)


class DataQualityMonitorController(CounterTimerController):
    """Channels = per-point DQM results of one DataQualityMonitor device."""

    ctrl_properties = {
        "Monitor": {Type: str, Description: "name of the DataQualityMonitor device, e.g. dqm/monitor/1"},
        "Results": {Type: str, DefaultValue: "",
                    Description: "comma-separated result names, one per axis from 1 (e.g. signal_sum,net_signal); "
                                 "empty: every point_<result> attribute of the monitor, sorted"},
        "EndPointTimeout": {Type: float, DefaultValue: 10.0,
                            Description: "seconds the monitor waits for a point's frames after EndPoint"},
        "Trigger": {Type: str, DefaultValue: "",
                    Description: "device/name/Command called after StartPoint to trigger a software-triggered "
                                 "detector (e.g. dqm/sim/1/Start); empty: the detector is triggered elsewhere"},
    }

    # private state prefixed _dqm_: the Sardana base classes use names such as _monitor
    def __init__(self, inst, props, *args, **kwargs):
        super().__init__(inst, props, *args, **kwargs)
        self._dqm_monitor = tango.DeviceProxy(self.Monitor)
        self._dqm_monitor.set_timeout_millis(10000)
        names = [n.strip() for n in self.Results.split(",") if n.strip()]
        if not names:
            names = sorted(a[len("point_"):] for a in self._dqm_monitor.get_attribute_list()
                           if a.lower().startswith("point_"))
        self._dqm_results = names
        self._dqm_trigger = None
        if self.Trigger:
            device, _, command = self.Trigger.rpartition("/")
            if not device or not command:
                raise ValueError(f"Trigger must be device/name/Command, got {self.Trigger!r}")
            self._dqm_trigger = (tango.DeviceProxy(device), command)
        self._dqm_integration = 0.0
        self._dqm_acquiring = False
        self._dqm_ending = False
        self._dqm_t0 = 0.0
        self._dqm_values: dict[int, float] = {}
        self._dqm_state, self._dqm_status = State.On, "ready"

    # ---- axes -------------------------------------------------------------------------

    def AddDevice(self, axis):
        if not 1 <= axis <= len(self._dqm_results):
            raise ValueError(f"axis {axis}: the Results property names {len(self._dqm_results)} results "
                             f"({', '.join(self._dqm_results)})")

    def DeleteDevice(self, axis):
        pass

    # ---- acquisition ------------------------------------------------------------------

    def LoadOne(self, axis, value, repetitions, latency):
        self._dqm_integration = float(value)

    def PreStartAll(self):
        self._dqm_values = {}

    def StartOne(self, axis, value=None):
        pass

    def StartAll(self):
        self._dqm_monitor.command_inout("StartPoint")
        self._dqm_acquiring, self._dqm_ending = True, False
        self._dqm_state, self._dqm_status = State.Moving, "point started"
        self._dqm_t0 = time.monotonic()
        if self._dqm_trigger is not None:
            device, command = self._dqm_trigger
            deadline = time.monotonic() + self.EndPointTimeout
            while device.state() in _BUSY:  # the last point's series may still be ending
                if time.monotonic() > deadline:
                    raise RuntimeError(f"trigger {self.Trigger}: the detector is still {device.state()}")
                time.sleep(0.01)
            device.command_inout(command)

    def StateAll(self):
        if not self._dqm_acquiring:
            return
        try:
            if not self._dqm_ending and time.monotonic() - self._dqm_t0 >= self._dqm_integration:
                self._dqm_monitor.command_inout("EndPoint", float(self.EndPointTimeout))
                self._dqm_ending = True
            if self._dqm_ending and self._dqm_monitor.pointReady:
                self._read_point()
                self._dqm_acquiring = False
                self._dqm_state, self._dqm_status = State.On, "point latched"
        except tango.DevFailed as exc:
            self._dqm_acquiring = False
            self._dqm_state, self._dqm_status = State.Fault, f"monitor {self.Monitor}: {exc.args[0].desc}"

    def StateOne(self, axis):
        return self._dqm_state, self._dqm_status

    def _read_point(self) -> None:
        attrs = self._dqm_monitor.read_attributes([f"point_{n}" for n in self._dqm_results])
        self._dqm_values = {i + 1: (math.nan if a.value is None else float(a.value)) for i, a in enumerate(attrs)}

    def ReadOne(self, axis):
        return self._dqm_values.get(axis, math.nan)

    def AbortOne(self, axis):
        self.AbortAll()

    def AbortAll(self):
        if self._dqm_acquiring and not self._dqm_ending:
            try:  # close the point, so the next StartPoint is accepted
                self._dqm_monitor.command_inout("EndPoint", float(self.EndPointTimeout))
            except tango.DevFailed:
                pass
        self._dqm_acquiring = False
        self._dqm_state, self._dqm_status = State.On, "aborted"
