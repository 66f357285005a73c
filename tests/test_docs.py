"""Every document the code cites exists in the repository, and every cited section is a heading there.

Docstrings cite the reference pages as `(posthoc.md §3)`, `metrics.md §1.2, §1.3`, `posthoc.md §0, §11–13` or
`datasets.md "Scoring"`. Bare names resolve to docs/reference/, paths (`docs/models_evidence.md`) to the repository
root. Sections are headings that start with the section sign, e.g. `### §1.4 ROAD`.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "reference"
SOURCES = sorted((REPO / "src" / "traitlens").rglob("*.py")) + sorted((REPO / "benchmarks").glob("*.py"))

#: Names of files the code *writes* (reports, benchmark tables), not documents it cites.
OUTPUT_NAMES = frozenset({"results.md", "leaderboard.md", "README.md", "OUT/results.md", "same_model.md",
                          "OUT/same_model.md"})

MENTION = re.compile(r"(?<![\w./-])((?:\.\./)*(?:[\w-]+/)*[\w-]+\.md)(?![\w/])")
DOC = r"((?:[\w-]+/)*(?:posthoc|metrics|models|datasets|api)\.md)"
NUM = r"\d+(?:\.\d+)*"
ITEM = rf"§\s?({NUM})(?:\s?[–-]\s?§?({NUM}))?(?:\s+steps?\s+\d+(?:\s?[–-]\s?\d+)?)?"
CHAIN = re.compile(rf"(?<![\w/]){DOC}`*((?:\s*[,;]?\s*(?:and\s+)?{ITEM})+)")
ITEM_RE = re.compile(ITEM)
QUOTED = re.compile(rf"(?<![\w/]){DOC}`*(?:\s?§\s?({NUM}))?(?:[,:]?\s+\(?|\s*\()\"([^\"\n]+)\"")
HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")
SECTION = re.compile(rf"§\s?({NUM})")


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _resolve(name: str) -> Path:
    """A bare name is a reference page; a path is relative to the repository root."""
    return (REPO / name) if "/" in name else (REFERENCE / name)


def _expand(start: str, end: str | None) -> list[str]:
    """'11', '13' → ['11', '12', '13']; '1.1', '1.4' → ['1.1', ..., '1.4']; an end may omit the common prefix."""
    if end is None:
        return [start]
    a, b = start.split("."), end.split(".")
    if len(b) < len(a):
        b = a[: len(a) - len(b)] + b
    if len(a) != len(b) or a[:-1] != b[:-1] or int(b[-1]) < int(a[-1]):
        return [start, end]
    return [".".join([*a[:-1], str(i)]) for i in range(int(a[-1]), int(b[-1]) + 1)]


@cache
def _sections(doc: Path) -> dict[str, str]:
    """Section number → its text (heading to the next heading of the same or a higher level)."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    heads = []
    in_code = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else HEADING.match(line)
        if m:
            heads.append((i, len(m.group(1)), m.group(2)))
    out: dict[str, str] = {}
    for j, (i, level, title) in enumerate(heads):
        stop = next((k for k, lv, _ in heads[j + 1:] if lv <= level), len(lines))
        sec = SECTION.match(title)
        if sec:
            out.setdefault(sec.group(1), "\n".join(lines[i:stop]))
    return out


def _squash(text: str) -> str:
    return " ".join(text.replace("*", "").replace("`", "").split()).lower()


def _sources() -> list[tuple[Path, str]]:
    return [(p, p.read_text(encoding="utf-8")) for p in SOURCES]


def test_cited_documents_exist() -> None:
    missing = []
    for path, text in _sources():
        for m in MENTION.finditer(text):
            name = m.group(1)
            if name in OUTPUT_NAMES:
                continue
            if not _resolve(name).is_file():
                missing.append(f"{path.relative_to(REPO)}:{_line(text, m.start())}: {name} "
                               f"(looked for {_resolve(name).relative_to(REPO)})")
    assert not missing, "cited documents that are not in the repository:\n" + "\n".join(missing)


