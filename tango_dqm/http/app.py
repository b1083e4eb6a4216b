"""The ASGI app: HSDS REST subset for h5pyd (read-only) and the run pages under ``/runs/``.

Domains (the ``domain`` query parameter h5pyd sends):

- ``/``: the results file of the current or last scan (``h5pyd.File("http://host:port/")``);
- ``/<name>.h5`` (also ``/archive/<name>.h5``, ``/flagged/<name>.h5``): a results file in the
  OutputDirectory, confined to it by :func:`tango_dqm.files.confine`.

Everything is read-only: only GET and HEAD are served, plus POST on ``/datasets/<id>/value``,
which in the HSDS API is a read (a point selection, or a ``select`` too long for a URL).
Value responses are bounded (``max_bytes``, 413 beyond it); malformed requests get 4xx with a
message saying what is wrong; an unexpected failure is a 500 for that request only.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..files import PathConfinementError, confine
from ..storage import SCAN_SUFFIXES
from . import hsds
from .hsds import HttpError

log = logging.getLogger(__name__)

CurrentFile = Callable[[], "str | os.PathLike[str] | None"]
STATIC_SUFFIXES = {".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8", ".png": "image/png",
                   ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".css": "text/css", ".csv": "text/csv",
                   ".json": "application/json", ".log": "text/plain; charset=utf-8",
                   ".txt": "text/plain; charset=utf-8"}
MAX_POST_BODY = hsds.MAX_POINTS * 8 * 4  # a point selection of MAX_POINTS points of rank 4; bodies are buffered
_VALUE_PATH = re.compile(r"^/datasets/[^/]+/value/?$")
# Responses are reused while the file is unchanged (same inode, size, mtime) and younger than
# CACHE_SECONDS: a client polling at 10 Hz re-reads a file the engine flushes about once a second.
# The age bound covers a write within the same file-timestamp tick as the cached read.
CACHE_SECONDS = 0.5
CACHE_ITEMS = 512
CACHE_BYTES = 32 * 1024 * 1024
CACHE_MAX_ITEM = 4 * 1024 * 1024
_READ_METHODS = ("GET", "HEAD")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    return str(value)


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # allow_nan: missing float values are NaN; h5pyd's json.loads reads NaN
    return Response(json.dumps(doc, allow_nan=True, default=_json_default), status_code=status,
                    media_type="application/json", headers=headers)


def error_response(status: int, message: str) -> Response:
    headers = {"Retry-After": "1"} if status == 503 else None
    return json_response({"error": message, "status": status}, status, headers)


class ReadOnly:
    """Refuses every method but GET/HEAD (and the read-only POST of a value selection) with 405."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            if method not in _READ_METHODS and not (method == "POST" and _VALUE_PATH.match(scope["path"])):
                allow = "GET, HEAD, POST" if _VALUE_PATH.match(scope["path"]) else "GET, HEAD"
                resp = error_response(405, f"{method} refused: this server is read-only (tango-dqm results)")
                resp.headers["Allow"] = allow
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ResultsApp:
    """State of the app: where files are, which one is current, limits, the id index."""

    def __init__(self, output_directory: str | os.PathLike[str] | None, current_file: CurrentFile,
                 max_bytes: int = hsds.DEFAULT_MAX_BYTES):
        self.root = Path(output_directory).expanduser().resolve() if output_directory else None
        self.current_file = current_file
        self.max_bytes = int(max_bytes)
        self.ids = hsds.IdIndex()
        self.requests = 0
        self.cache_hits = 0
        self._cache: OrderedDict[tuple, tuple[Any, float, bytes, str]] = OrderedDict()
        self._cache_bytes = 0
        self._cache_lock = threading.Lock()

    def cached(self, key: tuple, domain: str | None, fn: Callable[..., Any], *args: Any) -> Response:
        """``fn(*args)`` as a Response, reused while the domain's file is unchanged (see CACHE_SECONDS)."""
        path = self.domain_file(domain)
        try:
            st = path.stat()
        except OSError:
            st = None
        sig = (str(path), st.st_ino, st.st_size, st.st_mtime_ns) if st is not None else None
        now = time.monotonic()
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and sig is not None and hit[0] == sig and now - hit[1] < CACHE_SECONDS:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return Response(hit[2], media_type=hit[3])
        out = fn(*args)
        resp = out if isinstance(out, Response) else json_response(out)
        body = bytes(resp.body)
        if sig is not None and resp.status_code == 200 and len(body) <= CACHE_MAX_ITEM:
            with self._cache_lock:  # the signature was taken before reading: a change meanwhile is a miss later
                old = self._cache.pop(key, None)
                self._cache_bytes -= len(old[2]) if old else 0
                self._cache[key] = (sig, now, body, resp.media_type or "application/json")
                self._cache_bytes += len(body)
                while len(self._cache) > CACHE_ITEMS or self._cache_bytes > CACHE_BYTES:
                    self._cache_bytes -= len(self._cache.popitem(last=False)[1][2])
        return resp

    # ---- files -------------------------------------------------------------------------

    def _confined(self, rel: str, what: str, requested: bool = True) -> Path:
        if self.root is None:
            raise HttpError(404, "no OutputDirectory is configured: nothing to serve")
        # in what a client asked for (not in the OutputDirectory's own path): writer locks, temp files
        if requested and any(part.startswith(".") for part in Path(rel).parts if part != "/"):
            raise HttpError(404, f"{rel!r}: hidden files and '..' are not served")
        try:
            return confine(rel, [self.root], "OutputDirectory")
        except PathConfinementError as exc:
            raise HttpError(403, f"{what} refused: {exc}") from None

    def domain_file(self, domain: str | None) -> Path:
        if domain is None:
            raise HttpError(400, "the domain query parameter is required (h5pyd sends it; use domain=/ "
                                 "for the current scan)")
        if not domain.startswith("/") or len(domain) > 4096:
            raise HttpError(400, f"domain must be an absolute path like / or /scan.h5, got {domain[:80]!r}")
        if domain.rstrip("/") == "":
            current = self.current_file()
            if not current:
                raise HttpError(404, "no scan has been started yet: no current results file")
            path = Path(current)
            if self.root is not None:
                path = self._confined(str(path), "current results file", requested=False)
            return path
        path = self._confined(domain.lstrip("/"), f"domain {domain}")
        if path.suffix.lower() not in SCAN_SUFFIXES:
            raise HttpError(404, f"{domain} is not a results file ({', '.join(SCAN_SUFFIXES)})")
        if not path.is_file():
            raise HttpError(404, f"{domain} does not exist under the OutputDirectory")
        return path

    @staticmethod
    def _mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return 0.0

    # ---- HSDS handlers (worker threads) -----------------------------------------------

    def about(self) -> dict[str, Any]:
        from .. import __version__
        return {"state": "READY", "name": "tango-dqm", "about": "read-only HSDS REST subset for h5pyd",
                "server": f"tango-dqm {__version__}", "start_time": time.time(), "node_count": 1,
                "compressors": ["gzip"]}

    def get_domain(self, domain: str | None, verbose: bool) -> dict[str, Any]:
        path = self.domain_file(domain)
        key = self._key(domain)
        mtime = self._mtime(path)
        doc: dict[str, Any] = {"root": hsds.root_id(key), "class": "domain", "domain": key, "owner": "tango-dqm",
                               "created": mtime, "lastModified": mtime, "compressors": ["gzip"],
                               "limits": {"max_request_size": self.max_bytes}}
        if verbose:
            with hsds.open_file(path) as f:
                doc.update(hsds.domain_stats(f))
            doc["total_size"] = doc["allocated_bytes"] = path.stat().st_size
        return doc

    @staticmethod
    def _key(domain: str | None) -> str:
        return "/" + (domain or "/").strip("/")

    def _object(self, domain: str | None, oid: str, collection: str, fn: Callable[..., Any]) -> Any:
        hsds.check_id(oid, collection)
        path = self.domain_file(domain)
        key = self._key(domain)
        with hsds.open_file(path) as f:
            found = hsds.find_id(key, self.ids, f, oid)
            if found is None or found[0] != collection[0]:
                raise HttpError(404, f"{oid} is not an object of {domain} (it may belong to an earlier scan)")
            try:
                return fn(f, key, found[1], self._mtime(path))
            except KeyError:
                raise HttpError(404, f"{oid} ({found[1]}) is no longer in {domain}") from None

    def get_object(self, domain: str | None, collection: str, oid: str, attrs: bool, links: bool) -> Any:
        def fn(f: h5py.File, key: str, path: str, mtime: float) -> Any:
            return hsds.object_json(key, self.ids, f, collection[0], path, oid, mtime, self.max_bytes,
                                    include_attrs=attrs, include_links=links)
        return self._object(domain, oid, collection, fn)

    def get_links(self, domain: str | None, oid: str, name: str | None) -> Any:
        def fn(f: h5py.File, key: str, path: str, mtime: float) -> Any:
            group = hsds._walk(f, path)
            if name is None:
                return {"links": list(hsds._links(key, self.ids, group, path).values())}
            if name not in group:
                raise HttpError(404, f"no link {name!r} in {path}")
            return {"link": hsds.link_json(key, self.ids, group, path, name)}
        return self._object(domain, oid, "groups", fn)

    def get_attributes(self, domain: str | None, collection: str, oid: str, name: str | None,
                       include_data: bool) -> Any:
        def fn(f: h5py.File, key: str, path: str, mtime: float) -> Any:
            obj = hsds._walk(f, path)
            if name is None:
                return {"attributes": [hsds.attribute_json(obj, n, include_data, self.max_bytes) for n in obj.attrs]}
            if name not in obj.attrs:
                raise HttpError(404, f"no attribute {name!r} on {path}")
            return hsds.attribute_json(obj, name, include_data, self.max_bytes)
        return self._object(domain, oid, collection, fn)

    def get_value(self, domain: str | None, oid: str, select: str | None, points: bytes | None,
                  binary: bool) -> Response:
        def fn(f: h5py.File, key: str, path: str, mtime: float) -> Response:
            ds = hsds._walk(f, path)
            if points is not None:
                arr = hsds.read_points(ds, points, self.max_bytes)
            else:
                arr = hsds.read_values(ds, select, self.max_bytes)
            if binary:
                return Response(hsds.to_binary(arr, self.max_bytes), media_type="application/octet-stream")
            return json_response({"value": hsds.to_json_value(arr, self.max_bytes)})
        return self._object(domain, oid, "datasets", fn)

    # ---- static run pages ----------------------------------------------------------------

    def static(self, rel: str) -> Response:
        if self.root is None:
            raise HttpError(404, "no OutputDirectory is configured: no run pages")
        path = self._confined(rel or ".", f"/runs/{rel}")
        if path.is_dir():
            path = path / "index.html"
        if path.is_symlink() or not path.is_file():
            raise HttpError(404, f"/runs/{rel} does not exist (the run list is index.html, written after a scan)")
        media = STATIC_SUFFIXES.get(path.suffix.lower())
        if media is None:
            raise HttpError(404, f"/runs/{rel}: only run pages, plots and run logs are served "
                                 f"({', '.join(sorted(STATIC_SUFFIXES))})")
        return FileResponse(path, media_type=media, headers={"X-Content-Type-Options": "nosniff"})


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "0").strip().lower() in ("1", "true", "yes")


