"""The engine's transition table is the README's state table, and the commands obey it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tango_dqm.engine import TRANSITIONS, Engine, EngineConfig, EngineError, EngineState, refusal
from tango_dqm.quality.references import ReferenceStore

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_table() -> dict[str, set[EngineState]]:
    """{command: from-states} from the "States and commands" table (rows naming commands in backticks)."""
    text = README.read_text()
    table = text.split("States and commands:", 1)[1].split("\n\n", 2)[1]
    allowed: dict[str, set[EngineState]] = {}
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        # commands are the CamelCase names in backticks (`Flag(reason)` -> Flag; `flagged/` is a folder)
        commands = re.findall(r"`([A-Z][A-Za-z]+)(?:\([^`]*\))?`", cells[1])
        for command in commands:
            allowed.setdefault(command, set()).update(EngineState(s.strip()) for s in cells[0].split(","))
    return allowed


TABLE = readme_table()
CASES = [(c, s, s in TABLE[c]) for c in sorted(TABLE) for s in EngineState]


def test_readme_table_names_every_command_of_the_engine():
    assert set(TABLE) == set(TRANSITIONS)
    assert TABLE["Start"] == {EngineState.ON, EngineState.CLOSE}  # the parser read the table


@pytest.mark.parametrize("command,state,allowed", CASES, ids=[f"{c}-{s.value}" for c, s, _ in CASES])
def test_transition_table_matches_readme(command: str, state: EngineState, allowed: bool):
    assert (state in TRANSITIONS[command]) is allowed
    why = refusal(command, state)
    if allowed:
        assert why is None
    else:
        assert why is not None and command in why and state.value in why


def test_refusals_name_the_way_out():
    assert refusal("Start", EngineState.FAULT).endswith("; run Reset first")
    assert refusal("Live", EngineState.RUNNING).endswith("; Stop first")
    assert refusal("Reset", EngineState.ON) == "Reset is allowed in CLOSE and FAULT, not in ON"


def test_engine_commands_refuse_with_the_table_message(tmp_path):
    """A real engine in ON: every command the table refuses there raises exactly the table's refusal."""
    e = Engine(EngineConfig(["sim://?frames=0&shape=16x16&rate=50"], output_directory=str(tmp_path / "out")))
    store = ReferenceStore(tmp_path / "refs", create=True)
    try:
        assert e.state is EngineState.ON
        calls = {"Reset": e.reset, "Flag": lambda: e.mark("flagged", "bad"), "Archive": lambda: e.mark("archived"),
                 "TakeReference": lambda: e.take_reference(store), "TakeBackground": lambda: e.take_background(store)}
        for command, call in calls.items():
            with pytest.raises(EngineError) as info:
                call()
            assert str(info.value) == refusal(command, EngineState.ON)
        e.stop()  # Stop outside RUNNING does nothing
        assert e.state is EngineState.ON
        assert not list(store.directory.rglob("*.h5"))  # nothing was stored
    finally:
        e.close()
