"""Packaging hook: the wheel carries the repository's docs/ as `traitlens/docs/`, so every document a docstring
cites (docs/reference/posthoc.md, ...) can be opened by users of the wheel too. Everything else is pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DOCS = Path(__file__).resolve().parent / "docs"


class BuildPyWithDocs(build_py):
    """`build_py` that also copies docs/**/*.md into the built package."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "traitlens" / "docs"
        for doc in sorted(DOCS.rglob("*.md")):
            dest = target / doc.relative_to(DOCS)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(doc, dest)


setup(cmdclass={"build_py": BuildPyWithDocs})
