"""The wheel carries what users of an installed traitlens need: the cited docs, `py.typed`, one version."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import traitlens

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_docs_types_and_the_version(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    shutil.copytree(ROOT / "docs", tree / "docs")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(tree)], check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("traitlens-*.whl")
    assert wheel.name.startswith(f"traitlens-{traitlens.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "traitlens/py.typed" in names
    docs = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md")}
    assert docs and {f"traitlens/{d}" for d in docs} <= names
