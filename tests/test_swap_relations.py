"""TextSwap never makes a false negative from a synonym, a broader or narrower tag, or a near-synonym."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duetmc.augment.swap import text_swaps
from duetmc.augment.vocab import VocabularyError, default_vocabulary, load_vocabulary, normalise

VOCAB = default_vocabulary()
SWAPPABLE = [(c, t) for c in VOCAB.swap_categories for t in VOCAB.swap[c]]


def _swapped_to(tag: str, category: str, seed: int) -> list[str]:
    text = f"a track with {tag} in it"
    swaps = [s for s in text_swaps(text, {category: [tag]}, VOCAB, seed) if s.category == category and s.text]
    return [normalise(VOCAB.canonical(m.tag)) for s in swaps for m in VOCAB.find_mentions(s.text)
            if m.category == category]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SWAPPABLE), st.integers(0, 2**32))
def test_no_swap_produces_a_relative_of_the_tag(pick, seed):
    category, tag = pick
    produced = _swapped_to(tag, category, seed)
    assert produced, f"no swap for {tag}"
    assert not set(produced) & VOCAB.related(tag), (tag, produced)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(SWAPPABLE), st.integers(0, 2**32))
def test_relations_are_symmetric_where_they_should_be(pick, seed):
    _, tag = pick
    for other in VOCAB.related(tag):
        assert normalise(tag) in VOCAB.related(other)  # an ancestor's descendants include the tag


@pytest.mark.parametrize("tag, never", [
    ("rock", {"hard rock", "alternative", "alternative rock", "punk"}),
    ("electric guitar", {"guitar", "distorted guitar"}),
    ("drums", {"kick drum", "snare", "percussion"}),
    ("calm", {"relaxing", "soothing"}),
    ("relaxing", {"calm"}),
])
def test_the_reported_false_negatives_are_gone(tag, never):
    category = VOCAB.lookup(tag)[0]
    produced = {p for seed in range(400) for p in _swapped_to(tag, category, seed)}
    assert produced and not produced & {normalise(VOCAB.canonical(n)) for n in never}


def test_a_user_file_extending_the_default_keeps_and_adds_relations(tmp_path):
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"extends": "default", "categories": {"genre": {
        "swap": True, "tags": {"shoegaze": []}, "broader": {"shoegaze": ["alternative"]}}}}))
    v = load_vocabulary(path)
    assert "rock" in v.related("shoegaze") and "hard rock" in v.related("rock")
    path.write_text(json.dumps({"categories": {"genre": {"tags": {"a": []}, "broader": {"a": ["b"]}}}}))
    with pytest.raises(VocabularyError, match="relation names 'b', which is not a tag of this category"):
        load_vocabulary(path)
