"""What a report says in words, derived from its numbers: accuracy warnings and the "what was found" paragraph.

Every sentence is computed from the values passed in (no claim is written by hand), so a run whose numbers differ
gets a paragraph that says something different; `tests/test_quickstart.py` feeds synthetic numbers to check that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["NEAR_CHANCE_GAP", "AccuracyStatus", "Findings", "accuracy_status", "accuracy_warning", "findings",
           "near_chance_threshold"]

#: A model is "near chance" when its accuracy closes less than this fraction of the gap from chance to 100 %
#: (8 classes: below 34.4 %). Its maps explain a model that has learnt (almost) nothing.
NEAR_CHANCE_GAP = 0.25

AccuracyStatus = Literal["ok", "below target", "near chance"]


def near_chance_threshold(num_classes: int, gap: float = NEAR_CHANCE_GAP) -> float:
    """The accuracy under which a `num_classes`-way classifier counts as near chance: 1/C + gap·(1 − 1/C)."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    chance = 1.0 / num_classes
    return chance + gap * (1.0 - chance)


def accuracy_status(accuracy: float, num_classes: int, target: float) -> AccuracyStatus:
    """"near chance" (below `near_chance_threshold`), else "below target" (below `target`), else "ok"."""
    if accuracy < near_chance_threshold(num_classes):
        return "near chance"
    return "below target" if accuracy < target else "ok"


def accuracy_warning(name: str, accuracy: float, num_classes: int, target: float) -> str | None:
    """A one-sentence warning for a model near chance or below `target`; None when it reached the target."""
    status = accuracy_status(accuracy, num_classes, target)
    chance = 1.0 / num_classes
    if status == "near chance":
        return (f"Near chance: {name} reached only {accuracy:.1%} test accuracy (chance {chance:.1%}, near-chance "
                f"line {near_chance_threshold(num_classes):.1%}). It has learnt (almost) nothing; its maps do not "
                "show evidence for the classes and its rows should not be read.")
    if status == "below target":
        return (f"Below target: {name} reached {accuracy:.1%} test accuracy, under the {target:.0%} target "
                f"(chance {chance:.1%}); its maps explain a model that has not learnt the classes well.")
    return None


@dataclass
class Findings:
    """The sentences of the "what was found" paragraph and the facts they state.

    Attributes:
        sentences: the paragraph, one claim per sentence.
        main_status: `accuracy_status` of the main model.
        beats_baseline: whether the main model's accuracy exceeds the baseline's.
        best_posthoc: the post-hoc method (on the main model) with the highest `key` score.
        best_native: the by-design model whose own maps score highest (near-chance models left out).
        native_beats_posthoc: whether `best_native` scores above `best_posthoc` (None when either is missing).
        separated: whether `best_posthoc`'s interval lies above the runner-up's (None without intervals).
        key: the leaderboard column the comparisons use.
    """

    sentences: list[str] = field(default_factory=list)
    main_status: AccuracyStatus = "ok"
    beats_baseline: bool | None = None
    best_posthoc: str | None = None
    best_native: str | None = None
    native_beats_posthoc: bool | None = None
    separated: bool | None = None
    key: str = "trait_energy"

    def text(self) -> str:
        return " ".join(self.sentences)


def _value(row: Mapping[str, Any], key: str) -> float:
    v = row.get(key)
    return math.nan if v is None else float(v)


def _ranked(rows: Sequence[Mapping[str, Any]], key: str) -> list[Mapping[str, Any]]:
    usable = [r for r in rows if not math.isnan(_value(r, key))]
    return sorted(usable, key=lambda r: -_value(r, key))


