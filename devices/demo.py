"""``make demo``: a Tango control system on this machine, a monitored scan and a live period.

Starts the embedded sqlite Tango database, loads ``config/demo.json`` with dsconfig,
starts the DetectorSimulator and DataQualityMonitor servers as Starter would, runs a
scan of 300 simulated 1024x1024 frames through ``DeviceProxy`` with a progress line,
prints the verdict and results, runs a live period in which the beam moves and the
centroid follows, lists the files written and stops everything. ``--keep`` leaves the
system up for Jive or itango.

One demo per folder: ``<folder>/demo.lock`` holds an flock (released by the OS when the
process dies, so a crash leaves no stale lock) and says who holds it; ports the system needs
are checked before anything starts. SIGTERM and SIGHUP stop everything as Ctrl-C does.
Relative directories in the config (``OutputDirectory`` ...) are resolved against the demo
folder before the config goes into the database: servers never see a relative path.
"""
from __future__ import annotations

import argparse
import copy
import io
import errno
import fcntl
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import tango

from .controlsystem import ControlSystem, free_port

ROOT = Path(__file__).resolve().parent.parent
MONITOR, SIMULATOR = "dqm/monitor/demo", "dqm/sim/demo"
RESULTS = ("signal_sum", "signal_mean", "signal_std", "background_mean", "net_signal", "frame_max",
           "saturated_pixels", "profile_centroid_x", "profile_centroid_y", "profile_fwhm_x", "profile_fwhm_y")
VERDICTS = ("OK", "INSUFFICIENT", "WARNING", "ERROR", "STALE")
LOCK_NAME = "demo.lock"
# device properties holding directories: relative values are made absolute before loading
DIRECTORY_PROPERTIES = ("OutputDirectory", "ReferenceDirectory", "ParameterFileDirectories")


def find_config(name: str = "demo.json") -> Path:
    for candidate in (Path.cwd() / "config" / name, ROOT / "config" / name):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"config/{name} not found: run the demo from the project folder (make demo)")


# ---- relative directories in dsconfig files ------------------------------------------------

def _property_blocks(config: dict) -> list[tuple[str, dict]]:
    """(owner, properties) of every device and class in a dsconfig document."""
    blocks = []
    for server, instances in (config.get("servers") or {}).items():
        for instance, classes in (instances or {}).items():
            for devices in (classes or {}).values():
                for device, body in (devices or {}).items():
                    if isinstance(body, dict) and isinstance(body.get("properties"), dict):
                        blocks.append((f"{device} ({server}/{instance})", body["properties"]))
    for cls, body in (config.get("classes") or {}).items():
        if isinstance(body, dict) and isinstance(body.get("properties"), dict):
            blocks.append((f"class {cls}", body["properties"]))
    return blocks


def resolve_directories(config: dict, base: Path) -> tuple[dict, list[str]]:
    """A copy of ``config`` whose relative directory properties are absolute paths below ``base``.

    Returns the copy and one line per changed value. Empty values (meaning "none") stay empty.
    """
    base = Path(os.path.abspath(base))
    resolved = copy.deepcopy(config)
    changes = []
    for owner, props in _property_blocks(resolved):
        for name in DIRECTORY_PROPERTIES:
            values = props.get(name)
            if not isinstance(values, list):
                continue
            for i, value in enumerate(values):
                if isinstance(value, str) and value.strip() and not os.path.isabs(os.path.expanduser(value)):
                    # normpath, not resolve(): keep symlinks the operator chose
                    props[name][i] = os.path.normpath(base / value)
                    changes.append(f"{owner} {name}: {value} -> {props[name][i]}")
                elif isinstance(value, str) and value.startswith("~"):
                    props[name][i] = os.path.expanduser(value)
                    changes.append(f"{owner} {name}: {value} -> {props[name][i]}")
    return resolved, changes


