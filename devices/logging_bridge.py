"""Bridge Python logging (used by the core) to a device's Tango logging streams."""
from __future__ import annotations

import logging

import tango


class TangoLogHandler(logging.Handler):
    """Forwards records to ``device.{debug,info,warn,error,fatal}_stream``.

    Tango's own logging level (set in Jive/Astor or with ``-v``) then filters them,
    so operators control verbosity the usual Tango way.
    """

    def __init__(self, device: tango.server.Device):
        super().__init__(logging.DEBUG)
        self.device = device

    def emit(self, record: logging.LogRecord) -> None:
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
