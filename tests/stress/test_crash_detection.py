"""The crash scan itself: a server that segfaults leaves a trace the fixtures find."""
from __future__ import annotations

import subprocess
import sys

from tango_dqm.devices.controlsystem import _stop
from tests.conftest import crash_lines


def test_segfaulting_process_is_recorded_and_detected(tmp_path):
    log = tmp_path / "crash.txt"  # not *.log: the autouse scan would (rightly) fail this test
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", "import ctypes; ctypes.string_at(0)"],
                                stdout=out, stderr=subprocess.STDOUT)
        proc.wait(30)
    _stop(proc, log=log)
    lines = crash_lines(log.read_text())
    assert any("Fatal Python error: Segmentation fault" in line for line in lines), lines
    assert any("died of signal SIGSEGV" in line for line in lines), lines
    assert crash_lines("Ready to accept request\nscan finished\n") == []


def test_a_forked_server_crash_is_found_whatever_the_capture():
    """DeviceTestContext(process=True) forks: a segfault in the child reaches the fork crash
    file (faulthandler is pointed there at fork), which the report hook scans."""
    import multiprocessing

    from tests import conftest

    conftest._new_fork_crashes()  # skip what earlier tests' servers wrote
    child = multiprocessing.get_context("fork").Process(target=__import__("ctypes").string_at, args=(0,))
    child.start()
    child.join(30)
    assert child.exitcode != 0
    lines = conftest._new_fork_crashes()
    assert any("Segmentation fault" in line for line in lines), lines
