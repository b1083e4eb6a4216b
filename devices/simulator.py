"""DetectorSimulator: a Tango device streaming simulated detector frames as STINS messages.

The streaming itself is in the core (:mod:`tango_dqm.sim_streamer`: settings and their
rules, the PUSH socket, the series loop and its back-pressure); this device maps the
settings onto memorized attributes and the series onto State, Status and commands.

Threading (same rules as DataQualityMonitor): commands only set flags and start the
streaming thread, an omni-thread, and return at once. The streaming thread ends the series
and changes the state itself, inside the device monitor, so its State/Status events are
ordered with respect to commands. No command ever waits for the streaming thread.
"""
from __future__ import annotations

import threading
import time
from typing import Any, NoReturn

import tango
import zmq
from tango import AttrWriteType, DevState
from tango.server import Device, attribute, command, device_property, run

from tango_dqm.sim_streamer import (SERIES_END_TIMEOUT_S, SHAPE_SETTINGS, BindError, InvalidValue, PixelType,
                                    Series, SimulatorSettings, bind_push)

#: after Init, how long binding the same port again is retried (ZeroMQ unbinds asynchronously)
REBIND_S = 2.0

def _throw(reason: str, desc: str, origin: str) -> NoReturn:
    tango.Except.throw_exception(reason, desc, origin)
    raise AssertionError("tango.Except.throw_exception returned")  # it always raises DevFailed


def _rw(name: str, dtype: Any, doc: str, unit: str = "", **kw: Any) -> attribute:
    """A memorized read/write scalar backed by the setting ``name``."""

    def fget(self: DetectorSimulator) -> Any:
        value = self._settings.get(name)
        return PixelType[value] if name == "dtype" else value

    def fset(self: DetectorSimulator, value: Any) -> None:
        self._write(name, value)

    fget.__name__, fset.__name__ = f"read_{name}", f"write_{name}"
    return attribute(name=name, dtype=dtype, access=AttrWriteType.READ_WRITE, fget=fget, fset=fset,
                     memorized=True, hw_memorized=True, doc=doc, unit=unit, **kw)


