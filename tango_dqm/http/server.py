"""``ResultsHttpServer``: the app served by uvicorn on a background thread.

The listening socket is bound in :meth:`start` (so a taken port fails there, with the
reason), then handed to uvicorn. :meth:`close` asks uvicorn to exit and joins its thread
with a timeout: quick (uvicorn checks ``should_exit`` every 0.1 s), safe to call twice and
from a Tango ``delete_device``. The server's threads never call back into the caller: they
only read files, so they push no Tango events.
"""
from __future__ import annotations

import logging
import os
import socket
import threading

import uvicorn

from .app import CurrentFile, create_app
from .hsds import DEFAULT_MAX_BYTES

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64  # connections and requests at once; more get 503 (bounded threads and memory)


class HttpServerError(RuntimeError):
    """The HTTP server could not start (port taken, bad host ...); the message says why."""


class ResultsHttpServer:
    """Read-only HTTP access to the results (h5pyd) and run pages (``/runs/``) of an OutputDirectory.

    ``current_file_getter()`` returns the results file of the current or last scan (or None);
    it is called from the server's worker threads, so it must be cheap and thread-safe.
    ``port`` 0 picks a free port (see :attr:`url`).
    """

    def __init__(self, host: str, port: int, output_directory: str | os.PathLike[str] | None,
                 current_file_getter: CurrentFile, *, max_bytes: int = DEFAULT_MAX_BYTES):
        if not 0 <= int(port) <= 65535:
            raise HttpServerError(f"HTTP port must be 0..65535, got {port}")
        self.host = host or "127.0.0.1"
        self.port = int(port)
        self.app = create_app(output_directory, current_file_getter, max_bytes)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.error = ""

    @property
    def url(self) -> str:
        host = socket.getfqdn() if self.host in ("0.0.0.0", "::") else self.host  # reachable name, not "any"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> str:
        """Bind and start serving; returns the URL. Raises HttpServerError when the port cannot be bound."""
        if self._thread is not None:
            return self.url
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            sock = socket.create_server((self.host, self.port), family=family, backlog=128)
        except (OSError, OverflowError, ValueError) as exc:
            raise HttpServerError(f"cannot listen on {self.host}:{self.port}: {exc}") from None
        # inherited by the accepted connections: no 40 ms delayed-ACK stall per keep-alive response
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1, timeout_keep_alive=5, server_header=False,
                                limit_concurrency=MAX_CONNECTIONS)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"dqm-http-{self.port}", daemon=True)
        self._thread.start()
        log.info("HTTP results server on %s", self.url)
        return self.url

    def _run(self) -> None:
        assert self._server is not None and self._sock is not None
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # noqa: BLE001 - reported by close()/error, never raised in a thread
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("HTTP results server stopped: %s", self.error)

    def close(self, timeout: float = 3.0) -> None:
        """Stop serving (in-flight requests get up to a second), then release the port. Idempotent."""
        server, thread, sock = self._server, self._thread, self._sock
        self._server = self._thread = self._sock = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive() and server is not None:
                server.force_exit = True  # stop waiting for slow clients
                thread.join(1.0)
            if thread.is_alive():
                log.warning("HTTP results server thread did not stop within %.1f s", timeout + 1.0)
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self) -> ResultsHttpServer:  # noqa: PYI034 - Self needs Python 3.11
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
