"""The quickstart report's sections that score the trained models: the small leaderboard, the same-model table and
the trait atlases (each computes with `traitlens.evaluation` and writes its part of the report)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from traitlens._io import atomic_write
from traitlens.evaluation import OTHER_SOURCE_COLOUR, SOURCE_COLOURS
from traitlens.report import SOURCE_LEGEND, HtmlReport, Swatch, leaderboard_figure, leaderboard_legend

__all__ = ["atlas_section", "leaderboard_section", "same_model_section", "source_cell", "write_text"]


def leaderboard_section(report: HtmlReport, model: torch.nn.Module, test, nets: Mapping[str, torch.nn.Module],
                        accuracy: Mapping[str, float], n_images: int) -> list[dict]:
    """The small TraitShapes leaderboard: post-hoc methods on the ViT, peer rows, and the models' own maps.

    Returns its rows (for the "what was found" paragraph)."""
    from traitlens.evaluation import leaderboard_small

    rows, _ = leaderboard_small(model, test, n_images=n_images, native_models=nets,
                                model_name="ViT", accuracies=accuracy)
    report.heading("Leaderboard against the known traits (small)")
    report.paragraph(f"{n_images} test images, each explained for its true class, best trait_energy "
                     "first. Each row names the model its map came from and that model's test accuracy: rows of "
                     "different models compare maps of different classifiers, not methods on one classifier (the "
                     "same-model table does that). Every column is explained under the table.")
    columns = [c for c in ("trait_pg", "trait_energy", "trait_iou", "object_energy", "deletion", "insertion",
                            "s_per_img") if rows and c in rows[0]]
    header = ["method", "model", "model accuracy", "source", *columns]
    report.table(header, [[r["method"], r["model"], r["model_acc"], source_cell(r["source"]),
                           *[r[c] for c in columns]] for r in rows])
    report.heading("What the columns and colours mean", level=3)
    report.table(["column", "what it measures", "better"], leaderboard_legend(header), text_columns=(1,))
    report.table(["colour", "source of the map"],
                 [[source_cell(src), SOURCE_LEGEND[src]] for src in SOURCE_COLOURS
                  if any(r["source"] == src for r in rows)], text_columns=(1,))
    if rows:
        report.figure(leaderboard_figure(rows), "leaderboard: trait energy, trait pointing game and insertion − "
                      "deletion per row with 95 % bootstrap intervals; colour = source of the map")
    return rows


def source_cell(source: str) -> Swatch:
    """A table cell with the leaderboard colour of a map's source."""
    return Swatch(SOURCE_COLOURS.get(source, OTHER_SOURCE_COLOUR), source)


def same_model_section(report: HtmlReport, nets: Mapping[str, torch.nn.Module], test, out: Path, n_images: int,
                       methods: Sequence[str], seed: int) -> None:
    """Each by-design model's own maps against post-hoc maps computed on that same model."""
    from traitlens.evaluation import same_model_rows, same_model_table

    report.heading("Native maps against post-hoc maps on the same model")
    report.paragraph(f"{n_images} test images per model, true class. native: the model's own map "
                     "(mean over heads); native_top-k: the top-k heads of Prompt-CAM's ranking by blurring; the "
                     "post-hoc rows explain that same model. trait_*: the sibling-discriminative part; class_*: "
                     "every trait part of the class. pg = pointing game, energy = share of positive evidence; "
                     "deletion ↓ / insertion ↑ on that model. [95 % bootstrap CI]; the chance row is a random map. "
                     "Methods the model cannot run are listed under the table.")
    for kind, net in nets.items():
        table = same_model_table(net, test, methods=list(methods), n_images=n_images,
                                 n_boot=300, seed=seed)
        header, body = same_model_rows(table)
        report.heading(f"{kind}: {table.summary().split(';')[0]}", level=3)
        report.table(header, body)
        if table.skipped:
            report.paragraph("; ".join(f"{m}: {why}" for m, why in table.skipped.items()), note=True)
        write_text(out / f"same_model_{kind}.json", json.dumps(table.to_dict()))


def atlas_section(report: HtmlReport, model: torch.nn.Module, nets: Mapping[str, torch.nn.Module], test, out: Path,
                  per_class: int, progress: bool) -> None:
    """Trait atlases (docs/atlas.md) of the ViT's CDAM maps and of each by-design model's own maps, linked from the
    report: which part carries each class's evidence, area-corrected, and whether it is a discriminative one."""
    from traitlens.evaluation import atlas
    from traitlens.report import write_atlas_html

    runs = [("vit-cdam", "ViT", model, "cdam"),
            *((f"{kind}-native", kind, net, "native") for kind, net in nets.items())]
    report.heading("Trait atlas")
    report.paragraph(f"The first {per_class} test images of every class, explained for their true class and their "
                     "two runner-up classes. Per class, the part with the highest lift (its share of the positive "
                     "evidence ÷ its share of the image, background kept apart) is its top part; a hit is a top "
                     "part among the traits that tell the class from its siblings. Each atlas has a page per class "
                     "with exemplars and \"why A, not B\" contrast maps for its most confused classes.")
    rows: list[list[object]] = []
    links: list[tuple[str, str]] = []
    for folder, name, net, method in runs:
        at = atlas(net, test, method, out=out / "atlas" / folder, max_per_class=per_class, model_name=name,
                   resume=False, progress=progress)
        index = write_atlas_html(at)
        hits = "-" if at.hit_fraction is None else f"{round(at.hit_fraction * at.n_hit_classes)} of {at.n_hit_classes}"
        rows.append([name, method, at.accuracy, hits])
        links.append((f"{name} ({method})", index.relative_to(out).as_posix()))
    report.table(["model", "method", "accuracy on these images", "classes whose top part is a trait"], rows)
    report.links(links)


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda p: p.write_text(text))
