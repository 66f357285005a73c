"""The typed result of `atlas` and its files: `atlas.json`, `classes.csv`, `pairs.csv`, `heads.csv` (docs/atlas.md).

Every number in the files is rounded to 6 decimals and NaN is written as null (JSON) or an empty cell (CSV), so two
runs over the same data give the same bytes and two models' atlases can be compared file to file.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from traitlens._io import atomic_write

__all__ = ["Atlas", "ClassAtlas", "ConfusedPair", "Exemplar"]

#: Version of the `atlas.json` layout.
FORMAT = 1


def _num(v: float) -> float | None:
    """JSON-safe, stable number: NaN/inf → None, else rounded to 6 decimals."""
    return None if not math.isfinite(v) else round(float(v), 6)


def _nums(d: dict[str, float]) -> dict[str, float | None]:
    return {k: _num(v) for k, v in d.items()}


def _f(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _back(d: dict[str, Any] | None) -> dict[str, float]:
    return {k: _f(v) for k, v in (d or {}).items()}


@dataclass
class ConfusedPair:
    """Class A (the page's class) against a class B it is confused with: "why A, not B".

    Attributes:
        other, other_name: class B.
        count: images of A predicted as B (the confusion matrix cell); rate = count / images of A.
        mean_prob: the mean softmax probability of B on the images of A (ranks pairs of equal count).
        n_contrast: images of A explained against B (those whose runner-up classes include B).
        shares: per part, the share of the positive contrast evidence (s_A − s_B)⁺ (background apart).
        lift: per part, share ÷ the part's mean share of the image area.
        top_part: the part with the highest lift (background never ranked), or None.
        expected: TraitShapes: the parts carrying the trait slots in which A and B differ; hit: whether `top_part`
            is one of them (None elsewhere).
    """

    other: int
    other_name: str
    count: int
    rate: float
    mean_prob: float
    n_contrast: int = 0
    shares: dict[str, float] = field(default_factory=dict)
    lift: dict[str, float] = field(default_factory=dict)
    top_part: str | None = None
    expected: list[str] | None = None
    hit: bool | None = None


@dataclass
class Exemplar:
    """A correctly classified image of a class and its rendered maps (PNG files relative to the atlas folder).

    Attributes:
        index: the dataset index. name: the file name (or "image N"). prob: the class's softmax probability.
        files: "image", "map" (the explained class) and "contrast-B" (A − B, per confused class B) → PNG path.
        heads: (head index, PNG path) per head, most important first (models with per-head maps).
    """

    index: int
    name: str
    prob: float
    files: dict[str, str] = field(default_factory=dict)
    heads: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class ClassAtlas:
    """What one class relies on.

    Attributes:
        index, name: the class. n: its images in the atlas; n_correct: those classified correctly.
        shares: per part and "background", the mean share of the positive evidence s⁺ of the true class.
        area: per part and "background", the mean share of the image area.
        lift: shares ÷ area, per part and background: > 1 means more evidence than the part's size.
        top_part: the part (never the background) with the highest lift, or None without parts.
        expected: TraitShapes: the parts that tell the class from its siblings (datasets.md "TraitShapes").
        hit: TraitShapes: whether `top_part` is one of `expected` (None elsewhere, or without siblings).
        confused: the classes it is most confused with, most confused first.
        exemplars: a few correctly classified images with their maps.
    """

    index: int
    name: str
    n: int
    n_correct: int
    shares: dict[str, float] = field(default_factory=dict)
    area: dict[str, float] = field(default_factory=dict)
    lift: dict[str, float] = field(default_factory=dict)
    top_part: str | None = None
    expected: list[str] | None = None
    hit: bool | None = None
    confused: list[ConfusedPair] = field(default_factory=list)
    exemplars: list[Exemplar] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n if self.n else float("nan")


@dataclass
class Atlas:
    """The trait atlas of one model and method over a data set (`traitlens.evaluation.atlas`).

    Attributes:
        model: the model's name; fingerprint: the hash of its weights (`model_fingerprint`).
        method, method_options: the explanation method; signed: whether its maps are signed;
            contrast: whether contrast maps were computed (class-specific methods only).
        parts: the part names (empty for data without parts: the part columns are then absent).
        classes: one `ClassAtlas` per class with images, in class order.
        class_names: every class of the model; confusion: [C][C] counts, rows = true class, columns = predicted.
        heads: per head (models with per-head maps): head, shares, lift, top_part, over every image.
        head_ranking: how exemplar heads are ordered: "blurring" (Prompt-CAM, models.md §1.5), "index" or None.
        n_images, accuracy: images in the atlas and their accuracy.
        hit_fraction, n_hit_classes: TraitShapes: the fraction of classes (with siblings) whose top-lift part is
            a discriminative part, and how many classes that fraction is over; None elsewhere.
        out: the folder the atlas was written to or read from (None: in memory).
        images: PNG bytes by relative path (filled while computing; read from `out` on demand otherwise).
        seconds_per_image: explanation cost of the batches computed by this run (not written to atlas.json).
    """

    model: str
    fingerprint: str
    method: str
    method_options: dict[str, Any]
    signed: bool
    contrast: bool
    parts: list[str]
    classes: list[ClassAtlas]
    class_names: list[str]
    confusion: list[list[int]]
    heads: list[dict[str, Any]] = field(default_factory=list)
    head_ranking: str | None = None
    n_images: int = 0
    accuracy: float = float("nan")
    hit_fraction: float | None = None
    n_hit_classes: int = 0
    out: Path | None = None
    images: dict[str, bytes] = field(default_factory=dict, repr=False)
    seconds_per_image: float | None = None

    def image(self, path: str) -> bytes:
        """The PNG bytes of one exemplar file named in the atlas (in memory, else read from `out`)."""
        if path in self.images:
            return self.images[path]
        known = {p for c in self.classes for e in c.exemplars for p in [*e.files.values(), *(f for _, f in e.heads)]}
        if path not in known or self.out is None:
            raise KeyError(f"no exemplar image {path!r} in this atlas")
        root = self.out.resolve()
        full = (root / path).resolve()
        if not full.is_relative_to(root):  # an edited atlas.json must not point outside its folder
            raise KeyError(f"exemplar image {path!r} lies outside the atlas folder")
        return full.read_bytes()

    def class_atlas(self, index: int) -> ClassAtlas:
        """The entry of class `index`; KeyError when the class has no images in the atlas."""
        for c in self.classes:
            if c.index == index:
                return c
        raise KeyError(f"class {index} is not in this atlas")

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict[str, Any]:
        """Everything but the PNG bytes and the timing, JSON-safe (what `atlas.json` holds)."""
        classes = []
        for c in self.classes:
            d = asdict(c)
            d.update(shares=_nums(c.shares), area=_nums(c.area), lift=_nums(c.lift), accuracy=_num(c.accuracy))
            d["confused"] = [{**asdict(p), "rate": _num(p.rate), "mean_prob": _num(p.mean_prob),
                              "shares": _nums(p.shares), "lift": _nums(p.lift)} for p in c.confused]
            d["exemplars"] = [{**asdict(e), "prob": _num(e.prob), "heads": [list(h) for h in e.heads]}
                              for e in c.exemplars]
            classes.append(d)
        heads = [{**h, "shares": _nums(h["shares"]), "lift": _nums(h["lift"])} for h in self.heads]
        return {"format": FORMAT, "model": self.model, "fingerprint": self.fingerprint, "method": self.method,
                "method_options": self.method_options, "signed": self.signed, "contrast": self.contrast,
                "parts": self.parts, "n_images": self.n_images, "accuracy": _num(self.accuracy),
                "hit_fraction": None if self.hit_fraction is None else _num(self.hit_fraction),
                "n_hit_classes": self.n_hit_classes, "head_ranking": self.head_ranking,
                "class_names": self.class_names, "classes": classes, "heads": heads, "confusion": self.confusion}

    @classmethod
    def from_dict(cls, d: dict[str, Any], out: Path | None = None) -> Atlas:
        """The inverse of `to_dict` (PNG bytes are read from `out` on demand)."""
        if d.get("format") != FORMAT:
            raise ValueError(f"atlas.json format {d.get('format')!r} is not {FORMAT}; rebuild the atlas")
        classes = []
        for c in d["classes"]:
            pairs = [ConfusedPair(p["other"], p["other_name"], p["count"], _f(p["rate"]),
                                  _f(p["mean_prob"]), p["n_contrast"], _back(p["shares"]),
                                  _back(p["lift"]), p["top_part"], p["expected"], p["hit"])
                     for p in c["confused"]]
            exemplars = [Exemplar(e["index"], e["name"], _f(e["prob"]), dict(e["files"]),
                                  [(int(h), str(f)) for h, f in e["heads"]]) for e in c["exemplars"]]
            classes.append(ClassAtlas(c["index"], c["name"], c["n"], c["n_correct"], _back(c["shares"]),
                                      _back(c["area"]), _back(c["lift"]), c["top_part"], c["expected"], c["hit"],
                                      pairs, exemplars))
        heads = [{**h, "shares": _back(h["shares"]), "lift": _back(h["lift"])} for h in d["heads"]]
        return cls(d["model"], d["fingerprint"], d["method"], d["method_options"], d["signed"], d["contrast"],
                   d["parts"], classes, d["class_names"], d["confusion"], heads, d["head_ranking"], d["n_images"],
                   _f(d["accuracy"]), d["hit_fraction"], d["n_hit_classes"], out)

    @classmethod
    def load(cls, folder: str | Path) -> Atlas:
        """Read `folder/atlas.json` (written by `atlas(..., out=folder)`).

        Raises:
            FileNotFoundError: no atlas.json in the folder. ValueError: not an atlas file of this version.
        """
        folder = Path(folder)
        path = folder / "atlas.json"
        if not path.is_file():
            raise FileNotFoundError(f"no atlas in {folder} (atlas.json not found); make one with `traitlens atlas`")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")), folder)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a traitlens atlas: {type(err).__name__}: {err}") from err

    def write(self, folder: str | Path) -> Path:
        """Write `atlas.json`, `classes.csv`, `pairs.csv` (+ `heads.csv`) and the exemplar PNGs; returns the folder."""
        folder = Path(folder)
        for rel, png in self.images.items():
            atomic_write(folder / rel, lambda p, b=png: p.write_bytes(b))  # type: ignore[misc]
        text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False, default=repr)  # repr: odd method options
        atomic_write(folder / "atlas.json", lambda p: p.write_text(text + "\n", encoding="utf-8"))
        for name, table in (("classes.csv", self._class_rows()), ("pairs.csv", self._pair_rows()),
                            ("heads.csv", self._head_rows())):
            if table or name != "heads.csv":
                csv_text = _csv(table)
                atomic_write(folder / name, lambda p, t=csv_text: p.write_text(t, encoding="utf-8"))  # type: ignore[misc]
        self.out = folder
        return folder

    def _part_cells(self, shares: dict[str, float], lift: dict[str, float]) -> dict[str, Any]:
        cols = [*self.parts, "background"] if self.parts else []
        return {**{f"share_{p}": _num(shares.get(p, float("nan"))) for p in cols},
                **{f"lift_{p}": _num(lift.get(p, float("nan"))) for p in cols}}

    def _class_rows(self) -> list[dict[str, Any]]:
        rows = []
        for c in self.classes:
            row: dict[str, Any] = {"class_index": c.index, "class": c.name, "n": c.n, "n_correct": c.n_correct,
                                   "accuracy": _num(c.accuracy), **self._part_cells(c.shares, c.lift)}
            if self.parts:
                row["top_part"] = c.top_part or ""
            if self.hit_fraction is not None:
                row["expected"] = " ".join(c.expected or [])
                row["hit"] = "" if c.hit is None else int(c.hit)
            row["confused_with"] = " ".join(str(p.other) for p in c.confused)
            rows.append(row)
        return rows

    def _pair_rows(self) -> list[dict[str, Any]]:
        return [{"class_index": c.index, "class": c.name, "other_index": p.other, "other": p.other_name,
                 "count": p.count, "rate": _num(p.rate), "mean_prob": _num(p.mean_prob), "n_contrast": p.n_contrast,
                 **self._part_cells(p.shares, p.lift), **({"top_part": p.top_part or ""} if self.parts else {}),
                 **({"expected": " ".join(p.expected or []), "hit": "" if p.hit is None else int(p.hit)}
                    if self.hit_fraction is not None else {})}
                for c in self.classes for p in c.confused]

    def _head_rows(self) -> list[dict[str, Any]]:
        return [{"head": h["head"], **self._part_cells(h["shares"], h["lift"]), "top_part": h["top_part"] or ""}
                for h in self.heads]


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    return buf.getvalue()
