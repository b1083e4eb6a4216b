"""The reducer: merges the reports of several scale-out workers into one monitor's view.

:class:`ReducerEngine` is an :class:`~tango_dqm.engine.Engine` without sources: its frames
are the workers' per-frame results, received over ZeroMQ PULL (see
:mod:`tango_dqm.scaleout.message`), and it feeds them, in frame-id order, to the same
counters, quality checks, products (results file, report, run list) and publisher as a
single monitor. At the end of the scan it merges the workers' accumulators with each
analysis' ``merge``, in a fixed order (by the first frame id each worker covered), and
finishes them exactly as one monitor would.

Rules (docs/operations.md, "Scale-out"):

- A frame is used once its worker sent accumulators that include it ("covered"), so the
  summary and the per-frame datasets always describe the same frames. Covered frames are
  released in frame-id order up to the lowest id every still-running worker has covered.
- A worker silent for ``worker_timeout`` s is asked (``WorkerControl.running``, a Tango state
  read): one still RUNNING is only busy (e.g. compiling its kernels) and is waited for; one that
  does not answer, or is no longer RUNNING without its last report, is lost: named in Status,
  its frames not yet covered are never used, so they count as lost frames (id gaps, or frames announced but
  never reported); the loss check and the coverage see them. It rejoins at the next Start.
- On a PUSH stream only one worker receives the end of series: once the announced frames
  are all covered, or a worker saw the end of series and no frame came for ``end_timeout``
  s, the reducer stops the workers still running; the scan ends when every worker ended.
"""
from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import zmq

from ..engine import Engine, EngineConfig, EngineError, EngineState, _refuse_unless, _Run, _SCAN_SEQ
from ..events import IdKind
from ..publisher import Listener
from .message import WorkerMessage, unpack
from .wire import Registry, WireError

log = logging.getLogger(__name__)

WORKER_TIMEOUT = 3.0
END_TIMEOUT = 2.0
MAX_EARLY = 1000  # messages kept from a worker whose Start has not returned yet


def device_key(name: str) -> str:
    """A device name as workers say it: no ``tango://host:port/`` prefix, no ``#dbase=no``, lower case."""
    name = name.strip().split("#", 1)[0]
    if "://" in name:
        name = name.split("://", 1)[1].split("/", 1)[-1]
    return name.lower()


class WorkerControl(Protocol):
    """How the reducer drives its workers (the device: DeviceProxy calls; tests: engines)."""

    def start(self, worker: str, live: bool) -> str: ...  # the worker's scan id
    def stop(self, worker: str) -> None: ...
    def reset(self, worker: str) -> None: ...
    def mark(self, worker: str, mark: str, reason: str) -> None: ...
    def running(self, worker: str) -> str: ...  # "" while it is RUNNING, else why it is not (its Status)


@dataclass
class ReducerConfig(EngineConfig):
    """An EngineConfig without sources, plus the workers and the receive endpoint."""

    sources: Sequence[str] = ()
    workers: Sequence[str] = ()
    #: where workers connect: tcp://host:port bound here (tcp://*:port for every interface; port 0: any)
    endpoint: str = "tcp://127.0.0.1:0"
    worker_timeout: float = WORKER_TIMEOUT
    end_timeout: float = END_TIMEOUT


@dataclass
class _Worker:
    name: str
    scan: str | None = None  # the worker's scan id, once its Start returned
    started: bool = False
    start_error: str = ""
    seq: int = 0
    state: str = ""
    counters: dict[str, int] = field(default_factory=dict)
    announced: int | None = None
    series_ended: bool = False
    last_seen: float = 0.0
    done: bool = False
    dead: bool = False
    asking: bool = False  # a running() check is under way
    refused: str = ""
    note: str = ""
    uncovered: list[tuple[int, float, dict[str, Any]]] = field(default_factory=list)
    covered: int = 0
    covered_high: int = -1
    first_id: int | None = None
    acc_msg: WorkerMessage | None = None
    early: list[WorkerMessage] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.started and not self.done and not self.dead


