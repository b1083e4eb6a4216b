"""Operator marks: Flag/Archive move a finished scan and its report aside and log why (``marks.log``)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any


from .scanfile import (MARKS, MARKS_LOG, SCAN_SUFFIXES, _decode, _now_iso, _open_rw, confined_path,
                       recover_scan_file, safe_name)

log = logging.getLogger(__name__)

# ---- operator marks ------------------------------------------------------------------------


def mark_scan(root: str | os.PathLike, scan_file: str | os.PathLike, mark: str, reason: str = "",
              *, user: str | None = None) -> Path:
    """Flag (bad) or archive (good) a finished scan; returns the scan file's new path.

    Writes ``dqm_mark``, ``dqm_mark_reason`` and ``dqm_mark_time`` on ``/entry``, moves the
    file with its report (``<stem>.html`` and ``<stem>_plots/`` next to it) into
    ``root/flagged/`` or ``root/archive/``, and appends one JSON line to ``root/marks.log``.
    Refuses (ValueError) paths outside ``root`` and unknown marks, (StorageError) a scan still
    being written, (FileExistsError) a name already taken in the target directory. A file
    left by a killed writer is recovered first. Regenerate the report afterwards (it shows
    the mark), e.g. ``ReportWorker.submit(new_path)``.
    """
    if mark not in MARKS:
        raise ValueError(f"mark must be one of {sorted(MARKS)}, got {mark!r}")
    root_r = Path(root).expanduser().resolve()
    if not root_r.is_dir():
        raise ValueError(f"output directory {root_r} does not exist")
    src = confined_path(root_r, scan_file)
    if not src.is_file():
        raise FileNotFoundError(f"scan file {src} does not exist")
    if src.suffix.lower() not in SCAN_SUFFIXES:
        raise ValueError(f"{src.name} is not a scan results file ({', '.join(SCAN_SUFFIXES)})")
    dest_dir = confined_path(root_r, MARKS[mark])
    dest = confined_path(root_r, Path(MARKS[mark]) / src.name)
    moving = src != dest
    if moving and dest.exists():
        raise FileExistsError(f"{dest} already exists; not overwriting it")
    recover_scan_file(src)
    now = _now_iso()
    reason = str(reason or "")
    with _open_rw(src) as f:
        entry = f.require_group("entry")
        entry.attrs["dqm_mark"] = mark
        entry.attrs["dqm_mark_reason"] = reason
        entry.attrs["dqm_mark_time"] = now
        scan_id = _decode(entry["title"][()]) if "title" in entry else src.stem
    moved: list[str] = []
    if moving:
        dest_dir.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        moved.append(src.name)
        stem = safe_name(src.stem)  # the report's name (see report.write_report)
        for extra in (src.with_name(stem + ".html"), src.with_name(stem + "_plots")):
            if extra.exists() and not extra.is_symlink():
                target = dest_dir / extra.name
                if target.exists():
                    shutil.rmtree(target) if target.is_dir() else target.unlink()
                shutil.move(str(extra), str(target))
                moved.append(extra.name)
    if user is None:
        try:
            import getpass
            user = getpass.getuser()
        except Exception:  # noqa: BLE001 - no passwd entry in a container
            user = ""
    line = {"time": now, "scan_id": scan_id, "mark": mark, "reason": reason, "user": user,
            "from": str(src.relative_to(root_r)), "to": str(dest.relative_to(root_r)), "moved": moved}
    fd = os.open(root_r / MARKS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    log.info("scan %s %s (%s): %s", scan_id, mark, reason, dest)
    return dest


def read_marks_log(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every mark ever made under ``root``, oldest first (unparsable lines are skipped)."""
    out = []
    p = Path(root) / MARKS_LOG
    if p.is_file():
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def scan_files(root: str | os.PathLike) -> list[Path]:
    """Results files in ``root`` and its ``flagged/`` and ``archive/`` sub-directories."""
    root = Path(root)
    found: list[Path] = []
    for folder in (root, *(root / d for d in MARKS.values())):
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir()
                            if p.suffix.lower() in SCAN_SUFFIXES and p.is_file() and not p.name.startswith("."))
    return found


__all__ = ["mark_scan", "read_marks_log", "scan_files"]
