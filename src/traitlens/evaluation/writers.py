"""The files of an evaluation: results.csv, per_image.csv, results.json, results.md and plots/*.png."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from traitlens._io import atomic_write
from traitlens.evaluation.lsc import LSC_READING
from traitlens.evaluation.results import SUMMARY_FIELDS, EvalResults

__all__ = ["write_results"]

_LSC_TEXT = {
    "min_logit": "the class with the lowest logit for the image (lsc = min_logit)",
    "traits": "the class whose trait tuple differs from the true class in the most slots, ties to the lowest class "
              "index (lsc = traits)",
}


def write_results(res: EvalResults, out: Path, config: dict[str, Any]) -> None:
    """Write the summary table (CSV, JSON, Markdown), the per-image values and the figures into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "results.csv", SUMMARY_FIELDS, res.rows)
    _write_csv(out / "per_image.csv", ["method", "metric", "index", "slot", "value"], _per_image_rows(res))
    knobs = {f"{m}/{k}": r.summary()["knobs"] for (m, k), r in res.results.items()}
    doc = {"config": config, "summary": res.rows, "timing_seconds_per_image": res.timing, "skipped": res.skipped,
           "knobs": knobs}
    _write_text(out / "results.json", json.dumps(_clean(doc), indent=2, default=repr, allow_nan=False), None)
    _write_text(out / "results.md", _markdown(res, config), "utf-8")
    for name, png in res.figures.items():
        _write_bytes(out / "plots" / f"{name}.png", png)


def _per_image_rows(res: EvalResults) -> list[dict[str, Any]]:
    """One row per (method, metric, image, target slot), padded slots left out."""
    rows = []
    idx = res.indices.tolist() if res.indices is not None else []
    for (method, metric), r in res.results.items():
        pad = r.extras.get("padded", torch.zeros(r.values.shape, dtype=torch.bool))
        for i, row in enumerate(r.values.tolist()):
            for k, v in enumerate(row):
                if pad[i, k]:
                    continue
                rows.append({"method": method, "metric": metric, "index": idx[i] if i < len(idx) else i,
                             "slot": k, "value": v})
    return rows


def _markdown(res: EvalResults, config: Mapping[str, Any]) -> str:
    """results.md: the table, how to read LSC scores (target="lsc") and what was skipped."""
    md = ["# traitlens evaluation", "", f"{config['n_images']} images, target = {_target_text(config)}; "
          "values are aggregates with 95 % bootstrap CIs over images; ↑ / ↓ = higher / lower is better"
          + (" for the class a map explains (see the reading below)." if config["target"] == "lsc" else "."), "",
          res.to_markdown(), ""]
    if config["target"] == "lsc":
        md += ["## Reading the least-similar-class (LSC) scores", "",
               "Every map explains the image's least similar class (metrics.md §6, SCOUTER Table 1): "
               f"{_LSC_TEXT.get(str(config['lsc']), 'the class given by the user mapping in results.json')}. "
               "Report these numbers separately from the true-class ones. " + LSC_READING, ""]
    if res.skipped:
        md += ["## Skipped", "", *(f"- {k}: {v}" for k, v in sorted(res.skipped.items())), ""]
    return "\n".join(md)


def _target_text(config: Mapping[str, Any]) -> str:
    """The target rule in words, for results.md."""
    if config["target"] == "lsc":
        rule = config["lsc"] if isinstance(config["lsc"], str) else "mapping"
        return f"least similar class (lsc = {rule})"
    if config["target"] == "label" and config.get("multi_label"):
        return ("label, every present class of a multi-label image (pointing game: per-class accuracy, then the mean "
                "over classes)")
    return str(config["target"])


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf → None, tuples → lists, keys → str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _write_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    _write_text(path, buf.getvalue(), "utf-8")


def _write_text(path: Path, text: str, encoding: str | None) -> None:
    def write(p: Path) -> None:
        p.write_text(text, encoding=encoding)

    atomic_write(path, write)


def _write_bytes(path: Path, data: bytes) -> None:
    def write(p: Path) -> None:
        p.write_bytes(data)

    atomic_write(path, write)
