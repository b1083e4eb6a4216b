"""Fixtures shared by all tests."""
from __future__ import annotations

import faulthandler
import os
import re
import tempfile
from pathlib import Path

import pytest

from tests.helpers import StinsSender, free_port

# Server processes started by the tests (DeviceTestContext(process=True) forks, ControlSystem
# servers, the demo) inherit this: a crash prints its Python stacks instead of vanishing silently.
os.environ["PYTHONFAULTHANDLER"] = "1"

CRASH = re.compile(r"Segmentation fault|Fatal Python error|core dump|died of signal SIG")

# DeviceTestContext(process=True) forks its server from this process: a crash there is written
# by faulthandler to this file too, whatever pytest's capture did with the child's stderr.
FORK_CRASHES = Path(tempfile.gettempdir()) / f"tango-dqm-fork-crashes-{os.getpid()}.log"
_fork_crash_offset = 0


def _faulthandler_to_file_in_child() -> None:
    try:
        faulthandler.enable(file=FORK_CRASHES.open("a"), all_threads=True)  # kept open for the child's life
    except OSError:
        pass


os.register_at_fork(after_in_child=_faulthandler_to_file_in_child)


def _new_fork_crashes() -> list[str]:
    """Crash lines forked servers wrote since the last call."""
    global _fork_crash_offset
    try:
        with FORK_CRASHES.open("r", errors="replace") as f:
            f.seek(_fork_crash_offset)
            text = f.read()
            _fork_crash_offset = f.tell()
    except OSError:
        return []
    return crash_lines(text)


def crash_lines(text: str) -> list[str]:
    """The lines of a server's output that show a crash."""
    return [line for line in text.splitlines() if CRASH.search(line)]


def _server_logs(item: pytest.Item, first_registered: int) -> list[Path]:
    from tango_dqm.devices.controlsystem import SERVER_LOGS

    logs = list(SERVER_LOGS[first_registered:])
    tmp = item.funcargs.get("tmp_path") if hasattr(item, "funcargs") else None
    if tmp is not None and Path(tmp).is_dir():  # servers started by a subprocess (the demo)
        logs += [p for p in Path(tmp).rglob("*.log") if p not in logs]
    return logs


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Fail the test if any server it ran crashed: its captured output (DeviceTestContext
    servers write to the test's stdout/stderr) or any server log it wrote shows a crash."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "teardown":
        return
    from tango_dqm.devices.controlsystem import SERVER_LOGS

    first = item.stash.get(_LOGS_BEFORE, len(SERVER_LOGS))
    found = [f"test output: {line}" for _, text in report.sections for line in crash_lines(text)]
    found += [f"forked server: {line}" for line in _new_fork_crashes()]
    for log in _server_logs(item, first):
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        found += [f"{log}: {line}" for line in crash_lines(text)]
    if found:
        report.outcome = "failed"
        report.longrepr = "a server crashed (a crash is always a bug):\n" + "\n".join(found[:20])


_LOGS_BEFORE = pytest.StashKey[int]()


@pytest.fixture(autouse=True)
def _scan_server_output_for_crashes(request: pytest.FixtureRequest):
    """Every test: remember which server logs are new; the report hook above scans them and
    the test's captured output at teardown."""
    from tango_dqm.devices.controlsystem import SERVER_LOGS

    request.node.stash[_LOGS_BEFORE] = len(SERVER_LOGS)
    yield


@pytest.fixture
def stins_port() -> int:
    return free_port()


@pytest.fixture
def stins_sender(stins_port):
    sender = StinsSender(stins_port)
    yield sender
    sender.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A forked server that crashed after its test's teardown still fails the run."""
    late = _new_fork_crashes()
    if late:
        print("\na forked server crashed after its test ended (a crash is always a bug):\n" + "\n".join(late[:20]))
        session.exitstatus = 1
    FORK_CRASHES.unlink(missing_ok=True)