@dataclass
class _Scan:
    run: _Run
    generation: int
    live: bool
    workers: dict[str, _Worker]
    ready: list[tuple[int, int, float, dict[str, Any]]] = field(default_factory=list)  # a heap by frame id
    last_frame_at: float = 0.0
    stopping: str = ""  # why the workers were asked to stop
    finished: bool = False


class ReducerEngine(Engine):
    """An engine whose frames are its workers' reports (see the module docstring)."""

    def __init__(self, config: ReducerConfig, control: WorkerControl, listener: Listener | None = None,
                 thread_context: Callable[[], Any] = contextlib.nullcontext):
        names = [w.strip() for w in config.workers if w.strip()]
        if not names:
            raise EngineError("no workers: set the Workers property to the DataQualityMonitor device names")
        if len({device_key(n) for n in names}) != len(names):
            raise EngineError(f"Workers names a device twice: {names}")
        for what, value in (("worker_timeout", config.worker_timeout), ("end_timeout", config.end_timeout)):
            if not (isinstance(value, (int, float)) and 0 < value <= 3600):
                raise EngineError(f"{what} must be between 0 and 3600 s, got {value!r}")
        self.worker_names = names
        self.control = control
        self._thread_context = thread_context
        self._scan: _Scan | None = None
        self._inbox: queue.Queue = queue.Queue()
        self._calls: dict[str, queue.Queue] = {}  # Reset, Flag, Archive: per worker, in order
        self._bad_messages = 0
        super().__init__(config, listener, thread_context)
        self.registry = Registry.for_analyses(self.analyses)
        self._ctx: zmq.Context = zmq.Context.instance()
        sock = self._ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(config.endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            self.publisher.close()
            if self.products is not None:
                self.products.close()
            raise EngineError(f"cannot bind the reducer's Endpoint {config.endpoint!r}: {exc}; give a free "
                              "tcp://host:port (tcp://*:port for every interface)") from None
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock
        self._receiver_done = threading.Event()
        threading.Thread(target=self._receive_thread, args=(thread_context,), name="dqm-reducer",
                         daemon=True).start()

    def _probe_sources(self, config: EngineConfig) -> list:
        self._source_entries = list(self.worker_names)  # provenance and Status name the workers
        self._specs = []
        return []

    # ---- commands -----------------------------------------------------------------------

    def start(self, live: bool = False) -> str:
        """Start the scan here, then on every worker; the workers that do not start are named in
        Status (their share is lost). Refused (FAULT) when none starts."""
        with self._lock:
            _refuse_unless("Live" if live else "Start", self._state)
            missing = [] if live else self.missing_metadata()
            if missing:
                raise EngineError(f"Start refused: required scan metadata not set: {', '.join(missing)} "
                                  "(RequiredMetadata); set each key, then Start")
            self._generation += 1
            self._bad_messages = 0  # counted per scan, as badEvents
            self._stop = threading.Event()
            self._counters = type(self._counters)()
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
                                                               self.config.output_name or None))
                except Exception as exc:  # noqa: BLE001
                    self._enter_fault(f"cannot create the results file in {self.products.root}: "
                                      f"{type(exc).__name__}: {exc}. Check OutputDirectory, then run Reset")
                    raise EngineError(str(exc)) from None
            run = _Run([a.new_accumulator() for a in self.analyses], self._stop, self._generation, math.inf)
            now = time.monotonic()
            workers = {device_key(n): _Worker(n, last_seen=now) for n in self.worker_names}
            scan = _Scan(run, self._generation, live, workers, last_frame_at=now)
            self._scan = scan
            self._set_state(EngineState.RUNNING)
        errors: list[str] = []

        def start_one(name: str) -> None:
            with self._thread_context():
                try:
                    self._inbox.put((scan.generation, name, self.control.start(name, live)))
                except Exception as exc:  # noqa: BLE001 - each worker's failure is named, the others go on
                    why = " ".join(str(exc).split())[:300]
                    errors.append(f"{name}: {why}")
                    self._inbox.put((scan.generation, name, RuntimeError(why)))
        # all at once, so an unreachable worker costs one call's timeout, not one per worker; these
        # threads only make calls (they push no events), so waiting for them here cannot deadlock
        calls = [threading.Thread(target=start_one, args=(n,), name="dqm-reducer-start", daemon=True)
                 for n in self.worker_names]
        for t in calls:
            t.start()
        for t in calls:
            t.join()
        if len(errors) == len(self.worker_names):
            self._enter_fault(f"no worker started ({'; '.join(errors)}). Start the DataQualityMonitor workers "
                              "(Astor) and check their Reducer property, then Reset and Start")
            raise EngineError("no worker started: " + "; ".join(errors))
        return self._scan_id

    def start_point(self) -> int:
        """Scan points are judged by frame arrival on one monitor; the reducer sees frames a heartbeat late."""
        raise EngineError("StartPoint is not available on a DataQualityReducer (points are cut by frame arrival, "
                          "which only a monitor reading the stream sees): run point scans on one "
                          "DataQualityMonitor")

    def stop(self) -> None:
        """Stop every worker; the scan ends when each sent its last report (or was lost)."""
        with self._lock:
            if self._state is EngineState.RUNNING:
                self._end_reason = self._end_reason or "stopped"
        self._inbox.put(("stop",))

    def _enter_fault(self, why: str) -> None:
        super()._enter_fault(why)
        self._inbox.put(("stop",))  # the workers would go on analysing for a scan nobody merges

    def reset(self) -> None:
        super().reset()
        self._scan = None
        self._each("Reset", self.control.reset)

    def mark(self, mark: str, reason: str = "") -> str:
        path = super().mark(mark, reason)
        self._each("Flag" if mark == "flagged" else "Archive", lambda w: self.control.mark(w, mark, reason))
        return path

    def _each(self, what: str, call: Callable[[str], None]) -> None:
        """``call`` on every worker in the background, in command order per worker (an Archive before
        the Reset that follows it): the command returns at once; a refusal is logged."""
        for name in self.worker_names:
            q = self._calls.get(name)
            if q is None:
                q = self._calls[name] = queue.Queue()
                threading.Thread(target=self._call_thread, args=(name, q), name="dqm-reducer-calls",
                                 daemon=True).start()
            q.put((what, call))

    def _call_thread(self, name: str, q: queue.Queue) -> None:
        with self._thread_context():
            while not self._closing:
                try:
                    what, call = q.get(timeout=0.5)
                except queue.Empty:
                    continue
                try:
                    call(name)
                except Exception as exc:  # noqa: BLE001 - one worker's refusal must not stop the others
                    log.warning("%s on worker %s failed: %s", what, name, " ".join(str(exc).split())[:300])

    def close(self, timeout: float = 5.0) -> bool:
        self._closing = True
        self._receiver_done.wait(timeout)
        return super().close(timeout)

    # ---- the receive thread -------------------------------------------------------------

    def _receive_thread(self, thread_context: Callable[[], Any]) -> None:
        try:
            with thread_context():
                while not self._closing:
                    if self._sock.poll(100):
                        for _ in range(64):  # a burst, then the timers
                            try:
                                parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
                            except zmq.Again:
                                break
                            self._on_parts(parts)
                    self._on_inbox()
                    self._on_timers()
        except Exception as exc:  # noqa: BLE001 - any failure here is a FAULT with its reason
            log.exception("reducer thread failed")
            self._enter_fault(f"the reducer failed: {type(exc).__name__}: {exc}. Run Reset (or Init)")
        finally:
            self._sock.close(linger=0)
            self._receiver_done.set()

    def _on_parts(self, parts: list[Any]) -> None:
        try:
            msg = unpack([p.buffer for p in parts], self.registry)
        except WireError as exc:
            self._bad_messages += 1
            if self._bad_messages == 1:
                log.warning("malformed worker message ignored (later ones counted in Status): %s", exc)
            return
        scan = self._scan
        if scan is None or scan.finished or self._state is not EngineState.RUNNING:
            return
        w = scan.workers.get(device_key(msg.worker))
        if w is None:
            log.info("message from %s ignored: not in the Workers property", msg.worker)
            return
        if w.scan is None:  # its Start has not returned yet
            if not w.dead and not w.start_error:
                w.early = (w.early + [msg])[-MAX_EARLY:]
            return
        if msg.scan != w.scan or w.dead or w.done:
            return  # an earlier scan's, or a lost worker's late word
        self._apply(scan, w, msg)

    def _on_inbox(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            scan = self._scan
            if scan is None or scan.finished:
                continue
            if item[0] == "stop":
                self._stop_workers(scan, "stopped")
                continue
            if item[0] == "running":
                _, generation, name, why = item
                w = scan.workers[device_key(name)]
                w.asking = False
                if generation != scan.generation or not w.active:
                    continue
                if why:
                    self._lose(scan, w, why)
                else:  # busy, not lost: wait another worker_timeout
                    w.last_seen = time.monotonic()
                continue
            generation, name, result = item
            if generation != scan.generation:
                continue
            w = scan.workers[device_key(name)]
            if isinstance(result, BaseException):
                w.start_error = str(result)
                w.early = []
                continue
            w.scan, w.started, w.last_seen = str(result), True, time.monotonic()
            early, w.early = w.early, []
            for msg in early:
                if msg.scan == w.scan and not w.done:
                    self._apply(scan, w, msg)

    def _apply(self, scan: _Scan, w: _Worker, msg: WorkerMessage) -> None:
        now = time.monotonic()
        w.last_seen = now
        if msg.seq <= w.seq:  # a repeated or older report: the latest one already counts
            return
        w.seq = msg.seq
        if list(msg.analyses) != list(self.config.analyses):
            w.refused = (f"its Analyses {msg.analyses} differ from the reducer's {list(self.config.analyses)}; "
                         "give both the same Analyses property")
            w.done = True
            w.uncovered = []
            self._release(scan)
            return
        w.state, w.counters, w.series_ended = msg.state, dict(msg.counters), msg.series_ended
        if msg.announced is not None:
            w.announced = msg.announced
        if msg.batch:
            w.uncovered.extend(msg.batch)
            scan.last_frame_at = now
        if msg.raw_accs is not None:
            w.acc_msg = msg  # latest wins: decoded only at the end
            for fid, ts, results in w.uncovered:
                heapq.heappush(scan.ready, (fid, next(_ORDER), ts, results))
                w.covered += 1
                w.covered_high = max(w.covered_high, fid)
                w.first_id = fid if w.first_id is None else min(w.first_id, fid)
            w.uncovered = []
        if msg.state in (EngineState.CLOSE.value, EngineState.FAULT.value) and msg.raw_accs is not None:
            w.done = True
        with self._lock:
            if scan.generation == self._generation:
                self._counters.bad = sum(x.counters.get("bad", 0) for x in scan.workers.values())
                announced = [x.announced for x in scan.workers.values() if x.announced is not None]
                if announced and not scan.live:
                    self._counters.expected = max(announced)
                self._recount_locked(scan.run)
        self._release(scan)

    def _release(self, scan: _Scan, everything: bool = False) -> None:
        """Covered frames in frame-id order, up to the lowest id every running worker has covered."""
        if not everything and any(w.scan is None and not w.start_error for w in scan.workers.values()):
            return  # a worker whose Start has not returned yet may still report lower ids
        limit = math.inf if everything else min((w.covered_high for w in scan.workers.values() if w.active),
                                                default=math.inf)
        while scan.ready and scan.ready[0][0] <= limit:
            fid, _, ts, results = heapq.heappop(scan.ready)
            if not self._reduce_frame(scan, fid, ts, results):
                return

    def _reduce_frame(self, scan: _Scan, fid: int, ts: float, results: dict[str, Any]) -> bool:
        """One frame, as Engine._handle_frame after its analyses ran; False after a FAULT."""
        run = scan.run
        kind = self._observe_event(run, fid)  # gaps: lost frames, to the loss check
        if kind is IdKind.DUPLICATE:  # two workers reported one id (overlapping partitions)
            run.duplicate += 1
            with self._lock:
                self._recount_locked(run)
            return True
        if kind is IdKind.LATE:
            run.out_of_order += 1
        now = time.monotonic()
        with self._lock:
            if run.generation != self._generation:
                return False
            c = self._counters
            c.completed += 1
            self._recount_locked(run)
            self._arrivals.append(now)
            c.event_rate = self._rate_locked(now)
            c.latency_ms = max(0.0, (time.time() - ts) * 1e3) if ts > 1e9 else 0.0
            self._results = results
            self._frame_id = fid
        flag = self.quality.update(fid, results, now)
        if self.products is not None:
            try:
                self.products.append(fid, ts, results, flag)
            except Exception as exc:  # noqa: BLE001
                self._enter_fault(f"writing the results file failed on frame {fid}: {type(exc).__name__}: "
                                  f"{exc}. Check the disk and OutputDirectory, then run Reset")
                return False
        self.publisher.results(results, fid)
        if self.output_stream is not None:
            self.output_stream.send(fid, results, ts)
        return True

    def _on_timers(self) -> None:
        scan = self._scan
        if scan is None or scan.finished or self._state is not EngineState.RUNNING:
            return
        now = time.monotonic()
        timeout = self.config.worker_timeout  # type: ignore[attr-defined]
        for w in scan.workers.values():
            if w.active and not w.asking and now - w.last_seen > timeout:
                w.asking = True
                threading.Thread(target=self._ask_running, args=(scan.generation, w.name), daemon=True,
                                 name="dqm-reducer-ask").start()
            elif not w.started and w.start_error:
                w.done = True
        waiting = [w for w in scan.workers.values() if w.scan is None and not w.start_error]
        if not scan.stopping and not scan.live and not waiting:
            announced = max((w.announced for w in scan.workers.values() if w.announced is not None), default=None)
            covered = sum(w.covered for w in scan.workers.values())
            if announced is not None and covered >= announced:
                self._stop_workers(scan, "all announced frames reported")
            elif (any(w.series_ended for w in scan.workers.values())
                  and now - scan.last_frame_at > self.config.end_timeout):  # type: ignore[attr-defined]
                self._stop_workers(scan, "series end")
        if not waiting and not any(w.active for w in scan.workers.values()):
            self._finish_scan(scan)

    def _ask_running(self, generation: int, name: str) -> None:
        with self._thread_context():
            try:
                why = self.control.running(name)
            except Exception as exc:  # noqa: BLE001 - no answer: the worker is gone
                why = " ".join(str(exc).split())[:300] or type(exc).__name__
        self._inbox.put(("running", generation, name, why))

    def _lose(self, scan: _Scan, w: _Worker, why: str) -> None:
        w.dead = True
        w.uncovered = []  # never covered: lost
        w.note = (f"lost after frame {w.covered_high} (no report for {self.config.worker_timeout:g} s: "  # type: ignore[attr-defined]
                  f"{why}; its unreported frames are counted lost); restart it (Astor), it rejoins at the next Start")
        log.warning("worker %s %s", w.name, w.note)
        self._release(scan)

    def _stop_workers(self, scan: _Scan, why: str) -> None:
        if scan.stopping:
            return
        scan.stopping = why
        running = [w.name for w in scan.workers.values() if w.active]

        def stop_all() -> None:
            with self._thread_context():
                for name in running:
                    try:
                        self.control.stop(name)
                    except Exception as exc:  # noqa: BLE001 - a worker that cannot be stopped times out as lost
                        log.warning("Stop on worker %s failed: %s", name, exc)
        threading.Thread(target=stop_all, name="dqm-reducer-stop", daemon=True).start()

    def _finish_scan(self, scan: _Scan) -> None:
        scan.finished = True
        self._release(scan, everything=True)
        if self._state is not EngineState.RUNNING:
            return
        try:
            scan.run.accs = self._merged(scan)
        except (WireError, Exception) as exc:  # noqa: BLE001 - a plugin's merge, or a worker's bad data
            self._enter_fault(f"merging the workers' accumulators failed: {type(exc).__name__}: {exc}. "
                              "Check that every worker runs the same analyses and version, then Reset")
            return
        lost = [w for w in scan.workers.values() if w.dead or w.start_error or w.refused]
        if scan.stopping != "stopped" and not scan.live:
            scan.run.series_ended = 1  # frames announced but never reported are lost (shortfall)
            with self._lock:
                self._end_reason = self._end_reason or (
                    f"{scan.stopping}; {len(lost)} of {len(scan.workers)} workers lost" if lost else scan.stopping)
        self._finish(scan.run)

    def _merged(self, scan: _Scan) -> list[Any]:
        """Every analysis' accumulators merged in a fixed order: by the first frame id each worker covered."""
        parts = sorted((w for w in scan.workers.values() if w.acc_msg is not None and w.covered),
                       key=lambda w: (w.first_id, w.name.lower()))
        accs = [a.new_accumulator() for a in self.analyses]
        for w in parts:
            theirs = w.acc_msg.accumulators(self.registry) if w.acc_msg is not None else None
            if theirs is None:
                raise WireError(f"worker {w.name} sent no accumulators")
            if len(theirs) != len(self.analyses):
                raise WireError(f"worker {w.name} sent {len(theirs)} accumulators for {len(self.analyses)} analyses")
            accs = [a.merge(acc, other) for a, acc, other in zip(self.analyses, accs, theirs)]
        return accs

    # ---- status ---------------------------------------------------------------------------

    def workers(self) -> list[dict[str, Any]]:
        """Per worker: name, state, frames covered, and why it is lost or refused (diagnostics)."""
        scan = self._scan
        if scan is None:
            return [{"name": n, "state": "", "frames": 0, "note": ""} for n in self.worker_names]
        return [{"name": w.name, "state": "lost" if w.dead else w.state, "frames": w.covered,
                 "note": w.note or w.refused or (f"did not start: {w.start_error}" if w.start_error else "")}
                for w in scan.workers.values()]

    def _status_locked(self) -> str:
        if self._state is EngineState.ON:
            return (f"ON: ready; reducer of {len(self.worker_names)} workers ({', '.join(self.worker_names)}) "
                    f"on {getattr(self, 'endpoint', self.config.endpoint)}; analyses "  # type: ignore[attr-defined]
                    f"{', '.join(a.name for a in self.analyses)}")
        status = super()._status_locked()
        scan = self._scan
        if scan is None or self._state is EngineState.FAULT:
            return status
        notes = [f"worker {w.name} {w.note}" if w.dead else f"worker {w.name} refused: {w.refused}" if w.refused
                 else f"worker {w.name} did not start ({w.start_error}): it takes no part in this scan" if w.start_error
                 else ""
                 for w in scan.workers.values()]
        notes = [n for n in notes if n]
        if self._bad_messages:
            notes.append(f"{self._bad_messages} malformed worker messages ignored")
        return status + "".join(f"; {n}" for n in notes)


_ORDER = itertools.count()  # ties in the ready heap (one id reported twice) keep their arrival order


__all__ = ["END_TIMEOUT", "ReducerConfig", "ReducerEngine", "WORKER_TIMEOUT", "WorkerControl"]
