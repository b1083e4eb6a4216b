"""DetectorSimulator: a Tango device streaming simulated detector frames as STINS messages.

Frames come from :class:`tango_dqm.simulation.FrameGenerator` (a Gaussian spot on noise,
hot/dead pixels, drift), so they are deterministic: frame ``i`` of a series equals
``FrameGenerator(scene).render(i)``. They are sent on a ZeroMQ PUSH socket bound at Init
(``endpoint`` attribute), in the STINS format read by ``zmq://`` sources::

    {"htype": "header", "series": "3", "nimages": N, "shape": [rows, cols], "type": "uint16"}
    {"htype": "image", "frame": i, "shape": [rows, cols], "type": "uint16", "compression": "none"}
        + one raw C-order part (sent zero-copy)
    {"htype": "series_end", "series": "3", "frames_sent": n, "frames_unsent": m}

Threading (same rules as DataQualityMonitor): commands only set flags and start the
streaming thread, an omni-thread, and return at once. The streaming thread ends the series
and changes the state itself, inside the device monitor, so its State/Status events are
ordered with respect to commands. No command ever waits for the streaming thread.

Back-pressure: a PUSH socket blocks when no receiver is connected or the receivers are
full. Every send is non-blocking inside a 100 ms POLLOUT loop, so Stop is always
responsive. With ``rate`` 0 (flat out) the simulator waits for the receiver and loses
nothing; with ``rate`` > 0 it keeps its absolute schedule like a real detector: a frame
the receivers do not take before the next one is due is dropped and counted in
``frames_unsent`` (its frame id is skipped, so the receiver sees a gap).
"""
from __future__ import annotations

import enum
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import tango
import zmq
from tango import AttrWriteType, DevState
from tango.server import Device, attribute, command, device_property, run

from tango_dqm.simulation import FrameGenerator, Scene

POLL_S = 0.1  # longest a send or a wait blocks before looking at the stop flag again
SERIES_END_TIMEOUT_S = 1.0  # after Stop, how long series_end may wait for a receiver
MAX_SIDE = 16384
MAX_PIXELS = 1 << 24  # 16 Mpixel: the noise pools hold about 3 frames (tango_dqm.simulation)
MAX_RATE = 100_000.0


class PixelType(enum.IntEnum):
    """Pixel types a simulated frame may have (the STINS ``type`` of the image)."""

    uint8 = 0
    uint16 = 1
    uint32 = 2
    float32 = 3


#: attributes whose change alters the frame size/type: refused while RUNNING
_SHAPE_ATTRS = ("frame_width", "frame_height", "dtype")
#: scene fields that change the noise pool or the hot/dead pixel choice: need a new generator
_POOL_FIELDS = ("shape", "dtype", "seed", "background", "noise", "hot_pixels", "dead_pixels")

_DEFAULTS: dict[str, Any] = {
    "frame_width": 512, "frame_height": 512, "dtype": "uint16", "rate": 10.0, "nframes": 100,
    "spot_x": -1.0, "spot_y": -1.0, "spot_sigma": 20.0, "amplitude": 1000.0, "noise": 5.0,
    "background": 100.0, "hot_pixels": 0, "dead_pixels": 0, "drift_x": 0.0, "drift_y": 0.0,
    "seed": 0, "first_frame": 0,
}


class InvalidValue(ValueError):
    """A write breaks a rule; the message states the rule."""


# ---- validation: each returns the canonical value or raises InvalidValue -------------

def _finite(name: str, value: Any) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise InvalidValue(f"{name} must be a finite number, got {value!r}")
    return v


def _int_range(name: str, value: Any, lo: int, hi: int) -> int:
    v = int(value)
    if not lo <= v <= hi:
        raise InvalidValue(f"{name} must be an integer in [{lo}, {hi}], got {v}")
    return v


