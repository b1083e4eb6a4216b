"""``make demo``: a Tango control system on this machine, a monitored scan, results on screen and disk.

Starts the embedded sqlite Tango database, loads ``config/demo.json`` with dsconfig,
starts the DataQualityMonitor server as Starter would, runs a scan of simulated
1024x1024 frames through ``DeviceProxy`` with a progress line, prints the results
and stops everything. ``--keep`` leaves the system up for Jive or itango.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import tango

from .controlsystem import ControlSystem

ROOT = Path(__file__).resolve().parent.parent
DEVICE = "dqm/monitor/demo"
RESULTS = ("signal_sum", "signal_mean", "signal_std", "signal_min", "signal_max",
           "background_mean", "background_std", "net_signal", "frame_min", "frame_max", "saturated_pixels")


def find_config() -> Path:
    for candidate in (Path.cwd() / "config" / "demo.json", ROOT / "config" / "demo.json"):
        if candidate.is_file():
            return candidate
    raise SystemExit("config/demo.json not found: run the demo from the project folder (make demo)")


def progress(dev: tango.DeviceProxy) -> str:
    total, done = dev.totalEvents, dev.completedEvents
    width = 30
    filled = int(width * done / total) if total else 0
    value = dev.read_attribute("signal_sum")
    shown = f"{value.value:,.0f}" if value.quality != tango.AttrQuality.ATTR_INVALID else "-"
    return (f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} events, "
            f"{dev.eventRate:6.1f} Hz, dropped {dev.droppedEvents}, bad {dev.badEvents}, signal_sum {shown}   ")


def run_scan(dev: tango.DeviceProxy, timeout: float = 120.0) -> None:
    scan_id = dev.Start()
    print(f"Start -> {dev.state()} ({scan_id})")
    deadline = time.monotonic() + timeout
    while dev.state() == tango.DevState.RUNNING:
        print(progress(dev), end="", flush=True)
        if time.monotonic() > deadline:
            dev.Stop()
            raise SystemExit(f"\nscan did not finish in {timeout:.0f} s: {dev.status()}")
        time.sleep(0.25)
    print(progress(dev))
    print(f"State {dev.state()}. Status: {dev.status()}")


def show_results(dev: tango.DeviceProxy, out_dir: Path) -> Path:
    print("\nResults of the last frame:")
    values = {}
    for name in RESULTS:
        attr = dev.read_attribute(name)
        unit = dev.get_attribute_config(name).unit
        values[name] = attr.value
        quality = "" if attr.quality == tango.AttrQuality.ATTR_VALID else f"  [{attr.quality}]"
        print(f"  {name:18s} {attr.value:>16,.3f} {unit}{quality}")
    summary = json.loads(dev.runSummary)
    print("\nRun summary (mean ± std over the scan):")
    for name in ("signal_sum", "net_signal", "background_mean", "saturated_pixels"):
        mean, std = summary.get(f"run_{name}_mean"), summary.get(f"run_{name}_std")
        if mean is not None:
            print(f"  {name:18s} {mean:>16,.3f} ± {std:,.3f}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{dev.scanId}.json"
    path.write_text(json.dumps({"scan_id": dev.scanId, "device": DEVICE, "status": dev.status(),
                                "counters": {c: int(dev.read_attribute(c).value) for c in
                                             ("totalEvents", "completedEvents", "droppedEvents", "badEvents")},
                                "last_frame": values, "run_summary": summary,
                                "versions": json.loads(dev.deployedVersions)}, indent=2, allow_nan=True))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path(".demo"), help="database, logs and results (.demo)")
    parser.add_argument("--keep", action="store_true", help="keep the control system up until Ctrl-C")
    args = parser.parse_args(argv)
    folder = args.folder.resolve()
    print(f"tango-dqm demo: control system in {folder}")
    with ControlSystem(folder) as cs:
        print(f"  Tango database (pytango-db, sqlite) on TANGO_HOST={cs.tango_host}")
        cs.apply_config(find_config())
        print(f"  loaded {find_config()} with dsconfig (json2tango)")
        cs.start_server("DataQualityMonitor", "demo", [DEVICE])
        dev = cs.proxy(DEVICE)
        print(f"  DataQualityMonitor demo started; {DEVICE}: {dev.state()}")
        print(f"  Sources: {list(dev.get_property('Sources')['Sources'])}")
        print(f"  roi_signal={dev.roi_signal.tolist()} roi_background={dev.roi_background.tolist()}\n")
        run_scan(dev)
        path = show_results(dev, folder / "output")
        print(f"\nResults written to {path}")
        print(f"Server log: {folder / 'DataQualityMonitor_demo.log'}")
        if args.keep:
            print(f"\nThe system stays up. In another shell:\n  export TANGO_HOST={cs.tango_host}\n"
                  f"  .venv/bin/itango   # then: dev = Device('{DEVICE}')\n"
                  f"  jive               # if Jive is installed\nCtrl-C stops everything.")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                print()
        print("Stopping servers and database ...")
    print("demo finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
