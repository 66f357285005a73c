"""The atlas as HTML pages that open from disk: `index.html` (every class × part, the head × part table, links) and
one page per class under `classes/` (part shares and lifts, exemplars, "why A, not B" for each confused class).
Images are embedded as data URIs and the style sheet inline, so a page needs no other file and no network
(docs/atlas.md "The pages").
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path

from traitlens._io import atomic_write
from traitlens.evaluation import Atlas, ClassAtlas, ConfusedPair

__all__ = ["class_page", "index_page", "lift_colour", "write_atlas_html"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}h3{font-size:1.05em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
td.expected{outline:2px solid #c00;outline-offset:-2px}td.top{font-weight:bold}tr.background td{color:#777}
.note{color:#555;font-size:.9em}.hit{color:#070}.miss{color:#b00}
.cards{display:flex;flex-wrap:wrap;gap:.8em}figure{margin:0;text-align:center}
figure img{width:128px;height:auto;image-rendering:pixelated;display:block}
figcaption{font-size:.75em;color:#555;max-width:128px;overflow-wrap:anywhere}
.exemplar{border:1px solid #ddd;padding:.4em;border-radius:4px}.row{display:flex;gap:.4em;flex-wrap:wrap}
nav{font-size:.9em}nav a{margin-right:1em}
"""


def lift_colour(lift: float) -> str:
    """Cell colour for a lift: white at 1, orange above (more evidence than area), blue below, grey for none;
    the scale is log2, saturating at 8× either way."""
    if not math.isfinite(lift) or lift <= 0:
        return "#eeeeee" if not math.isfinite(lift) else "#9ab8e0"
    t = max(-1.0, min(1.0, math.log2(lift) / 3))
    hi, lo = (255, 166, 0), (67, 113, 171)
    end = hi if t > 0 else lo
    rgb = [round(255 + (e - 255) * abs(t)) for e in end]
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _e(v: object) -> str:
    return html.escape(str(v))


def _f(v: float, fmt: str = ".3f") -> str:
    return format(v, fmt) if math.isfinite(v) else "–"


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %" if math.isfinite(v) else "–"


def _img(at: Atlas, rel: str, caption: str) -> str:
    data = base64.b64encode(at.image(rel)).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n")


def class_file(index: int) -> str:
    """The file name of a class page (relative to `classes/`)."""
    return f"c{index:04d}.html"


def _part_table(at: Atlas, shares: dict[str, float], lift: dict[str, float], area: dict[str, float] | None,
                expected: Sequence[str] | None, top: str | None, table_id: str) -> str:
    head = "<tr><th>part</th><th>share of evidence</th>" + ("<th>share of area</th>" if area else "") + \
        "<th>lift</th></tr>"
    rows = []
    for p in [*at.parts, "background"]:
        cls = " class='background'" if p == "background" else ""
        marks = [m for m, on in (("expected", bool(expected) and p in (expected or [])), ("top", p == top)) if on]
        mark = f" class='{' '.join(marks)}'" if marks else ""
        cells = f"<td{mark}>{_e(p)}</td><td>{_f(shares.get(p, math.nan))}</td>"
        if area:
            cells += f"<td>{_f(area.get(p, math.nan))}</td>"
        lv = lift.get(p, math.nan)
        rows.append(f"<tr{cls}>{cells}<td style='background:{lift_colour(lv)}'>{_f(lv, '.2f')}</td></tr>")
    return f"<table id='{table_id}'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _hit_line(at: Atlas) -> str:
    if at.hit_fraction is None:
        return ""
    n = round(at.hit_fraction * at.n_hit_classes)
    return (f"<p id='hit-fraction'>The top-lift part is one of the class's discriminative parts for <b>{n} of "
            f"{at.n_hit_classes}</b> classes ({_pct(at.hit_fraction)}).</p>")


