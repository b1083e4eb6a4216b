"""The engine: source threads -> bounded queue -> one analysis thread, with a state machine.

States: ON (idle) -> RUNNING (scan or live) -> CLOSE (finished, results frozen);
any source or analysis error -> FAULT; Reset: CLOSE/FAULT -> ON. Commands only set
flags and start threads; the engine thread changes state itself when it has drained,
so a caller holding a lock that a listener needs can never deadlock.
"""
from __future__ import annotations

import bisect
import contextlib
import enum
import itertools
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .events import BuiltEvent, EventBuilder, IdKind, IdTracker
from .files import FileAccess
from .frames import BadInput, Frame, SeriesEnd, SeriesStart, is_count
from .params import Parameter, ParameterStore, Params
from .plugin import Analysis, FrameOutput, PluginError, Result, Runner, instantiate, load_analysis
from .points import OpenPoint, PointRecord, check_frames, check_timeout, point_results
from .publisher import Listener, Publisher
from .quality import (LossCheck, QualityMonitor, QualitySnapshot, RangeCheck, StalenessCheck, Verdict,
                      checks_from_config)
from .products import ScanProducts
from .quality.references import (BACKGROUND_ARRAY, Reference, ReferenceInfo, ReferenceStore, ReferenceStoreError,
                                 latest_reference, open_store, reference_folder)
from .versions import deployed_versions
from .products.output_stream import ResultStream
from .pipeline import Accumulation, OrderedPool, default_threads
from .sources import Source, SourceError, SourceSpec, open_source

log = logging.getLogger(__name__)

#: eventRate is measured over the arrival times of the events analysed in the last RATE_WINDOW seconds
RATE_WINDOW = 2.0
#: how long close() waits for the source threads to close their sockets (s)
CLOSE_TIMEOUT = 5.0
METADATA_MAX_BYTES = 64 * 1024  # scan metadata as JSON: labels, not data


class EngineState(str, enum.Enum):
    """Engine states; the names match Tango's DevState names used by the device."""

    ON = "ON"
    RUNNING = "RUNNING"
    CLOSE = "CLOSE"
    FAULT = "FAULT"


#: The state machine's commands as data: command -> the states it is allowed in (README's table).
#: Stop outside RUNNING is a no-op rather than a refusal (a run may end on its own meanwhile).
TRANSITIONS: dict[str, frozenset[EngineState]] = {
    "Start": frozenset({EngineState.ON, EngineState.CLOSE}),
    "Live": frozenset({EngineState.ON, EngineState.CLOSE}),
    "Stop": frozenset({EngineState.RUNNING}),
    "Reset": frozenset({EngineState.CLOSE, EngineState.FAULT}),
    "Flag": frozenset({EngineState.CLOSE}),
    "Archive": frozenset({EngineState.CLOSE}),
    "TakeReference": frozenset({EngineState.CLOSE}),
    "TakeBackground": frozenset({EngineState.CLOSE}),
}
_ORDER = tuple(EngineState)


def refusal(command: str, state: EngineState) -> str | None:
    """Why ``command`` is refused in ``state`` (None when allowed), saying what to do instead."""
    allowed = TRANSITIONS[command]
    if state in allowed:
        return None
    if command in ("Start", "Live"):
        return f"{command} is not allowed in {state.value}" + (
            "; run Reset first" if state is EngineState.FAULT else "; Stop first")
    if command in ("TakeReference", "TakeBackground"):
        return f"{command} needs a finished scan (CLOSE), not {state.value}"
    names = " and ".join(s.value for s in _ORDER if s in allowed)
    return f"{command} is allowed in {names}, not in {state.value}"


def _refuse_unless(command: str, state: EngineState) -> None:
    """The one refusal helper of the commands: raise EngineError unless ``command`` is allowed in ``state``."""
    why = refusal(command, state)
    if why is not None:
        raise EngineError(why)


class EngineError(RuntimeError):
    """A command is not allowed now, or the configuration is invalid."""


class NotConfiguredError(EngineError):
    """A command needs a setting that is not configured (e.g. no reference directory)."""


@dataclass
class EngineConfig:
    """Everything the engine needs; the device builds it from Tango properties."""

    sources: Sequence[str]
    analyses: Sequence[str] = ("roi",)
    queue_size: int = 64
    array_push_interval: float = 0.5
    #: results go to the listener at most once per this many seconds (coalesced: the latest
    #: frame's); slower frame rates get every frame's results at once (see tango_dqm.publisher)
    results_interval: float = 0.005
    #: quality checks: dicts or JSON strings (see tango_dqm.quality.checks_from_config)
    checks: Sequence[Any] = ()
    #: STALE after this many seconds without a frame while RUNNING (0: no staleness check)
    stale_timeout: float = 0.0
    #: with several streams: how long an event waits for its partners (s)
    event_timeout: float = 1.0
    #: how often accumulated results are judged against references during a run (s)
    reference_interval: float = 5.0
    #: where scan results files and reports go ("" : none are written)
    output_directory: str = ""
    #: where references and backgrounds are kept ("" : output_directory/references, or none)
    reference_directory: str = ""
    #: name of the results file in output_directory ("" : <scan_id>.h5)
    output_name: str = ""
    #: scalar result plotted by default in the results file (NXdata signal)
    main_result: str = "net_signal"
    #: per-frame results published as a bsread stream: "bsread://127.0.0.1:PORT?mode=pub|push" ("" : off)
    output: str = ""
    #: directories that file parameters (mask, dark ...) may be read from, and their size limit
    file_roots: Sequence[str] = ()
    max_file_bytes: int = 64 * 1024 * 1024
    #: threads running the analyses' ``process`` on consecutive frames at once (0: one per core);
    #: accumulation and everything after it stay in frame order, so results do not depend on it
    analysis_threads: int = 0
    #: scan metadata keys (sample, pmt_serial ...) that must be set before a scan Starts (not Live)
    required_metadata: Sequence[str] = ()
    #: seconds between rewrites of the running scan's report and the run list (0: only at the end)
    report_interval: float = 10.0
    #: scale-out worker: the reducer's endpoint tcp://host:port ("" : a stand-alone monitor), this worker's name
    reducer: str = ""
    worker_name: str = ""
    reducer_heartbeat: float = 0.2
    reducer_acc_interval: float = 1.0


@dataclass
class Counters:
    """Event counters of the current (or last) scan (README, "Counters", has the rules).

    At the end of every scan ``total == completed + dropped + bad``; ``partial`` and
    ``orphaned`` are parts of ``completed`` and ``dropped``; ``duplicate`` and ``out_of_order``
    count frames, outside that sum.
    """

    total: int = 0
    #: events analysed (partial ones included)
    completed: int = 0
    #: events lost, each once: id gaps, live queue overflow, announced but never sent, orphaned
    dropped: int = 0
    #: malformed messages, counted and skipped
    bad: int = 0
    #: events analysed with a partner stream missing (several streams only; part of completed)
    partial: int = 0
    #: events never analysed because their primary frame did not arrive (several streams only; part of dropped)
    orphaned: int = 0
    #: frames whose id a stream had already delivered: skipped, not analysed twice
    duplicate: int = 0
    #: frames that arrived after a higher id of their stream: analysed, not lost
    out_of_order: int = 0
    expected: int | None = None
    event_rate: float = 0.0
    latency_ms: float = 0.0


@dataclass
class Snapshot:
    """A consistent copy of the engine's public state, cheap to take."""

    state: EngineState
    status: str
    counters: Counters
    results: dict[str, Any]
    frame_id: int | None
    summary: dict[str, Any]
    scan_id: str
    bad_kinds: dict[str, int] = field(default_factory=dict)
    #: set by Engine.snapshot (the empty default only stands in until then)
    quality: QualitySnapshot = field(default_factory=lambda: QualitySnapshot(Verdict.INSUFFICIENT, (), 0, 0, {},
                                                                             None, False))
    coverage: float = 0.0
    verdict_report: str = ""


#: scan numbers of this process: an Init (a new Engine) must not reuse the last scan's id and file name
_SCAN_SEQ = itertools.count(1)

