"""Streaming simulated detector frames as STINS messages on a ZeroMQ PUSH socket.

The core of the DetectorSimulator device, which only maps these settings onto Tango
attributes and runs :meth:`Series.run` on an omni-thread. Frames come from
:class:`tango_dqm.simulation.FrameGenerator`, so frame ``i`` of a series equals
``FrameGenerator(scene).render(i)``. Messages, in the format ``zmq://`` sources read::

    {"htype": "header", "series": "3", "nimages": N, "shape": [rows, cols], "type": "uint16"}
    {"htype": "image", "frame": i, "shape": [rows, cols], "type": "uint16", "compression": "none"}
        + one raw C-order part (sent zero-copy)
    {"htype": "series_end", "series": "3", "frames_sent": n, "frames_unsent": m}

Back-pressure: a PUSH socket blocks when no receiver is connected or the receivers are
full. Every send is non-blocking inside a POLL_S POLLOUT loop, so a stop request is always
seen quickly. With ``rate`` 0 (flat out) the series waits for the receiver and loses
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
from typing import Any

import zmq

from .simulation import FrameGenerator, Scene

POLL_S = 0.1  # longest a send or a wait blocks before looking at the stop flag again
SERIES_END_TIMEOUT_S = 1.0  # after a stop, how long series_end may wait for a receiver
MAX_SIDE = 16384
MAX_PIXELS = 1 << 24  # 16 Mpixel: the noise pools hold about 3 frames (tango_dqm.simulation)
MAX_RATE = 100_000.0


class PixelType(enum.IntEnum):
    """Pixel types a simulated frame may have (the STINS ``type`` of the image)."""

    uint8 = 0
    uint16 = 1
    uint32 = 2
    float32 = 3


#: settings whose change alters the frame size/type: refused while a series runs
SHAPE_SETTINGS = ("frame_width", "frame_height", "dtype")
#: scene fields that change the noise pool or the hot/dead pixel choice: need a new generator
_POOL_FIELDS = ("shape", "dtype", "seed", "background", "noise", "hot_pixels", "dead_pixels")

DEFAULTS: dict[str, Any] = {
    "frame_width": 512, "frame_height": 512, "dtype": "uint16", "rate": 10.0, "nframes": 100,
    "spot_x": -1.0, "spot_y": -1.0, "spot_sigma": 20.0, "amplitude": 1000.0, "noise": 5.0,
    "background": 100.0, "hot_pixels": 0, "dead_pixels": 0, "drift_x": 0.0, "drift_y": 0.0,
    "seed": 0, "first_frame": 0,
}


class InvalidValue(ValueError):
    """A setting breaks a rule; the message states the rule."""


class BindError(OSError):
    """The PUSH socket cannot be bound; the message says what to change."""


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
    """Check one setting against its rule and the other current ``values``."""
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
        hz = _finite(name, value)
        if not 0 <= hz <= MAX_RATE:
            raise InvalidValue(f"rate must be >= 0 Hz (0 = as fast as the receiver takes frames) "
                               f"and <= {MAX_RATE:g} Hz, got {hz:g}")
        return hz
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
    x = _finite(name, value)
    if name == "spot_sigma" and x <= 0:
        raise InvalidValue(f"spot_sigma must be > 0 pixels, got {x:g} (use amplitude=0 for no spot)")
    if name == "noise" and x < 0:
        raise InvalidValue(f"noise must be >= 0 (standard deviation in counts), got {x:g}")
    return x


def scene_of(values: dict[str, Any]) -> Scene:
    """The :class:`Scene` described by the settings (negative spot_x/y: image centre)."""
    return Scene(shape=(int(values["frame_height"]), int(values["frame_width"])), dtype=values["dtype"],
                 seed=int(values["seed"]), background=values["background"], noise=values["noise"],
                 spot_x=None if values["spot_x"] < 0 else values["spot_x"],
                 spot_y=None if values["spot_y"] < 0 else values["spot_y"],
                 sigma=values["spot_sigma"], amplitude=values["amplitude"],
                 drift_x=values["drift_x"], drift_y=values["drift_y"],
                 hot_pixels=int(values["hot_pixels"]), dead_pixels=int(values["dead_pixels"]))


def _pool_key(scene: Scene) -> tuple:
    return tuple(getattr(scene, f) for f in _POOL_FIELDS)


class SimulatorSettings:
    """The simulator's settings (DEFAULTS' keys), validated, with a version that counts changes.

    A running series reads them at every frame, so a change applies from the next frame."""

    def __init__(self, values: dict[str, Any] | None = None):
        self._values = dict(DEFAULTS if values is None else values)
        self._lock = threading.Lock()  # never held while blocking
        self.version = 0

    def get(self, name: str) -> Any:
        with self._lock:
            return self._values[name]

    def write(self, name: str, value: Any) -> Any:
        """Validate and set one setting; raises InvalidValue (or TypeError, ValueError, OverflowError
        for a value of the wrong kind), keeping the old value. Returns the canonical value."""
        with self._lock:
            values = dict(self._values)
        canonical = validate(name, value, values)
        with self._lock:
            self._values[name] = canonical
            self.version += 1
        return canonical

    def current(self) -> tuple[int, Scene, float]:
        """(version, scene, rate) at once."""
        with self._lock:
            return self.version, scene_of(self._values), float(self._values["rate"])


def bind_push(host: str, port: int, high_water_mark: int, retry_until: float = 0.0) -> zmq.Socket:
    """A PUSH socket bound to ``host:port`` (port 0: a free one); BindError says what to change.

    ZeroMQ unbinds asynchronously, so binding a port just closed is retried until ``retry_until``
    (a monotonic time)."""
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, int(SERIES_END_TIMEOUT_S * 1000))
    sock.setsockopt(zmq.SNDHWM, max(1, int(high_water_mark)))
    address = f"tcp://{host}:{port if port else '*'}"
    while True:
        try:
            sock.bind(address)
            return sock
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EADDRINUSE and port and time.monotonic() < retry_until:
                time.sleep(0.05)
                continue
            sock.close(0)
            raise BindError(f"cannot bind the PUSH socket to {address}: {exc.strerror}. "
                            "Set the Port property to a free port (0 = pick one) or BindHost to a valid "
                            "interface, then run Init (or Reset once the port is free)") from None


class Series:
    """One Start (``nframes`` frames) or Live (until stop) series; :meth:`run` sends it.

    Flags and counters are shared between the thread running it and the device reading them."""

    def __init__(self, series_id: str, live: bool, nframes: int, sock: zmq.Socket, settings: SimulatorSettings,
                 source: str = "", first: int = 0):
        self.series_id = series_id
        self.live = live
        self.nframes = nframes
        self.first = first  # frame id of the series' first frame
        #: the id after the last frame of the series, once it was sent (None: it never began)
        self.next_frame: int | None = None
        self.sock = sock
        self.settings = settings
        self.source = source
        self.stop = threading.Event()
        self.sent = 0
        self.unsent = 0
        self.waiting = True  # header not yet taken by a receiver
        self.active = True  # cleared by the owner once it has handled the end of the series
        self.error = ""
        # socket hand-over when the owner goes away while the thread still sends
        self._lock = threading.Lock()
        self._sends_finished = False
        self._orphaned = False
        self._sends_done = threading.Event()

    def run(self) -> None:
        """Send the series; never raises (a failure is left in ``error``)."""
        try:
            self._send_series()
        except Exception as exc:  # noqa: BLE001 - any failure ends the series with the reason
            self.error = (f"streaming series {self.series_id} failed after {self.sent} frames: "
                          f"{type(exc).__name__}: {exc}. Check the frame size and scene, then run Reset")
        finally:
            with self._lock:
                self._sends_finished = True
                orphaned = self._orphaned
            self._sends_done.set()
            if orphaned:
                self.sock.close(linger=int(SERIES_END_TIMEOUT_S * 1000))

    def abandon(self) -> bool:
        """Stop and wait a little for the sends to end; True when the caller may close the socket,
        False when the thread is still sending and closes it itself when done."""
        self.stop.set()
        self._sends_done.wait(2 * SERIES_END_TIMEOUT_S)
        with self._lock:
            if not self._sends_finished:
                self._orphaned = True
                return False
        return True

    def _send_series(self) -> None:
        version, scene, rate = self.settings.current()
        gen = FrameGenerator(scene)
        rows, cols = scene.shape
        header: dict[str, Any] = {"htype": "header", "series": self.series_id, "shape": [rows, cols],
                                  "type": scene.dtype, "source": self.source}
        if not self.live:
            header["nimages"] = self.nframes
        if not send(self.sock, [json.dumps(header).encode()], self.stop, None):
            return  # stopped before any receiver connected: the series never began
        self.waiting = False
        image: dict[str, Any] = {"htype": "image", "frame": 0, "shape": [rows, cols], "type": scene.dtype,
                                 "compression": "none", "series": self.series_id, "timestamp": 0.0}
        t0, k0 = time.monotonic(), self.first  # absolute schedule: frame k is due at t0 + (k - k0) / rate
        frame_id = self.first
        while not self.stop.is_set() and (self.live or frame_id < self.first + self.nframes):
            if self.settings.version != version:  # scene/rate changed: applies from this frame on
                version, new_scene, new_rate = self.settings.current()
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
                    self.stop.wait(min(delay, POLL_S))
                    continue
                deadline = due + 1.0 / rate  # not taken before the next frame is due: dropped
            image["frame"], image["timestamp"] = frame_id, time.time()
            data = gen.render(frame_id)
            if send(self.sock, [json.dumps(image).encode(), data], self.stop, deadline):
                self.sent += 1
            elif self.stop.is_set():
                break
            else:
                self.unsent += 1
            frame_id += 1
        self.next_frame = frame_id
        end = json.dumps({"htype": "series_end", "series": self.series_id, "frames_sent": self.sent,
                          "frames_unsent": self.unsent}).encode()
        if not send(self.sock, [end], self.stop, None):  # after a stop: a bounded last try
            send(self.sock, [end], None, time.monotonic() + SERIES_END_TIMEOUT_S)


def send(sock: zmq.Socket, parts: list[Any], stop: threading.Event | None, deadline: float | None) -> bool:
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


__all__ = ["DEFAULTS", "SHAPE_SETTINGS", "BindError", "InvalidValue", "PixelType", "Series", "SimulatorSettings",
           "bind_push", "scene_of", "send", "validate"]