def test_cited_sections_exist() -> None:
    bad = []
    for path, text in _sources():
        for m in CHAIN.finditer(text):
            doc = _resolve(m.group(1))
            if not doc.is_file():
                continue  # reported by test_cited_documents_exist
            sections = _sections(doc)
            for item in ITEM_RE.finditer(m.group(2)):
                for number in _expand(item.group(1), item.group(2)):
                    if number not in sections:
                        bad.append(f"{path.relative_to(REPO)}:{_line(text, m.start())}: {m.group(1)} §{number}")
    assert not bad, "cited sections without a heading in the document:\n" + "\n".join(bad)


def test_bare_sections_exist_in_a_cited_document() -> None:
    """A bare `§N` (the module already named its document) must be a section of a page the file cites.

    A third number level is an item of a numbered list (`§1.10.5` = oracle 5 of §1.10), so its parent counts.
    """
    bad = []
    for path, text in _sources():
        chains = [m.span() for m in CHAIN.finditer(text)]
        cited = {_resolve(m.group(1)) for m in MENTION.finditer(text)} & set(REFERENCE.glob("*.md"))
        docs = sorted(cited) or sorted(REFERENCE.glob("*.md"))
        for item in ITEM_RE.finditer(text):
            if any(a <= item.start() < b for a, b in chains):
                continue
            for number in _expand(item.group(1), item.group(2)):
                parent = number.rsplit(".", 1)[0] if number.count(".") >= 2 else number
                if not any(number in _sections(d) or parent in _sections(d) for d in docs):
                    bad.append(f"{path.relative_to(REPO)}:{_line(text, item.start())}: §{number} "
                               f"(not in {', '.join(d.name for d in docs)})")
    assert not bad, "bare section references that no cited document has:\n" + "\n".join(bad)


def test_quoted_section_names_exist() -> None:
    """`datasets.md "Scoring"` and `posthoc.md §0 "Outputs"` name text that is in that document (section)."""
    bad = []
    for path, text in _sources():
        for m in QUOTED.finditer(text):
            doc = _resolve(m.group(1))
            if not doc.is_file():
                continue
            body = _sections(doc).get(m.group(2), "") if m.group(2) else doc.read_text(encoding="utf-8")
            quote = m.group(3).rstrip(" .…")
            if _squash(quote) not in _squash(body):
                where = f" §{m.group(2)}" if m.group(2) else ""
                bad.append(f"{path.relative_to(REPO)}:{_line(text, m.start())}: {m.group(1)}{where} \"{quote}\"")
    assert not bad, "quoted names not found in the cited document:\n" + "\n".join(bad)


@pytest.mark.parametrize("doc", sorted(REFERENCE.glob("*.md")), ids=lambda p: p.name)
def test_reference_pages_have_unique_sections_and_an_index_entry(doc: Path) -> None:
    numbers = [SECTION.match(m.group(2)).group(1)  # type: ignore[union-attr]
               for line in doc.read_text(encoding="utf-8").splitlines()
               if (m := HEADING.match(line)) and SECTION.match(m.group(2))]
    assert len(numbers) == len(set(numbers)), f"{doc.name}: duplicate section numbers"
    if doc.name != "README.md":
        assert f"]({doc.name})" in (REFERENCE / "README.md").read_text(encoding="utf-8"), f"{doc.name} not indexed"


def test_expand_ranges() -> None:
    assert _expand("11", "13") == ["11", "12", "13"]
    assert _expand("1.1", "1.4") == ["1.1", "1.2", "1.3", "1.4"]
    assert _expand("1", None) == ["1"]
    m = CHAIN.search("(posthoc.md §0, §11–13; metrics.md §6)")
    assert m is not None and m.group(1) == "posthoc.md"
    assert [n for i in ITEM_RE.finditer(m.group(2)) for n in _expand(i.group(1), i.group(2))] == ["0", "11", "12", "13"]
