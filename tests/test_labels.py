"""Label sets (single- and multi-label) and the stratified validation split."""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.data.labels import LabelSet, is_multi_label, normalize_label, stratified_split
from pipelines.errors import UserError


def test_single_label_set_is_sorted_and_encodes_indices():
    labels = ["sport", "tech", "politics", "tech"]
    ls = LabelSet.from_labels(labels)
    assert ls.names == ["politics", "sport", "tech"] and not ls.multi_label and len(ls) == 3
    assert ls.encode(labels) == [1, 2, 0, 2]
    assert ls.decode(ls.encode(labels)) == labels
    assert ls.counts(labels) == {"politics": 1, "sport": 1, "tech": 2}


def test_one_joined_label_makes_the_set_multi_label():
    labels = ["b", "a|c", "c"]
    assert is_multi_label(labels) and not is_multi_label(["a", "b"])
    ls = LabelSet.from_labels(labels)
    assert ls.multi_label and ls.names == ["a", "b", "c"]
    assert ls.encode(labels) == [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    assert ls.decode([[0.9, 0.2, 0.7], [0.1, 0.1, 0.1]]) == ["a|c", ""]
    assert ls.counts(labels) == {"a": 1, "b": 1, "c": 2}


def test_normalize_label():
    assert normalize_label("  sport ") == "sport"
    assert normalize_label(" b | a|b|") == "b|a"


def test_json_round_trip():
    ls = LabelSet(["neg", "pos", "ñeutral"], multi_label=True)
    back = LabelSet.from_json(ls.to_json(), multi_label=True)
    assert back == ls
    with pytest.raises(UserError, match="JSON list"):
        LabelSet.from_json('{"neg": 0}')


def test_unknown_label_is_a_user_error():
    with pytest.raises(UserError, match="'weather'"):
        LabelSet(["rain", "sun"]).encode(["sun", "weather"])


def test_names_must_be_distinct_and_without_the_separator():
    with pytest.raises(ValueError):
        LabelSet(["a", "a"])
    with pytest.raises(ValueError):
        LabelSet(["a|b"])


def test_split_keeps_singletons_in_train_and_is_stratified():
    labels = ["big"] * 50 + ["mid"] * 20 + ["one"]
    train, valid = stratified_split(labels, valid_fraction=0.2, seed=3)
    assert sorted(train + valid) == list(range(len(labels)))
    assert Counter(labels[i] for i in valid) == {"big": 10, "mid": 4}
    assert len(labels) - 1 in train  # the single "one" example
    assert stratified_split(labels, valid_fraction=0.2, seed=3) == (train, valid)
    assert stratified_split(labels, valid_fraction=0.2, seed=4) != (train, valid)


def test_split_never_empties_a_class_from_train():
    labels = ["a", "a", "b", "b", "c"]
    train, valid = stratified_split(labels, valid_fraction=0.9, seed=0)
    assert {labels[i] for i in train} == {"a", "b", "c"} and len(valid) == 2


def test_split_of_tiny_classes_still_fills_valid():
    train, valid = stratified_split(["a", "a", "b", "c"], valid_fraction=0.1, seed=0)
    assert len(valid) == 1 and sorted(train + valid) == [0, 1, 2, 3]


def test_multi_label_split_uses_the_first_label():
    labels = ["x|y"] * 10 + ["y|x"] * 10
    _, valid = stratified_split(labels, valid_fraction=0.2, seed=0)
    assert Counter(labels[i].split("|")[0] for i in valid) == {"x": 2, "y": 2}


def test_bad_fraction():
    with pytest.raises(ValueError):
        stratified_split(["a", "b"], valid_fraction=1.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d|a"]), min_size=1, max_size=60), st.floats(0.05, 0.5))
def test_split_is_a_partition_and_train_has_every_class(labels, fraction):
    train, valid = stratified_split(labels, valid_fraction=fraction, seed=0)
    assert sorted(train + valid) == list(range(len(labels)))
    assert {labels[i].split("|")[0] for i in train} == {y.split("|")[0] for y in labels}