def _wants_binary(request: Request) -> bool:
    return "application/octet-stream" in request.headers.get("accept", "")


def create_app(output_directory: str | os.PathLike[str] | None, current_file: CurrentFile,
               max_bytes: int = hsds.DEFAULT_MAX_BYTES) -> ASGIApp:
    """The read-only ASGI app over ``output_directory`` and the scan file ``current_file()`` names."""
    state = ResultsApp(output_directory, current_file, max_bytes)

    async def call(fn: Callable[..., Any], *args: Any, cache: Request | None = None) -> Response:
        state.requests += 1
        try:
            if cache is not None:  # GET/HEAD of a domain's document or values: reusable
                key = (cache.url.path, cache.url.query, _wants_binary(cache))
                out = await run_in_threadpool(state.cached, key, cache.query_params.get("domain"), fn, *args)
            else:
                out = await run_in_threadpool(fn, *args)
        except HttpError as exc:
            return error_response(exc.status, exc.message)
        except (OSError, RuntimeError) as exc:
            # h5py raises these for HDF5 errors; a file caught mid-flush (bad metadata checksum) reads
            # fine a moment later, so the client is told to retry
            if isinstance(exc, RuntimeError) and "checksum" not in str(exc) and "metadata" not in str(exc):
                log.exception("HTTP request failed")
                return error_response(500, f"internal error: {type(exc).__name__}: {exc}")
            return error_response(503, f"cannot read the file now ({exc}); retry")
        except Exception as exc:  # one failed request, never the server
            log.exception("HTTP request failed")
            return error_response(500, f"internal error: {type(exc).__name__}: {exc}")
        return out if isinstance(out, Response) else json_response(out)

    async def about(request: Request) -> Response:
        return await call(state.about)

    async def domain(request: Request) -> Response:
        if "domain" not in request.query_params and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/runs/", status_code=307)  # a browser: show the run list
        return await call(state.get_domain, request.query_params.get("domain"), _flag(request, "verbose"),
                          cache=request)

    async def obj(request: Request) -> Response:
        collection = request.url.path.split("/")[1]
        return await call(state.get_object, request.query_params.get("domain"), collection,
                          request.path_params["oid"], _flag(request, "include_attrs"),
                          _flag(request, "include_links"), cache=request)

    async def links(request: Request) -> Response:
        return await call(state.get_links, request.query_params.get("domain"), request.path_params["oid"],
                          request.path_params.get("name"), cache=request)

    async def attributes(request: Request) -> Response:
        collection = request.url.path.split("/")[1]
        include = request.query_params.get("IncludeData", "1") not in ("0", "false")
        return await call(state.get_attributes, request.query_params.get("domain"), collection,
                          request.path_params["oid"], request.path_params.get("name"), include, cache=request)

    async def value(request: Request) -> Response:
        select = request.query_params.get("select")
        points: bytes | None = None
        if request.method == "POST":
            declared = request.headers.get("content-length", "0")
            if not declared.isdigit() or int(declared) > MAX_POST_BODY:
                return error_response(413, f"request body larger than {MAX_POST_BODY} bytes (or no valid length)")
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_POST_BODY:
                    return error_response(413, f"request body larger than {MAX_POST_BODY} bytes")
            if request.headers.get("content-type", "").startswith("application/octet-stream"):
                points = bytes(body)
            else:
                try:
                    doc = json.loads(body or b"{}")
                except (ValueError, UnicodeDecodeError) as exc:
                    return error_response(400, f"POST body must be JSON {{\"select\": \"[...]\"}} or binary "
                                               f"uint64 points: {exc}")
                if not isinstance(doc, dict) or not isinstance(doc.get("select", ""), str):
                    return error_response(400, 'POST body must be a JSON object {"select": "[...]"}')
                select = doc.get("select") or select
        return await call(state.get_value, request.query_params.get("domain"), request.path_params["oid"],
                          select, points, _wants_binary(request), cache=request if request.method != "POST" else None)

    async def runs_root(request: Request) -> Response:
        return RedirectResponse("/runs/", status_code=307)

    async def runs(request: Request) -> Response:
        return await call(state.static, request.path_params.get("rel", ""))

    routes = [
        Route("/", domain),
        Route("/about", about),
        Route("/info", about),
        Route("/groups/{oid}", obj),
        Route("/groups/{oid}/links", links),
        Route("/groups/{oid}/links/{name:path}", links),
        Route("/groups/{oid}/attributes", attributes),
        Route("/groups/{oid}/attributes/{name:path}", attributes),
        Route("/datasets/{oid}", obj),
        Route("/datasets/{oid}/attributes", attributes),
        Route("/datasets/{oid}/attributes/{name:path}", attributes),
        Route("/datasets/{oid}/value", value, methods=["GET", "HEAD", "POST"]),
        Route("/runs", runs_root),
        Route("/runs/", runs),
        Route("/runs/{rel:path}", runs),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, f"{request.url.path} is not served (HSDS read API and /runs/ only)")

    app = Starlette(routes=routes, exception_handlers={404: not_found})
    app.state.results = state
    return ReadOnly(app)