def index_page(at: Atlas) -> str:
    """The first page: a summary, the class × part lift map, the class table and the head × part table."""
    title = f"Trait atlas: {at.model} · {at.method}"
    parts = [f"<h1>{_e(title)}</h1>",
             f"<p>{at.n_images} images of {len(at.classes)} classes; accuracy {_pct(at.accuracy)}. "
             f"Method <code>{_e(at.method)}</code>{' (signed)' if at.signed else ''}. "
             + (f"Parts: {_e(', '.join(at.parts))}.</p>" if at.parts else "No part annotations: part columns are "
                "absent.</p>"),
             _hit_line(at)]
    if at.parts:
        cols = [*at.parts, "background"]
        head = "".join(f"<th>{_e(p)}</th>" for p in cols)
        body = []
        for c in at.classes:
            cells = []
            for p in cols:
                lv, cls = c.lift.get(p, math.nan), []
                if c.expected and p in c.expected:
                    cls.append("expected")
                if p == c.top_part:
                    cls.append("top")
                tip = f"share {_f(c.shares.get(p, math.nan))} · area {_f(c.area.get(p, math.nan))}"
                attr = f" class='{' '.join(cls)}'" if cls else ""
                cells.append(f"<td{attr} style='background:{lift_colour(lv)}' title='{tip}'>{_f(lv, '.2f')}</td>")
            body.append(f"<tr><td><a href='classes/{class_file(c.index)}'>{_e(c.name)}</a></td>{''.join(cells)}</tr>")
        parts += ["<h2>Classes × parts: lift of the evidence</h2>",
                  "<p class='note'>Lift = the part's share of the positive evidence ÷ its share of the image "
                  "(1: as much as its size; orange above, blue below). Bold: the top part (background never "
                  "ranked); red outline: the parts that tell the class from its siblings (TraitShapes).</p>",
                  f"<table id='class-parts'><thead><tr><th>class</th>{head}</tr></thead><tbody>{''.join(body)}"
                  "</tbody></table>"]
    parts += ["<h2>Classes</h2>", _class_table(at)]
    if at.heads:
        parts += ["<h2>Heads × parts</h2>",
                  "<p class='note'>Per head: lift of its positive evidence per part, over every image.</p>",
                  _head_table(at)]
    return _page(title, "\n".join(parts))