def findings(
    accuracy: Mapping[str, float],
    *,
    num_classes: int,
    target: float,
    baseline: float | None = None,
    baseline_name: str = "colour-histogram baseline",
    rows: Sequence[Mapping[str, Any]] = (),
    main_model: str = "ViT",
    key: str = "trait_energy",
) -> Findings:
    """The "what was found" paragraph of a TraitShapes report, from its numbers.

    Args:
        accuracy: model name → test accuracy; `main_model` is the classifier the post-hoc methods explain, the
            others are by-design models.
        num_classes: classes of the task (chance = 1 / num_classes).
        target: the accuracy a model should reach for its maps to be worth reading (e.g. 0.85).
        baseline: the accuracy of a baseline that cannot see the traits (e.g. colour histograms).
        rows: leaderboard rows (`evaluation.leaderboard_small`): "method", "model", "source" ("native" for a
            model's own maps), the `key` column and optionally "<key>_ci" as (low, high).
        main_model: the name of the main model in `accuracy` and in the rows' "model".
        key: the column to compare maps by (higher is better), e.g. "trait_energy" or "trait_pg".
    """
    out = Findings(key=key)
    chance = 1.0 / num_classes
    acc = accuracy.get(main_model)
    if acc is not None:
        out.main_status = accuracy_status(acc, num_classes, target)
        if out.main_status == "near chance":
            out.sentences.append(f"The {main_model} is near chance ({acc:.1%}; chance {chance:.1%}): it has not "
                                 "learnt the classes, so none of the maps below can show the traits.")
        else:
            s = f"The {main_model} reached {acc:.1%} test accuracy (chance {chance:.1%})"
            if baseline is not None:
                out.beats_baseline = acc > baseline
                diff = 100 * (acc - baseline)
                s += (f", {diff:.0f} points above the {baseline_name} ({baseline:.1%}), so it uses more than colour "
                      "statistics" if out.beats_baseline else
                      f", no better than the {baseline_name} ({baseline:.1%}): it may rely on colour statistics "
                      "rather than the traits")
            s += "." if out.main_status == "ok" else f"; that is below the {target:.0%} target."
            out.sentences.append(s)
    others = {m: a for m, a in accuracy.items() if m != main_model}
    if others:
        status = {m: accuracy_status(a, num_classes, target) for m, a in others.items()}
        good = [f"{m} ({others[m]:.1%})" for m in others if status[m] == "ok"]
        low = [f"{m} ({others[m]:.1%})" for m in others if status[m] == "below target"]
        dead = [f"{m} ({others[m]:.1%})" for m in others if status[m] == "near chance"]
        parts = []
        if good:
            parts.append(f"{_join(good)} reached the {target:.0%} target")
        if low:
            parts.append(f"{_join(low)} stayed below it")
        if dead:
            parts.append(f"{_join(dead)} stayed near chance (their maps are not evidence)")
        out.sentences.append("Of the by-design models, " + "; ".join(parts) + ".")
    posthoc = _ranked([r for r in rows if r.get("source") != "native" and r.get("model", main_model) == main_model],
                      key)
    if posthoc:
        best = posthoc[0]
        out.best_posthoc = str(best["method"])
        s = (f"Of the post-hoc maps of the {main_model}, {best['method']} scored highest on {key} "
             f"({_value(best, key):.3f})")
        if len(posthoc) > 1:
            second = posthoc[1]
            s += f", ahead of {second['method']} ({_value(second, key):.3f})"
            ci_best, ci_second = best.get(f"{key}_ci"), second.get(f"{key}_ci")
            if ci_best and ci_second and not any(math.isnan(float(v)) for v in (*ci_best, *ci_second)):
                out.separated = float(ci_best[0]) > float(ci_second[1])
                s += ("; their 95 % intervals do not overlap" if out.separated else
                      "; their 95 % intervals overlap, so these images do not separate the two")
        out.sentences.append(s + ".")
    usable = {m for m, a in others.items() if accuracy_status(a, num_classes, target) != "near chance"}
    native = _ranked([r for r in rows if r.get("source") == "native" and r.get("model") in usable], key)
    if native:
        out.best_native = str(native[0]["model"])
    if native and posthoc:
        nv, pv = _value(native[0], key), _value(posthoc[0], key)
        out.native_beats_posthoc = nv > pv
        verb = "beat" if out.native_beats_posthoc else "did not beat"
        out.sentences.append(
            f"The best by-design model's own maps ({native[0]['method']}, {key} {nv:.3f}) {verb} the best post-hoc "
            f"map ({posthoc[0]['method']}, {pv:.3f}); these maps come from different classifiers, so read this "
            "together with their accuracies.")
    return out


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
