"""``tango-dqm``: record streams, replay them through the analyses, regenerate reports.

    tango-dqm record URI -o frames.h5 [--frames N] [--timeout S]
    tango-dqm replay SOURCE --analysis roi [--analysis profile ...] [--params p.json] [-o results.h5]
    tango-dqm once FILE.h5 [--analysis ...] [--params p.json] [-o results.h5]
    tango-dqm report results.h5|DIR ...
    tango-dqm check-plugin module:Class|NAME ...

SOURCE is any source URI (sim://, zmq://, bsread://, hdf5://, watch://) or a file written by
``record``. Parameter files are JSON or YAML objects {parameter: value}, never pickles.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .engine import EngineError, Snapshot
from .params import ParameterError
from .plugin import PluginError, load_analysis
from .replay import load_params, print_summary, record, replay, replay_uri
from .sources import SourceError


def _progress_line(snap: Snapshot) -> None:
    c = snap.counters
    total = f"/{c.total}" if c.expected else ""
    print(f"\r  {c.completed}{total} events, {c.event_rate:7.1f} Hz, dropped {c.dropped}, bad {c.bad}   ",
          end="", file=sys.stderr, flush=True)


def _cmd_record(args: argparse.Namespace) -> int:
    def progress(n: int, bad: int) -> None:
        if n % 50 == 0:
            print(f"\r  {n} frames recorded, {bad} bad   ", end="", file=sys.stderr, flush=True)
    try:
        n = record(args.uri, args.output, args.frames, args.timeout, progress)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    print(f"\r{n} frames written to {args.output}", file=sys.stderr)
    print(replay_uri(args.output))
    return 0 if n else 1


def _cmd_replay(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    snap = replay(args.source, args.analysis or ["roi"], params, args.output, _progress_line)
    print(file=sys.stderr)
    print_summary(snap)
    if args.output:
        print(f"results: {Path(args.output).resolve()}")
    return 0 if snap.state.value == "CLOSE" else 1


def _cmd_check_plugin(args: argparse.Namespace) -> int:
    """Exit 0 when every plugin keeps the contract, 1 with the problems otherwise."""
    from .contract import check_plugin, format_problems
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # like python -m: the user's module in the current directory
    failed = 0
    for spec in args.plugins:
        try:
            problems = check_plugin(load_analysis(spec))
        except PluginError as exc:
            problems = [str(exc)]
        print(format_problems(spec, problems), file=sys.stdout if not problems else sys.stderr)
        failed += bool(problems)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tango-dqm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tango-dqm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("record", help="write any stream into an HDF5 file that hdf5:// replays")
    p.add_argument("uri")
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--frames", type=int, default=None, help="stop after N frames (default: end of series)")
    p.add_argument("--timeout", type=float, default=None, help="stop after S seconds")
    p.set_defaults(func=_cmd_record)

    for name, help_text in (("replay", "run the analyses over a source, no Tango"),
                            ("once", "process one recorded file and exit")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("source", help="source URI, or a file written by 'record'")
        p.add_argument("--analysis", "-a", action="append", help="analysis name or module:Class (repeat)")
        p.add_argument("--params", type=Path, help="JSON or YAML file of parameter values")
        p.add_argument("-o", "--output", type=Path, help="per-frame results and summary (HDF5)")
        p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("check-plugin", help="check analysis plugins against the plugin contract (offline)")
    p.add_argument("plugins", nargs="+", metavar="module:Class", help="module:Class or an installed analysis name")
    p.set_defaults(func=_cmd_check_plugin)

    p = sub.add_parser("report", help="regenerate the HTML run report of results files")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=None)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command == "report":
        from .report import main as report_main
        return report_main(args.rest)
    try:
        return args.func(args)
    except (EngineError, PluginError, SourceError, ParameterError, ValueError, OSError) as exc:
        print(f"tango-dqm {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
