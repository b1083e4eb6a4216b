"""README's layout section names every module of the tree, and nothing that is not there."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("tango_dqm", "devices", "analysis")


def layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1]
    return section.split("```\n", 2)[1]


def named_modules() -> set[str]:
    """Module paths as the tree spells them: indentation gives the folder; the leading *.py words of a line
    are files (``app.py  hsds.py  server.py`` names three), the first other word starts the description."""
    found: set[str] = set()
    folders: list[tuple[int, str]] = []
    for line in layout_block().splitlines():
        words = line.split()
        if not words:
            continue
        indent = len(line) - len(line.lstrip())
        folders = [(i, f) for i, f in folders if i < indent]
        if words[0].endswith("/"):
            folders.append((indent, words[0]))
            continue
        prefix = "".join(f for _, f in folders)
        for word in words:
            if not word.endswith(".py"):
                break
            found.add(prefix + word)
    return found


def real_modules() -> set[str]:
    return {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if "__pycache__" not in p.parts and not (p.name == "__init__.py" and p.parent.name != "tango_dqm")}


def test_readme_layout_matches_the_tree():
    named, real = named_modules(), real_modules()
    assert real - named == set(), "modules missing from README's layout section"
    assert named - real == set(), "README's layout section names modules that do not exist"
