"""Targets (posthoc.md §0): what to explain, resolved against the logits the method computes anyway."""

from __future__ import annotations

import difflib
import numbers
import re
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["TargetSpec", "class_index", "parse_target_text", "score_space", "target_scores"]

TARGET_SPACES = ("logit", "prob", "log_prob")

_INTEGER = re.compile(r"[+-]?\d+")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class TargetSpec:
    """A user's target request, resolved to class ids [B,K] once logits are known.

    Accepted forms: None or "top1" (the prediction), "topk:K", an int, a class name, a list with one
    entry per image (int or name), a list of lists (K per image), a LongTensor [B] or [B,K], or a
    `Concept` (CDAM only; see `concept`).

    Args:
        spec: the request.
        batch_size: B.
        num_classes: C, to check indices.
        class_names: the model's class names, to resolve names.
    """

    def __init__(
        self, spec: Any, batch_size: int, num_classes: int | None, class_names: Sequence[str] | None = None
    ) -> None:
        self.spec = spec
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else None
        self.concept = spec if _is_concept(spec) else None
        self.topk: int | None = None
        self.fixed: torch.Tensor | None = None
        self._parse()

    def _parse(self) -> None:
        spec = self.spec
        if self.concept is not None:
            return
        if spec is None or spec == "top1":
            self.topk = 1
        elif isinstance(spec, str) and spec.startswith("topk:"):
            try:
                self.topk = int(spec.split(":", 1)[1])
            except ValueError as err:
                raise ValueError(f"bad target '{spec}': expected 'topk:K' with an integer K") from err
            if self.topk < 1 or (self.num_classes is not None and self.topk > self.num_classes):
                raise ValueError(f"target '{spec}': K must be in 1..{self.num_classes}")
        elif isinstance(spec, torch.Tensor):
            ids = spec.long()
            ids = ids.view(-1, 1) if ids.dim() == 1 else ids
            if ids.dim() == 0:
                ids = ids.view(1, 1).expand(self.batch_size, 1)
            self.fixed = self._checked(ids)
        elif isinstance(spec, (numbers.Integral, str)):
            self.fixed = self._checked(torch.full((self.batch_size, 1), self._index(spec), dtype=torch.long))
        elif isinstance(spec, Sequence):
            if len(spec) != self.batch_size:
                raise ValueError(
                    f"a list target needs one entry per image: got {len(spec)} entries for {self.batch_size} images"
                )
            rows = [[self._index(t) for t in (item if isinstance(item, Sequence) and not isinstance(item, str)
                                              else [item])] for item in spec]
            if len({len(r) for r in rows}) != 1:
                raise ValueError("every image needs the same number of targets")
            self.fixed = self._checked(torch.tensor(rows, dtype=torch.long))
        else:
            raise TypeError(f"unsupported target {spec!r}")

    def _index(self, t: Any) -> int:
        if isinstance(t, bool):
            raise TypeError("a bool is not a class target")
        if isinstance(t, (numbers.Integral, torch.Tensor)):
            i = int(t)
            # Checked here, before any tensor is built: ids beyond int64 would raise an OverflowError there.
            if self.num_classes is not None and not 0 <= i < self.num_classes:
                raise ValueError(f"target {i} out of range for a model with {self.num_classes} classes")
            if not _INT64_MIN <= i <= _INT64_MAX:
                raise ValueError(f"target {i} is not a class index (beyond the int64 range)")
            return i
        if isinstance(t, str):
            if self.class_names is None:
                raise ValueError(f"target '{t}' is a class name but the model carries no class names")
            return class_index(t, self.class_names)
        raise TypeError(f"unsupported target {t!r}")

    def _checked(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[0] != self.batch_size:
            raise ValueError(f"targets for {ids.shape[0]} images given, batch has {self.batch_size}")
        if self.num_classes is not None and ids.numel() and (ids.min() < 0 or ids.max() >= self.num_classes):
            bad = ids[(ids < 0) | (ids >= self.num_classes)][0].item()
            raise ValueError(f"target {bad} out of range for a model with {self.num_classes} classes")
        return ids

    @property
    def num_targets(self) -> int:
        """K when known before the forward pass (always, except never for concepts: 1)."""
        if self.concept is not None:
            return 1
        if self.topk is not None:
            return self.topk
        assert self.fixed is not None  # _parse sets topk or fixed for every non-concept target
        return int(self.fixed.shape[1])

    @property
    def needs_logits(self) -> bool:
        """Whether resolving needs the model's predictions (top-k targets)."""
        return self.topk is not None

    def resolve(self, logits: torch.Tensor | None) -> torch.Tensor:
        """Class ids [B,K] on the device of `logits` (−1 for concept targets)."""
        device = logits.device if logits is not None else None
        if self.concept is not None:
            return torch.full((self.batch_size, 1), -1, dtype=torch.long, device=device)
        if self.fixed is not None:
            return self.fixed.to(device) if device is not None else self.fixed
        if logits is None:
            raise ValueError("top-k targets need the model's logits")
        assert self.topk is not None  # neither a concept nor fixed ids: a top-k request
        return logits.detach().topk(self.topk, dim=-1).indices

    def names(self, targets: torch.Tensor) -> list[list[str]] | None:
        """Readable names for resolved targets."""
        if self.concept is not None:
            return [[self.concept.name] for _ in range(targets.shape[0])]
        if self.class_names is None:
            return None
        return [[self.class_names[int(t)] for t in row] for row in targets.tolist()]


def _key(name: str) -> str:
    """A class name compared loosely: case, underscores, hyphens and runs of spaces ignored."""
    return " ".join(re.sub(r"[_\-]", " ", name).casefold().split())


def class_index(name: str, class_names: Sequence[str]) -> int:
    """The index of a class named `name` in `class_names`, accepting unambiguous variants of its spelling.

    In order: the exact name; the one name equal to it up to case, underscores, hyphens and spaces
    (`"black footed albatross"` for `"Black_footed_Albatross"`); the one class with it among its comma-separated
    synonyms, as ImageNet names are written (`"tabby cat"` for `"tabby, tabby cat"`).

    Raises:
        ValueError: no class matches (with "did you mean" for close names), or the name fits several classes.
    """
    names = list(class_names)
    if name in names:
        return names.index(name)
    key = _key(name)
    whole = [i for i, n in enumerate(names) if _key(n) == key]
    synonyms = [i for i, n in enumerate(names) if key in {_key(part) for part in n.split(",")}]
    for found in (whole, synonyms):
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            listed = "; ".join(f"{i}: '{names[i]}'" for i in found[:5])
            raise ValueError(f"class name '{name}' fits {len(found)} classes ({listed}); give the full name or index")
    spellings = {_key(part): n for n in names for part in [n, *n.split(",")] if part.strip()}
    close = list(dict.fromkeys(spellings[k] for k in difflib.get_close_matches(key, list(spellings), n=3,
                                                                               cutoff=0.6)))
    if close:
        raise ValueError(f"unknown class name '{name}'; did you mean {' or '.join(repr(n) for n in close)}?")
    raise ValueError(f"unknown class name '{name}'; known: {', '.join(names[:20])}"
                     + (" ..." if len(names) > 20 else ""))


def parse_target_text(text: str, class_names: Sequence[str] | None = None) -> str | int | list[int | str]:
    """Target text as typed on a command line or in a form → a `TargetSpec` request (posthoc.md §0).

    'top1' (also for blank text) and 'topk:K' stay strings, an integer ('5', '-1') becomes a class id, one of
    `class_names` stays that name (even with a comma in it; compared as `class_index` does), 'a,b' becomes a
    list with one entry per image (each an id or a name), anything else is a class name. Ranges and names are
    checked by `TargetSpec`.

    Raises:
        ValueError: 'topk:K' without an integer K, or a list with an empty entry.
    """
    t = text.strip()
    if t in ("", "top1"):
        return "top1"
    if t.startswith("topk:"):
        try:
            int(t.split(":", 1)[1])
        except ValueError as err:
            raise ValueError(f"bad target '{t}': expected 'topk:K' with an integer K") from err
        return t
    if _INTEGER.fullmatch(t):
        return int(t)
    if "," not in t or (class_names and _key(t) in {_key(n) for n in class_names}):
        return t
    items = [item.strip() for item in t.split(",")]
    if not all(items):
        raise ValueError(f"bad target '{t}': an empty entry in a comma-separated list")
    return [int(item) if _INTEGER.fullmatch(item) else item for item in items]


def score_space(logits: torch.Tensor, space: str = "logit", option: str = "target_space") -> torch.Tensor:
    """Logits mapped to the score space every method and metric shares: 'logit', 'prob' (softmax), 'log_prob'.

    `option` names the caller's argument in the error message.
    """
    if space == "logit":
        return logits
    if space == "prob":
        return logits.softmax(-1)
    if space == "log_prob":
        return logits.log_softmax(-1)
    raise ValueError(f"unknown {option} '{space}'; choose from {TARGET_SPACES}")


def target_scores(logits: torch.Tensor, targets: torch.Tensor, space: str = "logit") -> torch.Tensor:
    """Scores y [B,K] of `targets` in `space` ('logit' default, 'prob' softmax, 'log_prob')."""
    return score_space(logits, space).gather(-1, targets)


def _is_concept(spec: Any) -> bool:
    return hasattr(spec, "vector") and hasattr(spec, "name") and not isinstance(spec, (str, torch.Tensor))
