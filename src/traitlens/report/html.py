"""A self-contained HTML report (images embedded as base64), built section by section."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from traitlens._io import atomic_write

__all__ = ["HtmlReport"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}img{max-width:100%}
.note{color:#555;font-size:.9em}
"""


class HtmlReport:
    """Collects headings, text, tables and PNG figures, then writes one HTML file.

    Example:
        >>> r = HtmlReport("traitlens quickstart")
        >>> r.table(["a", "b"], [[1, 2]])
        >>> r.write("report.html")  # doctest: +SKIP
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self._parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        """A section heading (`level` 2) or sub-heading (3)."""
        if level not in (2, 3):
            raise ValueError(f"heading level must be 2 or 3, got {level}")
        self._parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, note: bool = False) -> None:
        """A paragraph of plain text (escaped)."""
        cls = ' class="note"' if note else ""
        self._parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]], floatfmt: str = ".3f") -> None:
        """A table; floats are formatted with `floatfmt`."""

        def cell(v: object) -> str:
            return html.escape(format(v, floatfmt) if isinstance(v, float) else str(v))

        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
        self._parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, png: bytes, caption: str = "") -> None:
        """An embedded PNG figure with a caption."""
        data = base64.b64encode(png).decode("ascii")
        self._parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def render(self) -> str:
        """The full HTML document."""
        body = "\n".join(self._parts)
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>")

    def write(self, path: str | Path) -> Path:
        """Write the report atomically and return its path."""
        text = self.render()
        return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
