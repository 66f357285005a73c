"""`parse_target_text`: the one reading of target text shared by the CLI and the server."""

from __future__ import annotations

import re

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


IMAGENET_LIKE = ["tabby, tabby cat", "tiger cat", "Egyptian cat", "crane", "crane, derrick", "Black_footed_Albatross"]


@pytest.mark.parametrize(("name", "index"), [
    ("tabby, tabby cat", 0),          # the exact name
    ("tabby cat", 0),                 # one of its comma-separated synonyms
    ("TABBY", 0),                     # a synonym, up to case
    ("tiger cat", 1),
    ("egyptian  cat", 2),             # case and spaces
    ("black footed albatross", 5),    # underscores as spaces
    ("black-footed albatross", 5),    # hyphens too
    ("crane", 3),                     # an exact name wins over a synonym of another class
    ("Crane ", 3),                    # and so does a whole name up to case
])
def test_class_names_accept_unambiguous_variants(name, index) -> None:
    from traitlens.explain import TargetSpec

    assert TargetSpec(name, 1, len(IMAGENET_LIKE), IMAGENET_LIKE).fixed.tolist() == [[index]]


@pytest.mark.parametrize(("name", "message"), [
    ("tabby kat", "unknown class name 'tabby kat'; did you mean 'tabby, tabby cat'?"),
    ("tigr cat", "unknown class name 'tigr cat'; did you mean 'tiger cat' or 'Egyptian cat'?"),
    ("derick", "unknown class name 'derick'; did you mean 'crane, derrick'?"),
    ("zzzz", "unknown class name 'zzzz'; known: tabby, tabby cat, tiger cat"),
])
def test_class_name_near_misses_say_what_was_meant(name, message) -> None:
    from traitlens.explain._targets import class_index

    with pytest.raises(ValueError, match="^" + re.escape(message)) as err:
        class_index(name, IMAGENET_LIKE)
    assert "\n" not in str(err.value)


def test_a_name_that_fits_several_classes_is_refused() -> None:
    from traitlens.explain._targets import class_index

    names = ["crane, derrick", "crane, grus", "heron"]
    with pytest.raises(ValueError, match=r"class name 'Crane' fits 2 classes \(0: 'crane, derrick'; 1: 'crane, "
                                         r"grus'\); give the full name or index"):
        class_index("Crane", names)


def test_a_full_name_typed_loosely_stays_one_target() -> None:
    assert parse_target_text("Tabby, Tabby cat", IMAGENET_LIKE) == "Tabby, Tabby cat"
    assert parse_target_text("tabby cat, tiger cat", IMAGENET_LIKE) == ["tabby cat", "tiger cat"]
