"""Sardana Pool controllers for the DataQualityMonitor (docs/sardana.md).

Add this folder to the Pool's ``PoolPath`` (``pool_path()`` gives it); the Pool then
loads ``DataQualityMonitorController.py``. Nothing here imports sardana until a Pool loads it.
"""
from __future__ import annotations

from pathlib import Path


def pool_path() -> str:
    """The folder to put on a Sardana Pool's PoolPath."""
    return str(Path(__file__).resolve().parent)
