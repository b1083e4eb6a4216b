"""``make demo``: a Tango control system on this machine, a monitored scan and a live period.

Starts the embedded sqlite Tango database, loads ``config/demo.json`` with dsconfig,
starts the DetectorSimulator and DataQualityMonitor servers as Starter would, runs a
scan of 300 simulated 1024x1024 frames through ``DeviceProxy`` with a progress line,
prints the verdict and results, runs a live period in which the beam moves and the
centroid follows, lists the files written and stops everything. ``--keep`` leaves the
system up for Jive or itango.
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
MONITOR, SIMULATOR = "dqm/monitor/demo", "dqm/sim/demo"
RESULTS = ("signal_sum", "signal_mean", "signal_std", "background_mean", "net_signal", "frame_max",
           "saturated_pixels", "profile_centroid_x", "profile_centroid_y", "profile_fwhm_x", "profile_fwhm_y")
VERDICTS = ("OK", "INSUFFICIENT", "WARNING", "ERROR", "STALE")


def find_config() -> Path:
    for candidate in (Path.cwd() / "config" / "demo.json", ROOT / "config" / "demo.json"):
        if candidate.is_file():
            return candidate
    raise SystemExit("config/demo.json not found: run the demo from the project folder (make demo)")


def value(dev: tango.DeviceProxy, name: str) -> str:
    attr = dev.read_attribute(name)
    if attr.quality == tango.AttrQuality.ATTR_INVALID or attr.value is None:
        return "-"
    return f"{attr.value:,.1f}" if isinstance(attr.value, float) else str(attr.value)


def progress(dev: tango.DeviceProxy, extra: str = "signal_sum") -> str:
    total, done, rate, dropped, bad, verdict = (a.value for a in dev.read_attributes(
        ["totalEvents", "completedEvents", "eventRate", "droppedEvents", "badEvents", "verdict"]))
    width = 30
    filled = min(width, int(width * done / total)) if total else 0
    bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}" if total else f"{done}"
    return (f"\r  {bar} events, {rate:6.1f} Hz, dropped {dropped}, bad {bad}, "
            f"{extra} {value(dev, extra)}, verdict {VERDICTS[verdict]}   ")


def wait_running_ends(dev: tango.DeviceProxy, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while dev.state() == tango.DevState.RUNNING:
        print(progress(dev), end="", flush=True)
        if time.monotonic() > deadline:
            dev.Stop()
            raise SystemExit(f"\nscan did not finish in {timeout:.0f} s: {dev.status()}")
        time.sleep(0.25)
    print(progress(dev))


def run_scan(mon: tango.DeviceProxy, sim: tango.DeviceProxy) -> None:
    print("Scan: monitor Start, then the detector sends a series of 300 frames")
    scan_id = mon.Start()
    sim.Start()
    print(f"  {scan_id}: monitor {mon.state()}, detector {sim.state()}")
    wait_running_ends(mon, 120)
    print(f"  Status: {mon.status()}")


def show_results(mon: tango.DeviceProxy) -> None:
    print("\nResults of the last frame:")
    for name in RESULTS:
        attr = mon.read_attribute(name)
        unit = mon.get_attribute_config(name).unit
        flag = "" if attr.quality == tango.AttrQuality.ATTR_VALID else f"  [{attr.quality}]"
        print(f"  {name:20s} {value(mon, name):>16} {unit}{flag}")
    print(f"  {'pixels hot/dead':20s} {value(mon, 'pixels_hot'):>16} / {value(mon, 'pixels_dead')}")
    verdict = mon.read_attribute("verdict")
    print(f"\nVerdict: {VERDICTS[verdict.value]} (attribute quality {verdict.quality}), "
          f"coverage {mon.verdictCoverage:.0%}")
    for line in mon.verdictReport.splitlines()[1:]:
        print(f"  {line}")


def live_period(mon: tango.DeviceProxy, sim: tango.DeviceProxy, seconds: float = 4.0) -> None:
    print(f"\nLive: monitor Live starts the detector too (live_det = {mon.live_det}); the beam moves")
    sim.rate = 50.0
    mon.Live()
    t0 = time.monotonic()
    moved = False
    while time.monotonic() - t0 < seconds:
        if not moved and time.monotonic() - t0 > seconds / 2:
            sim.spot_x = 600.0
            moved = True
            print(f"\n  detector: spot_x 512 -> 600")
        print(progress(mon, "profile_centroid_x"), end="", flush=True)
        time.sleep(0.25)
    mon.Stop()
    deadline = time.monotonic() + 10
    while mon.state() == tango.DevState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.1)
    print(progress(mon, "profile_centroid_x"))
    print(f"  Stop: monitor {mon.state()}, detector {sim.state()}; centroid x now "
          f"{mon.profile_centroid_x:.1f} (spot at 600)")
    sim.spot_x = 512.0
    sim.rate = 150.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path(".demo"), help="database, logs and results (.demo)")
    parser.add_argument("--keep", action="store_true", help="keep the control system up until Ctrl-C")
    args = parser.parse_args(argv)
    folder = args.folder.resolve()
    print(f"tango-dqm demo: control system in {folder}")
    with ControlSystem(folder) as cs:
        print(f"  Tango database (pytango-db, sqlite) on TANGO_HOST={cs.tango_host}")
        config = find_config()
        cs.apply_config(config)
        print(f"  loaded {config} with dsconfig (json2tango)")
        cs.start_server("DetectorSimulator", "demo", [SIMULATOR])
        cs.start_server("DataQualityMonitor", "demo", [MONITOR])
        mon, sim = cs.proxy(MONITOR), cs.proxy(SIMULATOR)
        print(f"  started DetectorSimulator demo ({SIMULATOR}: {sim.state()}, {sim.endpoint}) and "
              f"DataQualityMonitor demo ({MONITOR}: {mon.state()})")
        print(f"  Sources {list(mon.get_property('Sources')['Sources'])}, "
              f"Analyses {list(mon.get_property('Analyses')['Analyses'])}")
        print(f"  roi_signal={mon.roi_signal.tolist()} roi_background={mon.roi_background.tolist()}\n")
        run_scan(mon, sim)
        show_results(mon)
        results_file = Path(mon.Archive())
        print(f"\nArchive: the operator marks the scan good; its files move to {results_file.parent}")
        live_period(mon, sim)
        mon.Reset()
        out = folder / "output"
        deadline = time.monotonic() + 60  # reports are written in the background
        while not (results_file.with_suffix(".html").exists() and (out / "index.html").exists()) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        print("\nFiles written:")
        print(f"  results (HDF5, NeXus): {results_file}")
        print(f"  run report:            {results_file.with_suffix('.html')}")
        print(f"  run list:              {out / 'index.html'}")
        print(f"  server logs:           {folder / 'DataQualityMonitor_demo.log'}, "
              f"{folder / 'DetectorSimulator_demo.log'}")
        summary = {"scan_file": str(results_file), "verdict": VERDICTS[mon.verdict],
                   "versions": json.loads(mon.deployedVersions)}
        (folder / "last_demo.json").write_text(json.dumps(summary, indent=2))
        if args.keep:
            print(f"\nThe system stays up. In another shell:\n  export TANGO_HOST={cs.tango_host}\n"
                  f"  .venv/bin/itango        # then: mon = Device('{MONITOR}')  (pip install itango)\n"
                  f"  jive                    # if Jive is installed\nCtrl-C stops everything.")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                print()
        print("\nStopping servers and database ...")
    print("demo finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