_DONE = object()  # a source thread finished


def _empty(value: Any) -> bool:
    """A metadata value that does not count as set: None, blank text, an empty list or object."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or value == [] or value == {}


class Engine:
    """Runs analyses over frames from sources; owns all threads and the state machine."""

    def __init__(self, config: EngineConfig, listener: Listener | None = None,
                 thread_context: Callable[[], Any] = contextlib.nullcontext):
        if not (isinstance(config.event_timeout, (int, float)) and 0 <= config.event_timeout <= 3600):
            raise EngineError(f"EventTimeout must be between 0 and 3600 s, got {config.event_timeout!r}")
        ri = config.report_interval
        if isinstance(ri, bool) or not isinstance(ri, (int, float)) or not 0 <= ri <= 86400:
            raise EngineError(f"ReportInterval must be between 0 and 86400 s (0: report at the end only), got {ri!r}")
        self.config = config
        self.analyses: list[Analysis] = [instantiate(load_analysis(spec)) for spec in config.analyses]
        self._runners = [Runner(a) for a in self.analyses]  # prepare() contexts, cached on their parameters
        self.result_decl: dict[str, tuple[str, Result]] = {}
        declarations: list[Parameter] = []
        owners: dict[str, str] = {}
        for a in self.analyses:
            for r in a.results:
                if r.name in self.result_decl:
                    raise PluginError(f"result {r.name!r} is declared by both {self.result_decl[r.name][0]!r} "
                                      f"and {a.name!r}")
                self.result_decl[r.name] = (a.name, r)
            for p in a.parameters:
                if p.name in owners:
                    # Identical declarations are one shared parameter (mask, dark, ...).
                    if p == next(d for d in declarations if d.name == p.name):
                        continue
                    raise PluginError(f"parameter {p.name!r} is declared differently by {owners[p.name]!r} "
                                      f"and {a.name!r}")
                owners[p.name] = a.name
                declarations.append(p)
        #: where references live (README, References); file parameters may read backgrounds from there
        self.reference_folder = reference_folder(config.reference_directory, config.output_directory)
        roots = [Path(r) for r in (*config.file_roots, self.reference_folder) if r]
        self.params = ParameterStore(declarations, FileAccess(roots, config.max_file_bytes))
        self.quality = self._build_quality(config)
        self.reference: ReferenceInfo | None = None
        self._reference_arrays: dict[str, np.ndarray] = {}
        latest = self._latest_reference()  # read now: a bad file is refused before threads start
        probes = self._probe_sources(config)
        self.link = self._open_link(config) if config.reducer else None  # scale-out worker
        # Threads and sockets last: nothing to clean up when the configuration is refused above.
        self.products = (ScanProducts(config.output_directory, config.main_result,
                                      report_interval=config.report_interval)
                         if config.output_directory else None)
        try:
            self.output_stream = self._open_output(config.output) if config.output else None
        except EngineError:
            if self.products is not None:
                self.products.close()
            if self.link is not None:
                self.link.close()
            raise
        self.output_file = ""
        self._lock = threading.RLock()
        # scan points (tango_dqm.points): the open one, the last latched one, rows for the results file
        self.point_results = point_results(self.result_decl)
        self._point_cond = threading.Condition(self._lock)
        self._point: OpenPoint | None = None
        self._last_point: PointRecord | None = None
        self._points_started = 0
        self._point_timeouts = 0
        self._point_frames = 0
        self._scan_end_point = False  # the open point was latched by the end of the scan: EndPoint accepts it
        self._points_to_write: list[PointRecord] = []
        self._state = EngineState.ON
        self._fault = ""
        self._end_reason = ""
        self._counters = Counters()
        self._results: dict[str, Any] = {}
        self._frame_id: int | None = None
        self._summary: dict[str, Any] = {}
        self._bad_kinds: dict[str, int] = {}
        self._scan_id = ""
        self._stop = threading.Event()
        self._generation = 0
        self._sources: list[Source] = []
        self._live = False
        self._metadata: dict[str, Any] = {}
        self._closing = False
        self._interim: threading.Thread | None = None  # the last interim judgement (see _judge_accumulated)
        self._accumulation: Accumulation | None = None  # the last run's accumulation thread
        self._source_closed: list[threading.Event] = []  # set by each source thread once its socket is closed
        self._arrivals: deque[float] = deque()  # arrival times of the events analysed in the rate window
        self._before_window: float | None = None  # the latest arrival that left the window
        if latest is not None:
            self.use_reference(latest.info, dict(latest.arrays))
            log.info("reference version %d (from %s) in use", latest.info.version, latest.info.scan_id)
        arrays = {n for n, (_, r) in self.result_decl.items() if r.kind != "scalar"}
        self.publisher = Publisher(listener, arrays, config.array_push_interval, thread_context,
                                   results_interval=config.results_interval)
        threads = config.analysis_threads
        if not (isinstance(threads, int) and not isinstance(threads, bool) and 0 <= threads <= 256):
            raise EngineError(f"AnalysisThreads must be between 0 (one per core) and 256, got {threads!r}")
        self.analysis_threads = threads or default_threads()
        self.frames_run_ahead = 0  # frames of this scan whose process ran on the pool (diagnostics, tests)
        # Kernels compiled (or loaded from numba's cache) in the background from Init on, so Init
        # returns at once and a plugin that is slow on a synthetic frame cannot hold it up.
        self.warmup_s = 0.0
        self.warmed = threading.Event()
        if not probes:  # a reducer: nothing to analyse
            self.warmed.set()
            return
        threading.Thread(target=self._warm_up_thread, args=(probes[0].image_shape, probes[0].image_dtype,
                                                            thread_context),
                         name="dqm-warmup", daemon=True).start()

    def _probe_sources(self, config: EngineConfig) -> list[Source]:
        """Check the source specs now, so a bad URI is reported at Init, not at Start."""
        if not config.sources:
            raise EngineError("no source configured: set the Sources property, e.g. sim://?frames=100")
        self._source_entries = list(config.sources)
        probes = [open_source(entry) for entry in self._source_entries]
        self._specs = [p.spec for p in probes]
        if len({sp.name for sp in self._specs}) != len(self._specs):
            raise EngineError(f"two sources have the same stream name: {[sp.name for sp in self._specs]}; "
                              "name them, e.g. det=zmq://... i0=zmq://...")
        hints = [p.image_shape for p in probes]
        # A known image shape lets ROI writes be checked against it before the first frame.
        self.params.image_shape = next((tuple(h) for h in hints if h), None)
        return probes

    def _open_link(self, config: EngineConfig) -> Any:
        from .scaleout.worker import WorkerLink  # only scale-out workers need ZeroMQ PUSH here
        from .scaleout.wire import Registry
        try:
            return WorkerLink(config.reducer, config.worker_name or "worker", list(config.analyses),
                              Registry.for_analyses(self.analyses), config.reducer_heartbeat,
                              config.reducer_acc_interval)
        except ValueError as exc:
            raise EngineError(str(exc)) from None

    # ---- commands (return at once) -------------------------------------------------

    def start(self, live: bool = False) -> str:
        """Start a scan (or a live run, with no end). Allowed in ON and CLOSE."""
        # After a FAULT and Reset the old source threads may still be closing: a bound port
        # must be free before it is bound again. Not under the lock, which they may need;
        # not while RUNNING (refused below at once).
        if self._state is not EngineState.RUNNING:
            self._wait_sources_closed(CLOSE_TIMEOUT)
        with self._lock:
            _refuse_unless("Live" if live else "Start", self._state)
            missing = [] if live else self.missing_metadata()
            if missing:
                raise EngineError(f"Start refused: required scan metadata not set: {', '.join(missing)} "
                                  "(RequiredMetadata); set each key (sample, operator, proposal or a key of "
                                  "scanMetadata), then Start")
            sources = [open_source(entry) for entry in self._source_entries]
            opened: list[Source] = []
            try:
                for s in sources:
                    s.open()
                    opened.append(s)
            except SourceError as exc:
                for s in opened:
                    s.close()
                self._enter_fault(f"source failed to open: {exc}. Check the Sources property and the "
                                  "sender, then run Reset")
                raise EngineError(str(exc)) from None
            self._generation += 1
            self._stop = threading.Event()
            self._counters = Counters()
            self._results, self._summary, self._bad_kinds = {}, {}, {}
            self._frame_id = None
            self._end_reason = ""
            self._arrivals.clear()
            self._before_window = None
            self._scan_id = f"scan_{time.strftime('%Y%m%d_%H%M%S')}_{next(_SCAN_SEQ):04d}"
            self._live = live
            self._clear_points_locked()
            self.quality.start(time.monotonic())
            if self.products is not None:
                try:
                    self.output_file = str(self.products.begin(self._scan_id, self.result_decl, self.provenance(),
                                                               self.config.output_name or None,
                                                               reference=self._reference_arrays))
                except Exception as exc:  # noqa: BLE001 - storage failures are FAULTs with the reason
                    for s in sources:
                        s.close()
                    self._enter_fault(f"cannot create the results file in {self.products.root}: "
                                      f"{type(exc).__name__}: {exc}. Check OutputDirectory, then run Reset")
                    raise EngineError(str(exc)) from None
            expected = [s.expected_frames for s in sources]
            # a worker's share is not the announced count: the reducer judges that (and the losses)
            announced = expected and all(e is not None for e in expected) and len(sources) == 1
            if self.link is None and not live and announced:
                self._counters.expected = self._counters.total = int(expected[0])  # type: ignore[arg-type]
            self._sources = sources  # a header may announce the frame count later (a SeriesStart item)
            q: queue.Queue = queue.Queue(maxsize=max(1, self.config.queue_size))
            overflow: deque[tuple[str, int, int]] = deque()  # live frames dropped at the full queue
            if self.link is not None:
                try:
                    self.link.begin(self._scan_id, live)
                except RuntimeError as exc:
                    for s in sources:
                        s.close()
                    self._enter_fault(str(exc))
                    raise EngineError(str(exc)) from None
            self._set_state(EngineState.RUNNING)
            self._source_closed = [threading.Event() for _ in sources]
            for s, closed in zip(sources, self._source_closed):
                threading.Thread(target=self._source_loop,
                                 args=(s, q, self._stop, live, overflow, closed, self._generation),
                                 name=f"dqm-source-{s.name}", daemon=True).start()
            threading.Thread(target=self._engine_loop,
                             args=(q, len(sources), self._stop, self._generation, overflow),
                             name="dqm-engine", daemon=True).start()
            return self._scan_id

    def stop(self) -> None:
        """Ask sources to stop; the engine drains what is queued, then goes to CLOSE."""
        with self._lock:
            if refusal("Stop", self._state) is None:
                self._end_reason = self._end_reason or "stopped"
                self._stop.set()

    def reset(self) -> None:
        """CLOSE or FAULT -> ON with results cleared."""
        with self._lock:
            _refuse_unless("Reset", self._state)
            self._stop.set()
            self._generation += 1  # a still-draining engine thread of a faulted scan is now ignored
            self._counters = Counters()
            self._results, self._summary, self._bad_kinds = {}, {}, {}
            self._frame_id = None
            self._fault = ""
            self._clear_points_locked()
            self.quality.reset()
            self._set_state(EngineState.ON)

    # ---- scan points (tango_dqm.points has the rules) ------------------------------------

    def start_point(self) -> int:
        """Open the next scan point (allowed while RUNNING, one point at a time); returns its number."""
        with self._lock:
            if self._state is not EngineState.RUNNING:
                raise EngineError(f"StartPoint needs a running scan or live run (RUNNING), not "
                                  f"{self._state.value}: Start or Live first")
            p = self._point
            if p is not None:
                raise EngineError(f"StartPoint refused: point {p.number} is still open; EndPoint first"
                                  if p.t_end is None else
                                  f"StartPoint refused: point {p.number} is still ending (waiting for its "
                                  "frames); wait until pointReady is True")
            self._points_started += 1
            self._scan_end_point = False
            self._point = OpenPoint(self._points_started, time.monotonic(), self._point_frames, self.point_results)
            return self._points_started

    def end_point(self, timeout: float) -> int:
        """End the open point: it is latched once its frames are analysed, or after ``timeout``
        seconds with the frames it has (counted in point_timeouts). Returns at once: wait with
        ``wait_point`` (or poll ``point_ready``). Returns the point's number."""
        try:
            timeout = check_timeout(timeout)
        except ValueError as exc:
            raise EngineError(str(exc)) from None
        with self._lock:
            p = self._point
            if p is None:
                if self._scan_end_point and self._last_point is not None:
                    self._scan_end_point = False  # the scan ended first: the point is latched already
                    return self._last_point.number
                raise EngineError("EndPoint needs an open point: StartPoint first")
            if p.t_end is not None:
                raise EngineError(f"EndPoint was already called for point {p.number}; wait until pointReady is True")
            now = time.monotonic()
            p.t_end, p.deadline = now, now + timeout
            if self._state is not EngineState.RUNNING:
                self._latch_locked("scan end")
            elif p.complete(None):  # its M frames are in already
                self._latch_locked("complete")
            return p.number

    def wait_point(self, number: int, timeout: float | None = None) -> PointRecord | None:
        """Block until point ``number`` is latched (None after ``timeout`` seconds). Not for Tango
        commands, which must return at once: the device exposes pointReady instead."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._point_cond:
            while self._last_point is None or self._last_point.number < number:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._point_cond.wait(remaining)
            return self._last_point

    @property
    def point_frames(self) -> int:
        """Frames per point (0: the frames that arrive until EndPoint); applies from the next StartPoint."""
        return self._point_frames

    @point_frames.setter
    def point_frames(self, frames: int) -> None:
        try:
            self._point_frames = check_frames(frames)
        except ValueError as exc:
            raise EngineError(str(exc)) from None

    @property
    def point_number(self) -> int:
        """Number of the last latched point of this scan (0: none yet)."""
        p = self._last_point
        return p.number if p is not None else 0

    @property
    def point_ready(self) -> bool:
        """The last started point is latched: its values can be read."""
        with self._lock:
            return self._points_started > 0 and self._point is None

    @property
    def point_timeouts(self) -> int:
        """Points of this scan latched by EndPoint's timeout, before all their frames were analysed."""
        return self._point_timeouts

    @property
    def last_point(self) -> PointRecord | None:
        return self._last_point

    def _clear_points_locked(self) -> None:
        self._point, self._last_point = None, None
        self._points_started = self._point_timeouts = 0
        self._scan_end_point = False
        self._points_to_write = []
        self._point_cond.notify_all()

    def _latch_locked(self, ended: str) -> None:
        p = self._point
        assert p is not None
        record = p.latch(ended)
        self._point, self._last_point = None, record
        if ended == "timeout":
            self._point_timeouts += 1
            log.warning("point %d latched by the EndPoint timeout with %d of its frames analysed",
                        record.number, record.frames)
        self._points_to_write.append(record)
        self._point_cond.notify_all()

    def _point_progress_locked(self, handled_arrival: float | None, now: float) -> None:
        """Latch the open point once complete, or when its EndPoint timeout passed (engine thread)."""
        p = self._point
        if p is None or p.t_end is None:
            return
        if p.complete(handled_arrival):
            self._latch_locked("complete")
        elif p.deadline is not None and now >= p.deadline:
            self._latch_locked("timeout")

    def _write_points(self) -> bool:
        """Latched points into the results file (engine thread only); False after a FAULT."""
        if not self._points_to_write:
            return True
        with self._lock:
            records, self._points_to_write = self._points_to_write, []
        if self.products is None:
            return True
        try:
            for record in records:
                self.products.append_point(record)
        except Exception as exc:  # noqa: BLE001
            self._enter_fault(f"writing scan point {records[0].number} to the results file failed: "
                              f"{type(exc).__name__}: {exc}. Check the disk and OutputDirectory, then run Reset")
            return False
        return True

    def set_parameter(self, name: str, value: Any) -> Any:
        """Validate and set a parameter; applies from the next frame. Raises ParameterError."""
        return self.params.set(name, value)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Stop everything (device shutdown, Init); True when every source socket is closed.

        Waits (up to ``timeout``) only for the source threads to close their sockets, so a
        bound port is free for the next engine; never for the engine or publisher threads,
        which may be waiting on the caller's (device) lock to deliver events.
        """
        self._closing = True
        self._stop.set()
        closed = self._wait_sources_closed(timeout)
        if not closed:
            log.warning("a source thread did not close its socket within %.1f s", timeout)
        self.publisher.close()
        if self._accumulation is not None:  # pure compute, never waits on the caller: no kernel left running at exit
            self._accumulation.close(timeout)
        interim = self._interim
        if interim is not None and interim is not threading.current_thread():
            interim.join(timeout)  # pure numpy, never waits on the caller: no thread left computing at exit
        if self.link is not None:
            self.link.close()
        if self.products is not None:
            self.products.close()
        if self.output_stream is not None:
            self.output_stream.close()
        return closed

    def _wait_sources_closed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(ev.wait(max(0.0, deadline - time.monotonic())) for ev in list(self._source_closed))

    def mark(self, mark: str, reason: str = "") -> str:
        """Flag ("flagged", bad) or Archive ("archived", good) the finished scan; allowed in CLOSE."""
        with self._lock:
            _refuse_unless("Flag" if mark == "flagged" else "Archive", self._state)
        if self.products is None:
            raise EngineError("no results file: set the OutputDirectory property, then run Init")
        try:
            path = self.products.mark(mark, reason)
        except (ValueError, OSError, RuntimeError) as exc:
            raise EngineError(str(exc)) from None
        self.output_file = str(path)
        return self.output_file

    def set_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Replace the scan metadata (sample, operator, proposal, free keys) recorded with each
        scan from the next Start. Keys are non-empty strings; values JSON scalars or lists/objects
        of them, at most METADATA_MAX_BYTES as JSON. Raises ValueError, keeping the old value."""
        if not isinstance(metadata, Mapping):
            raise ValueError(f"scan metadata must be a mapping of key to value, got {type(metadata).__name__}")
        for key in metadata:
            if not isinstance(key, str) or not key.strip():
                raise ValueError(f"scan metadata keys must be non-empty strings, got {key!r}")
        try:
            text = json.dumps(dict(metadata), allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"scan metadata must be JSON values (strings, numbers, lists, objects): {exc}") from None
        if len(text.encode()) > METADATA_MAX_BYTES:
            raise ValueError(f"scan metadata is {len(text.encode())} bytes as JSON; at most {METADATA_MAX_BYTES}")
        with self._lock:
            self._metadata = json.loads(text)  # a private deep copy

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the scan metadata set by ``set_metadata``."""
        with self._lock:
            return json.loads(json.dumps(self._metadata))

    def missing_metadata(self) -> list[str]:
        """Keys of ``config.required_metadata`` not set, or set to an empty value."""
        with self._lock:
            md = dict(self._metadata)
        return [k for k in self.config.required_metadata if _empty(md.get(k))]

    def provenance(self) -> dict[str, Any]:
        """What a results file records about how its results were made."""
        ref = self.reference
        return {
            "metadata": self.metadata,
            "mode": "live" if self._live else "scan",
            "sources": list(self._source_entries),
            "analyses": [f"{type(a).__module__}:{type(a).__qualname__}" for a in self.analyses],
            "parameters": self.params.plain(),
            "rois": {n: v for n, v in self.params.plain().items()
                     if self.params.declarations[n].type.value == "roi"},
            "thresholds": self.quality.config(),
            "reference": {"version": ref.version, "scan_id": ref.scan_id, "name": ref.name,
                          "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ref.created))}
            if ref else {"version": 0},
            "versions": deployed_versions(self.analyses),
        }

    # ---- queries ---------------------------------------------------------------------

    @property
    def streams(self) -> list[str]:
        """Stream names of the sources, the primary (event-defining) one first."""
        return [sp.name for sp in self._specs]

    @property
    def state(self) -> EngineState:
        return self._state

    def snapshot(self) -> Snapshot:
        with self._lock:
            c = Counters(**vars(self._counters))
            # computed now, so it decays when frames stop coming
            c.event_rate = self._rate_locked(time.monotonic()) if self._state is EngineState.RUNNING else 0.0
            snap = Snapshot(self._state, self._status_locked(), c, dict(self._results), self._frame_id,
                            dict(self._summary), self._scan_id, dict(self._bad_kinds))
        self._sync_loss(c)
        snap.quality = q = self.quality.snapshot(time.monotonic())
        total = c.completed + c.dropped + c.bad
        coverage = self.quality.coverage(c.completed, total)
        snap.coverage = coverage.fraction
        snap.verdict_report = q.report(coverage)
        return snap

    def latest(self, name: str) -> Any:
        """The latest value of one result (a run-summary result: of the last summary), None when
        there is none: what an attribute read needs, without the checks and the report a
        snapshot evaluates (a client reading every result attribute made one per attribute)."""
        decl = self.result_decl.get(name)
        with self._lock:
            if decl is not None and decl[1].run_summary:
                return self._summary.get(name)
            return self._results.get(name)

    def status(self) -> str:
        with self._lock:
            return self._status_locked()

    @staticmethod
    def _lost(c: Counters) -> int:
        """Events lost: dropped (gaps, overflow, never sent; orphaned events are part of it)."""
        return c.dropped

    def _sync_loss(self, c: Counters) -> None:
        """Hand the counters to the loss check (lost: never analysed; bad: malformed)."""
        self.quality.set_loss_counts(c.completed, self._lost(c), c.bad, c.total)

    def _status_locked(self) -> str:
        c = self._counters
        where = ", ".join(self._source_entries)
        counts = (f"{c.completed}/{c.total} events completed, {c.dropped} dropped, {c.bad} bad")
        if len(self._specs) > 1:
            counts += f", {c.partial} partial, {c.orphaned} without {self._specs[0].name}"
        s = self._state
        if s is EngineState.ON:
            return f"ON: ready; source {where}; analyses {', '.join(a.name for a in self.analyses)}"
        if s is EngineState.RUNNING:
            mode = "live" if self._live else "scan"
            # a source that outruns the analysis says so
            backlog = "".join(f"; {b}" for b in (src.backlog() for src in self._sources) if b)
            return f"RUNNING {mode} {self._scan_id} from {where}: {counts}, {c.event_rate:.1f} Hz{backlog}"
        if s is EngineState.CLOSE:
            lost = self._lost(c)
            # "complete" only when every expected frame was analysed and nothing was lost or bad
            whole = (c.completed > 0 and not lost and not c.bad and self._end_reason != "stopped"
                     and (c.expected is None or c.completed >= c.expected))
            stopped = self._end_reason == "stopped"
            ended = "finished, complete" if whole else "stopped" if stopped else "finished"
            done = f"{c.completed}/{c.total} completed, {lost} lost" + (f", {c.bad} bad" if c.bad else "")
            if len(self._specs) > 1:
                done += f", {c.partial} partial"
            why = "" if stopped else f" ({self._end_reason})"
            return (f"CLOSE: {self._scan_id} {ended}: {done}{why}; "
                    "results frozen, Start for a new scan or Reset to clear")
        return f"FAULT: {self._fault}"

    # ---- threads -----------------------------------------------------------------------

    def _set_state(self, state: EngineState) -> None:
        # caller holds self._lock
        self._state = state
        self.publisher.state(state.value, self._status_locked())

    def _enter_fault(self, why: str) -> None:
        with self._lock:
            self._fault = why
            self._stop.set()
            self.quality.stop()
            self._set_state(EngineState.FAULT)
        if self.products is not None:
            self.products.abort()
        log.error("FAULT: %s", why)

    # ---- quality -----------------------------------------------------------------------

    def _build_quality(self, config: EngineConfig) -> QualityMonitor:
        """Configured checks, plus a range check for every scalar result that declares ranges."""
        try:
            checks = checks_from_config(list(config.checks))
        except ValueError as exc:
            raise EngineError(f"quality checks: {exc}") from None
        ranged = {c.result for c in checks if isinstance(c, RangeCheck)}
        for _, result in self.result_decl.values():
            if result.name not in ranged:
                check = RangeCheck.from_result(result)
                if check is not None:
                    checks.append(check)
        if config.stale_timeout > 0 and not any(isinstance(c, StalenessCheck) for c in checks):
            checks.append(StalenessCheck(config.stale_timeout))
        if not any(isinstance(c, LossCheck) for c in checks):  # built in: lost frames always count
            checks.append(LossCheck())
        monitor = QualityMonitor(checks)
        try:
            monitor.validate({n: r.kind for n, (_, r) in self.result_decl.items()})
        except ValueError as exc:
            raise EngineError(str(exc)) from None
        return monitor

    def _open_output(self, uri: str) -> ResultStream:
        spec = SourceSpec.parse(uri)
        if spec.scheme != "bsread" or spec.port is None:
            raise EngineError(f"output {uri!r}: expected bsread://127.0.0.1:PORT?mode=pub (or push)")
        try:
            return ResultStream(spec.port, self.result_decl, mode=spec.q("mode", "pub"),
                                host=spec.host or "127.0.0.1").open()
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineError(f"output {uri!r}: {exc}") from None

    def _judge_accumulated(self, run: "_Run") -> None:
        """Judge run-accumulated results (reference and channel checks) during the run.

        Off the engine thread: copies are taken (a merge into an empty accumulator; ~40 MB for the
        pixel maps) of the accumulators whose results the checks name, on the accumulation thread in
        frame order; their ``finish`` (the pixel maps' median filters take about a second per MPix,
        which stalled the engine and lost frames) runs on a thread of its own, one judgement at a
        time. An analysis without ``merge`` is finished on the accumulation thread."""
        if run.interim_queued or (run.interim is not None and run.interim.is_alive()):
            return  # the previous judgement is still queued or running: skip this one
        wanted = self.quality.accumulated_results
        names = {self.result_decl[n][0] for n in wanted if n in self.result_decl}

        def copy_and_judge(accs: list[Any]) -> None:
            copies: list[tuple[Analysis, Any]] = []
            interim: dict[str, Any] = {}
            try:
                for a, acc in zip(self.analyses, accs):
                    if a.name not in names:
                        continue
                    try:
                        copies.append((a, a.merge(a.new_accumulator(), acc)))
                    except PluginError:  # no merge: its interim summary here, in frame order
                        interim.update(a.finish(acc))
            except Exception:  # noqa: BLE001 - a finish failure is reported at the end of the run
                log.debug("interim finish failed", exc_info=True)
                return
            finally:
                run.interim_queued = False
            run.interim = threading.Thread(target=self._judge_interim, args=(run, copies, interim),
                                           name="dqm-interim-judge", daemon=True)
            self._interim = run.interim
            run.interim.start()

        assert run.accumulation is not None  # set up by _engine_loop with the run
        run.interim_queued = True
        run.accumulation.call(copy_and_judge)

    def _judge_interim(self, run: "_Run", copies: list[tuple[Analysis, Any]], interim: dict[str, Any]) -> None:
        t0 = time.monotonic()
        try:
            for a, acc in copies:
                interim.update(a.finish(acc))
        except Exception:  # noqa: BLE001 - a finish failure is reported at the end of the run
            log.debug("interim finish failed", exc_info=True)
            return
        finally:
            # at most a tenth of a core: the next one no sooner than 9 times this one's duration
            end = time.monotonic()
            run.next_reference_check = max(run.next_reference_check, end + 9.0 * (end - t0))
        with run.judging:  # never after the run's final judgement
            if not run.judged:
                self.quality.evaluate_references(interim)

    def _latest_reference(self) -> Reference | None:
        """The newest stored reference, which the engine judges against from its start (every Init)."""
        try:
            return latest_reference(self.reference_folder)
        except (ReferenceStoreError, OSError) as exc:
            raise EngineError(f"the latest reference in {self.reference_folder!r} cannot be read: {exc}; "
                              "fix or remove it, or set ReferenceDirectory") from None

    def reference_store(self) -> ReferenceStore:
        """The store TakeReference and TakeBackground write to (created when missing)."""
        store = open_store(self.reference_folder, create=True)
        if store is None:
            raise NotConfiguredError(
                "no reference directory: set the ReferenceDirectory or OutputDirectory property, then run Init"
                if not self.reference_folder else
                f"the reference directory {self.reference_folder!r} cannot be created; set ReferenceDirectory "
                "to a directory the server may write, then run Init")
        return store

    def take_reference(self, store: ReferenceStore | None = None, name: str = "reference") -> ReferenceInfo:
        """Store the accumulated array results of the finished scan as the new reference version
        (in ``store``, by default the engine's reference store)."""
        store = store or self.reference_store()
        with self._lock:
            _refuse_unless("TakeReference", self._state)
            arrays = {k: np.asarray(v) for k, v in self._summary.items()
                      if isinstance(v, np.ndarray) and v.ndim >= 1 and v.dtype.kind in "biuf"}
            scan_id = self._scan_id
        if not arrays:
            raise EngineError("the last scan has no accumulated spectra or maps to use as a reference")
        info = store.save(name, arrays, scan_id=scan_id)
        self.use_reference(info, arrays)
        return info

    def take_background(self, store: ReferenceStore | None = None, source: str = "pixels_mean_map") -> ReferenceInfo:
        """Store the mean image of the finished scan as the next dark-image version and use it
        as the ``dark`` parameter from the next frame on (in ``store``, by default the engine's)."""
        store = store or self.reference_store()
        with self._lock:
            _refuse_unless("TakeBackground", self._state)
            image = self._summary.get(source)
            scan_id = self._scan_id
        if "dark" not in self.params.declarations:
            raise EngineError("no configured analysis has a dark parameter (roi, profile, histogram have)")
        if not isinstance(image, np.ndarray) or image.ndim != 2:
            raise EngineError(f"the last scan has no mean image ({source}): add the pixels analysis, "
                              "run a dark scan, then TakeBackground")
        info = store.save_background("dark", image, scan_id=scan_id)
        self.params.set("dark", f"{info.path}#/{BACKGROUND_ARRAY}")
        return info

    def use_reference(self, info: ReferenceInfo, arrays: dict[str, np.ndarray]) -> None:
        """Judge reference checks against ``arrays`` from now on (``info`` goes into provenance)."""
        self.quality.set_references(arrays)
        self.reference = info
        self._reference_arrays = dict(arrays)  # recorded with each scan, for its report's overlay
        if self.state is EngineState.CLOSE:
            self.quality.evaluate_references(self._summary)

    def _source_loop(self, source: Source, q: queue.Queue, stop: threading.Event, live: bool,
                     overflow: deque, closed: threading.Event, generation: int) -> None:
        n_queued = 0  # live frames this source queued: places an overflow among them
        try:
            for item in source.items(stop, live):
                if item is None:
                    continue
                entry = (time.monotonic(), item)
                if live and isinstance(item, Frame):
                    try:
                        q.put_nowait(entry)
                        n_queued += 1
                    except queue.Full:  # live mode never holds back the detector
                        # counted by the engine thread, in id order, so a loss is never also a gap
                        overflow.append((item.stream, item.frame_id, n_queued))
                    continue
                queued = False
                while not queued:  # scan mode: back-pressure, but stay responsive to Stop
                    try:
                        q.put(entry, timeout=0.1)
                        queued = True
                    except queue.Full:
                        if stop.is_set():
                            break
                if not queued:  # a queued item is consumed: the source (e.g. a watcher) counts it read
                    break
        except Exception as exc:  # noqa: BLE001 - any source failure is a FAULT with its reason
            self._enter_fault(f"source {source.name!r} ({source.spec.uri}) failed: {type(exc).__name__}: {exc}. "
                              "Check the stream, then run Reset")
        finally:
            try:
                source.close()
            finally:
                closed.set()  # close() and the next Start wait on this, not on the thread
            self._put_done(q, generation)

    def _put_done(self, q: queue.Queue, generation: int) -> None:
        """Tell the engine thread this source ended; give up when no engine thread will read it."""
        while True:
            try:
                q.put((time.monotonic(), _DONE), timeout=0.1)
                return
            except queue.Full:
                if self._closing or generation != self._generation or self._state is not EngineState.RUNNING:
                    return

    def _engine_loop(self, q: queue.Queue, n_sources: int, stop: threading.Event, generation: int,
                     overflow: deque) -> None:
        builder = (EventBuilder([s.name for s in self._specs], self.config.event_timeout, self._live)
                   if n_sources > 1 else None)
        run = _Run([a.new_accumulator() for a in self.analyses], stop, generation,
                   time.monotonic() + self.config.reference_interval, builder=builder, overflow=overflow)
        # Parallel analysis with one stream only: an event's partner frames join its primary frame in
        # the builder, after it was dequeued, and process may read them.
        self.frames_run_ahead = 0
        if self.analysis_threads > 1 and builder is None:
            run.pool = OrderedPool(self.analysis_threads, name="dqm-analysis")
        run.accumulation = self._accumulation = Accumulation(self.analyses, run.accs)
        try:
            self._engine_items(run, q, n_sources, generation, builder)
        finally:
            if run.pool is not None:
                run.pool.close()
            run.accumulation.close()

    def _engine_items(self, run: _Run, q: queue.Queue, n_sources: int, generation: int,
                      builder: EventBuilder | None) -> None:
        done = 0
        while done < n_sources:
            t_ask = time.monotonic()
            try:
                t_recv, item = self._take(run, q)
            except queue.Empty:
                # the queue stayed empty from t_ask on: every frame that arrived before t_ask is handled
                with self._lock:
                    if run.generation == self._generation:
                        self._point_progress_locked(t_ask, time.monotonic())
                if not self._write_points() or not self._accumulating(run):
                    return
                self._count_overflow(run)
                if not self._link_tick(run):
                    return
                if builder is not None and not self._handle_events(run, builder.expire(time.monotonic())):
                    return
                continue
            if isinstance(item, Frame) and self._live:
                # the frames dropped at the queue before this one came, counted before it
                self._count_overflow(run)
                run.dequeued[item.stream] = run.dequeued.get(item.stream, 0) + 1
            if item is _DONE:
                done += 1
                continue
            if generation != self._generation:  # reset while draining: discard
                continue
            if isinstance(item, BadInput):
                bad_id = self._count_bad(run, item)
                if bad_id is not None and builder is not None:
                    run.clock = max(run.clock, t_recv)
                    if not self._handle_events(run, builder.add_bad(item.stream, bad_id, t_recv, run.clock)):
                        return
                continue
            if isinstance(item, SeriesEnd):
                run.series_ended += 1
                continue
            if isinstance(item, SeriesStart):
                self._series_started(run, item, n_sources)
                continue
            if not self._admit(run, item):
                continue
            if builder is None:
                if not self._handle_frame(run, item, t_recv, run.ahead):
                    return
                continue
            # Events time out on the arrival clock: while this thread was busy (a slow analysis),
            # the partner frames may be waiting in the queue, so wall time would expire events
            # whose partners did arrive in time. With the queue empty, wall time is right (above).
            run.clock = max(run.clock, t_recv)
            if not self._handle_events(run, builder.add(item, t_recv, run.clock)):
                return
        self._count_overflow(run)
        if builder is not None and not self._handle_events(run, builder.flush()):
            return
        self._finish(run)

    # ---- counting (engine thread; README "Counters") -------------------------------------

    def _is_event_frame(self, run: "_Run", stream: str) -> bool:
        """Does a frame of ``stream`` define an event id? Every stream's in a scan, the primary's live."""
        return run.builder is None or not self._live or stream == run.builder.primary

    def _observe_event(self, run: "_Run", fid: int, series: str | None = None) -> IdKind:
        """Account an event id; the ids it makes missing (or finds again) go to the loss check."""
        numberings = run.event_ids.numberings
        kind = run.event_ids.observe(fid, series)
        if run.builder is not None and run.event_ids.numberings != numberings:
            run.builder.new_numbering()
        if self.link is not None:  # a worker: the other ids are other workers' share, judged by the reducer
            return kind
        if run.event_ids.gap is not None:
            self.quality.lost_frames(*run.event_ids.gap)
        elif kind is IdKind.LATE:
            self.quality.found_frame(fid)
        return kind

    def _admit(self, run: "_Run", frame: Frame) -> bool:
        """Classify a received frame's id; False for a duplicate (counted, not analysed)."""
        if run.builder is not None:
            ids = run.stream_ids.setdefault(frame.stream, IdTracker())
            first = ids.highest is None
            kind = ids.observe(frame.frame_id, frame.series)
        else:
            first = run.event_ids.highest is None
            kind = self._observe_event(run, frame.frame_id, frame.series)
        if kind is IdKind.DUPLICATE:
            run.duplicate += 1
        else:
            if kind is IdKind.LATE:
                run.out_of_order += 1
            if run.builder is not None and self._is_event_frame(run, frame.stream):
                # an id seen on any stream is not a gap; the primary's series defines the numbering
                self._observe_event(run, frame.frame_id,
                                    frame.series if frame.stream == run.builder.primary else None)
            if first and self._is_event_frame(run, frame.stream):
                # frames a SUB stream lost before we joined (slow joiner)
                run.dropped_before += int(frame.meta.get("dropped_before", 0) or 0)
        with self._lock:
            self._recount_locked(run)
        return kind is not IdKind.DUPLICATE

    def _count_overflow(self, run: "_Run") -> None:
        """Live frames dropped at the full queue: lost once each, their ids no gap later.

        Taken in the place they had among their stream's queued frames (after the frames queued
        before them were dequeued), so they never make a queued frame look out of order."""
        if not run.overflow:
            return
        while run.overflow:
            stream, fid, n_queued = run.overflow[0]
            if n_queued > run.dequeued.get(stream, 0):
                break  # dropped after a frame still queued (or being taken now)
            run.overflow.popleft()
            if run.builder is not None:
                run.stream_ids.setdefault(stream, IdTracker()).observe(fid)
            if not self._is_event_frame(run, stream):
                continue  # a partner frame: live events go with the latest partner, none is lost
            if self._observe_event(run, fid) is IdKind.DUPLICATE:
                run.duplicate += 1
            else:
                run.lost += 1
                self.quality.lost_frames(fid)
        with self._lock:
            self._recount_locked(run)

    def _series_started(self, run: "_Run", item: SeriesStart, n_sources: int) -> None:
        """A series announced during a scan (a STINS header): its frame count, if any, is the
        scan's expected count, unless one was known already (one stream only; never live)."""
        # a worker's share is not the announced count: the reducer judges that (and the losses)
        if item.frames is None or self._live or n_sources != 1 or self.link is not None:
            return
        with self._lock:
            if run.generation == self._generation and self._counters.expected is None:
                self._counters.expected = int(item.frames)
                self._recount_locked(run)

    def _recount_locked(self, run: "_Run") -> None:
        """Derived counters from the run's id accounting; caller holds self._lock."""
        if run.generation != self._generation:
            return
        c = self._counters
        if run.builder is not None:
            c.partial, c.orphaned = run.builder.partial, run.builder.orphaned
        gaps = run.event_ids.missing if self.link is None else 0  # a worker's gaps are others' frames
        c.dropped = gaps + run.lost + run.dropped_before + run.shortfall + c.orphaned
        c.duplicate, c.out_of_order = run.duplicate, run.out_of_order
        seen = c.completed + c.dropped + c.bad
        c.total = seen if c.expected is None or run.finished else max(c.expected, seen)

    def _rate_locked(self, now: float) -> float:
        """Analysed events per second, by their arrival times over the last RATE_WINDOW seconds.

        Arrival times, not analysis times: a backlog analysed after a stall arrived at the source's
        rate, so it never reads above it. N events in the window after the latest one that left
        it span N intervals of the source (or N - 1 after the first arrival of the scan).
        """
        arr = self._arrivals
        while arr and arr[0] < now - RATE_WINDOW:
            self._before_window = arr.popleft()
        if not arr:
            return 0.0
        if self._before_window is not None:
            return len(arr) / max(now - self._before_window, 1e-9)
        return (len(arr) - 1) / (now - arr[0]) if now > arr[0] else 0.0

    def _handle_events(self, run: "_Run", events: list[BuiltEvent]) -> bool:
        for event in events:
            if not self._handle_frame(run, event.frame, event.t_recv):
                return False
        with self._lock:
            self._recount_locked(run)
        return True

    def _take(self, run: _Run, q: queue.Queue) -> tuple[float, Any]:
        """The next item of the source queue (queue.Empty after 0.1 s without one).

        With analysis threads, the frames queued behind it are taken too and their ``process``
        started on the pool (with the parameters of now, checked again when they are handled);
        items come back in queue order and the analysed frame's outputs are left in run.ahead."""
        pool = run.pool
        run.ahead = None
        if pool is None:
            return q.get(timeout=0.1)
        pending: list[tuple[float, Any]] = []
        if not len(pool):
            first = q.get(timeout=0.1)
            try:
                pending = [first, q.get_nowait()]
            except queue.Empty:  # nothing behind it (a low rate): analysed here, no hand-over latency
                return first
        while pool.has_room():
            if pending:
                t_recv, item = pending.pop(0)
            else:
                try:
                    t_recv, item = q.get_nowait()
                except queue.Empty:
                    break
            if isinstance(item, Frame):
                params, version = self.params.snapshot_with_version()
                pool.submit((t_recv, item, version), self._analyse, item, params)
            else:
                pool.submit((t_recv, item, None))
        (t_recv, item, version), value, error = pool.next()
        if version is not None:
            run.ahead = (version, value, error)
        return t_recv, item

    def _accumulating(self, run: "_Run") -> bool:
        """False, after entering FAULT, once an analysis' accumulate failed (on the accumulation thread)."""
        error = run.accumulation.error if run.accumulation is not None else None
        if error is None:
            return True
        self._enter_fault(error)
        return False

    def _handle_frame(self, run: "_Run", frame: Frame, t_recv: float,
                      ahead: tuple[int, Any, BaseException | None] | None = None) -> bool:
        """Analyse one event (its primary frame); False when the engine went to FAULT.

        ``ahead``: (parameter version, outputs, exception) of process run ahead on the pool; used
        when the parameters did not change since, else process runs again here."""
        if not self._accumulating(run):
            return False
        params, version = self.params.snapshot_with_version()
        if version != run.param_version:
            self._mark_params_applied(frame.frame_id)
            run.param_version = version
        try:
            if ahead is not None and ahead[0] == version:
                self.frames_run_ahead += 1
                self._note_shape(frame)
                if ahead[2] is not None:
                    raise ahead[2]
                outputs = ahead[1]
            else:
                outputs = self._process(frame, params)
        except _AnalysisFailure as exc:
            self._enter_fault(str(exc))
            return False
        merged: dict[str, Any] = {}
        for o in outputs:
            merged.update(o.results)  # private data went to accumulate only
        now = time.monotonic()
        with self._lock:
            if run.generation != self._generation:
                return True
            c = self._counters
            c.completed += 1
            self._recount_locked(run)
            if not self._arrivals or t_recv >= self._arrivals[-1]:
                self._arrivals.append(t_recv)
            else:  # a partial event, analysed after later ones
                bisect.insort(self._arrivals, t_recv)
            c.event_rate = self._rate_locked(now)
            c.latency_ms = (now - t_recv) * 1e3
            self._results = merged
            self._frame_id = frame.frame_id
            point = self._point
            if point is not None and point.takes(t_recv):
                point.add(frame.frame_id, merged)
            # frames are handled in arrival order: everything that arrived before this one is done
            self._point_progress_locked(t_recv, now)
            # By count only once every announced frame was received (analysed or bad), never
            # counting lost ids, so every frame present is analysed whatever the timing;
            # streams without an end marker (bsread frames=N) end here, others at series end.
            if c.expected is not None and c.completed + c.bad >= c.expected:
                self._end_reason = self._end_reason or (
                    "all expected events completed" if c.dropped == 0 and c.bad == 0
                    else f"all {c.expected} announced frames received")
                run.stop.set()
        flag = self.quality.update(frame.frame_id, merged, now)
        if self.products is not None:
            try:
                self.products.append(frame.frame_id, frame.timestamp, merged, flag)
            except Exception as exc:  # noqa: BLE001
                self._enter_fault(f"writing the results file failed on frame {frame.frame_id}: "
                                  f"{type(exc).__name__}: {exc}. Check the disk and OutputDirectory, "
                                  "then run Reset")
                return False
        if not self._write_points():
            return False
        self.publisher.results(merged, frame.frame_id)
        if self.output_stream is not None:
            self.output_stream.send(frame.frame_id, merged, frame.timestamp)  # never blocks, counts drops
        # Accumulated on the accumulation thread, after the frame's results went out: run-level state
        # is not what a client waits for, so its cost (pixels: a batch of frames at a time) delays
        # neither this frame's results nor the next frame's.
        assert run.accumulation is not None  # set up by _engine_loop with the run
        run.accumulation.add(frame.frame_id, outputs, params)
        if self.link is not None:
            self.link.frame(frame.frame_id, frame.timestamp, merged)
            if not self._link_tick(run):
                return False
        if self.quality.has_accumulated_checks and now >= run.next_reference_check:
            run.next_reference_check = now + self.config.reference_interval
            self._judge_accumulated(run)
        return True

    def _link_state(self, run: "_Run", state: EngineState | None = None) -> dict[str, Any]:
        """What a worker's message says besides results and accumulators."""
        with self._lock:
            c = self._counters
            announced = self._sources[0].expected_frames if len(self._sources) == 1 else None
            return {"state": (state or self._state).value, "counters": dict(vars(c)),
                    "announced": announced, "series_ended": run.series_ended > 0, "status": self._status_locked()}

    def _link_tick(self, run: "_Run") -> bool:
        """A worker's heartbeat (engine thread); False when the reducer was lost (FAULT)."""
        if self.link is None or not self.link.due():
            return True
        try:
            assert run.accumulation is not None  # a worker's engine loop set it up
            self.link.tick(run.accumulation.drain, self._link_state(run))
        except RuntimeError as exc:
            self._enter_fault(str(exc))
            return False
        return True

    def _warm_up_thread(self, shape: Sequence[int] | None, dtype: str | None,
                        thread_context: Callable[[], Any]) -> None:
        try:
            with thread_context():
                self.warmup_s = self._warm_up(shape, dtype)
        finally:
            self.warmed.set()

    def _warm_up(self, shape: Sequence[int] | None, dtype: str | None) -> float:
        """Compile (or load from numba's cache) every analysis' kernels now, at Init, by analysing
        synthetic frames of the source's dtype (uint16 when not announced), writable and read-only
        (numba compiles each once), at 64x64 and at the source's shape; results are discarded.
        Returns the seconds it took."""
        t0 = time.perf_counter()
        try:
            dt = np.dtype(dtype or "uint16")
            shp = tuple(int(v) for v in shape) if shape and 0 < np.prod(shape) <= 1 << 24 else (64, 64)
        except (TypeError, ValueError):
            dt, shp = np.dtype("uint16"), (64, 64)
        params = self.params.snapshot_with_version()[0]
        stream = self._specs[0].name
        small = (64, 64) if len(shp) >= 2 else shp
        # accumulate and finish on a small frame first: numba specialises on dtype and layout, not size,
        # and a full-size finish (the pixel maps' median filters: ~1 s a MPix) would compete with the
        # first frames; then process at the source's shape, last, so the Runner's prepare() context
        # (grids, masks; it keeps the latest shape's) is ready for the first frame
        steps = [(_synthetic_frame(small, dt), True), (_synthetic_frame(shp, dt), False)]
        for runner in self._runners:
            a = runner.analysis
            for data, accumulate in steps:
                readonly = data.copy()
                readonly.flags.writeable = False
                try:
                    acc = a.new_accumulator()
                    for d in (data, readonly):
                        output = runner.process(Frame(d, -1, stream=stream), params)
                        if accumulate:
                            acc = a.accumulate(acc, output, params)
                    if accumulate:
                        a.finish(acc)
                except Exception as exc:  # noqa: BLE001 - a warm-up failure only costs speed on the first frame
                    log.info("warm-up of analysis %r on %s skipped: %s: %s", a.name, data.shape,
                             type(exc).__name__, exc)
        took = time.perf_counter() - t0
        log.info("analyses warmed up for %s %s in %.2f s", dt.name, shp, took)
        return took

    def _process(self, frame: Frame, params: Params) -> list[FrameOutput]:
        self._note_shape(frame)
        return self._analyse(frame, params)

    def _note_shape(self, frame: Frame) -> None:
        if frame.data.ndim >= 2 and self.params.image_shape != frame.data.shape[-2:]:
            self.params.image_shape = tuple(frame.data.shape[-2:])  # a new detector header may change it

    def _analyse(self, frame: Frame, params: Params) -> list[FrameOutput]:
        """Every analysis' process on one frame: pure (the Runner's context cache is one pair),
        so it may run on an analysis thread."""
        out = []
        for runner in self._runners:
            a = runner.analysis
            try:
                r = runner.process(frame, params)  # prepare() too, when its parameters changed
            except PluginError as exc:
                raise _AnalysisFailure(f"{exc}. Fix the plugin, then run Reset") from exc
            except Exception as exc:  # noqa: BLE001 - reported with the plugin name
                raise _AnalysisFailure(
                    f"analysis {a.name!r} failed on frame {frame.frame_id} (stream {frame.stream}): "
                    f"{type(exc).__name__}: {exc}. Fix the parameters or the plugin, then run Reset") from exc
            out.append(r)
        return out

    def _count_bad(self, run: "_Run", item: BadInput) -> int | None:
        """Count a malformed message; the frame id it names when that is a valid one."""
        fid = item.frame_id if is_count(item.frame_id) else None
        if fid is not None:
            # the id arrived, malformed: accounted as bad, so it is no gap in the dropped count
            if run.builder is not None:
                run.stream_ids.setdefault(item.stream, IdTracker()).observe(fid)
            if self._is_event_frame(run, item.stream):
                self._observe_event(run, fid)
        with self._lock:
            self._counters.bad += 1
            seen = self._bad_kinds.get(item.kind, 0)
            self._bad_kinds[item.kind] = seen + 1
            self._recount_locked(run)
        if not seen:  # log once per kind, the counter tells the rest
            log.warning("malformed input on stream %s (%s): %s; counted in badEvents and skipped",
                        item.stream, item.kind, item.detail)
        return fid

    def _mark_params_applied(self, frame_id: int) -> None:
        for change in self.params.changes:
            if change.applied_at_frame is None:
                change.applied_at_frame = frame_id

    def _finish(self, run: "_Run") -> None:
        generation, series_ended = run.generation, run.series_ended
        with run.judging:  # an interim judgement still running is dropped: the final one follows
            run.judged = True
        summary: dict[str, Any] = {}
        if run.accumulation is not None:  # None: a reducer's run, merged from its workers
            run.accs = run.accumulation.drain()
            if not self._accumulating(run):
                return
        try:
            for a, acc in zip(self.analyses, run.accs):
                summary.update(a.finish(acc))
        except Exception as exc:  # noqa: BLE001
            self._enter_fault(f"analysis finish failed: {type(exc).__name__}: {exc}. Fix the plugin, then run Reset")
            return
        with self._lock:
            if generation != self._generation or self._state is not EngineState.RUNNING:
                return
            self._summary = summary
            if not self._end_reason:
                self._end_reason = "series end" if series_ended else "source ended"
            c = self._counters
            self._recount_locked(run)
            if series_ended and c.expected is not None and self._end_reason != "stopped":
                # announced by the header but never received (e.g. the last frames): lost, so counted
                run.shortfall = max(0, c.expected - (c.completed + c.dropped + c.bad))
            run.finished = True  # from now on total == completed + dropped + bad
            self._recount_locked(run)
            if self._point is not None:  # the scan ended inside a point: latched with what it has
                self._scan_end_point = self._point.t_end is None  # its EndPoint is still to come
                self._latch_locked("scan end")
            c.event_rate = 0.0
            self._sync_loss(c)
            self.quality.evaluate_references(summary)
            self.quality.judge_summary({k: v for k, v in summary.items()
                                        if k in self.result_decl and self.result_decl[k][1].run_summary})
            self.quality.stop()
            counters = Counters(**vars(self._counters))
            end_reason = self._end_reason
        if not self._write_points():
            return
        if self.products is not None:
            try:
                self.products.end(summary, counters, self.quality.verdict().name, end_reason,
                                  {"parameter_changes": [vars(c) for c in self.params.changes],
                                   "quality_report": self.quality.report()},
                                  lost_frames=self.quality.lost_ranges())
            except Exception as exc:  # noqa: BLE001
                self._enter_fault(f"finishing the results file failed: {type(exc).__name__}: {exc}. "
                                  "Check the disk and OutputDirectory, then run Reset")
                return
        if self.link is not None:
            try:
                self.link.end(run.accs, self._link_state(run, EngineState.CLOSE))
            except RuntimeError as exc:
                self._enter_fault(str(exc))
                return
        with self._lock:
            if generation != self._generation or self._state is not EngineState.RUNNING:
                return
            self._set_state(EngineState.CLOSE)


def _synthetic_frame(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A warm-up frame: a flat background with a fixed texture and, in 2-D, a spot in the middle, so
    fits and centroids run their usual path. Cheap (a few ms for 1 MPix: no random numbers), since it
    is made while the first frames may already arrive."""
    image = np.full(shape, 100.0)
    image += np.arange(shape[-1]) % 7  # not flat: no degenerate statistics
    if len(shape) >= 2:
        cy, cx = shape[-2] // 2, shape[-1] // 2
        y0, y1, x0, x1 = max(0, cy - 25), min(shape[-2], cy + 26), max(0, cx - 25), min(shape[-1], cx + 26)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        image[..., y0:y1, x0:x1] += 1000.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 5.0 ** 2))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        np.clip(image, info.min, info.max, out=image)
    return image.astype(dtype)


class _AnalysisFailure(Exception):
    pass


@dataclass
class _Run:
    """State of the engine thread for one scan."""

    accs: list[Any]
    stop: threading.Event
    generation: int
    next_reference_check: float
    builder: EventBuilder | None = None
    #: (stream, id, frames queued before it) of live frames dropped at the full queue (source threads)
    overflow: deque = field(default_factory=deque)
    dequeued: dict[str, int] = field(default_factory=dict)  # live frames taken from the queue, by stream
    series_ended: int = 0
    param_version: int = -1
    clock: float = 0.0  # latest arrival time dequeued (event timeouts)
    #: event ids (all streams in a scan, the primary's live): gaps are dropped events
    event_ids: IdTracker = field(default_factory=IdTracker)
    #: per stream, with several streams: duplicates and out-of-order frames of each stream
    stream_ids: dict[str, IdTracker] = field(default_factory=dict)
    duplicate: int = 0
    out_of_order: int = 0
    lost: int = 0  # live queue overflow
    dropped_before: int = 0  # slow joiner
    shortfall: int = 0  # announced, never sent
    finished: bool = False
    pool: OrderedPool | None = None  # analysis threads (process of queued frames, run ahead)
    accumulation: Accumulation | None = None  # the accumulation thread (holds accs while the run goes on)
    interim: threading.Thread | None = None  # the interim judgement of accumulated checks running
    interim_queued: bool = False  # its copies are queued on the accumulation thread
    judging: threading.Lock = field(default_factory=threading.Lock)  # held while it stores its verdicts
    judged: bool = False  # the run's final judgement began: interim ones are dropped
    ahead: tuple[int, Any, BaseException | None] | None = None  # the current frame's, from the pool


__all__ = ["Counters", "Engine", "EngineConfig", "EngineError", "EngineState", "NotConfiguredError", "Snapshot"]
