"""The report drawer's child process (see drawer.py): ``python -m tango_dqm.products.report.live_child``.

Reads one JSON request a line on stdin, draws the live page, answers one JSON line on stdout.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

#: a file caught mid-flush is read again, at most this many times
READ_ATTEMPTS = 3


def _serve() -> int:
    """Draw each requested page; answer one line per request."""
    try:
        os.nice(10)  # the analysis wins the cores when both want them
    except OSError:
        pass
    from ..scanfile import StorageError
    from .page import write_report  # matplotlib is imported once, here

    for line in sys.stdin:
        answer: dict[str, str] = {}
        try:
            req = json.loads(line)
            path, refresh = Path(str(req["path"])), float(req["live_refresh"])
        except (ValueError, KeyError, TypeError) as exc:
            answer = {"error": f"bad request: {exc}"}
        else:
            for attempt in range(READ_ATTEMPTS):
                try:
                    answer = {"page": str(write_report(path, live_refresh=refresh))}
                    break
                except (OSError, StorageError, KeyError) as exc:  # caught mid-flush: read again
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                    time.sleep(0.05 * (attempt + 1))
                except Exception as exc:  # noqa: BLE001 - told to the parent, which logs it
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                    break
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_serve())