def validate(name: str, value: Any, values: dict[str, Any]) -> Any:
    """Check one attribute write against its rule and the other current ``values``."""
    if name in ("frame_width", "frame_height"):
        v = _int_range(name, value, 1, MAX_SIDE)
        other = values["frame_height" if name == "frame_width" else "frame_width"]
        if v * other > MAX_PIXELS:
            raise InvalidValue(f"frame_width * frame_height must be <= {MAX_PIXELS} pixels, "
                               f"{name}={v} gives {v * other}")
        if values["hot_pixels"] + values["dead_pixels"] > v * other:
            raise InvalidValue(f"hot_pixels + dead_pixels ({values['hot_pixels'] + values['dead_pixels']}) "
                               f"must fit in the frame; {name}={v} gives only {v * other} pixels")
        return v
    if name == "dtype":
        try:
            return PixelType(int(value)).name
        except ValueError:
            raise InvalidValue(f"dtype must be one of {[t.name for t in PixelType]}, got {value!r}") from None
    if name == "rate":
        v = _finite(name, value)
        if not 0 <= v <= MAX_RATE:
            raise InvalidValue(f"rate must be >= 0 Hz (0 = as fast as the receiver takes frames) "
                               f"and <= {MAX_RATE:g} Hz, got {v:g}")
        return v
    if name == "nframes":
        return _int_range(name, value, 1, 2**62)
    if name == "seed":
        return _int_range(name, value, 0, 2**63 - 1)
    if name == "first_frame":
        return _int_range(name, value, -1, 2**62)
    if name in ("hot_pixels", "dead_pixels"):
        v = _int_range(name, value, 0, MAX_PIXELS)
        other = values["dead_pixels" if name == "hot_pixels" else "hot_pixels"]
        pixels = values["frame_width"] * values["frame_height"]
        if v + other > pixels:
            raise InvalidValue(f"hot_pixels + dead_pixels must be <= the frame's {pixels} pixels, "
                               f"{name}={v} gives {v + other}")
        return v
    v = _finite(name, value)
    if name == "spot_sigma" and v <= 0:
        raise InvalidValue(f"spot_sigma must be > 0 pixels, got {v:g} (use amplitude=0 for no spot)")
    if name == "noise" and v < 0:
        raise InvalidValue(f"noise must be >= 0 (standard deviation in counts), got {v:g}")
    return v


def scene_of(values: dict[str, Any]) -> Scene:
    """The :class:`Scene` described by the attribute values (negative spot_x/y: image centre)."""
    return Scene(shape=(int(values["frame_height"]), int(values["frame_width"])), dtype=values["dtype"],
                 seed=int(values["seed"]), background=values["background"], noise=values["noise"],
                 spot_x=None if values["spot_x"] < 0 else values["spot_x"],
                 spot_y=None if values["spot_y"] < 0 else values["spot_y"],
                 sigma=values["spot_sigma"], amplitude=values["amplitude"],
                 drift_x=values["drift_x"], drift_y=values["drift_y"],
                 hot_pixels=int(values["hot_pixels"]), dead_pixels=int(values["dead_pixels"]))


def _pool_key(scene: Scene) -> tuple:
    return tuple(getattr(scene, f) for f in _POOL_FIELDS)


@dataclass
class _Series:
    """One Start/Live run: its flags and counters, shared by the device and its thread."""

    series: str
    live: bool
    nframes: int
    sock: zmq.Socket
    first: int = 0  # frame id of the series' first frame
    stop: threading.Event = field(default_factory=threading.Event)
    sent: int = 0
    unsent: int = 0
    waiting: bool = True  # header not yet taken by a receiver
    active: bool = True
    error: str = ""
    # socket hand-over when the device is deleted while the thread still sends
    lock: threading.Lock = field(default_factory=threading.Lock)
    sends_finished: bool = False
    orphaned: bool = False
    sends_done: threading.Event = field(default_factory=threading.Event)


def _throw(reason: str, desc: str, origin: str) -> None:
    tango.Except.throw_exception(reason, desc, origin)


