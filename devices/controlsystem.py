"""A real Tango control system on one machine: embedded database, dsconfig, servers.

Used by ``make demo`` and the end-to-end tests. Everything listens on 127.0.0.1;
processes are started with argument lists (no shell) and always stopped.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import tango

BIN = Path(sys.executable).parent
LOOPBACK_ENDPOINT = ["-ORBendPoint", "giop:tcp:127.0.0.1:"]
# json2tango's exit codes: 0 nothing to change, 2 configuration applied
_JSON2TANGO_OK = (0, 2)
# Every server log written in this process, so a test run can scan them all for crashes.
SERVER_LOGS: list[Path] = []
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ok, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ok():
                return
        except tango.DevFailed:
            pass
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode}\n{tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.2)


def _record_crash(proc: subprocess.Popen, log: Path | None) -> None:
    """A server killed by a crash signal leaves no trace of its own unless faulthandler ran:
    say so in its log (a crash is a bug, and the test fixtures scan these logs)."""
    rc = proc.returncode
    if log is not None and rc is not None and rc < 0 and -rc in {s.value for s in _CRASH_SIGNALS}:
        with log.open("a") as f:
            f.write(f"\n*** server process died of signal {signal.Signals(-rc).name} (crash, core dump)\n")


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the server's whole process group: under a wrapper (``unshare --fork``) the Popen
    is the wrapper, and a signal to it alone leaves the server itself running as an orphan."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _group_alive(proc: subprocess.Popen) -> bool:
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(proc: subprocess.Popen, timeout: float = 10.0, log: Path | None = None) -> None:
    if proc.poll() is not None:
        _record_crash(proc, log)
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)  # Tango servers shut down cleanly on SIGTERM
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(5)
        _record_crash(proc, log)
    deadline = time.monotonic() + 5.0
    while _group_alive(proc) and time.monotonic() < deadline:  # a wrapper's child still exiting
        time.sleep(0.05)
    _signal_group(proc, signal.SIGKILL)  # nothing of a stopped server outlives it


class ControlSystem:
    """Embedded sqlite Tango database plus device servers, as Starter would run them.

    Use as a context manager; ``folder`` holds the database file and server logs.
    """

    def __init__(self, folder: Path, port: int | None = None):
        self.folder = Path(folder).resolve()
        self.port = port or free_port()
        self.tango_host = f"127.0.0.1:{self.port}"
        # faulthandler: a crash in a server prints its Python stacks into the server's log
        self.env = {**os.environ, "TANGO_HOST": self.tango_host, "PYTHONFAULTHANDLER": "1"}
        self._db: subprocess.Popen | None = None
        self.servers: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def __enter__(self) -> "ControlSystem":
        self.start_database()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start_database(self, timeout: float = 60.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.folder / "database.log"
        SERVER_LOGS.append(log)
        env = {**self.env, "PYTANGO_DATABASE_NAME": str(self.folder / "tango_database.db")}
        self._db = subprocess.Popen([str(BIN / "PyDatabaseds"), "--host", "127.0.0.1", "--port", str(self.port), "2"],
                                    env=env, cwd=self.folder, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
        _wait("Tango database", lambda: tango.Database("127.0.0.1", self.port).get_info() is not None,
              timeout, self._db, log)
        os.environ["TANGO_HOST"] = self.tango_host  # for DeviceProxy in this process

    def apply_config(self, json_file: Path) -> None:
        """Load a dsconfig JSON file into the database with ``json2tango``, as a facility does.

        Relative directory properties are made absolute against ``folder`` first: servers refuse them.
        """
        from .demo import resolved_config_file  # the demo module holds the dsconfig path rules

        json_file, _ = resolved_config_file(Path(json_file), self.folder, self.folder)
        result = subprocess.run([str(BIN / "json2tango"), "--write", "--update", "--no-colors", str(json_file)],
                                env=self.env, capture_output=True, text=True, timeout=120)
        if result.returncode not in _JSON2TANGO_OK:
            raise RuntimeError(f"json2tango {json_file} failed ({result.returncode}): {result.stderr[-2000:]}")

    def start_server(self, executable: str, instance: str, devices: list[str], timeout: float = 60.0,
                     extra_args: list[str] | None = None, wrapper: list[str] | None = None) -> subprocess.Popen:
        """Start ``executable instance`` as Starter would; wait until ``devices`` answer.

        ``wrapper`` is an argument list the server runs under (e.g. ``unshare`` in a test)."""
        log = self.folder / f"{executable}_{instance}.log"
        SERVER_LOGS.append(log)
        argv = [*(wrapper or []), str(BIN / executable), instance, *LOOPBACK_ENDPOINT, *(extra_args or [])]
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, env=self.env, cwd=self.folder, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # a group of its own: _stop signals all of it
        key = f"{executable}/{instance}"
        self.servers[key] = proc
        self.logs[key] = log
        for name in devices:
            _wait(f"{executable} {instance} ({name})",
                  lambda name=name: tango.DeviceProxy(f"tango://{self.tango_host}/{name}").ping() >= 0,
                  timeout, proc, log)
        return proc

    def proxy(self, name: str) -> tango.DeviceProxy:
        return tango.DeviceProxy(f"tango://{self.tango_host}/{name}")

    def stop_server(self, key: str) -> None:
        proc = self.servers.pop(key, None)
        if proc is not None:
            _stop(proc, log=self.logs.get(key))

    def stop(self) -> None:
        for key in list(self.servers):
            self.stop_server(key)
        if self._db is not None:
            _stop(self._db)
            self._db = None
