"""The stress set runs while two CPU-burning processes load both cores, as on a busy machine."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.fixture
def cpu_burners():
    """Two busy processes for the duration of the test; always killed afterwards."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(10)
    assert all(p.returncode is not None for p in procs)
