"""Export TraitShapes in the CUB-200-2011 layout, with masks and the class trait table."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from traitlens.data.traitshapes.classes import class_names, class_traits
from traitlens.data.traitshapes.config import PART_NAMES, SLOT_PARTS, SLOTS
from traitlens.data.traitshapes.dataset import InMemoryDataset, TraitShapes

logger = logging.getLogger(__name__)

__all__ = ["export_cub"]


def export_cub(
    dataset: TraitShapes | InMemoryDataset,
    out_dir: str | Path,
    test: TraitShapes | InMemoryDataset | None = None,
    progress: bool = False,
) -> Path:
    """Write TraitShapes in the CUB-200-2011 layout so ``CUBDataset`` reads it back.

    Writes ``images.txt``, ``classes.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
    ``bounding_boxes.txt`` (x y w h), ``parts/parts.txt``, ``parts/part_locs.txt`` (part-mask
    centroids), ``images/<class>/<name>.png``, ``segmentations/<class>/<name>.png`` (foreground,
    0/255), ``part_masks/<class>/<name>.png`` (a label map: pixel value = 1-based part id, 0
    background; parts never overlap) and ``traits.json`` (slots, values, class traits, config).

    Args:
        dataset: the training split (``is_train = 1``); its transform is ignored.
        out_dir: output folder (created).
        test: an optional test split (``is_train = 0``) with the same config.
        progress: show a progress bar.

    Returns:
        ``out_dir`` as a Path.
    """
    from tqdm.auto import tqdm

    config = dataset.config
    if test is not None and test.config != config:
        raise ValueError("train and test splits must share one TraitShapesConfig")
    out = Path(out_dir)
    names = class_names(config)
    class_dirs = [f"{c + 1:03d}.{name.replace('/', '_')}" for c, name in enumerate(names)]
    splits = [(dataset, 1)] + ([(test, 0)] if test is not None else [])
    lines: dict[str, list[str]] = {k: [] for k in ("images", "labels", "split", "boxes", "locs")}
    image_id = 0
    bar = tqdm(total=sum(len(d) for d, _ in splits), desc="export", unit="img", disable=not progress)
    for ds, is_train in splits:
        for i in range(len(ds)):
            s = ds.raw(i)
            image_id += 1
            rel = f"{class_dirs[s.label]}/{ds.split}_{i:06d}.png"
            for sub, array in (
                ("images", s.image),
                ("segmentations", (s.owner > 0).astype(np.uint8) * 255),
                ("part_masks", s.owner),
            ):
                path = out / sub / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
            x0, y0, x1, y1 = s.box
            lines["images"].append(f"{image_id} {rel}")
            lines["labels"].append(f"{image_id} {s.label + 1}")
            lines["split"].append(f"{image_id} {is_train}")
            lines["boxes"].append(f"{image_id} {x0:g} {y0:g} {x1 - x0:g} {y1 - y0:g}")
            for p, (px, py, vis) in enumerate(s.parts):
                lines["locs"].append(f"{image_id} {p + 1} {px:.3f} {py:.3f} {int(vis)}")
            bar.update(1)
    bar.close()
    (out / "parts").mkdir(parents=True, exist_ok=True)
    files = {
        "images.txt": lines["images"],
        "classes.txt": [f"{c + 1} {d}" for c, d in enumerate(class_dirs)],
        "image_class_labels.txt": lines["labels"],
        "train_test_split.txt": lines["split"],
        "bounding_boxes.txt": lines["boxes"],
        "parts/parts.txt": [f"{p + 1} {name}" for p, name in enumerate(PART_NAMES)],
        "parts/part_locs.txt": lines["locs"],
    }
    for name, content in files.items():
        (out / name).write_text("".join(line + "\n" for line in content))
    traits = {
        "slots": list(config.slots),
        "values": {slot: list(SLOTS[slot]) for slot in config.slots},
        "slot_parts": {slot: SLOT_PARTS[slot] for slot in config.slots},
        "classes": [{"id": c + 1, "name": names[c], "traits": list(t)} for c, t in enumerate(class_traits(config))],
        "config": asdict(config),
    }
    (out / "traits.json").write_text(json.dumps(traits, indent=2) + "\n")
    logger.info("wrote %d images in the CUB layout to %s", image_id, out)
    return out