def _class_table(at: Atlas) -> str:
    head = ["class", "images", "accuracy", *(["top part", "lift"] if at.parts else []),
            *(["expected parts", "found"] if at.hit_fraction is not None else []), "most confused with"]
    rows = []
    for c in at.classes:
        cells = [f"<a href='classes/{class_file(c.index)}'>{_e(c.name)}</a>", str(c.n), _pct(c.accuracy)]
        if at.parts:
            cells += [_e(c.top_part or "–"), _f(c.lift.get(c.top_part or "", math.nan), ".2f")]
        if at.hit_fraction is not None:
            found = ("–" if c.hit is None else "<span class='hit'>yes</span>" if c.hit
                     else "<span class='miss'>no</span>")
            cells += [_e(", ".join(c.expected or [])), found]
        cells.append(", ".join(f"<a href='classes/{class_file(c.index)}#pair-{p.other}'>{_e(p.other_name)}</a> "
                               f"({p.count})" for p in c.confused))
        rows.append("<tr class='class-row'>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    ths = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<table id='classes'><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _head_table(at: Atlas) -> str:
    cols = [*at.parts, "background"]
    rows = []
    for h in at.heads:
        cells = "".join(f"<td style='background:{lift_colour(h['lift'].get(p, math.nan))}'>"
                        f"{_f(h['lift'].get(p, math.nan), '.2f')}</td>" for p in cols)
        rows.append(f"<tr><td>head {h['head']}</td>{cells}<td>{_e(h['top_part'] or '–')}</td></tr>")
    ths = "".join(f"<th>{_e(p)}</th>" for p in cols)
    return f"<table id='heads'><thead><tr><th>head</th>{ths}<th>top part</th></tr></thead><tbody>{''.join(rows)}" \
           "</tbody></table>"


def _pair_section(at: Atlas, c: ClassAtlas, p: ConfusedPair) -> str:
    out = [f"<section id='pair-{p.other}'><h3>Why {_e(c.name)}, not "
           f"<a href='{class_file(p.other)}'>{_e(p.other_name)}</a></h3>",
           f"<p>{p.count} of {c.n} images of {_e(c.name)} predicted as {_e(p.other_name)} ({_pct(p.rate)}); mean "
           f"probability of {_e(p.other_name)} {_f(p.mean_prob)}.</p>"]
    if not at.contrast:
        out.append(f"<p class='note'>{_e(at.method)} is not class-specific: no contrast maps.</p>")
    elif at.parts and p.n_contrast:
        out += [f"<p class='note'>Share of the positive contrast (s<sub>A</sub> − s<sub>B</sub>)⁺ per part, over the "
                f"{p.n_contrast} images of {_e(c.name)} explained against {_e(p.other_name)}.</p>",
                _part_table(at, p.shares, p.lift, None, p.expected, p.top_part, f"pair-parts-{p.other}")]
        if p.expected is not None:
            verdict = "–" if p.hit is None else ("<span class='hit'>found</span>" if p.hit
                                                 else "<span class='miss'>not found</span>")
            out.append(f"<p>Parts where the two classes differ (TraitShapes): {_e(', '.join(p.expected) or 'none')}"
                       f"; top contrast part {_e(p.top_part or '–')}: {verdict}.</p>")
    key = f"contrast-{p.other}"
    cards = [_img(at, e.files[key], f"{e.name}: {c.name} − {p.other_name}") for e in c.exemplars if key in e.files]
    if cards:
        out.append(f"<div class='cards'>{''.join(cards)}</div>")
    out.append("</section>")
    return "\n".join(out)


def class_page(at: Atlas, c: ClassAtlas) -> str:
    """The page of one class: accuracy, part shares and lifts, exemplars, and one section per confused class."""
    pos = [x.index for x in at.classes].index(c.index)
    nav = ["<a href='../index.html'>← all classes</a>"]
    if pos > 0:
        nav.append(f"<a href='{class_file(at.classes[pos - 1].index)}'>previous: {_e(at.classes[pos - 1].name)}</a>")
    if pos + 1 < len(at.classes):
        nav.append(f"<a href='{class_file(at.classes[pos + 1].index)}'>next: {_e(at.classes[pos + 1].name)}</a>")
    parts = [f"<nav>{''.join(nav)}</nav>", f"<h1>{_e(c.name)}</h1>",
             f"<p>{c.n_correct} of {c.n} images classified correctly ({_pct(c.accuracy)}); {_e(at.model)}, "
             f"method <code>{_e(at.method)}</code>.</p>"]
    if at.parts:
        parts += ["<h2>Evidence per part</h2>",
                  "<p class='note'>Share of the positive evidence of the true class per part, the part's share of "
                  "the image, and their ratio (lift). The background is listed apart and never ranked.</p>",
                  _part_table(at, c.shares, c.lift, c.area, c.expected, c.top_part, "parts")]
        if c.expected is not None:
            verdict = "–" if c.hit is None else ("<span class='hit'>found</span>" if c.hit
                                                 else "<span class='miss'>not found</span>")
            parts.append(f"<p id='expected'>Discriminative parts (TraitShapes): {_e(', '.join(c.expected) or 'none')}"
                         f"; top part {_e(c.top_part or '–')}: {verdict}.</p>")
    parts.append("<h2>Exemplars</h2>")
    if not c.exemplars:
        parts.append("<p class='note'>No correctly classified image.</p>")
    cards = []
    for e in c.exemplars:
        row = [_img(at, e.files["image"], e.name), _img(at, e.files["map"], f"{at.method}: {c.name}")]
        heads = [_img(at, f, f"#{k + 1}: head {h}") for k, (h, f) in enumerate(e.heads)]
        order = "ranked by blurring" if at.head_ranking == "blurring" else "in head order"
        extra = f"<p class='note'>heads, {order}</p><div class='row'>{''.join(heads)}</div>" if heads else ""
        cards.append(f"<div class='exemplar'><div class='row'>{''.join(row)}</div>{extra}"
                     f"<p class='note'>p = {_f(e.prob)}</p></div>")
    parts.append(f"<div class='cards'>{''.join(cards)}</div>")
    parts.append("<h2>Confused with</h2>")
    parts += [_pair_section(at, c, p) for p in c.confused] or ["<p class='note'>No other class.</p>"]
    return _page(f"{c.name}: trait atlas", "\n".join(parts))


def write_atlas_html(at: Atlas, out: str | Path | None = None) -> Path:
    """Write `index.html` and `classes/cNNNN.html` into `out` (default: the atlas's own folder); returns the
    index path."""
    folder = Path(out) if out is not None else at.out
    if folder is None:
        raise ValueError("the atlas was computed in memory: pass the folder to write the pages into")
    for c in at.classes:
        text = class_page(at, c)
        atomic_write(folder / "classes" / class_file(c.index), lambda p, t=text: p.write_text(t, encoding="utf-8"))  # type: ignore[misc]
    index = index_page(at)
    return atomic_write(folder / "index.html", lambda p: p.write_text(index, encoding="utf-8"))
