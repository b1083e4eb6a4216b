"""What is deployed: package, plugin and git versions, for provenance and ``deployedVersions``."""
from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def git_hash(start: Path | None = None) -> str:
    """The commit of the source tree the package runs from ("" when installed from a wheel).

    Reads ``.git`` files directly: no subprocess, no shell.
    """
    here = (start or Path(__file__)).resolve()
    for folder in [here, *here.parents][:4]:
        git = folder / ".git"
        if not git.is_dir():
            continue
        try:
            head = (git / "HEAD").read_text().strip()
            if not head.startswith("ref: "):
                return head
            ref = head[5:]
            ref_file = git / ref
            if ref_file.is_file():
                return ref_file.read_text().strip()
            packed = git / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
        except OSError:
            return ""
        return ""
    return ""


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def deployed_versions(analyses: list[Any] | None = None, extra: dict[str, str] | None = None) -> dict[str, Any]:
    """Versions of the package, its key dependencies and the loaded analyses."""
    info: dict[str, Any] = {
        "tango-dqm": package_version("tango-dqm"),
        "git": git_hash(),
        "numpy": package_version("numpy"),
        "h5py": package_version("h5py"),
        "pyzmq": package_version("pyzmq"),
        "analyses": {
            a.name: {"class": f"{type(a).__module__}:{type(a).__qualname__}", "version": a.version}
            for a in (analyses or [])
        },
    }
    info.update(extra or {})
    return info


def deployed_versions_json(analyses: list[Any] | None = None, extra: dict[str, str] | None = None) -> str:
    return json.dumps(deployed_versions(analyses, extra), sort_keys=True)
