"""``tango-dqm``: record streams, replay them through the analyses, regenerate reports.

    tango-dqm record URI -o frames.h5 [--frames N] [--timeout S]
    tango-dqm replay SOURCE --analysis roi [--analysis profile ...] [--params p.json] [-o results.h5]
    tango-dqm once FILE.h5 [--analysis ...] [--params p.json] [-o results.h5]
    tango-dqm report results.h5|DIR ...
    tango-dqm runs DIR [--csv|--json]
    tango-dqm check-plugin module:Class|NAME ...

SOURCE is any source URI (sim://, zmq://, bsread://, hdf5://, watch://) or a file written by
``record``. Parameter files are JSON or YAML objects {parameter: value}, never pickles.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from . import __version__
from .engine import EngineError, Snapshot
from .params import ParameterError
from .plugin import PluginError, load_analysis
from .replay import load_params, print_summary, record, replay, replay_uri
from .sources import SourceError


_last_progress = [0.0]


def _progress_line(snap: Snapshot) -> None:
    c = snap.counters
    total = f"/{c.total}" if c.expected else ""
    text = f"  {c.completed}{total} events, {c.event_rate:7.1f} Hz, dropped {c.dropped}, bad {c.bad}"
    if sys.stderr.isatty():
        print(f"\r{text}   ", end="", file=sys.stderr, flush=True)  # one line rewritten in place
    elif time.monotonic() - _last_progress[0] >= 5.0:  # a log file gets whole lines, not carriage returns
        _last_progress[0] = time.monotonic()
        print(text, file=sys.stderr, flush=True)


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
    source = args.source
    if args.dataset:  # any HDF5 file: frames along the first axis of --dataset, ids optional
        if "://" in source:
            raise ValueError("--dataset takes a file path, not a URI (put dataset= into the URI instead)")
        source = f"hdf5://{Path(source).resolve()}?dataset={quote(args.dataset)}" + (
            f"&ids={quote(args.ids)}" if args.ids else "")
    elif args.ids:
        raise ValueError("--ids needs --dataset")
    snap = replay(source, args.analysis or ["roi"], params, args.output, _progress_line)
    if sys.stderr.isatty():
        print(file=sys.stderr)  # end the progress line
    print_summary(snap, sys.stdout)  # the stream of now (its default was bound at import)
    if args.output:
        out = Path(args.output).resolve()
        print(f"results: {out}")
        for what, path in (("report", out.with_suffix(".html")), ("plots", out.with_name(out.stem + "_plots")),
                           ("run list", out.parent / "index.html"), ("run log", out.parent / "runs.csv"),
                           ("run log", out.parent / "runs.json")):
            if path.exists():
                print(f"{what}: {path}")
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("report", "runs"):  # their own parsers, so that --help shows their usage
        if argv[0] == "report":
            from .report import main as report_main
            return report_main(argv[1:])
        from .runlog import main as runs_main
        return runs_main(argv[1:])
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
        p.add_argument("-o", "--output", type=Path,
                       help="per-frame results and summary (HDF5); its report, run list and run log go next to it")
        p.add_argument("--dataset", help="replay this dataset of any HDF5 file (frames along the first axis)")
        p.add_argument("--ids", help="with --dataset: a 1-D dataset of frame ids (default: the index)")
        p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("check-plugin", help="check analysis plugins against the plugin contract (offline)")
    p.add_argument("plugins", nargs="+", metavar="module:Class", help="module:Class or an installed analysis name")
    p.set_defaults(func=_cmd_check_plugin)

    p = sub.add_parser("report", help="regenerate the HTML run report of results files")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=None)

    p = sub.add_parser("runs", help="print the run log (one row per scan) of an output directory", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=None)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # the CLI prints the error itself; the engine's FAULT line speaks of device properties
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda r: not (r.name == "tango_dqm.engine" and r.getMessage().startswith("FAULT")))
    if args.command == "report":
        from .report import main as report_main
        return report_main(args.rest)
    if args.command == "runs":
        from .runlog import main as runs_main
        return runs_main(args.rest)
    try:
        return args.func(args)
    except (EngineError, PluginError, SourceError, ParameterError, ValueError, OSError) as exc:
        hint = ""
        if args.command in ("replay", "once") and "has no dataset" in str(exc) and not getattr(args, "dataset", None):
            hint = "; name the frames dataset with --dataset (and the frame ids with --ids)"
        print(f"tango-dqm {args.command}: {exc}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
