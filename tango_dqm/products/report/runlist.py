"""The run list across scans (:func:`write_run_list`): ``root/index.html``."""
from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path


from .. import runlog
from .page import _CSS, _mark_html, _verdict_html, refresh_tag
from .reading import _esc, _fmt, _href

log = logging.getLogger(__name__)

# ---- the run list ----------------------------------------------------------------------------

def write_run_list(root: str | os.PathLike, refresh: float | None = None) -> Path:
    """Write ``root/index.html`` (every scan under root, flagged/ and archive/, newest first, with a
    link to its report) and the run log ``root/runs.csv`` and ``root/runs.json`` (see runlog).
    ``refresh`` (seconds): while a scan is running the page reloads itself that often."""
    root = Path(root).resolve()
    run_rows = runlog.rows(root)
    runlog.write_run_log(root, run_rows)
    verdicts: dict[str, int] = {}
    for r in run_rows:
        v = str(r.get("verdict") or "none")
        verdicts[v] = verdicts.get(v, 0) + 1
    body_rows = []
    for r in reversed(run_rows):
        scan = _esc(r.get("scan_id"))
        link = f'<a href="{_href(r["report"])}">{scan}</a>' if r.get("report") else scan
        folder = str(Path(r["file"]).parent.as_posix())
        h5_link = f'<a class="small" href="{_href(r["file"])}">{_esc(Path(r["file"]).name)}</a>'
        status = r.get("status", "") + (f": {r['error']}" if r.get("error") else "")
        md = r.get("metadata") or {}
        other = ", ".join(f"{k}={v}" for k, v in md.items() if k not in runlog.COMMON_METADATA)
        reasons = "".join(f"<li>{_esc(x)}</li>" for x in r.get("reasons") or [])
        frames = _esc(r.get("frames_completed")) + (f" / {_esc(r['frames_expected'])}"
                                                    if r.get("frames_expected") is not None else "")
        # result names break at their underscores only, the value not at all
        main = (f"{_esc(r['main_result']).replace('_', '_<wbr>')}<br>"
                f"<span class=nowrap>mean {_esc(_fmt(r['main_mean']))}</span>"
                if r.get("main_result") and r.get("main_mean") is not None else "")
        duration = f"{r['duration_s']:.1f} s" if r.get("duration_s") is not None else ""
        mark = {"mark": r.get("flag"), "mark_reason": r.get("flag_reason"), "mark_time": ""}
        body_rows.append(
            f"<tr><td class='brk scan'>{link}<br>{h5_link}"
            f"{'' if r.get('report') else ' <span class=muted>no report</span>'}"
            f"{f' <span class=muted>({_esc(folder)})</span>' if folder != '.' else ''}</td>"
            f"<td class=nowrap>{'<br>'.join(_esc(p) for p in str(r.get('start') or '')[:19].split('T'))}<br>"
            f"<span class=muted>{_esc(duration)}</span></td><td>{_esc(r.get('mode'))}</td>"
            f'<td class="num">{frames}</td><td class="num">{_esc(r.get("frames_lost"))}</td>'
            f'<td class="num">{_esc(r.get("frames_bad"))}</td><td>{_esc(status)}</td>'
            f"<td class='brk why'>{_verdict_html(r.get('verdict'))}"
            f"{f'<ul class=reasons>{reasons}</ul>' if reasons else ''}</td>"
            f"<td>{_mark_html(mark)}</td><td>{_esc(md.get('sample'))}</td><td>{_esc(md.get('operator'))}</td>"
            f"<td>{_esc(md.get('proposal'))}</td><td class=brk>{_esc(other)}</td><td>{main}</td></tr>")
    counts = ", ".join(f"{_esc(k)}: {v}" for k, v in sorted(verdicts.items()))
    running = [r for r in run_rows if r.get("running")]
    live = ""
    if running:
        again = f"; this page reloads every {max(1, round(refresh))} s" if refresh else ""
        live = (f'<p class="live" id="live">LIVE: {len(running)} scan{"s" if len(running) > 1 else ""} running '
                f'({_esc(", ".join(str(r.get("scan_id")) for r in running))}){_esc(again)}.</p>')
    generated = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">{refresh_tag(refresh) if running else ""}
<title>tango-dqm run list</title><style>{_CSS}</style></head>
<body>
<h1>tango-dqm run list</h1>
{live}
<p>{len(run_rows)} scan{"" if len(run_rows) == 1 else "s"} in {_esc(root)} ({counts or 'none'}). Run log:
<a href="{runlog.RUNS_CSV}">{runlog.RUNS_CSV}</a>, <a href="{runlog.RUNS_JSON}">{runlog.RUNS_JSON}</a>.</p>
<table class="runs">
<tr><th>scan</th><th>start</th><th>mode</th><th>frames</th><th>lost</th><th>bad</th><th>status</th>
<th>verdict and reasons</th><th>flag status</th><th>sample</th><th>operator</th><th>proposal</th><th>metadata</th>
<th>main result</th></tr>
{"".join(body_rows) or '<tr><td colspan="14" class="muted">no scans yet</td></tr>'}
</table>
<p class="muted">Generated {_esc(generated)} by tango-dqm.</p>
</body></html>
"""
    out = root / "index.html"
    tmp = root / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