def _rw(name: str, dtype: Any, doc: str, unit: str = "", **kw: Any) -> attribute:
    """A memorized read/write scalar backed by ``self._values[name]``."""

    def fget(self: DetectorSimulator) -> Any:
        value = self._values[name]
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
        if not hasattr(self, "_values"):  # kept across Init: memorized values stay in force
            self._values: dict[str, Any] = dict(_DEFAULTS)
            self._cfg_version = 0
        self._cfg_lock = threading.Lock()  # guards _values/_cfg_version; never held while blocking
        self._series: _Series | None = None  # the current or last series
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
        if series is not None and series.active:
            series.stop.set()
            series.sends_done.wait(2 * SERIES_END_TIMEOUT_S)
            with series.lock:
                if not series.sends_finished:
                    series.orphaned = True  # the thread closes the socket when it is done
                    sock = None
        if sock is not None:
            sock.close(linger=int(SERIES_END_TIMEOUT_S * 1000))
        # ZeroMQ unbinds asynchronously: an Init binding the same port again may retry briefly
        self._rebind_until = time.monotonic() + 2.0

    def _bind(self) -> None:
        sock = zmq.Context.instance().socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, int(SERIES_END_TIMEOUT_S * 1000))
        sock.setsockopt(zmq.SNDHWM, max(1, int(self.SendHighWaterMark)))
        port = int(self.Port)
        address = f"tcp://{self.BindHost}:{port if port else '*'}"
        while True:
            try:
                sock.bind(address)
                break
            except zmq.ZMQError as exc:
                if (exc.errno == zmq.EADDRINUSE and port
                        and time.monotonic() < getattr(self, "_rebind_until", 0.0)):
                    time.sleep(0.05)
                    continue
                sock.close(0)
                self._fault = (f"cannot bind the PUSH socket to {address}: {exc.strerror}. "
                               "Set the Port property to a free port (0 = pick one) or BindHost to a valid "
                               "interface, then run Init (or Reset once the port is free)")
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
                return f"RUNNING: stopping series {s.series}, sending series_end on {self._endpoint}"
            if s.waiting:
                return (f"RUNNING: series {s.series} ({what}) waiting for a receiver to connect to "
                        f"{self._endpoint}; Stop to abort")
            return (f"RUNNING: series {s.series} ({what}) on {self._endpoint}, "
                    f"{s.sent} frames sent, {s.unsent} unsent")
        last = "" if s is None else f"; last series {s.series}: {s.sent} frames sent, {s.unsent} unsent"
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
                   f"{origin} refused: series {self._series.series if self._series else '?'} is RUNNING; "
                   "run Stop and wait for state ON", origin)
        if state == DevState.FAULT or self._sock is None:
            _throw("SIM_CommandNotAllowed", f"{origin} refused in FAULT: {self._fault}", origin)
        with self._cfg_lock:
            nframes = int(self._values["nframes"])
            first = int(self._values["first_frame"])
        if first < 0:  # continue after the last series, as a detector's frame counter does
            first = getattr(self, "_next_frame", 0)
        self._series_count += 1
        series = _Series(str(self._series_count), live, nframes, self._sock, first=first)
        self._series = series
        self._transition(DevState.RUNNING)
        threading.Thread(target=self._stream, args=(series,), name=f"DetectorSimulator-series-{series.series}",
                         daemon=True).start()
        return series.series

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
        if name in _SHAPE_ATTRS and self.get_state() == DevState.RUNNING:
            _throw("SIM_NotAllowedWhileRunning",
                   f"{name} cannot change while RUNNING: the series streams frames of a fixed shape and type. "
                   f"Stop, wait for ON, then write {name} (the previous value is kept)", f"write {name}")
        with self._cfg_lock:
            values = dict(self._values)
        old = values[name]
        try:
            canonical = validate(name, value, values)
        except (InvalidValue, TypeError, ValueError, OverflowError) as exc:
            _throw("SIM_InvalidValue", f"{exc} (the previous value {old!r} is kept)", f"write {name}")
        with self._cfg_lock:
            self._values[name] = canonical
            self._cfg_version += 1

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
        return self._series.series if self._series else ""

    # ---- streaming thread ----------------------------------------------------------------

    def _stream(self, series: _Series) -> None:
        with tango.EnsureOmniThread():
            try:
                self._send_series(series)
            except Exception as exc:  # noqa: BLE001 - any failure ends in FAULT with the reason
                series.error = (f"streaming series {series.series} failed after {series.sent} frames: "
                                f"{type(exc).__name__}: {exc}. Check the frame size and scene, then run Reset")
            finally:
                with series.lock:
                    series.sends_finished = True
                    orphaned = series.orphaned
                series.sends_done.set()
                if orphaned:
                    series.sock.close(linger=int(SERIES_END_TIMEOUT_S * 1000))
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

    def _config(self) -> tuple[int, Scene, float]:
        with self._cfg_lock:
            return self._cfg_version, scene_of(self._values), float(self._values["rate"])

    def _send_series(self, s: _Series) -> None:
        version, scene, rate = self._config()
        gen = FrameGenerator(scene)
        rows, cols = scene.shape
        header = {"htype": "header", "series": s.series, "shape": [rows, cols], "type": scene.dtype,
                  "source": self.get_name()}
        if not s.live:
            header["nimages"] = s.nframes
        if not _send(s.sock, [json.dumps(header).encode()], s.stop, None):
            return  # stopped before any receiver connected: the series never began
        s.waiting = False
        image = {"htype": "image", "frame": 0, "shape": [rows, cols], "type": scene.dtype,
                 "compression": "none", "series": s.series, "timestamp": 0.0}
        t0, k0 = time.monotonic(), s.first  # absolute schedule: frame k is due at t0 + (k - k0) / rate
        frame_id = s.first
        while not s.stop.is_set() and (s.live or frame_id < s.first + s.nframes):
            if self._cfg_version != version:  # scene/rate changed: applies from this frame on
                version, new_scene, new_rate = self._config()
                if _pool_key(new_scene) == _pool_key(gen.scene):
                    # same noise pool and hot/dead pixels: render() reads the spot from .scene,
                    # so this renders exactly like FrameGenerator(new_scene)
                    gen.scene = new_scene
                else:
                    gen = FrameGenerator(new_scene)
                if new_rate != rate:
                    rate, t0, k0 = new_rate, time.monotonic(), frame_id
            deadline = None
            if rate:
                due = t0 + (frame_id - k0) / rate
                delay = due - time.monotonic()
                if delay > 0:
                    s.stop.wait(min(delay, POLL_S))
                    continue
                deadline = due + 1.0 / rate  # not taken before the next frame is due: dropped
            image["frame"], image["timestamp"] = frame_id, time.time()
            data = gen.render(frame_id)
            if _send(s.sock, [json.dumps(image).encode(), data], s.stop, deadline):
                s.sent += 1
            elif s.stop.is_set():
                break
            else:
                s.unsent += 1
            frame_id += 1
        self._next_frame = frame_id
        end = json.dumps({"htype": "series_end", "series": s.series, "frames_sent": s.sent,
                          "frames_unsent": s.unsent}).encode()
        if not _send(s.sock, [end], s.stop, None):  # after Stop: a bounded last try
            _send(s.sock, [end], None, time.monotonic() + SERIES_END_TIMEOUT_S)


def _send(sock: zmq.Socket, parts: list[Any], stop: threading.Event | None, deadline: float | None) -> bool:
    """Send without blocking longer than POLL_S at a time; False once stopped or past the deadline."""
    while True:
        try:
            sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            pass
        if stop is not None and stop.is_set():
            return False
        wait = POLL_S
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                return False
        sock.poll(max(1, int(wait * 1000)), zmq.POLLOUT)


def main(args: list[str] | None = None) -> None:
    """Server entry point: ``DetectorSimulator <instance>``."""
    run((DetectorSimulator,), args=args)


if __name__ == "__main__":
    main()
