"""TraitShapes: a fine-grained synthetic image set whose class-defining pixels are known.

Each image shows one "critter" (body, head, beak, wing, tail, optional crest) on a cluttered
background. A class is a tuple of trait values over trait slots (head colour, wing pattern,
tail shape, crest), so every explanation can be scored against the pixels that really decide
the class. See ``docs/reference/datasets.md`` ("TraitShapes").

Rendering is pure numpy: a per-pixel *owner* map records which part drew each visible pixel,
and every mask is derived from it, so masks are exactly the visible pixels of each part.
All randomness of one image comes from a generator seeded by ``(seed, split, index)`` and is
drawn in a fixed order that does not depend on the class, so two classes rendered with the
same index differ only inside their differing trait parts.

Modules: ``config`` (slots, parts, ``TraitShapesConfig``), ``classes`` (class traits, names,
siblings, labels), ``sample`` (``TraitShapesSample`` and its ground-truth masks), ``geometry``
and ``render`` (the rasteriser), ``dataset`` (torch datasets, ``materialize``), ``export``
(the CUB layout) and ``baseline`` (the colour-histogram check).

Example:
    >>> cfg = TraitShapesConfig(size=64, num_classes=8)
    >>> s = render(cfg, 0)
    >>> s.image.shape, s.trait_masks.shape
    ((64, 64, 3), (4, 64, 64))
"""

from traitlens.data.traitshapes.baseline import colour_histogram_baseline
from traitlens.data.traitshapes.classes import class_names, class_traits, differing_slots, sample_label, sibling_pairs
from traitlens.data.traitshapes.config import PART_NAMES, PRESETS, SLOT_PARTS, SLOTS, TraitShapesConfig
from traitlens.data.traitshapes.dataset import InMemoryDataset, TraitShapes, materialize
from traitlens.data.traitshapes.export import export_cub
from traitlens.data.traitshapes.geometry import _BEAK_RGB as _BEAK_RGB  # palette, read by tests
from traitlens.data.traitshapes.geometry import _HEAD_RGB as _HEAD_RGB
from traitlens.data.traitshapes.render import render
from traitlens.data.traitshapes.sample import TraitShapesSample, class_mask, discriminative_mask

__all__ = [
    "PART_NAMES",
    "PRESETS",
    "SLOTS",
    "SLOT_PARTS",
    "InMemoryDataset",
    "TraitShapes",
    "TraitShapesConfig",
    "TraitShapesSample",
    "class_mask",
    "class_names",
    "class_traits",
    "colour_histogram_baseline",
    "differing_slots",
    "discriminative_mask",
    "export_cub",
    "materialize",
    "render",
    "sample_label",
    "sibling_pairs",
]
