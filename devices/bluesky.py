"""An ophyd-async device for the DataQualityMonitor: each ``trigger`` is one scan point.

``trigger`` opens a point (``StartPoint``), optionally triggers a software-triggered detector,
waits ``acquire_time``, ends the point (``EndPoint``) and waits until the monitor's
``pointReady`` says the point's frames are analysed; ``read`` then returns the point's values
(``point_<result>``), so ``count`` and ``scan`` plans record DQM results per point. Needs the
``bluesky`` extra (ophyd-async, bluesky); configuration in docs/sardana.md.
"""
from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence

import tango
from ophyd_async.core import AsyncStatus, StandardReadable, StandardReadableFormat, soft_signal_r_and_setter
from tango.asyncio import DeviceProxy as AsyncDeviceProxy

POLL_S = 0.02  # pointReady poll period while a point ends


class DataQualityMonitorPoints(StandardReadable):
    """Per-point results of one DataQualityMonitor: one readable signal per name in ``results``
    (``dqm.signal_sum`` reads the monitor's ``point_signal_sum``), plus ``point_number``.

    ``trigger_command``: ``"device/name/Command"`` called after StartPoint (e.g. the simulator's
    ``Start``), empty when the detector is triggered by something else. ``timeout``: the EndPoint
    timeout in seconds; the status fails if the point is not latched ``timeout + 10`` s later.
    """

    def __init__(self, monitor: str, results: Sequence[str], *, trigger_command: str = "",
                 acquire_time: float = 0.0, timeout: float = 10.0, name: str = ""):
        if not results:
            raise ValueError("results: name at least one per-frame scalar result, e.g. ['signal_sum']")
        self.monitor, self.results = monitor, list(results)
        self.trigger_command, self.acquire_time, self.timeout = trigger_command, float(acquire_time), float(timeout)
        self._setters = {}
        with self.add_children_as_readables(StandardReadableFormat.HINTED_SIGNAL):
            for result in self.results:
                signal, setter = soft_signal_r_and_setter(float, initial_value=math.nan)
                setattr(self, result, signal)
                self._setters[result] = setter
        with self.add_children_as_readables():
            self.point_number, self._set_point_number = soft_signal_r_and_setter(int, initial_value=0)
            self.point_frames, self._set_point_frames = soft_signal_r_and_setter(int, initial_value=0)
        self._proxy = None
        self._trigger = None
        super().__init__(name=name)

    async def _proxies(self):
        if self._proxy is None:
            self._proxy = await AsyncDeviceProxy(self.monitor)
            if self.trigger_command:
                device, _, command = self.trigger_command.rpartition("/")
                if not device or not command:
                    raise ValueError(f"trigger_command must be device/name/Command, got {self.trigger_command!r}")
                self._trigger = (await AsyncDeviceProxy(device), command)
        return self._proxy, self._trigger

    @AsyncStatus.wrap
    async def trigger(self) -> None:
        proxy, trigger = await self._proxies()
        await proxy.command_inout("StartPoint")
        if trigger is not None:
            device, command = trigger
            while (await device.read_attribute("State")).value in (tango.DevState.RUNNING, tango.DevState.MOVING):
                await asyncio.sleep(POLL_S)  # the last point's series may still be ending
            await device.command_inout(command)
        if self.acquire_time > 0:
            await asyncio.sleep(self.acquire_time)
        await proxy.command_inout("EndPoint", self.timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout + 10.0
        while not (await proxy.read_attribute("pointReady")).value:
            if loop.time() > deadline:
                raise TimeoutError(f"{self.monitor}: the point was not latched within {self.timeout + 10:.0f} s")
            await asyncio.sleep(POLL_S)
        attrs = await proxy.read_attributes([f"point_{r}" for r in self.results] + ["pointNumber", "pointInfo"])
        for result, attr in zip(self.results, attrs):
            self._setters[result](math.nan if attr.value is None else float(attr.value))
        self._set_point_number(int(attrs[-2].value))
        self._set_point_frames(int(json.loads(attrs[-1].value).get("frames", 0)))