class DetectorSimulator(Device):
    """Simulated 2-D detector streaming deterministic frames over ZeroMQ (STINS format)."""

    Port = device_property(dtype=int, default_value=0,
                           doc="TCP port of the PUSH socket; 0 = pick a free port (see endpoint)")
    BindHost = device_property(dtype=str, default_value="127.0.0.1",
                               doc="interface to bind, e.g. 127.0.0.1 or 0.0.0.0 (all)")
    SendHighWaterMark = device_property(dtype=int, default_value=16,
                                        doc="frames queued per receiver before back-pressure")

    # ---- lifecycle ---------------------------------------------------------------------

    def init_device(self) -> None:
        super().init_device()
        if not hasattr(self, "_settings"):  # kept across Init: memorized values stay in force
            self._settings = SimulatorSettings()
        self._series: Series | None = None  # the current or last series
        self._series_count = getattr(self, "_series_count", 0)
        self._sock: zmq.Socket | None = None
        self._endpoint = ""
        self._fault = ""
        self.set_change_event("State", True, False)
        self.set_change_event("Status", True, False)
        self._bind()
        self.set_state(DevState.FAULT if self._fault else DevState.ON)

    def delete_device(self) -> None:
        series, self._series = self._series, None  # a late thread sees it is stale
        sock, self._sock = self._sock, None
        if series is not None and series.active and not series.abandon():
            sock = None  # the thread closes the socket when it is done
        if sock is not None:
            sock.close(linger=int(SERIES_END_TIMEOUT_S * 1000))
        self._rebind_until = time.monotonic() + REBIND_S

    def _bind(self) -> None:
        try:
            sock = bind_push(self.BindHost, int(self.Port), self.SendHighWaterMark,
                             getattr(self, "_rebind_until", 0.0))
        except BindError as exc:
            self._fault = str(exc)
            self.error_stream(self._fault)
            return
        self._sock = sock
        self._endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._fault = ""

    # ---- state and status (transitions happen inside the device monitor) -----------------

    def _transition(self, state: DevState) -> None:
        self.set_state(state)
        status = self.dev_status()
        self.set_status(status)
        self.push_change_event("State", state)
        self.push_change_event("Status", status)

    def dev_status(self) -> str:
        s = self._series
        state = self.get_state()
        if state == DevState.FAULT:
            return f"FAULT: {self._fault}"
        if state == DevState.RUNNING and s is not None:
            what = "Live (until Stop)" if s.live else f"Start, {s.nframes} frames"
            if s.stop.is_set():
                return f"RUNNING: stopping series {s.series_id}, sending series_end on {self._endpoint}"
            if s.waiting:
                return (f"RUNNING: series {s.series_id} ({what}) waiting for a receiver to connect to "
                        f"{self._endpoint}; Stop to abort")
            return (f"RUNNING: series {s.series_id} ({what}) on {self._endpoint}, "
                    f"{s.sent} frames sent, {s.unsent} unsent")
        last = "" if s is None else f"; last series {s.series_id}: {s.sent} frames sent, {s.unsent} unsent"
        return f"ON: ready, streaming to {self._endpoint}{last}"

    # ---- commands ----------------------------------------------------------------------

    @command(doc_out="series id")
    def Start(self) -> str:
        """Send one series of nframes frames (header, images, series_end), then back to ON."""
        return self._begin(live=False)

    @command(doc_out="series id")
    def Live(self) -> str:
        """Send frames until Stop (frame ids keep increasing), then series_end."""
        return self._begin(live=True)

    def _begin(self, live: bool) -> str:
        origin = "Live" if live else "Start"
        state = self.get_state()
        if state == DevState.RUNNING:
            _throw("SIM_CommandNotAllowed",
                   f"{origin} refused: series {self._series.series_id if self._series else '?'} is RUNNING; "
                   "run Stop and wait for state ON", origin)
        if state == DevState.FAULT or self._sock is None:
            _throw("SIM_CommandNotAllowed", f"{origin} refused in FAULT: {self._fault}", origin)
        first = int(self._settings.get("first_frame"))
        if first < 0:  # continue after the last series, as a detector's frame counter does
            first = getattr(self, "_next_frame", 0)
        self._series_count += 1
        series = Series(str(self._series_count), live, int(self._settings.get("nframes")), self._sock,
                        self._settings, source=self.get_name(), first=first)
        self._series = series
        self._transition(DevState.RUNNING)
        threading.Thread(target=self._stream, args=(series,), name=f"DetectorSimulator-series-{series.series_id}",
                         daemon=True).start()
        return series.series_id

    @command
    def Stop(self) -> None:
        """End the running series early; series_end is still sent. Does nothing when idle."""
        if self._series is not None and self._series.active:
            self._series.stop.set()

    @command
    def Reset(self) -> None:
        """FAULT -> ON (binding the socket again if needed). Nothing to do in ON; refused while RUNNING."""
        state = self.get_state()
        if state == DevState.RUNNING:
            _throw("SIM_CommandNotAllowed", "Reset refused while RUNNING: run Stop first", "Reset")
        if state == DevState.ON:
            return
        if self._sock is None:
            self._bind()
            if self._fault:
                self._transition(DevState.FAULT)
                _throw("SIM_BindFailed", self._fault, "Reset")
        self._fault = ""
        self._transition(DevState.ON)

    # ---- attributes --------------------------------------------------------------------

    frame_width = _rw("frame_width", "DevLong", "frame width (columns)", "px")
    frame_height = _rw("frame_height", "DevLong", "frame height (rows)", "px")
    dtype = _rw("dtype", PixelType, "pixel type")
    rate = _rw("rate", "DevDouble", "frames per second; 0 = as fast as the receiver takes them", "Hz")
    nframes = _rw("nframes", "DevLong64", "frames in a series sent by Start")
    spot_x = _rw("spot_x", "DevDouble", "spot centre column at frame 0; negative = image centre", "px")
    spot_y = _rw("spot_y", "DevDouble", "spot centre row at frame 0; negative = image centre", "px")
    spot_sigma = _rw("spot_sigma", "DevDouble", "Gaussian spot standard deviation", "px")
    amplitude = _rw("amplitude", "DevDouble", "spot peak height above background", "counts")
    noise = _rw("noise", "DevDouble", "Gaussian noise standard deviation", "counts")
    background = _rw("background", "DevDouble", "mean background level", "counts")
    hot_pixels = _rw("hot_pixels", "DevLong", "number of saturated pixels (fixed positions per seed)")
    dead_pixels = _rw("dead_pixels", "DevLong", "number of zero pixels (fixed positions per seed)")
    drift_x = _rw("drift_x", "DevDouble", "spot motion along x per frame id", "px/frame")
    drift_y = _rw("drift_y", "DevDouble", "spot motion along y per frame id", "px/frame")
    seed = _rw("seed", "DevLong64", "random seed of noise and hot/dead pixel positions")
    first_frame = _rw("first_frame", "DevLong64", "frame id of the first frame of each series; -1 = continue "
                      "after the previous series (a detector's frame counter, e.g. one series per scan point)")

    def _write(self, name: str, value: Any) -> None:
        if name in SHAPE_SETTINGS and self.get_state() == DevState.RUNNING:
            _throw("SIM_NotAllowedWhileRunning",
                   f"{name} cannot change while RUNNING: the series streams frames of a fixed shape and type. "
                   f"Stop, wait for ON, then write {name} (the previous value is kept)", f"write {name}")
        old = self._settings.get(name)
        try:
            self._settings.write(name, value)
        except (InvalidValue, TypeError, ValueError, OverflowError) as exc:
            _throw("SIM_InvalidValue", f"{exc} (the previous value {old!r} is kept)", f"write {name}")

    @attribute(dtype="DevLong64", doc="frames sent in the current or last series")
    def frames_sent(self) -> int:
        return self._series.sent if self._series else 0

    @attribute(dtype="DevLong64",
               doc="frames of the current or last series no receiver took in time (rate > 0), ids skipped")
    def frames_unsent(self) -> int:
        return self._series.unsent if self._series else 0

    @attribute(dtype=str, doc="ZeroMQ endpoint receivers connect to, e.g. tcp://127.0.0.1:40123")
    def endpoint(self) -> str:
        return self._endpoint

    @attribute(dtype=str, doc="id of the current or last series (the header's 'series')")
    def series(self) -> str:
        return self._series.series_id if self._series else ""

    # ---- streaming thread ----------------------------------------------------------------

    def _stream(self, series: Series) -> None:
        with tango.EnsureOmniThread():
            series.run()
            if series.next_frame is not None:
                self._next_frame = series.next_frame  # where first_frame = -1 continues
            with tango.AutoTangoMonitor(self):
                series.active = False
                if self._series is not series:  # the device was re-initialised meanwhile
                    return
                if series.error:
                    self._fault = series.error
                    self.error_stream(series.error)
                    self._transition(DevState.FAULT)
                else:
                    self._transition(DevState.ON)


def main(args: list[str] | None = None) -> None:
    """Server entry point: ``DetectorSimulator <instance>``."""
    run((DetectorSimulator,), args=args)


if __name__ == "__main__":
    main()
