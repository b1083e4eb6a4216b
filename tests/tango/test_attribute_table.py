"""docs/attributes.md is the table the code generates: every attribute name Jive shows is in it."""
from __future__ import annotations

import re
from pathlib import Path

from tango_dqm.devices.attribute_table import main, render
from tango_dqm.devices.mapping import describe_attributes, device_attribute_names
from tango_dqm.plugin import registered_analyses

DOC = Path(__file__).resolve().parents[2] / "docs" / "attributes.md"


def names_in(text: str) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", text, flags=re.M))


def test_committed_table_is_the_generated_one():
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/attributes.md is out of date: run python -m tango_dqm.devices.attribute_table -o docs/attributes.md")


def test_table_names_every_device_and_analysis_attribute():
    names = names_in(render())
    lower = {n.lower() for n in names}
    assert device_attribute_names() <= lower  # State, Status and every static attribute
    assert {i.name for i in describe_attributes(registered_analyses())} <= names
    assert {"live_<stream>", "roi_signal", "signal_sum", "point_signal_sum", "nframes", "endpoint"} <= names


def test_one_configuration_and_output_file(tmp_path):
    out = tmp_path / "attrs.md"
    assert main(["--analyses", "roi", "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "analysis `roi`" in text and "analysis `profile`" not in text
    assert "signal_sum" in names_in(text) and "profile_x" not in names_in(text)
