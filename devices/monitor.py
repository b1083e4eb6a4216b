"""DataQualityMonitor: a thin Tango device over :class:`tango_dqm.engine.Engine`.

Commands only call into the engine and return; the engine's publisher thread (an
omni-thread) pushes State and result events. Parameters and results of the
configured analyses become dynamic attributes, rebuilt by ``Init``.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, NoReturn

import numpy as np
import tango
from tango import AttrQuality, AttrWriteType, DevState
from tango.server import Device, attribute, command, device_property, run

from tango_dqm.engine import Engine, EngineConfig, EngineError, NotConfiguredError, Snapshot
from tango_dqm.http import HttpServerError, ResultsHttpServer
from tango_dqm.params import Parameter, ParameterError, ParamType
from tango_dqm.plugin import POINT_PREFIX, PluginError
from tango_dqm.quality import TANGO_QUALITY, LossCheck, Verdict, checks_from_config, range_verdict
from tango_dqm.quality.references import ReferenceStoreError
from tango_dqm.products.runlog import COMMON_METADATA
from tango_dqm.sources import SourceError
from tango_dqm.versions import deployed_versions_json

from .detectors import DetectorError, Detectors, live_attribute, live_stream, parse_detectors, tango_proxy
from .logging_bridge import EngineListener, TangoLogHandler
from .mapping import memorized_value, parameter_attr, parameter_value, result_attr, result_value
from .points import point_attr, point_value

_STATES = {"ON": DevState.ON, "RUNNING": DevState.RUNNING, "CLOSE": DevState.CLOSE, "FAULT": DevState.FAULT}
_COUNTERS = ("totalEvents", "completedEvents", "droppedEvents", "badEvents", "duplicateEvents", "outOfOrderEvents")
# the core's one Verdict -> quality-name mapping, turned into AttrQuality once
_VERDICT_QUALITY = {v: getattr(AttrQuality, name) for v, name in TANGO_QUALITY.items()}
core_log = logging.getLogger("tango_dqm")
_event_socket = {"ready": False}  # per process: the ZMQ event socket exists


@atexit.register
def _join_engine_threads(timeout: float = 10.0) -> None:
    """At server exit, wait for the engine's threads, which ``Engine.close`` told to stop.

    Finalization freezes daemon threads where they stand: one frozen inside h5py (the engine
    appending to the results file when a Kill arrives) keeps h5py's lock, and the interpreter
    then hangs forever on that lock while freeing h5py objects; one frozen in other C code can
    crash the process."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name.startswith("dqm-") and thread.daemon and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


def _throw(reason: str, desc: str, origin: str) -> NoReturn:
    tango.Except.throw_exception(reason, desc, origin)
    raise AssertionError("tango.Except.throw_exception returned")  # it always raises DevFailed


