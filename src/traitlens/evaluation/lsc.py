"""Least-similar-class (LSC) targets for negative scoring (metrics.md §6; models.md §3.3).

SCOUTER's Table 1 scores the map of each image's least similar class: for positive-evidence methods a high
localisation score for the LSC is bad (the method marks the object whatever class it is asked about); for
SCOUTER₋ (e = −1) the LSC map is the "why not" evidence. Rules:

- `"min_logit"`: the class with the lowest logit for the image (our option; needs only the model);
- `"traits"`: TraitShapes: the class whose trait tuple differs from the true class in the most slots, ties to the
  lowest class index;
- a mapping `{true_class: lsc_class}` given by the user;
- `"wordnet"` (the SCOUTER reproduction's lowest Wu–Palmer similarity) needs the WordNet corpus, which traitlens
  cannot download, so it is refused with a message saying so.

"min_logit" and mappings are SCOUTER's `traitlens.models.least_similar_class`; "traits" is evaluation's own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from traitlens.models import least_similar_class

__all__ = ["LSC_READING", "LSC_RULES", "LscRule", "check_lsc_rule", "least_similar_classes", "lsc_targets"]

LSC_RULES = ("min_logit", "traits")
"""Named rules; a `{true_class: lsc_class}` mapping is the third form."""

LscRule = str | Mapping[int, int]

LSC_READING = ("For positive-evidence methods a high localisation score for the LSC is bad: the method marks the "
               "object whatever class it is asked about. For SCOUTER with e = −1 (SCOUTER₋) the LSC map is the "
               "\"why not\" evidence, so there a high localisation score is wanted. Faithfulness metrics keep their "
               "usual direction (they ask whether the map drives the LSC's score).")
"""How to read metrics computed on LSC maps (written into the evaluation report)."""


def least_similar_classes(class_traits: Sequence[Sequence[int]]) -> list[int]:
    """Per class, the class whose trait tuple differs from it in the most slots (ties → the lowest class index).

    Example:
        >>> least_similar_classes([(0, 0), (0, 1), (1, 1)])
        [2, 0, 0]
    """
    t = torch.as_tensor([list(row) for row in class_traits], dtype=torch.long)
    if t.shape[0] < 2:
        raise ValueError("the least similar class needs at least two classes")
    dist = (t[:, None, :] != t[None, :, :]).sum(-1)
    dist.fill_diagonal_(-1)  # a class is never its own LSC
    return dist.argmax(1).tolist()  # torch.argmax returns the first maximum: ties go to the lowest class index


def check_lsc_rule(lsc: Any, class_traits: Sequence[Sequence[int]] | None = None) -> LscRule:
    """Validate an `lsc=` rule early, with a message naming the problem; mapping keys and values become ints.

    Args:
        lsc: "min_logit", "traits", a {true_class: lsc_class} mapping, or None (→ "min_logit").
        class_traits: the dataset's class trait table, needed by "traits".
    """
    if lsc is None:
        return "min_logit"
    if isinstance(lsc, Mapping):
        try:
            rule = {int(k): int(v) for k, v in lsc.items()}
        except (TypeError, ValueError) as err:
            raise ValueError(f"an lsc mapping must map class ids to class ids, got {dict(lsc)!r}") from err
        same = sorted(k for k, v in rule.items() if k == v)
        if same:
            raise ValueError(f"an lsc mapping sends classes {same} to themselves; the LSC must be another class")
        return rule
    if lsc == "wordnet":
        raise ValueError("lsc='wordnet' (lowest Wu–Palmer similarity, the SCOUTER reproduction) needs the WordNet "
                         "corpus, which traitlens cannot download; use lsc='min_logit', lsc='traits' (TraitShapes) or "
                         "a {true_class: lsc_class} mapping computed offline")
    if lsc not in LSC_RULES:
        raise ValueError(f"unknown lsc rule {lsc!r}; choose from {LSC_RULES} or pass a {{true_class: lsc_class}} "
                         "mapping ('wordnet' needs a corpus traitlens cannot download)")
    if lsc == "traits" and class_traits is None:
        raise ValueError("lsc='traits' needs a TraitShapes dataset (a TraitShapesConfig as .config, or its CUB export "
                         "with traits.json); use lsc='min_logit' or a mapping for other data")
    return lsc


@torch.no_grad()
def lsc_targets(
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    rule: LscRule = "min_logit",
    labels: torch.Tensor | None = None,
    class_traits: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """The least similar class of every image, [B] long on the device of `images`.

    Args:
        model: image → logits; used by "min_logit".
        images: [B,3,H,W] in the model's input space.
        rule: "min_logit", "traits" or a {true_class: lsc_class} mapping (see `check_lsc_rule`).
        labels: [B] true classes; needed by "traits" and mappings.
        class_traits: the class trait table; needed by "traits".

    Example:
        >>> lsc_targets(model, x, "traits", labels=y, class_traits=class_traits(config))  # doctest: +SKIP
    """
    from traitlens.metrics import predict

    rule = check_lsc_rule(rule, class_traits)
    if rule == "min_logit":  # the first minimum (lowest class index); the models rule reads no labels
        logits = predict(model, images)
        return least_similar_class(logits, logits.new_empty(0, dtype=torch.long), "min_logit").to(images.device)
    if labels is None:
        raise ValueError(f"lsc={rule!r} needs one true label per image (multi-label or unlabelled data: "
                         "use lsc='min_logit')")
    if rule == "traits":
        if class_traits is None:  # check_lsc_rule refuses "traits" without a table
            raise ValueError("lsc='traits' needs the class trait table")
        table = torch.as_tensor(least_similar_classes(class_traits))
        if int(labels.max()) >= len(table):
            raise ValueError(f"label {int(labels.max())} has no row in the {len(table)}-class trait table")
        return table[labels.long().cpu()].to(images.device)
    if not isinstance(rule, dict):  # check_lsc_rule turns every mapping into a dict of ints
        raise ValueError(f"unknown lsc rule {rule!r}")
    missing = sorted({int(c) for c in labels.tolist()} - set(rule))
    if missing:
        raise ValueError(f"the lsc mapping has no entry for true classes {missing}")
    return least_similar_class(torch.empty(0), labels, rule).to(images.device)
