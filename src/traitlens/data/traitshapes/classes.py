"""TraitShapes class algebra: the trait tuple of every class, class names, siblings and labels.

Classes are trait tuples over the config's slots; two classes are siblings when they differ in
exactly one slot, which is what trait metrics contrast (datasets.md, "TraitShapes").
"""

from __future__ import annotations

import itertools
import zlib
from functools import lru_cache

import numpy as np

from traitlens.data.traitshapes.config import SLOTS, TraitShapesConfig

__all__ = ["class_names", "class_traits", "differing_slots", "sample_label", "sibling_pairs"]

_VALUE_LABELS: dict[str, dict[str, str]] = {
    "head_colour": {"red": "red-head", "blue": "blue-head", "yellow": "yellow-head"},
    "crest": {"none": "no-crest", "spike": "spike"},
}


@lru_cache(maxsize=64)
def _class_traits_cached(slots: tuple[str, ...], num_classes: int) -> tuple[tuple[int, ...], ...]:
    radices = [len(SLOTS[s]) for s in slots]
    candidates = list(itertools.product(*(range(r) for r in radices)))
    chosen = [candidates.pop(0)]
    usage = [np.zeros(r, dtype=np.int64) for r in radices]
    for j, v in enumerate(chosen[0]):
        usage[j][v] += 1
    while len(chosen) < num_classes:
        # Stay connected (every class gets a sibling), cover unused trait values first so every
        # slot varies, then maximise sibling edges, then prefer rarely used values (balance).
        def key(t: tuple[int, ...]) -> tuple[bool, int, int, int]:
            edges = sum(sum(a != b for a, b in zip(t, c, strict=True)) == 1 for c in chosen)
            new_values = sum(int(usage[j][v] == 0) for j, v in enumerate(t))
            return edges > 0, new_values, edges, -sum(int(usage[j][v]) for j, v in enumerate(t))

        best = max(candidates, key=key)
        candidates.remove(best)
        chosen.append(best)
        for j, v in enumerate(best):
            usage[j][v] += 1
    return tuple(chosen)


def class_traits(config: TraitShapesConfig) -> list[tuple[int, ...]]:
    """The trait tuple (value index per slot of ``config.slots``) of every class.

    Chosen greedily and deterministically: each new class is a sibling (differs in exactly one
    slot) of a chosen one, unused values come first so every slot varies when the class count
    allows, then the choice maximises sibling pairs.
    """
    return list(_class_traits_cached(config.slots, config.num_classes))


def class_names(config: TraitShapesConfig) -> list[str]:
    """Human-readable class names such as ``"red-head/stripes/fan/spike"``."""
    names = []
    for traits in class_traits(config):
        words = []
        for slot, v in zip(config.slots, traits, strict=True):
            value = SLOTS[slot][v]
            words.append(_VALUE_LABELS.get(slot, {}).get(value, value))
        names.append("/".join(words))
    return names


def differing_slots(config: TraitShapesConfig, class_a: int, class_b: int) -> list[int]:
    """Indices (into ``config.slots``) of the slots where two classes differ."""
    traits = class_traits(config)
    return [j for j, (a, b) in enumerate(zip(traits[class_a], traits[class_b], strict=True)) if a != b]


def sibling_pairs(config: TraitShapesConfig) -> list[tuple[int, int, int]]:
    """All class pairs ``(a, b, slot)`` with ``a < b`` that differ in exactly the one slot ``slot``."""
    pairs = []
    for a, b in itertools.combinations(range(config.num_classes), 2):
        diff = differing_slots(config, a, b)
        if len(diff) == 1:
            pairs.append((a, b, diff[0]))
    return pairs


def _defining_slots(config: TraitShapesConfig) -> list[int]:
    traits = np.asarray(class_traits(config))
    return [j for j in range(len(config.slots)) if len(np.unique(traits[:, j])) > 1]


def sample_label(config: TraitShapesConfig, index: int, split: str = "train") -> int:
    """The class of an index: a fresh permutation of all classes per block of ``num_classes``.

    Every block of ``num_classes`` consecutive indices holds each class once (balanced) while
    the order inside a block is seeded, so the label is not a simple function of the index.
    """
    block, pos = divmod(index, config.num_classes)
    rng = np.random.default_rng([config.seed, _split_code(split), block, 0x1AB])
    return int(rng.permutation(config.num_classes)[pos])


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode())