class DataQualityMonitor(Device):
    """Live data-quality monitor: analyses detector streams, exposes results as attributes."""

    Sources = device_property(dtype=(str,), default_value=["sim://?frames=100"],
                              doc="stream URIs, 'name=uri' or 'uri' (sim://, zmq://)")
    Analyses = device_property(dtype=(str,), default_value=["roi"],
                               doc="analysis plugin names or module:Class")
    OutputDirectory = device_property(dtype=str, default_value="", doc="where scan products are written")
    detectors = device_property(dtype=str, default_value="{}",
                                doc='JSON {"stream": "detector/device/name"}: Live/Stop drive these detectors')
    ArrayEventInterval = device_property(dtype=float, default_value=0.5,
                                         doc="minimum seconds between spectrum/image change events")
    QueueSize = device_property(dtype=int, default_value=64, doc="frames buffered between source and analysis")
    QualityChecks = device_property(dtype=(str,), default_value=[],
                                    doc="quality checks, one JSON object per line (see docs/quality.md)")
    StaleTimeout = device_property(dtype=float, default_value=0.0,
                                   doc="verdict STALE after this many seconds without a frame while RUNNING (0: off)")
    EventTimeout = device_property(dtype=float, default_value=1.0,
                                   doc="several Sources: seconds an event waits for its partner frames before it "
                                       "is analysed as a partial event (README, Counters)")
    Output = device_property(dtype=str, default_value="",
                             doc="per-frame results as a bsread stream: bsread://127.0.0.1:PORT?mode=pub|push")
    ParameterFileDirectories = device_property(dtype=(str,), default_value=[],
                                               doc="directories file parameters (mask, dark ...) may be read from")
    MaxParameterFileSize = device_property(dtype=int, default_value=64 * 1024 * 1024,
                                           doc="largest parameter file accepted, in bytes")
    RequiredMetadata = device_property(dtype=(str,), default_value=[],
                                       doc="scan metadata keys (sample, operator, proposal or scanMetadata keys) "
                                           "that must be set before Start; Live is not refused")
    ReferenceDirectory = device_property(dtype=str, default_value="",
                                         doc="where references are kept (default: OutputDirectory/references)")
    ReportInterval = device_property(dtype=float, default_value=10.0,
                                     doc="seconds between rewrites of the running scan's report and the run list "
                                         "(0: only at the scan's end; up to 86400)")
    AnalysisThreads = device_property(dtype=int, default_value=0,
                                      doc="threads analysing consecutive frames at once (0: one per core)")
    HttpPort = device_property(dtype="DevLong", default_value=0,
                               doc="port of the read-only HTTP access (h5pyd, run pages under /runs/); 0: off")
    HttpHost = device_property(dtype=str, default_value="127.0.0.1",
                               doc="address the HTTP access listens on (0.0.0.0: every interface)")
    Reducer = device_property(dtype=str, default_value="",
                              doc="scale-out worker: the DataQualityReducer's Endpoint, tcp://host:port, where "
                                  "this monitor reports ('' : a stand-alone monitor); see docs/operations.md")

    # ---- lifecycle -----------------------------------------------------------------

    def init_device(self) -> None:
        super().init_device()
        self.engine: Engine | None = None
        self._config_error = ""
        self._log_handler = TangoLogHandler(self)
        core_log.addHandler(self._log_handler)
        self._listener = EngineListener(self)
        core_log.setLevel(logging.DEBUG)
        for name in ("State", "Status", *_COUNTERS, "verdict", "verdictReport"):
            self.set_change_event(name, True, False)
        self.set_archive_event("verdict", True, False)
        self._limits: dict[str, tuple] = {}
        self._detectors = Detectors({}, tango_proxy, self.warn_stream)  # Live/Stop of the detectors property
        self._live_flags: dict[str, bool] = {}
        self._last_verdict: tuple[int, str] | None = None
        # Nothing may escape: at startup an exception here makes the server exit, in Init it
        # reaches the client as an opaque CORBA error with State and Status out of step.
        self._http: ResultsHttpServer | None = None
        self._http_error = ""
        try:
            self._configure()
            self._start_http()
            if getattr(self, "_dynamic_ready", False):  # Init command: rebuild the attribute set
                self._ensure_event_socket()
                self._build_dynamic_attributes()
        except _ConfigError as exc:
            self._fault(str(exc))
            return
        except RecursionError:
            self._fault("a property value is nested too deeply to parse (RecursionError): check "
                        "QualityChecks (one flat JSON object per line) and detectors")
            return
        except Exception as exc:  # noqa: BLE001 - reported in Status, never kills the server
            self._fault(f"building the device failed: {_describe(exc)}")
            return
        self.set_state(DevState.ON)

    def _configure(self) -> None:
        """Check the properties and build the engine; raises _ConfigError naming what to fix."""
        self._check_directories()
        try:
            self.engine = self._make_engine()
        except (EngineError, PluginError, SourceError, ValueError, OSError) as exc:
            raise _ConfigError(f"{exc}. Fix the {self._engine_properties} properties") from None
        self._restore_parameters()
        self._restore_metadata()
        self._restore_point_frames()
        self._init_loss_limits()
        try:
            self._detectors = Detectors(parse_detectors(self.detectors, self.engine.streams), tango_proxy,
                                        self.warn_stream)
        except ValueError as exc:
            raise _ConfigError(f"{exc}. Fix the detectors property") from None
        self._live_flags = self._restore_live_flags()

    _engine_properties = "Sources/Analyses/QualityChecks/Output/Reducer"

    def _engine_config(self, cls: type = EngineConfig, **extra: Any) -> Any:
        return cls(list(self.Sources), list(self.Analyses), self.QueueSize, self.ArrayEventInterval,
                   checks=[line for line in self.QualityChecks if line.strip()],
                   stale_timeout=self.StaleTimeout, event_timeout=self.EventTimeout,
                   output_directory=self.OutputDirectory, reference_directory=self.ReferenceDirectory,
                   file_roots=list(self.ParameterFileDirectories),
                   max_file_bytes=self.MaxParameterFileSize, output=self.Output,
                   analysis_threads=self.AnalysisThreads,
                   required_metadata=[k.strip() for k in self.RequiredMetadata if k.strip()],
                   report_interval=self.ReportInterval, **extra)

    def _make_engine(self) -> Engine:
        """The engine of this device (DataQualityReducer makes a ReducerEngine here)."""
        return Engine(self._engine_config(reducer=self.Reducer.strip(), worker_name=self.get_name()),
                      listener=self._listener, thread_context=tango.EnsureOmniThread)

    def _check_directories(self) -> None:
        # Relative paths would resolve against the server's working directory (/ under Starter).
        named = [("OutputDirectory", self.OutputDirectory), ("ReferenceDirectory", self.ReferenceDirectory),
                 *(("ParameterFileDirectories", d) for d in self.ParameterFileDirectories)]
        for prop, folder in named:
            if folder and not os.path.isabs(folder):
                raise _ConfigError(f"{prop} {folder!r} is a relative path; give an absolute path")
        for prop, folder in named[:2]:
            if not folder:
                continue
            if os.path.exists(folder) and not os.path.isdir(folder):
                raise _ConfigError(f"{prop} {folder!r} exists and is not a directory; give a directory")
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise _ConfigError(f"{prop} {folder!r} cannot be created ({exc.strerror or exc}); "
                                   "give a directory the server may write") from None
            if not os.access(folder, os.W_OK | os.X_OK):
                raise _ConfigError(f"{prop} {folder!r} is not writable by the server; give a directory "
                                   "it may write")

    def _fault(self, why: str) -> None:
        """FAULT with a Status that says what failed and how to recover; no half-built device."""
        self._config_error = (f"configuration error: {why}, then run Init (Init re-reads the properties)")
        self.error_stream(self._config_error)
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if getattr(self, "_dynamic_ready", False):
            self._remove_dynamic_attributes()
        self.set_state(DevState.FAULT)

    def server_init_hook(self) -> None:
        self._ensure_event_socket()  # before a RestartDevice or Init can push an interface change

    def _ensure_event_socket(self) -> None:
        """Create cppTango's ZMQ event socket, which it makes only at the first event subscription.

        Init (and the admin's RestartDevice) push the device-interface-change event whenever
        ``EventSupplier::any_dev_intr_client`` says a client listens; cppTango 10 computes that as
        ``steady_clock::now() - last_subscription < 600 s`` with a zero default, which is true during
        the first 10 minutes after the host booted even when nobody ever subscribed. The push then
        writes to the missing socket: a segfault in ``ZmqEventSupplier::push_event`` (a server
        started by Starter at boot, or a test run on a fresh CI machine). A subscription to our own
        interface-change event through the admin device creates the socket; once per process.
        """
        if _event_socket["ready"]:
            return
        util = tango.Util.instance()
        try:
            admin = tango.DeviceProxy(self._admin_trl(util))
            admin.set_timeout_millis(3000)
            admin.command_inout("ZmqEventSubscriptionChange", [self.get_name(), "", "subscribe", "intr_change", "6"])
        except tango.DevFailed as exc:
            self.warn_stream(f"could not create the event socket: {exc.args[0].desc}")
            return
        _event_socket["ready"] = True

    def _admin_trl(self, util: tango.Util) -> str:
        admin = util.get_dserver_device().get_name()
        if tango.Util._UseDb:
            return admin
        # no database (DeviceTestContext): the admin answers on this process' own endpoint
        return tango.DeviceProxy(self.get_name()).adm_name()

    def initialize_dynamic_attributes(self) -> None:
        self._dynamic_ready = True
        try:
            self._build_dynamic_attributes()
        except Exception as exc:  # noqa: BLE001 - at startup this would make the server exit
            self._fault(f"the attributes could not be created: {_describe(exc)}")

    def delete_device(self) -> None:
        # First cut the engine's threads off from this device: a log line or an event they are
        # about to deliver must never reach a device that is being deleted (a segfault inside
        # error_stream was seen at server shutdown).
        if getattr(self, "_listener", None) is not None:
            self._listener.detach()
        if getattr(self, "_log_handler", None) is not None:
            core_log.removeHandler(self._log_handler)
            self._log_handler.detach()
        # Dynamic attributes must go here, not in init_device: removing them during
        # Init's init_device crashes cppTango. init_device then adds the new set.
        self._remove_dynamic_attributes()
        http, engine = getattr(self, "_http", None), getattr(self, "engine", None)
        if http is not None:
            http.close()  # quick: asks uvicorn to exit, joins with a timeout
            self._http = None
        if engine is not None:
            engine.close()

    # ---- HTTP access (read-only; its threads only read files, they push no events) -----------

    def _start_http(self) -> None:
        self._http = None
        self._http_error = ""
        if self.HttpPort <= 0:
            return
        try:
            server = ResultsHttpServer(self.HttpHost, self.HttpPort, self.OutputDirectory or None,
                                       self._current_results_file)
            server.start()
        except HttpServerError as exc:
            self._http_error = f"HTTP access off: {exc}; fix the HttpPort/HttpHost properties, then run Init"
            self.error_stream(self._http_error)
            return
        self._http = server
        self.info_stream(f"HTTP access (h5pyd, /runs/) on {server.url}")

    def _current_results_file(self) -> str | None:
        engine = self.engine
        products = engine.products if engine is not None else None
        return str(products.current) if products is not None and products.current is not None else None

    # ---- dynamic attributes ------------------------------------------------------------

    def _remove_dynamic_attributes(self) -> None:
        for name in getattr(self, "_dynamic_names", []):
            try:
                self.remove_attribute(name, False, False)  # clean_db=False keeps memorized values
            except tango.DevFailed as exc:
                self.warn_stream(f"could not remove attribute {name}: {exc.args[0].desc}")
        self._dynamic_names: list[str] = []

    def _build_dynamic_attributes(self) -> None:
        """All attributes or none: every definition is made before the first is added, and a
        failed add removes the ones added, so Init never leaves half an attribute set."""
        self._remove_dynamic_attributes()
        if self.engine is None:
            return
        todo: list[tuple[tango.Attr, Callable[[Any], None], Callable[[Any], None] | None]] = []
        for param in self.engine.params.declarations.values():
            todo.append((parameter_attr(param), self._read_parameter, self._write_parameter))
        for stream, device in self._detectors.names.items():
            attr = tango.Attr(live_attribute(stream), tango.CmdArgType.DevBoolean, tango.AttrWriteType.READ_WRITE)
            props = tango.UserDefaultAttrProp()
            props.set_description(f"Live and Stop also drive the detector {device}")
            attr.set_default_properties(props)
            attr.set_memorized()
            attr.set_memorized_init(False)  # restored by init_device, like the parameters
            todo.append((attr, self._read_live_flag, self._write_live_flag))
        limits = self.engine.quality.range_limits()
        for name, (_, result) in self.engine.result_decl.items():
            todo.append((result_attr(result, *limits.get(name, (None, None))), self._read_result, None))
        for result in self.engine.point_results.values():
            todo.append((point_attr(result), self._read_point_result, None))
        for attr, read, write in todo:
            try:
                self.add_attribute(attr, read, write)
            except tango.DevFailed as exc:
                self._remove_dynamic_attributes()
                raise _ConfigError(f"attribute {attr.get_name()} refused by Tango: "
                                   f"{' '.join(exc.args[0].desc.split())}") from None
            self._dynamic_names.append(attr.get_name())
        self._sync_thresholds()

    # Dynamic attributes exist only while an engine does (Init removes them with it).

    def _read_parameter(self, attr: tango.Attribute) -> None:
        name = attr.get_name()
        params = self._require_engine(f"read {name}").params
        param = params.declarations[name]
        if param.type is ParamType.FILE:  # the path it was set with, not the content
            attr.set_value(params.file_paths.get(name, ""))
            return
        attr.set_value(parameter_value(param, params.get(name)))

    def _write_parameter(self, attr: tango.WAttribute) -> None:
        name = attr.get_name()
        value = attr.get_write_value()
        engine = self._require_engine(f"write {name}")
        try:
            canonical = engine.set_parameter(name, value)
        except ParameterError as exc:
            _throw("DQM_InvalidValue", f"{exc} (the previous value is kept)", f"write {name}")
        param = engine.params.declarations[name]
        if param.is_array:
            self._persist(name, param.to_plain(canonical))

    def _read_result(self, attr: tango.Attribute) -> None:
        name = attr.get_name()
        engine = self._require_engine(f"read {name}")
        _, result = engine.result_decl[name]
        value, quality = self._result_value(name, result, engine.latest(name))  # no snapshot per read
        attr.set_value_date_quality(value, time.time(), quality)

    def _result_value(self, name: str, result, raw: Any):
        value, quality = result_value(result, raw)
        if quality == AttrQuality.ATTR_VALID and name in self._limits:
            # the same rule Tango applies on read, so pushed events carry the same quality
            verdict = range_verdict(value, *self._limits[name])  # OK, WARNING, ERROR or None (no value)
            if verdict is not None:
                quality = _VERDICT_QUALITY[verdict]
        return value, quality

    # Range checks follow the result attributes' alarm properties (min/max_warning,
    # min/max_alarm): editing them in Jive changes the verdict within a tick, no restart.

    def _sync_thresholds(self) -> None:
        if self.engine is None:
            return
        multi = self.get_device_attr()
        for name, (_, result) in self.engine.result_decl.items():
            if result.kind != "scalar":
                continue
            try:
                props = multi.get_attr_by_name(name).get_properties()
            except tango.DevFailed:
                continue
            warning = _range(props.min_warning, props.max_warning)
            error = _range(props.min_alarm, props.max_alarm)
            try:
                self.engine.quality.set_range_limits(name, warning, error)
            except ValueError as exc:
                self.warn_stream(f"alarm properties of {name} ignored: {exc}")
                continue
            if warning is None and error is None:
                self._limits.pop(name, None)
            else:
                self._limits[name] = (warning, error)

    # Scalar parameters are memorized (Tango keeps each write in the __value attribute
    # property); arrays cannot be, so they are written through to a device property of the
    # same name holding JSON. Both are restored here, at startup and at every Init.

    def _persist(self, name: str, value: Any) -> None:
        try:
            self._database().put_device_property(self.get_name(), {name: [json.dumps(value)]})
        except tango.DevFailed as exc:
            self.warn_stream(f"could not persist {name}: {exc.args[0].desc}")

    def _restore_parameters(self) -> None:
        decl = self._require_engine("Init").params.declarations
        arrays = [n for n, p in decl.items() if p.is_array]
        scalars = [n for n, p in decl.items() if not p.is_array]
        db = self._database()
        try:
            stored_arrays = db.get_device_property(self.get_name(), arrays) if arrays else {}
            stored_scalars = db.get_device_attribute_property(self.get_name(), scalars) if scalars else {}
        except tango.DevFailed as exc:
            self.warn_stream(f"could not read persisted parameters: {exc.args[0].desc}")
            return
        for name in arrays:
            raw = list(stored_arrays.get(name, []))
            if raw:
                self._restore(name, raw, lambda r: json.loads(r[0]) if len(r) == 1 else [int(v) for v in r])
        for name in scalars:
            raw = list(stored_scalars.get(name, {}).get("__value", []))
            if raw:
                self._restore(name, raw, partial(_first_memorized, decl[name]))

    # Scan metadata: memorized attributes (Tango keeps __value); restored here like the
    # parameters, so a restart or Init keeps the sample and operator of the next scan.

    def _restore_metadata(self) -> None:
        names = [*COMMON_METADATA, "scanMetadata"]
        try:
            stored = self._database().get_device_attribute_property(self.get_name(), names)
        except tango.DevFailed as exc:
            self.warn_stream(f"could not read persisted scan metadata: {exc.args[0].desc}")
            return
        for name in names:
            raw = list(stored.get(name, {}).get("__value", []))
            if not raw:
                continue
            try:
                self._set_metadata(name, raw[0])
            except ValueError as exc:
                self.warn_stream(f"persisted {name}={raw[0]!r} ignored: {exc}")

    def _set_metadata(self, name: str, text: str) -> None:
        """Apply one metadata attribute write to the engine; ValueError keeps the old value."""
        engine = self._require_engine(f"write {name}")
        md = engine.metadata
        if name == "scanMetadata":
            try:
                free = json.loads(text) if text.strip() else {}
            except ValueError as exc:
                raise ValueError(f"scanMetadata must be a JSON object, e.g. {{\"pmt_serial\": \"SN123\"}}: "
                                 f"invalid JSON ({exc})") from None
            if not isinstance(free, dict):
                raise ValueError(f"scanMetadata must be a JSON object of key: value, got a {type(free).__name__}")
            clash = sorted(set(free) & set(COMMON_METADATA))
            if clash:
                raise ValueError(f"scanMetadata must not hold {', '.join(clash)}: write the attribute of that "
                                 "name instead")
            md = {**{k: md[k] for k in COMMON_METADATA if k in md}, **free}
        else:
            md = dict(md)
            if text.strip():
                md[name] = text.strip()
            else:
                md.pop(name, None)
        engine.set_metadata(md)

    def _metadata_attr(self, name: str) -> str:
        if self.engine is None:
            return ""
        md = self.engine.metadata
        if name == "scanMetadata":
            return json.dumps({k: v for k, v in md.items() if k not in COMMON_METADATA}, sort_keys=True)
        return str(md.get(name, ""))

    def _write_metadata_attr(self, name: str, text: str) -> None:
        self._require_engine(name)
        try:  # applies from the next Start: a running scan's file already records its metadata
            self._set_metadata(name, text)
        except ValueError as exc:
            _throw("DQM_InvalidValue", f"{exc} (the previous value is kept)", f"write {name}")

    sample = attribute(dtype=str, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=False,
                    doc="scan metadata: the sample of the next scans")

    def read_sample(self) -> str:
        return self._metadata_attr("sample")

    def write_sample(self, value: str) -> None:
        self._write_metadata_attr("sample", value)

    operator = attribute(dtype=str, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=False,
                    doc="scan metadata: who runs the next scans")

    def read_operator(self) -> str:
        return self._metadata_attr("operator")

    def write_operator(self, value: str) -> None:
        self._write_metadata_attr("operator", value)

    proposal = attribute(dtype=str, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=False,
                    doc="scan metadata: proposal (beamtime) id")

    def read_proposal(self) -> str:
        return self._metadata_attr("proposal")

    def write_proposal(self, value: str) -> None:
        self._write_metadata_attr("proposal", value)

    scanMetadata = attribute(dtype=str, access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=False,
                             doc="scan metadata: JSON object of further keys, e.g. {\"pmt_serial\": \"SN123\"} "
                                 "(sample, operator, proposal have their own attributes)")

    def read_scanMetadata(self) -> str:
        return self._metadata_attr("scanMetadata")

    def write_scanMetadata(self, value: str) -> None:
        self._write_metadata_attr("scanMetadata", value)

    def _restore(self, name: str, raw: list[str], parse: Callable[[list[str]], Any]) -> None:
        try:
            self._require_engine("Init").set_parameter(name, parse(raw))
        except (ValueError, ParameterError) as exc:
            self.warn_stream(f"persisted {name}={raw} ignored, default kept: {exc}")

    @staticmethod
    def _database() -> tango.Database:
        return tango.Util.instance().get_database()

    # ---- engine listener (publisher thread, an omni-thread) ------------------------

    def on_state(self, state: str, status: str) -> None:
        self.set_state(_STATES[state])
        self.push_change_event("State", _STATES[state])
        self.push_change_event("Status", status)
        if state in ("CLOSE", "FAULT", "ON") and self.engine is not None:
            snap = self.engine.snapshot()  # final values, including rate-limited images
            self._push_results({**snap.results, **self._run_summary_results(snap)}, all_arrays=True)
            self._push_counters(snap)
            self._push_verdict(snap)

    def on_results(self, results: dict[str, Any], frame_id: int) -> None:
        self._push_results(results)
        if self.engine is not None:
            snap = self.engine.snapshot()
            self._push_counters(snap)
            self._push_verdict(snap)

    def on_tick(self) -> None:
        if self.engine is None:
            return
        self._sync_thresholds()
        self._sync_loss_limits()
        self._push_verdict(self.engine.snapshot())

    def _push_verdict(self, snap) -> None:
        verdict = snap.quality.verdict
        current = (int(verdict), snap.verdict_report)
        if current == self._last_verdict:
            return
        changed_verdict = self._last_verdict is None or self._last_verdict[0] != current[0]
        self._last_verdict = current
        now = time.time()
        if changed_verdict:
            self.push_change_event("verdict", int(verdict), now, _VERDICT_QUALITY[verdict])
            self.push_archive_event("verdict", int(verdict), now, _VERDICT_QUALITY[verdict])
        self.push_change_event("verdictReport", snap.verdict_report)

    def _run_summary_results(self, snap: Snapshot) -> dict[str, Any]:
        decl = self._require_engine("push").result_decl
        return {n: snap.summary.get(n) for n, (_, r) in decl.items() if r.run_summary}

    def _push_results(self, results: dict[str, Any], all_arrays: bool = False) -> None:
        now = time.time()
        engine = self.engine
        if engine is None:  # Init removed it while the publisher was delivering
            return
        decl = engine.result_decl
        for name, value in results.items():
            if name not in decl:
                continue
            _, result = decl[name]
            v, quality = self._result_value(name, result, value)
            self.push_change_event(name, v, now, quality)
            if result.kind == "scalar" and result.archive:
                self.push_archive_event(name, v, now, quality)

    def _push_counters(self, snap) -> None:
        c = snap.counters
        for name, value in zip(_COUNTERS, (c.total, c.completed, c.dropped, c.bad, c.duplicate, c.out_of_order)):
            self.push_change_event(name, value)

    # ---- state and status ---------------------------------------------------------------

    def dev_state(self) -> DevState:
        if self.engine is not None:
            self.set_state(_STATES[self.engine.state.value])
        return super().dev_state()  # standard Tango semantics (ALARM from attribute alarms)

    def dev_status(self) -> str:
        if self.engine is None:
            return f"FAULT: {self._config_error}"
        status = self.engine.status()
        note = self._detectors.note  # why the last Live was refused, until a Start or Live succeeds
        status = f"{status}. {note}" if note else status
        status = f"{status}. {self._http_error}" if getattr(self, "_http_error", "") else status
        if self.dev_state() == DevState.ALARM:
            # Tango turns ON into ALARM when a result is outside its alarm range: Status says so first,
            # and Tango's own text below names the attributes
            status = f"ALARM: a result attribute is outside its alarm range; {status}"
        self.set_status(status)
        return super().dev_status()

    # ---- commands ---------------------------------------------------------------------

    @command(doc_out="scan id")
    def Start(self) -> str:
        """Start a scan: RUNNING until the series ends, the expected events are done, or Stop."""
        return self._start(live=False)

    @command(doc_out="run id")
    def Live(self) -> str:
        """Start a free-running acquisition with no end of series; Stop ends it."""
        return self._start(live=True)

    def _start(self, live: bool) -> str:
        origin = "Live" if live else "Start"
        engine = self._require_engine(origin)
        selected = self._detectors.selected(self._live_flags) if live else {}

        def start_engine() -> str:
            try:
                return engine.start(live=live)
            except EngineError as exc:
                _throw("DQM_CommandNotAllowed", str(exc), origin)

        try:
            scan_id = self._detectors.start(selected, origin, start_engine, engine.stop)
        except DetectorError as exc:
            _throw(exc.reason, exc.desc, origin)
        self.set_state(_STATES[engine.state.value])
        return scan_id

    # ---- detectors (Live mode) ----------------------------------------------------------

    def _restore_live_flags(self) -> dict[str, bool]:
        flags = {stream: True for stream in self._detectors.names}
        names = [live_attribute(s) for s in self._detectors.names]
        if names:
            try:
                stored = self._database().get_device_attribute_property(self.get_name(), names)
            except tango.DevFailed:
                stored = {}
            for stream in self._detectors.names:
                raw = list(stored.get(live_attribute(stream), {}).get("__value", []))
                if raw:
                    flags[stream] = raw[0].strip().lower() in ("1", "true")
        return flags

    def _read_live_flag(self, attr: tango.Attribute) -> None:
        attr.set_value(self._live_flags[live_stream(attr.get_name())])

    def _write_live_flag(self, attr: tango.WAttribute) -> None:
        self._live_flags[live_stream(attr.get_name())] = bool(attr.get_write_value())

    @command
    def Stop(self) -> None:
        """Stop the scan (and the detectors a Live started): the engine drains queued frames,
        then goes to CLOSE."""
        self._require_engine("Stop").stop()
        self._detectors.stop()

    @command
    def Reset(self) -> None:
        """CLOSE or FAULT -> ON, clearing results and counters."""
        engine = self._require_engine("Reset")
        try:
            engine.reset()
        except EngineError as exc:
            _throw("DQM_CommandNotAllowed", str(exc), "Reset")
        self.set_state(_STATES[engine.state.value])

    @command(dtype_in=str, doc_in="why the scan is bad", doc_out="new path of the results file")
    def Flag(self, reason: str) -> str:
        """Mark the finished scan bad: recorded in its file, moved to OutputDirectory/flagged/."""
        return self._mark("flagged", reason)

    @command(doc_out="new path of the results file")
    def Archive(self) -> str:
        """Mark the finished scan good: recorded in its file, moved to OutputDirectory/archive/."""
        return self._mark("archived", "")

    def _mark(self, mark: str, reason: str) -> str:
        origin = "Flag" if mark == "flagged" else "Archive"
        engine = self._require_engine(origin)
        if mark == "flagged" and not reason.strip():
            _throw("DQM_InvalidValue", "Flag needs a reason (why is the scan bad?)", origin)
        try:
            path = engine.mark(mark, reason)
        except EngineError as exc:
            _throw("DQM_CommandNotAllowed", str(exc), origin)
        self.info_stream(f"{origin}: {path} {reason}")
        return path

    @command(doc_out="reference version")
    def TakeReference(self) -> int:
        """Store the accumulated spectra and maps of the finished scan as the new reference version."""
        engine = self._require_engine("TakeReference")
        try:
            info = engine.take_reference()
        except NotConfiguredError as exc:
            _throw("DQM_NotConfigured", str(exc), "TakeReference")
        except (EngineError, ReferenceStoreError) as exc:
            _throw("DQM_CommandNotAllowed", str(exc), "TakeReference")
        self.info_stream(f"reference version {info.version} taken from {info.scan_id}")
        return info.version

    @command(doc_out="background version")
    def TakeBackground(self) -> int:
        """Store the mean image of the finished (dark) scan as the next background version and
        use it as the dark image of every analysis from the next frame on."""
        engine = self._require_engine("TakeBackground")
        try:
            info = engine.take_background()
        except NotConfiguredError as exc:
            _throw("DQM_NotConfigured", str(exc), "TakeBackground")
        except (EngineError, ReferenceStoreError, ParameterError) as exc:
            _throw("DQM_CommandNotAllowed", str(exc), "TakeBackground")
        # as if written by a client: the memorized value survives a restart
        self._database().put_device_attribute_property(
            self.get_name(), {"dark": {"__value": [engine.params.file_paths["dark"]]}})
        self.info_stream(f"background version {info.version} taken from {info.scan_id}")
        return info.version

    # ---- scan points (Sardana, bluesky: docs/sardana.md) ------------------------------------
    # EndPoint returns at once: waiting in a command would hold the device lock for the whole
    # point (every other client's reads, the event pushes). Clients poll pointReady instead.

    @command(doc_out="number of the point opened")
    def StartPoint(self) -> int:
        """Open the next scan point: the frames arriving from now on (the first pointFrames of them,
        or all until EndPoint) make it. Allowed while RUNNING, one point at a time."""
        try:
            return self._require_engine("StartPoint").start_point()
        except EngineError as exc:
            _throw("DQM_CommandNotAllowed", str(exc), "StartPoint")

    @command(dtype_in="DevDouble", doc_in="seconds to wait for the point's frames before latching without them",
             doc_out="number of the point ended")
    def EndPoint(self, timeout: float) -> int:
        """End the open point and return at once: pointReady turns True when its frames are analysed
        (or after ``timeout`` seconds with the frames it has, counted in pointTimeouts)."""
        try:
            return self._require_engine("EndPoint").end_point(timeout)
        except EngineError as exc:
            _throw("DQM_CommandNotAllowed" if "timeout" not in str(exc) else "DQM_InvalidValue", str(exc), "EndPoint")

    @attribute(dtype="DevLong64", label="Point number", format="%d", unit="points",
               doc="number of the last latched scan point of this scan (0: none yet)")
    def pointNumber(self) -> int:
        return self.engine.point_number if self.engine is not None else 0

    @attribute(dtype=bool, label="Point ready",
               doc="the last StartPoint's point is latched: point_<result> hold its values")
    def pointReady(self) -> bool:
        return self.engine.point_ready if self.engine is not None else False

    @attribute(dtype="DevLong64", label="Point timeouts", format="%d", unit="points",
               doc="points of this scan latched by EndPoint's timeout before all their frames were analysed")
    def pointTimeouts(self) -> int:
        return self.engine.point_timeouts if self.engine is not None else 0

    pointFrames = attribute(dtype="DevLong64", access=AttrWriteType.READ_WRITE, memorized=True, hw_memorized=False,
                            label="Frames per point", format="%d", unit="frames", min_value=0, max_value=2**31 - 1,
                            doc="frames that make a point: the first N arriving after StartPoint (0: all until "
                                "EndPoint)")

    def read_pointFrames(self) -> int:
        return self.engine.point_frames if self.engine is not None else 0

    def write_pointFrames(self, value: int) -> None:
        try:
            self._require_engine("write pointFrames").point_frames = value
        except EngineError as exc:
            _throw("DQM_InvalidValue", f"{exc} (the previous value is kept)", "write pointFrames")

    @attribute(dtype=str, doc="JSON: the last latched point (number, frames, first/last frame id, ended, values)")
    def pointInfo(self) -> str:
        record = self.engine.last_point if self.engine is not None else None
        return json.dumps(record.as_dict() if record is not None else {})

    def _read_point_result(self, attr: tango.Attribute) -> None:
        name = attr.get_name()
        engine = self._require_engine(f"read {name}")
        result = engine.point_results[name[len(POINT_PREFIX):]]
        value, quality = point_value(result, engine.last_point)
        attr.set_value_date_quality(value, time.time(), quality)

    def _restore_point_frames(self) -> None:
        try:
            stored = self._database().get_device_attribute_property(self.get_name(), ["pointFrames"])
            raw = list(stored.get("pointFrames", {}).get("__value", []))
            if raw:
                self._require_engine("Init").point_frames = int(raw[0])
        except (tango.DevFailed, ValueError, EngineError) as exc:
            self.warn_stream(f"persisted pointFrames ignored: {exc}")

    def _require_engine(self, origin: str) -> Engine:
        if self.engine is None:
            _throw("DQM_NotConfigured", self._config_error, origin)
        return self.engine  # type: ignore[return-value]

    # ---- static attributes -------------------------------------------------------------

    def _counters(self):
        if self.engine is None:
            return None
        return self.engine.snapshot().counters

    @attribute(dtype="DevLong64", label="Total events", unit="events", format="%d",
               doc="events expected in the scan when known, else events seen")
    def totalEvents(self) -> int:
        c = self._counters()
        return c.total if c else 0

    @attribute(dtype="DevLong64", label="Completed events", unit="events", format="%d",
               doc="events fully analysed")
    def completedEvents(self) -> int:
        c = self._counters()
        return c.completed if c else 0

    @attribute(dtype="DevLong64", label="Dropped events", unit="events", format="%d",
               doc="events lost, each once: queue overflow in live mode, frame-id gaps, "
                                        "frames announced but never sent, events whose primary frame never arrived")
    def droppedEvents(self) -> int:
        c = self._counters()
        return c.dropped if c else 0

    @attribute(dtype="DevLong64", label="Bad events", unit="events", format="%d",
               doc="malformed messages, counted and skipped")
    def badEvents(self) -> int:
        c = self._counters()
        return c.bad if c else 0

    @attribute(dtype="DevLong64", label="Partial events", unit="events", format="%d",
               doc="events analysed with a partner stream missing (several Sources)")
    def partialEvents(self) -> int:
        c = self._counters()
        return c.partial if c else 0

    @attribute(dtype="DevLong64", label="Duplicate frames", unit="frames", format="%d",
               doc="frames whose id their stream had already delivered: skipped, not dropped")
    def duplicateEvents(self) -> int:
        c = self._counters()
        return c.duplicate if c else 0

    @attribute(dtype="DevLong64", label="Out-of-order frames", unit="frames", format="%d",
               doc="frames that came after a higher id of their stream: analysed, not dropped")
    def outOfOrderEvents(self) -> int:
        c = self._counters()
        return c.out_of_order if c else 0

    @attribute(dtype=float, unit="Hz", label="Event rate", format="%.1f",
               doc="analysed events per second, by their arrival times over the last 2 s")
    def eventRate(self) -> float:
        c = self._counters()
        return c.event_rate if c else 0.0

    @attribute(dtype=float, unit="ms", label="Latency", format="%.2f",
               doc="receive-to-result time of the last event")
    def latency(self) -> float:
        c = self._counters()
        return c.latency_ms if c else 0.0

    @attribute(dtype=str, doc="id of the current or last scan")
    def scanId(self) -> str:
        return self.engine.snapshot().scan_id if self.engine else ""

    @attribute(dtype=str, doc="JSON: package, dependency, plugin and git versions")
    def deployedVersions(self) -> str:
        return deployed_versions_json(self.engine.analyses if self.engine else [],
                                      {"pytango": tango.__version__})

    @attribute(dtype=tango.CmdArgType.DevEnum, enum_labels=[v.name for v in Verdict],
               doc="overall quality verdict, worst check wins; quality WARNING/ALARM to match")
    def verdict(self):
        if self.engine is None:
            return int(Verdict.INSUFFICIENT), time.time(), AttrQuality.ATTR_INVALID
        v = self.engine.snapshot().quality.verdict
        return int(v), time.time(), _VERDICT_QUALITY[v]

    @attribute(dtype=str, doc="which checks fail, their values and limits, on which frames; coverage")
    def verdictReport(self) -> str:
        return self.engine.snapshot().verdict_report if self.engine else self._config_error

    @attribute(dtype=float, unit="", label="Verdict coverage", format="%.3f", min_value=0, max_value=1,
               doc="fraction of the run's frames (incl. dropped and bad) on which the verdict was evaluated")
    def verdictCoverage(self) -> float:
        return self.engine.snapshot().coverage if self.engine else 0.0

    @attribute(dtype=float, unit="", min_value=0, max_value=1,
               doc="fraction of the run's frames lost (dropped, never arrived) or bad; max_warning and "
                   "max_alarm are the loss check's warning and error fractions (editable, as in QualityChecks)")
    def lostFraction(self) -> float:
        if self.engine is None:
            return 0.0
        loss = [r for r in self.engine.snapshot().quality.checks if r.check_type == "loss"]
        return float(loss[0].value or 0.0) if loss else 0.0

    def _loss_attr_limits(self) -> tuple[tango.Attribute, tuple[float | None, float | None]]:
        attr = self.get_device_attr().get_attr_by_name("lostFraction")
        props = attr.get_properties()
        return attr, _range(props.max_warning, props.max_alarm) or (None, None)  # (warning, error)

    def _init_loss_limits(self) -> None:
        """At Init: a loss check in QualityChecks sets the lostFraction alarm properties; else the stored
        properties (edited in Jive) set the check; else the defaults set the properties."""
        engine = self.engine
        limits = engine.quality.loss_limits() if engine else None
        if engine is None or limits is None:
            return
        configured = any(isinstance(c, LossCheck) for c in checks_from_config(list(self.QualityChecks)))
        attr, (warning, error) = self._loss_attr_limits()
        if not configured and warning is not None and error is not None:
            try:
                engine.quality.set_loss_limits(warning, error)
                return
            except ValueError as exc:
                self.warn_stream(f"alarm properties of lostFraction ignored: {exc}")
        props = attr.get_properties()
        props.max_warning, props.max_alarm = repr(limits[0]), repr(limits[1])
        attr.set_properties(props)

    def _sync_loss_limits(self) -> None:
        """lostFraction's alarm properties edited live change the loss check within a tick."""
        if self.engine is None or self.engine.quality.loss_limits() is None:
            return
        _, (warning, error) = self._loss_attr_limits()
        if warning is None or error is None:
            return
        try:
            self.engine.quality.set_loss_limits(warning, error)
        except ValueError as exc:
            self.warn_stream(f"alarm properties of lostFraction ignored: {exc}")

    @attribute(dtype=str, doc="results file (HDF5) of the current or last scan")
    def outputFile(self) -> str:
        return self.engine.output_file if self.engine else ""

    @attribute(dtype=str, doc="URL of the read-only HTTP access: h5pyd.File('/', endpoint=url), "
                              "run pages at url + 'runs/' ('' : off, see HttpPort)")
    def httpUrl(self) -> str:
        http = getattr(self, "_http", None)
        return http.url if http is not None else ""

    @attribute(dtype=int, doc="version of the reference in use (0: none)")
    def referenceVersion(self) -> int:
        ref = self.engine.reference if self.engine else None
        return ref.version if ref else 0

    @attribute(dtype=str, doc="JSON: run summary of the last finished scan")
    def runSummary(self) -> str:
        if self.engine is None:
            return "{}"
        return json.dumps(self.engine.snapshot().summary, allow_nan=True, default=_json_small)

    @attribute(dtype=str, doc="JSON: parameter changes and the frame id where each applied")
    def parameterLog(self) -> str:
        if self.engine is None:
            return "[]"
        return json.dumps([vars(c) for c in self.engine.params.changes])


class _ConfigError(Exception):
    """A property value the device cannot work with; the message says which and what to fix."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, tango.DevFailed):
        return " ".join(exc.args[0].desc.split())
    return str(exc) if isinstance(exc, _ConfigError) else f"{type(exc).__name__}: {exc}"


def _first_memorized(param: Parameter, raw: list[str]) -> Any:
    """A scalar parameter from its memorized ``__value`` strings."""
    return memorized_value(param, raw[0])


def _json_small(value: Any) -> Any:
    """JSON for numpy values in the run summary; large arrays (maps) are in the results file."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 4096 else f"<{value.dtype} array {value.shape}: see outputFile>"
    return str(value)


def _range(lo: str, hi: str) -> tuple[float | None, float | None] | None:
    """A (min, max) range from Tango attribute property strings ("Not specified" is open)."""
    def num(text: str) -> float | None:
        try:
            return float(text)
        except (TypeError, ValueError):
            return None
    low, high = num(lo), num(hi)
    return None if low is None and high is None else (low, high)


def main(args: list[str] | None = None) -> None:
    """Server entry point: ``DataQualityMonitor <instance>``."""
    run((DataQualityMonitor,), args=args)


if __name__ == "__main__":
    main()
