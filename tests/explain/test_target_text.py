"""`parse_target_text`: the one reading of target text shared by the CLI and the server."""

from __future__ import annotations

import pytest

from traitlens.explain import parse_target_text


@pytest.mark.parametrize(("text", "expected"), [
    ("top1", "top1"),
    ("", "top1"),
    ("  top1 ", "top1"),
    ("topk:3", "topk:3"),
    ("5", 5),
    ("-1", -1),
    ("+2", 2),
    ("tabby", "tabby"),
    ("3,4", [3, 4]),
    ("tabby, 5", ["tabby", 5]),
])
def test_parse_target_text(text, expected) -> None:
    assert parse_target_text(text) == expected


def test_a_class_name_with_a_comma_stays_one_name() -> None:
    names = ["tench, Tinca tinca", "goldfish"]
    assert parse_target_text("tench, Tinca tinca", names) == "tench, Tinca tinca"
    assert parse_target_text("goldfish,1", names) == ["goldfish", 1]
    assert parse_target_text("1", ["0", "1"]) == 1  # an integer is a class id, even where a name matches


@pytest.mark.parametrize(("text", "message"), [
    ("topk:x", "expected 'topk:K' with an integer K"),
    ("3,,4", "empty entry"),
])
def test_bad_target_text(text, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_target_text(text)


@pytest.mark.parametrize("spec", [10**30, -(10**30), [1, 10**30], [[0, 10**30]], "1000000000000000000000000000000"])
@pytest.mark.parametrize("num_classes", [3, None])
def test_huge_class_ids_are_a_value_error(spec, num_classes) -> None:
    """Ids beyond int64 are a ValueError naming the id, not an OverflowError from building the tensor."""
    from traitlens.explain import TargetSpec

    spec = parse_target_text(spec) if isinstance(spec, str) else spec
    batch = len(spec) if isinstance(spec, list) else 2
    with pytest.raises(ValueError, match=r"target -?10000000000"):
        TargetSpec(spec, batch, num_classes)
