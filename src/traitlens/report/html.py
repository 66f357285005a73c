"""A self-contained HTML report (images embedded as base64), built section by section.

The page's content is `CONTENT_WIDTH_PX` wide, the width `traitlens.viz` draws its grids for, so a figure made
for it is shown at 1:1 and its text keeps the size it was drawn with.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from traitlens._io import atomic_write
from traitlens.viz import DISPLAY_WIDTH_PX

__all__ = ["CONTENT_WIDTH_PX", "HtmlReport", "Swatch"]

#: Width of the report's content box in CSS px (the body's max-width; padding lies outside it).
CONTENT_WIDTH_PX = DISPLAY_WIDTH_PX

_STYLE = f"""
body{{font-family:system-ui,sans-serif;max-width:{CONTENT_WIDTH_PX}px;margin:2em auto;padding:0 1em;color:#222}}
h1{{font-size:1.6em}}h2{{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}}
table{{border-collapse:collapse;font-size:.9em;margin:.8em 0}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}
th{{background:#f4f4f4}}td:first-child,th:first-child,.text{{text-align:left}}td.swatched{{white-space:nowrap}}
figure{{margin:1em 0}}figcaption{{font-size:.85em;color:#555}}img{{max-width:100%}}
.note{{color:#555;font-size:.9em}}
.warning{{background:#fdecea;border-left:4px solid #c62828;padding:.4em .8em}}
.caution{{background:#fff8e1;border-left:4px solid #f9a825;padding:.4em .8em}}
.summary{{background:#f1f6fb;border-left:4px solid #4c72b0;padding:.4em .8em}}
.swatch{{display:inline-block;width:.9em;height:.9em;margin-right:.35em;vertical-align:-.1em;border:1px solid #0003}}
"""


@dataclass(frozen=True)
class Swatch:
    """A table cell with a colour square before its text (e.g. the bar colour of a leaderboard row)."""

    colour: str
    text: str


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

    def links(self, items: Sequence[tuple[str, str]]) -> None:
        """A list of links, `(text, href)` each (e.g. relative paths to pages written next to the report)."""
        lis = "".join(f'<li><a href="{html.escape(href)}">{html.escape(text)}</a></li>' for text, href in items)
        self._parts.append(f"<ul>{lis}</ul>")

    def warning(self, text: str, severity: str = "warning") -> None:
        """A highlighted paragraph: "warning" (red: e.g. a model near chance) or "caution" (amber: below target)."""
        if severity not in ("warning", "caution"):
            raise ValueError(f"severity must be 'warning' or 'caution', got {severity!r}")
        self._parts.append(f'<p class="{severity}">{html.escape(text)}</p>')

    def placeholder(self) -> int:
        """Reserve a place for a paragraph written later (`fill`), e.g. a summary at the top; returns its slot."""
        self._parts.append("")
        return len(self._parts) - 1

    def fill(self, slot: int, text: str, css: str = "summary") -> None:
        """Write the paragraph of a `placeholder` slot."""
        if not 0 <= slot < len(self._parts) or self._parts[slot]:
            raise ValueError(f"slot {slot} is not an unfilled placeholder")
        self._parts[slot] = f'<p class="{html.escape(css)}">{html.escape(text)}</p>'

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]], floatfmt: str = ".3f",
              text_columns: Sequence[int] = ()) -> None:
        """A table; floats are formatted with `floatfmt`, `Swatch` cells get their colour square, and the columns
        in `text_columns` are left-aligned (prose rather than numbers)."""

        def cell(v: object) -> str:
            if isinstance(v, Swatch):
                return (f'<span class="swatch" style="background:{html.escape(v.colour)}"></span>'
                        f"{html.escape(v.text)}")
            return html.escape(format(v, floatfmt) if isinstance(v, float) else str(v))

        def td(j: int, v: object) -> str:
            css = "text" if j in text_columns else "swatched" if isinstance(v, Swatch) else ""
            return f'<td class="{css}">{cell(v)}</td>' if css else f"<td>{cell(v)}</td>"

        head = "".join(f'<th class="text">{html.escape(str(h))}</th>' if j in text_columns else
                       f"<th>{html.escape(str(h))}</th>" for j, h in enumerate(header))
        body = "".join("<tr>" + "".join(td(j, v) for j, v in enumerate(row)) + "</tr>" for row in rows)
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
        body = "\n".join(p for p in self._parts if p)
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>")

    def write(self, path: str | Path) -> Path:
        """Write the report atomically and return its path."""
        text = self.render()
        return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
