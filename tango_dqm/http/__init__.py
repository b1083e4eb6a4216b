"""Read-only HTTP access to live results: the HSDS REST subset h5pyd reads, and the run pages.

``ResultsHttpServer(host, port, output_directory, current_file_getter)`` serves, from a
background thread (uvicorn + Starlette, no Tango):

- the current or last scan's results file as the domain ``/`` (``h5pyd.File("/", endpoint=url)``)
  and any results file of the OutputDirectory as ``/<name>.h5``;
- the run list, reports, plots and run logs of the OutputDirectory under ``/runs/``.

See docs/http.md.
"""
from __future__ import annotations

from .app import create_app
from .hsds import DEFAULT_MAX_BYTES, HttpError
from .server import HttpServerError, ResultsHttpServer

__all__ = ["DEFAULT_MAX_BYTES", "HttpError", "HttpServerError", "ResultsHttpServer", "create_app"]
