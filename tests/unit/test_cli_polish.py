"""CLI polish (issue 13 item 5): any HDF5 file with --dataset, real --help of report/runs, errors that
speak of the CLI, whole progress lines off a terminal, the files replay -o writes."""
from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest

from tango_dqm.cli import main


@pytest.fixture
def any_h5(tmp_path):
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as f:
        f["/stack/img"] = np.random.default_rng(0).integers(0, 100, (12, 16, 16)).astype(np.uint16)
        f["/stack/ids"] = np.arange(100, 112)
    return path


@pytest.fixture(autouse=True)
def _fresh_logging():
    # main() calls basicConfig: give each test a root logger without earlier handlers
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    yield
    root.handlers[:] = saved


def test_once_replays_any_hdf5_dataset_and_says_what_it_wrote(any_h5, tmp_path, capsys):
    out = tmp_path / "res" / "r.h5"
    assert main(["once", str(any_h5), "--dataset", "/stack/img", "--ids", "/stack/ids", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "CLOSE: 12/12 events completed" in captured.out
    for line in (f"results: {out}", f"report: {out.with_suffix('.html')}", f"run list: {out.parent / 'index.html'}",
                 f"run log: {out.parent / 'runs.csv'}", f"run log: {out.parent / 'runs.json'}"):
        assert line in captured.out, line
    assert "\r" not in captured.err  # not a terminal: whole lines, no carriage returns
    with h5py.File(out, "r") as f:
        assert f["entry/results/frame_id"][...].tolist() == list(range(100, 112))
    # without --ids the frame id is the index
    assert main(["once", str(any_h5), "--dataset", "/stack/img", "-o", str(tmp_path / "b.h5")]) == 0
    with h5py.File(tmp_path / "b.h5", "r") as f:
        assert f["entry/results/frame_id"][...].tolist() == list(range(12))


def test_errors_speak_of_the_cli(any_h5, capsys):
    assert main(["once", str(any_h5)]) == 2
    err = capsys.readouterr().err
    assert "--dataset" in err and "has no dataset" in err
    assert "Sources property" not in err and "Reset" not in err  # device advice is not for the CLI
    assert main(["once", "sim://?frames=3", "--dataset", "/x"]) == 2
    assert "--dataset takes a file path" in capsys.readouterr().err
    assert main(["once", str(any_h5), "--ids", "/stack/ids"]) == 2
    assert "--ids needs --dataset" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["report", "runs"])
def test_subcommand_help_shows_its_real_usage(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert f"usage: tango-dqm {command} [-h]" in capsys.readouterr().out
