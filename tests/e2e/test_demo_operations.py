"""The demo as an operator meets it: one copy per folder, SIGTERM/SIGHUP stop everything, absolute paths.

Each demo here runs with ``--keep --no-scan`` (the control system only) and a copy of
config/demo.json whose simulator port is free, so parallel runs on one machine do not collide.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import tango

from tango_dqm.devices.demo import DIRECTORY_PROPERTIES, DemoLock, _property_blocks, resolve_directories
from tests.helpers import free_port

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[2]
SIM_PATH = ("servers", "DetectorSimulator", "demo", "DetectorSimulator", "dqm/sim/demo", "properties")
MON_PATH = ("servers", "DataQualityMonitor", "demo", "DataQualityMonitor", "dqm/monitor/demo", "properties")


def _at(doc: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        doc = doc[key]
    return doc


@pytest.fixture
def demo_config(tmp_path) -> tuple[Path, int]:
    """config/demo.json with a free simulator port; (file, port)."""
    doc = json.loads((ROOT / "config" / "demo.json").read_text())
    port = free_port()
    _at(doc, SIM_PATH)["Port"] = [str(port)]
    _at(doc, MON_PATH)["Sources"] = [f"det=zmq://127.0.0.1:{port}"]
    path = tmp_path / "demo.json"
    path.write_text(json.dumps(doc))
    return path, port


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # an exited but unreaped process is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def assert_no_crash(folder: Path) -> None:
    logs = sorted(folder.glob("*.log"))
    assert len(logs) == 3  # database and both servers
    for log in logs:
        text = log.read_text(errors="replace")
        assert "Segmentation fault" not in text and "Fatal Python error" not in text, (log, text[-3000:])


class Demo:
    """``python -m tango_dqm.devices.demo --keep --no-scan`` in a subprocess, its output collected."""

    def __init__(self, folder: Path, config: Path):
        self.folder = folder
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tango_dqm.devices.demo", "--folder", str(folder), "--config", str(config),
             "--keep", "--no-scan"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.up = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("The system stays up"):
                self.up.set()
        self.up.set()  # the process ended: wake the waiter, which then sees it exited

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_up(self, timeout: float = 120) -> None:
        assert self.up.wait(timeout), f"demo not up after {timeout} s:\n{self.output}"
        assert self.proc.poll() is None, f"demo exited with {self.proc.returncode}:\n{self.output}"

    @property
    def db_port(self) -> int:
        return int(json.loads((self.folder / "demo.lock").read_text())["tango_host"].rsplit(":", 1)[1])

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            for pid in children(self.proc.pid):
                os.kill(pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def demos():
    started: list[Demo] = []
    yield started
    for demo in started:  # leave nothing behind when a test failed half-way
        demo.kill()


def run_demo(folder: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tango_dqm.devices.demo", "--folder", str(folder),
                           "--config", str(config), "--no-scan"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_stops_servers_and_database_and_frees_the_ports(tmp_path, demo_config, demos, signum):
    config, sim_port = demo_config
    demo = Demo(tmp_path / "demo", config)
    demos.append(demo)
    demo.wait_up()
    kids = children(demo.proc.pid)
    cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") for pid in kids]
    assert len(kids) == 3 and all(alive(pid) for pid in kids), cmdlines
    for executable in ("PyDatabaseds", "DetectorSimulator", "DataQualityMonitor"):
        assert sum(executable in c for c in cmdlines) == 1, cmdlines
    db_port = demo.db_port
    assert not port_free(db_port) and not port_free(sim_port)

    # the database holds absolute directories, resolved against the demo folder
    props = tango.Database("127.0.0.1", db_port).get_device_property("dqm/monitor/demo", ["OutputDirectory"])
    assert list(props["OutputDirectory"]) == [str(tmp_path / "demo" / "output")]

    assert demo.stop(signum) == 0, demo.output
    assert "Stopping servers and database" in demo.output and "demo finished" in demo.output
    assert [pid for pid in kids if alive(pid)] == []
    assert port_free(db_port) and port_free(sim_port)
    assert_no_crash(tmp_path / "demo")
    # the lock is free again: the next demo in this folder is not refused
    lock = DemoLock(tmp_path / "demo")
    lock.acquire()
    lock.release()


def test_second_demo_is_refused_naming_the_running_one(tmp_path, demo_config, demos):
    config, sim_port = demo_config
    first = Demo(tmp_path / "first", config)
    demos.append(first)
    first.wait_up()
    db_port = first.db_port
    db_file = tmp_path / "first" / "tango_database.db"
    before = db_file.stat().st_mtime_ns

    same = run_demo(tmp_path / "first", config)  # same folder: the lock says who runs there
    assert same.returncode == 1
    assert f"another demo is running in {tmp_path / 'first'}: pid {first.proc.pid}" in same.stderr
    assert f"TANGO_HOST=127.0.0.1:{db_port}" in same.stderr and f"kill {first.proc.pid}" in same.stderr
    assert "Tango database" not in same.stdout  # nothing was started

    other = run_demo(tmp_path / "other", config)  # another folder: the simulator's port is taken
    assert other.returncode == 1
    assert f"port {sim_port} on 127.0.0.1 (Port of dqm/sim/demo" in other.stderr
    assert f"the demo running in {tmp_path / 'first'}: pid {first.proc.pid}" in other.stderr
    assert not (tmp_path / "other" / "tango_database.db").exists()

    # the first system is untouched and still answers
    assert first.proc.poll() is None and db_file.stat().st_mtime_ns == before
    dev = tango.DeviceProxy(f"tango://127.0.0.1:{db_port}/dqm/monitor/demo")
    assert dev.state() == tango.DevState.ON
    kids = children(first.proc.pid)
    assert first.stop(signal.SIGINT) == 0  # Ctrl-C
    assert [pid for pid in kids if alive(pid)] == [] and port_free(db_port)
    assert_no_crash(tmp_path / "first")


def test_database_port_taken_is_refused(tmp_path, demo_config):
    config, _ = demo_config
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "tango_dqm.devices.demo", "--folder", str(tmp_path / "d"),
                                 "--config", str(config), "--port", str(port), "--no-scan"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 (the demo's Tango database) is already in use by pid {os.getpid()}" \
        in result.stderr


def test_lock_of_a_killed_demo_does_not_block(tmp_path):
    folder = tmp_path / "d"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from tango_dqm.devices.demo import DemoLock; DemoLock(Path(sys.argv[1])).acquire(); "
                               "print('locked', flush=True); time.sleep(600)", str(folder)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit, match=f"pid {holder.pid}, still starting"):
            DemoLock(folder).acquire()
    finally:
        holder.kill()  # a crash: no cleanup runs, the lock file keeps its content
        holder.wait(10)
    assert json.loads((folder / "demo.lock").read_text())["pid"] == holder.pid
    lock = DemoLock(folder)
    lock.acquire()  # the OS released the flock with the process
    assert json.loads((folder / "demo.lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_processes_left_by_a_killed_demo_are_named(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    # a server left running by a demo that was killed with SIGKILL (its lock is free)
    orphan = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert orphan.stdout.readline().strip() == "up"  # exec done: the command line is final
        cmdline = Path(f"/proc/{orphan.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        (folder / "demo.lock").write_text(json.dumps({"pid": 1, "processes": {str(orphan.pid): cmdline}}))
        with pytest.raises(SystemExit, match=rf"without stopping its processes \(pid {orphan.pid}: .*import time"
                                             rf".*kill {orphan.pid}"):
            DemoLock(folder).acquire()
        # the same pid with another command line (a reused pid) is not ours
        (folder / "demo.lock").write_text(json.dumps({"pid": 1, "processes": {str(orphan.pid): "PyDatabaseds"}}))
        lock = DemoLock(folder)
        lock.acquire()
        lock.release()
    finally:
        orphan.kill()
        orphan.wait(10)
    lock = DemoLock(folder)  # once it is gone the demo starts
    lock.acquire()
    lock.release()


def test_relative_directories_resolved_against_the_base(tmp_path):
    doc = {"servers": {"DataQualityMonitor": {"x": {"DataQualityMonitor": {"a/b/c": {"properties": {
        "OutputDirectory": ["out/../results"], "ReferenceDirectory": ["/abs/refs"],
        "ParameterFileDirectories": ["masks", "/data/masks", ""], "Sources": ["sim://"]}}}}}},
        "classes": {"DataQualityMonitor": {"properties": {"OutputDirectory": ["shared"]}}}}
    resolved, changes = resolve_directories(doc, tmp_path)
    props = resolved["servers"]["DataQualityMonitor"]["x"]["DataQualityMonitor"]["a/b/c"]["properties"]
    assert props["OutputDirectory"] == [str(tmp_path / "results")]
    assert props["ReferenceDirectory"] == ["/abs/refs"]
    assert props["ParameterFileDirectories"] == [str(tmp_path / "masks"), "/data/masks", ""]
    assert props["Sources"] == ["sim://"]
    assert resolved["classes"]["DataQualityMonitor"]["properties"]["OutputDirectory"] == [str(tmp_path / "shared")]
    assert len(changes) == 3 and doc["classes"]["DataQualityMonitor"]["properties"]["OutputDirectory"] == ["shared"]

    # the command line used by deploy/tango-db.sh load: against the file's folder by default
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "c.json").write_text(json.dumps(doc))
    result = subprocess.run([sys.executable, "-m", "tango_dqm.devices.demo", "--resolve-config",
                             str(tmp_path / "cfg" / "c.json")], cwd="/", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)["servers"]["DataQualityMonitor"]["x"]["DataQualityMonitor"]["a/b/c"]
    assert out["properties"]["OutputDirectory"] == [str(tmp_path / "cfg" / "results")]
    bad = subprocess.run([sys.executable, "-m", "tango_dqm.devices.demo", "--resolve-config",
                          str(tmp_path / "missing.json")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "cannot read the dsconfig file" in bad.stderr


def test_every_config_file_resolves_to_absolute_directories():
    configs = sorted((ROOT / "config").glob("*.json"))
    assert configs
    for config in configs:
        resolved, _ = resolve_directories(json.loads(config.read_text()), config.parent)
        for owner, props in _property_blocks(resolved):
            for name in DIRECTORY_PROPERTIES:
                assert all(os.path.isabs(v) for v in props.get(name, []) if v), (config, owner, name)


def test_control_system_loads_absolute_directories(tmp_path):
    """ControlSystem.apply_config (the demo, the e2e tests) never gives a server a relative directory."""
    from tango_dqm.devices.controlsystem import ControlSystem

    with ControlSystem(tmp_path / "cs") as cs:
        cs.apply_config(ROOT / "config" / "demo.json")
        props = tango.Database("127.0.0.1", cs.port).get_device_property("dqm/monitor/demo", ["OutputDirectory"])
    assert list(props["OutputDirectory"]) == [str(tmp_path / "cs" / "output")]
    source = json.loads((ROOT / "config" / "demo.json").read_text())  # the file itself is not rewritten
    assert _at(source, MON_PATH)["OutputDirectory"] == ["output"]


def test_unusable_folder_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    result = run_demo(tmp_path / "file" / "demo", ROOT / "config" / "demo.json")
    assert result.returncode == 1 and "cannot use" in result.stderr and "--folder" in result.stderr
    assert "Traceback" not in result.stderr
