"""deploy/: the embedded database script, dsconfig into it, systemd units and the container file."""
from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import tango

from tests.helpers import free_port

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "tango-db.sh"
SYSTEMD = ROOT / "deploy" / "systemd"
BIN = ROOT / ".venv" / "bin" if (ROOT / ".venv" / "bin").is_dir() else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:  # an exited but unreaped process is not running
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


class TangoDb:
    """deploy/tango-db.sh with its own state folder and port."""

    def __init__(self, state: Path, port: int):
        self.state, self.port = state, port
        self.env = {**os.environ, "DQM_STATE": str(state), "TANGO_PORT": str(port),
                    "TANGO_HOST": f"127.0.0.1:{port}"}
        self.pid_file = state / "db" / "tango-db.pid"

    def run(self, action: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run([str(SCRIPT), action, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.state.parent)

    def pid(self) -> int:
        return int(self.pid_file.read_text())

    def database(self) -> tango.Database:
        return tango.Database("127.0.0.1", self.port)


@pytest.fixture
def tango_db(tmp_path):
    db = TangoDb(tmp_path / "state", free_port())
    started = []
    yield db, started
    # always leave nothing behind, even when a test failed half-way
    if db.pid_file.exists():
        started.append(db.pid())
    db.run("stop")
    for pid in started:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_script_is_strict_and_executable():
    text = SCRIPT.read_text()
    assert os.access(SCRIPT, os.X_OK)
    assert "set -euo pipefail" in text
    code = [line.split("#", 1)[0] for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if re.search(r"(^|[\s;&|(])eval\b", line)]
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


def test_start_status_stop(tango_db):
    db, started = tango_db
    result = db.run("status")
    assert result.returncode == 3 and "stopped" in result.stdout

    t0 = time.monotonic()
    result = db.run("start")
    assert result.returncode == 0, result.stderr
    pid = db.pid()
    started.append(pid)
    assert f"127.0.0.1:{db.port}" in result.stdout and time.monotonic() - t0 < 60
    assert db.database().get_info()  # the database answers
    assert (db.state / "db" / "tango_database.db").is_file()
    assert (db.state / "db" / "tango-db.log").is_file()
    assert "PyDatabaseds" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")

    result = db.run("status")
    assert result.returncode == 0 and "running" in result.stdout and str(pid) in result.stdout
    assert f"127.0.0.1:{db.port}" in result.stdout
    again = db.run("start")  # idempotent: the same process
    assert again.returncode == 0 and "already running" in again.stdout and db.pid() == pid

    result = db.run("stop")
    assert result.returncode == 0 and "stopped" in result.stdout, result.stderr
    assert not alive(pid) and not listening(db.port)
    assert not db.pid_file.exists()
    result = db.run("status")
    assert result.returncode == 3 and "stopped" in result.stdout
    assert db.run("stop").returncode == 0  # stopping twice is fine


def test_start_refuses_a_busy_port(tango_db):
    db, _ = tango_db
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", db.port))
        busy.listen()
        result = db.run("start")
    assert result.returncode == 1 and "already in use" in result.stderr
    assert not db.pid_file.exists()


def test_bad_arguments_and_environment(tango_db):
    db, _ = tango_db
    assert db.run("bogus").returncode == 2
    assert db.run("load").returncode == 2  # load needs a file
    result = db.run("load", str(db.state / "missing.json"))
    assert result.returncode == 2 and "no such dsconfig file" in result.stderr
    db.env["TANGO_PORT"] = "10000; touch /tmp/x"
    result = db.run("start")
    assert result.returncode == 2 and "port number" in result.stderr


def test_dsconfig_registers_the_demo_device(tango_db):
    db, started = tango_db
    assert db.run("start").returncode == 0
    started.append(db.pid())
    json2tango = str(BIN / "json2tango") if BIN else "json2tango"
    config = ROOT / "config" / "demo.json"
    result = subprocess.run([json2tango, "--write", "--update", "--no-colors", str(config)], env=db.env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 2), result.stderr  # 2: changes applied
    want = json.loads(config.read_text())["servers"]["DataQualityMonitor"]["demo"]["DataQualityMonitor"]

    database = db.database()
    assert "DataQualityMonitor/demo" in database.get_server_list("DataQualityMonitor/*").value_string
    pairs = list(database.get_device_class_list("DataQualityMonitor/demo"))
    assert dict(zip(pairs[::2], pairs[1::2]))["dqm/monitor/demo"] == "DataQualityMonitor"
    info = database.get_device_info("dqm/monitor/demo")
    assert info.class_name == "DataQualityMonitor" and info.ds_full_name == "DataQualityMonitor/demo"
    props = want["dqm/monitor/demo"]["properties"]
    stored = database.get_device_property("dqm/monitor/demo", list(props))
    assert {k: list(v) for k, v in stored.items()} == props
    attr_props = database.get_device_attribute_property("dqm/monitor/demo", ["saturated_pixels"])
    assert list(attr_props["saturated_pixels"]["max_alarm"]) == ["1000"]

    # applying the same file again changes nothing (json2tango exit code 0)
    again = subprocess.run([json2tango, "--write", "--update", "--no-colors", str(config)], env=db.env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    # the database keeps it across a restart (sqlite file in DQM_STATE/db)
    assert db.run("restart").returncode == 0
    started.append(db.pid())
    assert db.database().get_device_info("dqm/monitor/demo").class_name == "DataQualityMonitor"


def test_load_makes_relative_directories_absolute(tango_db, tmp_path):
    db, started = tango_db
    assert db.run("start").returncode == 0
    started.append(db.pid())
    config = json.loads((ROOT / "config" / "demo.json").read_text())
    props = config["servers"]["DataQualityMonitor"]["demo"]["DataQualityMonitor"]["dqm/monitor/demo"]["properties"]
    props["ParameterFileDirectories"] = ["masks", "/data/masks"]
    (tmp_path / "site").mkdir()
    path = tmp_path / "site" / "beamline.json"
    path.write_text(json.dumps(config))
    # run from / as Starter or systemd would: the result must not depend on the working directory
    result = subprocess.run([str(SCRIPT), "load", str(path)], env=db.env, capture_output=True, text=True,
                            timeout=120, cwd="/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"loaded {path} into 127.0.0.1:{db.port}" in result.stdout
    stored = db.database().get_device_property("dqm/monitor/demo", ["OutputDirectory", "ParameterFileDirectories",
                                                                    "Sources"])
    assert list(stored["OutputDirectory"]) == [str(tmp_path / "site" / "output")]
    assert list(stored["ParameterFileDirectories"]) == [str(tmp_path / "site" / "masks"), "/data/masks"]
    assert list(stored["Sources"]) == props["Sources"]  # everything else as in the file
    assert db.run("load", str(path)).returncode == 0  # again: nothing to change, still success


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((SYSTEMD / name).read_text())
    return parser


@pytest.mark.parametrize("name, executable", [("dataqualitymonitor@.service", "DataQualityMonitor"),
                                              ("detectorsimulator@.service", "DetectorSimulator")])
def test_server_units(name, executable):
    u = unit(name)
    service = u["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv == [f"/opt/tango-dqm/venv/bin/{executable}", "%i"]
    assert service["Restart"] == "on-failure"
    environment = [line.split("=", 1)[1] for line in (SYSTEMD / name).read_text().splitlines()
                   if line.startswith("Environment=")]  # a repeated key: configparser keeps the last
    assert any(re.fullmatch(r"TANGO_HOST=[\w.-]+:\d+", e) for e in environment)
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes" and service["User"] != "root"
    assert "%i" in u["Unit"]["Description"] and u["Install"]["WantedBy"] == "multi-user.target"
    if executable == "DataQualityMonitor":
        assert service["ReadWritePaths"]  # the output directory is the only writable place


def test_database_unit():
    service = unit("tango-db.service")["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/tango-dqm/venv/bin/PyDatabaseds"
    assert argv[1:] == ["--host", "127.0.0.1", "--port", "10000", "2"]
    assert service["Restart"] == "on-failure" and service["ProtectSystem"] == "strict"


def test_containerfile():
    lines = [line.strip() for line in (ROOT / "deploy" / "Containerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    instructions = [line.split()[0] for line in lines if line.split()[0].isupper()]
    assert lines[0] == "FROM python:3.11-slim"
    assert any(line.startswith("RUN pip install .") for line in lines)
    assert not any("pip install -e" in line for line in lines)
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0")
    assert instructions.index("USER") < instructions.index("ENTRYPOINT")
    assert json.loads(next(line for line in lines if line.startswith("ENTRYPOINT"))[len("ENTRYPOINT"):]) == \
        ["DataQualityMonitor"]
    for line in lines:  # everything copied exists in the build context (the project root)
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
