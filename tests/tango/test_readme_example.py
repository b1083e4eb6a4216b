"""The README's scripting example runs as written against a real device (only the device name differs)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tango.test_monitor import context

pytestmark = pytest.mark.timeout(120)
README = Path(__file__).resolve().parents[2] / "README.md"


def scripting_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Scripting", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "no python block in the README's Scripting section"
    return m.group(1)


def test_readme_scripting_example_runs(tmp_path):
    code = scripting_example()
    assert 'MonitorClient("dqm/monitor/demo")' in code
    ctx = context(["sim://?frames=30&shape=1024x1024&rate=200"], OutputDirectory=str(tmp_path / "out"),
                  RequiredMetadata=["sample"])
    with ctx as p:
        script = code.replace('"dqm/monitor/demo"', repr(ctx.get_device_access()))
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr[-3000:]
        lines = done.stdout.strip().splitlines()
        scan_id, verdict, signal_sum = lines[-1].split()
        assert scan_id == p.scanId and verdict in ("OK", "INSUFFICIENT", "WARNING", "ERROR")
        assert float(signal_sum) == pytest.approx(p.signal_sum) and float(signal_sum) > 0
        assert p.sample == "Si wafer 7"  # set_metadata satisfied RequiredMetadata
        assert int(lines[-2]) == 30  # the progress callback's last completed-events count
