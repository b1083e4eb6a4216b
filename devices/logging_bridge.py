"""Bridges from the core's threads to a device: Python logging to its Tango logging streams,
and the engine's listener calls to its event pushing. Both can be cut off (``detach``) when
the device is deleted, so nothing in flight reaches a device that is going away."""
from __future__ import annotations

import logging
import threading
from typing import Any

import tango


class TangoLogHandler(logging.Handler):
    """Forwards records to ``device.{debug,info,warn,error,fatal}_stream``.

    Tango's own logging level (set in Jive/Astor or with ``-v``) then filters them,
    so operators control verbosity the usual Tango way.
    """

    def __init__(self, device: tango.server.Device):
        super().__init__(logging.DEBUG)
        self.device: Any = device
        self._cut = threading.Lock()

    def detach(self) -> None:
        """No record reaches the device after this returns (one being written is finished first)."""
        with self._cut:
            self.device = None

    def emit(self, record: logging.LogRecord) -> None:
        with self._cut:  # logging streams take no device lock: holding this one cannot deadlock
            if self.device is not None:
                self._emit(record)

    def _emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            if record.levelno >= logging.CRITICAL:
                self.device.fatal_stream(msg)
            elif record.levelno >= logging.ERROR:
                self.device.error_stream(msg)
            elif record.levelno >= logging.WARNING:
                self.device.warn_stream(msg)
            elif record.levelno >= logging.INFO:
                self.device.info_stream(msg)
            else:
                self.device.debug_stream(msg)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class EngineListener:
    """The engine's listener (called by its publisher thread), forwarding to the device until
    ``detach``. No lock here: pushing an event takes the device lock, which delete_device holds."""

    def __init__(self, device: Any):
        self.device: Any = device

    def detach(self) -> None:
        self.device = None

    def on_state(self, state: str, status: str) -> None:
        device = self.device
        if device is not None:
            device.on_state(state, status)

    def on_results(self, results: dict[str, Any], frame_id: int) -> None:
        device = self.device
        if device is not None:
            device.on_results(results, frame_id)

    def on_tick(self) -> None:
        device = self.device
        if device is not None:
            device.on_tick()