def resolved_config_file(config: Path, base: Path, folder: Path) -> tuple[Path, list[str]]:
    """Write ``config`` with its directories resolved against ``base`` into ``folder``; the file loaded."""
    try:
        document = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read the dsconfig file {config}: {exc}") from None
    resolved, changes = resolve_directories(document, base)
    out = folder / "config-loaded.json"  # kept: what the database was given
    out.write_text(json.dumps(resolved, indent=2) + "\n")
    return out, changes


# ---- one demo at a time ----------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited but unreaped process is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class DemoLock:
    """flock on ``<folder>/demo.lock``; the file says which demo holds it (pid, TANGO_HOST, processes)."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_NAME
        self.info: dict[str, Any] = {}
        self._fd: int | None = None

    def read(self) -> dict[str, Any]:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def acquire(self) -> None:
        """Take the lock or exit with a message naming the demo that holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise SystemExit(f"cannot use {self.path.parent} as the demo folder: {exc.strerror} "
                             "(choose another with --folder)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise SystemExit(describe_running(self.read(), self.path)) from None
        # The lock is free, but a demo killed with SIGKILL leaves its servers running.
        # A pid counts only while its command line is unchanged (pids are reused).
        leftovers = {int(pid): cmd for pid, cmd in (self.read().get("processes") or {}).items()
                     if str(pid).isdigit() and cmd and _alive(int(pid)) and _cmdline(int(pid)) == cmd}
        if leftovers:
            os.close(fd)
            listing = "; ".join(f"pid {pid}: {cmd[:100]}" for pid, cmd in leftovers.items())
            raise SystemExit(f"a previous demo in {self.path.parent} ended without stopping its processes "
                             f"({listing}). Stop them with: kill {' '.join(map(str, leftovers))}")
        self._fd = fd
        self.update(pid=os.getpid(), folder=str(self.path.parent), started=time.strftime("%Y-%m-%d %H:%M:%S"),
                    processes={})

    def update(self, **info: Any) -> None:
        if self._fd is None:
            return
        self.info.update(info)
        data = (json.dumps(self.info, indent=2) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is not None:
            self.update(processes={}, stopped=time.strftime("%Y-%m-%d %H:%M:%S"))
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def describe_running(info: dict[str, Any], lock: Path, lead: str = "another demo is running") -> str:
    pid = info.get("pid", "?")
    host = info.get("tango_host")
    where = f"TANGO_HOST={host}" if host else "still starting (TANGO_HOST not known yet)"
    return (f"{lead} in {info.get('folder', lock.parent)}: pid {pid}, {where}"
            f"{', since ' + info['started'] if info.get('started') else ''}.\n"
            f"Use it (export TANGO_HOST={host or '...'}), or stop it first: Ctrl-C in its terminal or "
            f"`kill {pid}` (it stops its servers and database). A demo in another folder: --folder DIR.")


def _listener_pid(port: int) -> int | None:
    """Pid of the process listening on TCP ``port`` (this user's processes only), from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not count
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def describe_port_user(port: int, what: str) -> str:
    pid = _listener_pid(port)
    message = f"port {port} on 127.0.0.1 ({what}) is already in use"
    if pid is None:
        return f"{message}: stop the program using it (`ss -ltnp 'sport = :{port}'` shows it) or change the port"
    message += f" by pid {pid} ({_cmdline(pid)[:120]})"
    try:  # the demo's servers run in the demo folder: name the demo that owns them
        lock = Path(os.readlink(f"/proc/{pid}/cwd")) / LOCK_NAME
    except OSError:
        lock = None
    if lock is not None and lock.is_file():
        return f"{message}, a server of {describe_running(DemoLock(lock.parent).read(), lock, 'the demo running')}"
    return f"{message}: stop it (kill {pid}) or change the port"


def config_ports(config: dict) -> list[tuple[int, str]]:
    """Fixed TCP ports the servers of a dsconfig document bind (their ``Port`` property)."""
    ports = []
    for owner, props in _property_blocks(config):
        for value in props.get("Port") or []:
            if str(value).strip().isdigit() and int(value) > 0:
                ports.append((int(value), f"Port of {owner}"))
        for value in props.get("Endpoint") or []:  # a reducer's receive socket, tcp://host:port
            port = str(value).rpartition(":")[2]
            if port.isdigit() and int(port) > 0:
                ports.append((int(port), f"Endpoint of {owner}"))
    return ports


def check_ports(config: Path, db_port: int) -> None:
    """Exit with a clear message when a port this demo needs is taken (a second copy, or another program)."""
    try:
        needed = [(db_port, "the demo's Tango database"), *config_ports(json.loads(config.read_text()))]
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read the dsconfig file {config}: {exc}") from None
    for port, what in needed:
        if port_taken(port):
            raise SystemExit(describe_port_user(port, what))


# ---- signals: SIGTERM and SIGHUP stop everything as Ctrl-C does -----------------------------

class Interrupted(Exception):
    """Raised in the main thread by the first SIGINT/SIGTERM/SIGHUP."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Signals:
    """Turns the first stop signal into ``Interrupted``; later ones (during the cleanup) are ignored."""

    HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.stopping = False
        self.received: int | None = None

    def install(self) -> None:
        for signum in self.HANDLED:
            signal.signal(signum, self._handler)

    def begin_cleanup(self) -> None:
        self.stopping = True  # a signal from now on must not interrupt the cleanup

    def _handler(self, signum: int, frame: Any) -> None:
        if self.stopping:
            return
        self.stopping, self.received = True, signum
        raise Interrupted(signum)


def say(*args: Any, **kw: Any) -> None:
    """print that survives a closed terminal (SIGHUP): the cleanup must go on."""
    try:
        print(*args, **kw, flush=True)
    except OSError:
        pass


def child_pids() -> list[int]:
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return pids


def stop_leftover_children(timeout: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL, any child process still running (one started just as a signal came)."""
    left = child_pids()
    for pid in left:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for pid in left:
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.05)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    return left


def value(dev: tango.DeviceProxy, name: str) -> str:
    attr = dev.read_attribute(name)
    if attr.quality == tango.AttrQuality.ATTR_INVALID or attr.value is None:
        return "-"
    return f"{attr.value:,.1f}" if isinstance(attr.value, float) else str(attr.value)


def progress(dev: tango.DeviceProxy, extra: str = "signal_sum") -> str:
    # completed before total: each is read from its own snapshot, and the total only grows,
    # so the line never shows more events done than there are (it once printed 171/170)
    done, total, rate, dropped, bad, verdict = (a.value for a in dev.read_attributes(
        ["completedEvents", "totalEvents", "eventRate", "droppedEvents", "badEvents", "verdict"]))
    width = 30
    filled = min(width, int(width * done / total)) if total else 0
    bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}" if total else f"{done}"
    return (f"\r  {bar} events, {rate:6.1f} Hz, dropped {dropped}, bad {bad}, "
            f"{extra} {value(dev, extra)}, verdict {VERDICTS[verdict]}   ")


def wait_running_ends(dev: tango.DeviceProxy, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while dev.state() == tango.DevState.RUNNING:
        print(progress(dev), end="", flush=True)
        if time.monotonic() > deadline:
            dev.Stop()
            raise SystemExit(f"\nscan did not finish in {timeout:.0f} s: {dev.status()}")
        time.sleep(0.25)
    print(progress(dev))


def run_scan(mon: tango.DeviceProxy, sim: tango.DeviceProxy) -> None:
    print("Scan: monitor Start, then the detector sends a series of 300 frames")
    scan_id = mon.Start()
    sim.Start()
    print(f"  {scan_id}: monitor {mon.state()}, detector {sim.state()}")
    wait_running_ends(mon, 120)
    print(f"  Status: {mon.status()}")


def show_results(mon: tango.DeviceProxy) -> None:
    print("\nResults of the last frame:")
    for name in RESULTS:
        attr = mon.read_attribute(name)
        unit = mon.get_attribute_config(name).unit
        flag = "" if attr.quality == tango.AttrQuality.ATTR_VALID else f"  [{attr.quality}]"
        print(f"  {name:20s} {value(mon, name):>16} {unit}{flag}")
    print(f"  {'pixels hot/dead':20s} {value(mon, 'pixels_hot'):>16} / {value(mon, 'pixels_dead')}")
    verdict = mon.read_attribute("verdict")
    print(f"\nVerdict: {VERDICTS[verdict.value]} (attribute quality {verdict.quality}), "
          f"coverage {mon.verdictCoverage:.0%}")
    for line in mon.verdictReport.splitlines()[1:]:
        print(f"  {line}")


def live_period(mon: tango.DeviceProxy, sim: tango.DeviceProxy, seconds: float = 4.0) -> None:
    print(f"\nLive: monitor Live starts the detector too (live_det = {mon.live_det}); the beam moves")
    sim.rate = 50.0
    mon.Live()
    t0 = time.monotonic()
    moved = False
    while time.monotonic() - t0 < seconds:
        if not moved and time.monotonic() - t0 > seconds / 2:
            sim.spot_x = 600.0
            moved = True
            print("\n  detector: spot_x 512 -> 600")
        print(progress(mon, "profile_centroid_x"), end="", flush=True)
        time.sleep(0.25)
    mon.Stop()
    deadline = time.monotonic() + 10
    while mon.state() == tango.DevState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.1)
    print(progress(mon, "profile_centroid_x"))
    print(f"  Stop: monitor {mon.state()}, detector {sim.state()}; centroid x now "
          f"{mon.profile_centroid_x:.1f} (spot at 600)")
    sim.spot_x = 512.0
    sim.rate = 150.0


def run_demo(cs: ControlSystem, args: argparse.Namespace, config: Path, lock: DemoLock) -> None:
    folder = cs.folder
    cs.start_database()
    lock.update(tango_host=cs.tango_host, processes=children_cmdlines())
    print(f"  Tango database (pytango-db, sqlite) on TANGO_HOST={cs.tango_host}")
    loaded, changes = resolved_config_file(config, folder, folder)
    cs.apply_config(loaded)
    print(f"  loaded {config} with dsconfig (json2tango); as loaded: {loaded}")
    for change in changes:
        print(f"    relative directory resolved against {folder}: {change}")
    cs.start_server("DetectorSimulator", "demo", [SIMULATOR])
    lock.update(processes=children_cmdlines())
    cs.start_server("DataQualityMonitor", "demo", [MONITOR])
    lock.update(processes=children_cmdlines())
    mon, sim = cs.proxy(MONITOR), cs.proxy(SIMULATOR)
    print(f"  started DetectorSimulator demo ({SIMULATOR}: {sim.state()}, {sim.endpoint}) and "
          f"DataQualityMonitor demo ({MONITOR}: {mon.state()})")
    print(f"  Sources {list(mon.get_property('Sources')['Sources'])}, "
          f"Analyses {list(mon.get_property('Analyses')['Analyses'])}, "
          f"OutputDirectory {mon.get_property('OutputDirectory')['OutputDirectory'][0]}")
    print(f"  roi_signal={mon.roi_signal.tolist()} roi_background={mon.roi_background.tolist()}\n")
    if not args.no_scan:
        run_scan(mon, sim)
        show_results(mon)
        results_file = Path(mon.Archive())
        print(f"\nArchive: the operator marks the scan good; its files move to {results_file.parent}")
        live_period(mon, sim)
        mon.Reset()
        out = Path(mon.get_property("OutputDirectory")["OutputDirectory"][0])
        deadline = time.monotonic() + 60  # reports are written in the background
        while not (results_file.with_suffix(".html").exists() and (out / "index.html").exists()) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        print("\nFiles written:")
        print(f"  results (HDF5, NeXus): {results_file}")
        print(f"  run report:            {results_file.with_suffix('.html')}")
        print(f"  run list:              {out / 'index.html'}")
        print(f"  server logs:           {folder / 'DataQualityMonitor_demo.log'}, "
              f"{folder / 'DetectorSimulator_demo.log'}")
        summary = {"scan_file": str(results_file), "verdict": VERDICTS[mon.verdict],
                   "versions": json.loads(mon.deployedVersions)}
        (folder / "last_demo.json").write_text(json.dumps(summary, indent=2))
    if args.keep:
        try:  # from the first word of this message on, a stop signal is the normal end
            print(f"\nThe system stays up. In another shell:\n  export TANGO_HOST={cs.tango_host}\n"
                  f"  .venv/bin/itango        # then: mon = Device('{MONITOR}')  (pip install itango)\n"
                  f"  jive                    # if Jive is installed\n"
                  f"Ctrl-C, SIGTERM or SIGHUP (kill {os.getpid()}) stops everything.")
            while True:
                time.sleep(1)
        except Interrupted as exc:
            say(f"\n{exc} received")


# ---- scale-out: make demo DEMO_ARGS="--workers 3" (config/scaleout.json) ---------------------

def scaleout_config(config: Path, workers: int, folder: Path) -> tuple[Path, list[tuple[str, str, str]], str, str]:
    """The scale-out dsconfig with its first ``workers`` workers; (file, [(executable, instance, device)]
    in start order: simulator, reducer, workers), the reducer and simulator device names."""
    doc = json.loads(config.read_text())
    servers = doc.get("servers", {})
    reducers = [(inst, dev, props) for inst, classes in servers.get("DataQualityReducer", {}).items()
                for dev, props in classes.get("DataQualityReducer", {}).items()]
    sims = [(inst, dev) for inst, classes in servers.get("DetectorSimulator", {}).items()
            for dev in classes.get("DetectorSimulator", {})]
    if len(reducers) != 1 or len(sims) != 1:
        raise SystemExit(f"{config}: a scale-out demo needs one DataQualityReducer and one DetectorSimulator")
    r_inst, reducer, r_block = reducers[0]
    names = list(r_block["properties"]["Workers"])
    if not 1 <= workers <= len(names):
        raise SystemExit(f"--workers must be from 1 to {len(names)} (the Workers of {reducer} in {config})")
    keep = {n.lower() for n in names[:workers]}
    r_block["properties"]["Workers"] = names[:workers]
    order = [("DetectorSimulator", sims[0][0], sims[0][1]), ("DataQualityReducer", r_inst, reducer)]
    for inst in list(servers.get("DataQualityMonitor", {})):
        devices = servers["DataQualityMonitor"][inst].get("DataQualityMonitor", {})
        if any(d.lower() in keep for d in devices):
            order += [("DataQualityMonitor", inst, d) for d in devices]
        else:
            del servers["DataQualityMonitor"][inst]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"scaleout_{workers}.json"
    path.write_text(json.dumps(doc, indent=2))
    return path, order, reducer, sims[0][1]


def run_scaleout_demo(cs: ControlSystem, args: argparse.Namespace, config: Path, lock: DemoLock) -> None:
    folder = cs.folder
    path, order, reducer, simulator = scaleout_config(config, args.workers, folder)
    cs.start_database()
    lock.update(tango_host=cs.tango_host, processes=children_cmdlines())
    print(f"  Tango database (pytango-db, sqlite) on TANGO_HOST={cs.tango_host}")
    cs.apply_config(path)
    print(f"  loaded {config} with dsconfig ({args.workers} workers: {path})")
    for executable, instance, device in order:  # the reducer binds before its workers connect
        cs.start_server(executable, instance, [device])
        lock.update(processes=children_cmdlines())
        print(f"  started {executable} {instance} ({device})")
    red, sim = cs.proxy(reducer), cs.proxy(simulator)
    print(f"  {reducer}: {red.status()}\n")
    if args.no_scan:
        return
    print(f"Scan: reducer Start (starts its {args.workers} workers), then the detector sends "
          f"{sim.nframes} frames on one PUSH socket; ZeroMQ deals them to the workers")
    scan_id = red.Start()
    sim.Start()
    print(f"  {scan_id}: reducer {red.state()}, detector {sim.state()}")
    wait_running_ends(red, 300)
    print(f"  Status: {red.status()}")
    for w in json.loads(red.workerStates):
        print(f"  worker {w['name']}: {w['frames']} frames, {w['state']} {w['note']}")
    show_results(red)
    results_file = Path(red.Archive())
    red.Reset()
    print(f"\nArchive: the scan and its workers' scans are marked good; reducer results {results_file}")
    (folder / "last_demo.json").write_text(json.dumps({"scan_file": str(results_file), "workers": args.workers,
                                                        "verdict": VERDICTS[red.verdict]}, indent=2))


def children_cmdlines() -> dict[str, str]:
    return {str(pid): _cmdline(pid) for pid in child_pids()}


def resolve_config_main(file: Path, base: Path | None) -> int:
    """``--resolve-config``: print the dsconfig file with absolute directories (used by deploy/tango-db.sh)."""
    try:
        document = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read the dsconfig file {file}: {exc}", file=sys.stderr)
        return 1
    resolved, changes = resolve_directories(document, base or file.resolve().parent)
    print(json.dumps(resolved, indent=2))
    for change in changes:
        print(f"resolved: {change}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path(".demo"),
                        help="database, logs and results (.demo); relative directories of the config resolve here")
    parser.add_argument("--keep", action="store_true", help="keep the control system up until Ctrl-C or SIGTERM")
    parser.add_argument("--no-scan", action="store_true", help="start the control system only (no scan, no live)")
    parser.add_argument("--config", type=Path, help="dsconfig file (default config/demo.json)")
    parser.add_argument("--port", type=int, default=0, help="port of the Tango database (default: a free one)")
    parser.add_argument("--resolve-config", type=Path, metavar="FILE",
                        help="print FILE with relative directories made absolute (against --base) and exit")
    parser.add_argument("--base", type=Path, help="with --resolve-config: base folder (default: FILE's folder)")
    parser.add_argument("--workers", type=int, default=0,
                        help="scale-out: N DataQualityMonitor workers and a DataQualityReducer (config/scaleout.json)")
    args = parser.parse_args(argv)
    if args.resolve_config:
        return resolve_config_main(args.resolve_config, args.base)
    if isinstance(sys.stdout, io.TextIOWrapper):  # a replaced stdout (pytest capture) has no reconfigure
        sys.stdout.reconfigure(line_buffering=True)  # progress reaches a pipe (tests, logs) as it happens
    folder = args.folder.resolve()
    config = args.config.resolve() if args.config else find_config(
        "scaleout.json" if args.workers else "demo.json")
    signals = Signals()
    signals.install()
    lock = DemoLock(folder)
    try:
        lock.acquire()  # exits when another demo holds the folder
        port = args.port or free_port()
        check_ports(config, port)  # a demo in another folder, or another program, on our ports
        print(f"tango-dqm demo: control system in {folder}")
        cs = ControlSystem(folder, port)
        try:
            (run_scaleout_demo if args.workers else run_demo)(cs, args, config, lock)
        finally:
            signals.begin_cleanup()
            say("\nStopping servers and database ...")
            cs.stop()
    except Interrupted as exc:
        say(f"\ninterrupted by {exc}: servers and database stopped")
        return 128 + exc.signum
    finally:
        signals.begin_cleanup()
        left = stop_leftover_children()
        if left:
            say(f"stopped leftover processes {left}")
        lock.release()
    say("demo finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
