"""The README's layout section names every module of the package, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _layout_section() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Development", 1)[1]
    return section.split("```", 2)[1]


def test_readme_layout_matches_the_package():
    layout = _layout_section()
    named = set(re.findall(r"^  (\w+\.py|\w+/)\s", layout, flags=re.MULTILINE))
    package = REPO / "slurm_gateway"
    modules = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    directories = {f"{p.name}/" for p in package.iterdir() if p.is_dir() and p.name[0] != "_"}
    assert named == modules | directories


def test_readme_layout_names_top_level_directories_that_exist():
    layout = _layout_section()
    for entry in re.findall(r"^([\w.-]+/[\w.-]*)\s", layout, flags=re.MULTILINE):
        assert (REPO / entry).exists(), entry
