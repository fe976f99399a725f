"""Augment, Drop & Swap on the text side: vocabulary, template captions, View Dropout, TextSwap, pipeline."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from duetmc.augment.captions import CaptionRequest, TemplateCaptioner
from duetmc.augment.pipeline import augment_items, run_augment
from duetmc.augment.swap import text_swaps
from duetmc.augment.views import ViewConfig, draw_views
from duetmc.augment.viewsfile import read_views, write_views
from duetmc.augment.vocab import OTHER, Vocabulary, VocabularyError, default_vocabulary, load_vocabulary, normalise
from duetmc.manifest import Item

V = default_vocabulary()

SYNTHETIC = {
    "genre": "rock jazz electronic classical hip-hop folk reggae ambient blues funk pop metal country latin".split(),
    "mood": "happy sad calm energetic dark romantic mellow tense uplifting melancholic aggressive dreamy".split(),
    "instrument": ["piano", "electric piano", "organ", "acoustic guitar", "electric guitar", "distorted guitar", "bass",
                   "electric bass", "synth bass", "strings", "violin", "cello", "trumpet", "saxophone", "flute", "clarinet",
                   "synth pad", "synth lead", "drums", "choir", "harp", "vibraphone", "marimba", "brass"],
    "tempo": ["slow", "medium tempo", "fast"],
}
MTT_TOP50 = ["guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano", "ambient",
             "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing", "vocals", "no vocals",
             "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man",
             "classic", "choir", "voice", "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello",
             "no voice", "weird", "country", "metal", "female voice", "choral"]
FREE = ["groovy bass line", "low fi crackle", "shoegaze", "vinyl hiss"]


def _tag_dicts():
    """Random categorised tag sets: the synthetic corpus' categories plus some free (unknown) tags."""
    cats = {c: st.lists(st.sampled_from(tags), unique=True, max_size=5) for c, tags in SYNTHETIC.items()}
    cats["bpm"] = st.lists(st.sampled_from(["90", "120", "142"]), max_size=1)  # the synthetic corpus' open categories
    cats["key"] = st.lists(st.sampled_from(["C major", "A minor", "F# minor"]), max_size=1)
    cats[OTHER] = st.lists(st.sampled_from(FREE), unique=True, max_size=2)
    return st.fixed_dictionaries(cats).map(lambda d: {c: ts for c, ts in d.items() if ts}).filter(bool)


# --- vocabulary ---------------------------------------------------------------------------------


def test_default_vocabulary_covers_the_synthetic_corpus_and_magnatagatune():
    for category, tags in SYNTHETIC.items():
        for tag in tags:
            assert V.lookup(tag) == (category, tag), tag
    unknown = [t for t in MTT_TOP50 if V.lookup(t) is None]
    assert unknown == []
    synth = V.categorise({"genre": ["jazz"], "bpm": ["120"], "key": ["C major"], "tempo": ["medium tempo"]})
    assert synth.unknown == [] and synth.tags["bpm"] == ["120"] and synth.tags["key"] == ["C major"]
    assert set(V.swap_categories) == {"genre", "mood", "instrument"}
    assert "jazz" in V.swap["genre"] and "saxophone" in V.swap["instrument"]


def test_synonyms_normalise_to_one_canonical_tag():
    for form in ("hip hop", "Hip-Hop", "hiphop", "HIP_HOP", "hip-hop music"):
        assert V.lookup(form) == ("genre", "hip-hop")
    assert V.canonical("Bass Guitar") == "bass"
    assert V.canonical("male vocal") == "male vocals"
    assert normalise("  Electric -  Guitar ") == "electric guitar"


def test_find_mentions_prefers_the_longest_form_and_respects_word_boundaries():
    text = "A hip hop beat: electric guitar, rocket sounds, a darker mood, drum-and-bass breaks and Synth-Pop."
    found = [(m.tag, m.category, m.text) for m in V.find_mentions(text)]
    assert found == [("hip-hop", "genre", "hip hop"), ("beat", "rhythm", "beat"), ("electric guitar", "instrument", "electric guitar"),
                     ("drum and bass", "genre", "drum-and-bass"), ("synthpop", "genre", "Synth-Pop")]
    # an item's free tags are matched literally, and win over a shorter vocabulary word inside them
    free = V.find_mentions("with a groovy bass line", extra={OTHER: ["groovy bass line"]})
    assert [(m.tag, m.category) for m in free] == [("groovy bass line", OTHER)]


def test_categorise_keeps_unknown_tags_under_other_and_counts_them():
    out = V.categorise({"tags": ["Hip hop", "shoegaze", "electric guitar", "hip-hop"], "genre": ["vaporwave"], "mood": ["fast"]})
    assert out.tags == {"genre": ["hip-hop", "vaporwave"], "instrument": ["electric guitar"], "tempo": ["fast"], OTHER: ["shoegaze"]}
    assert out.unknown == ["shoegaze"]
    assert V.categorise(["rock", " ", "zither-ish"]).tags == {"genre": ["rock"], OTHER: ["zither-ish"]}


def test_user_vocabulary_replaces_or_extends_the_default(tmp_path):
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"categories": {"genre": {"swap": True, "tags": {"shoegaze": ["shoe-gaze"], "dream pop": []}},
                                              "texture": ["noisy wall"]}}))
    v = load_vocabulary(own)
    assert v.categories == ("genre", "texture") and v.lookup("rock") is None
    assert v.lookup("Shoe Gaze") == ("genre", "shoegaze") and v.swap["genre"] == ["shoegaze", "dream pop"]
    ext = tmp_path / "ext.json"
    ext.write_text(json.dumps({"extends": "default", "categories": {"genre": {"tags": {"shoegaze": [], "big beat": ["beat"]}}}}))
    v = load_vocabulary(ext)
    assert v.lookup("shoegaze") == ("genre", "shoegaze") and v.lookup("rock") == ("genre", "rock")
    assert v.lookup("beat") == ("genre", "big beat")  # the user's claim on a form wins over the default's
    assert "shoegaze" not in v.swap["genre"] and "jazz" in v.swap["genre"]  # the default swap list is kept


def test_a_form_listed_twice_is_an_error_naming_both_places(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"categories": {"genre": {"tags": {"rock": []}}, "mood": {"tags": {"rocking": ["Rock"]}}}}))
    with pytest.raises(VocabularyError, match=r"bad.json.*genre/'rock'.*mood/'rocking'"):
        load_vocabulary(bad)
    with pytest.raises(VocabularyError, match="not valid JSON"):
        (tmp_path / "x.json").write_text("{")
        load_vocabulary(tmp_path / "x.json")


# --- template captioner ------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(tags=_tag_dicts(), seed=st.integers(0, 2**32))
def test_template_caption_mentions_exactly_the_tags_given(tags, seed):
    text = TemplateCaptioner(V).caption(CaptionRequest(tags, seed))
    found = sorted(normalise(m.tag) for m in V.find_mentions(text, extra=tags))
    assert found == sorted(normalise(t) for ts in tags.values() for t in ts), text


def test_template_caption_is_deterministic_and_varied():
    cap = TemplateCaptioner(V)
    req = {"genre": ["jazz"], "mood": ["mellow"], "instrument": ["piano", "saxophone"], "tempo": ["slow"]}
    assert cap.caption(CaptionRequest(req, 7)) == cap.caption(CaptionRequest(req, 7))
    texts = {cap.caption(CaptionRequest(req, s)) for s in range(100)}
    assert len(texts) >= 60
    # "heavy" + "metal" must not read as the genre "heavy metal"
    for s in range(30):
        text = cap.caption(CaptionRequest({"mood": ["heavy"], "genre": ["metal"]}, s))
        assert sorted(m.tag for m in V.find_mentions(text)) == ["heavy", "metal"], text


# --- Augmented View Dropout --------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(tags=_tag_dicts(), seed=st.integers(0, 2**32), k=st.integers(1, 12), cap=st.integers(1, 4))
def test_views_are_category_balanced_partial_subsets(tags, seed, k, cap):
    views = draw_views(tags, seed, ViewConfig(n_views=k, max_per_category=cap))
    assert len(views) == k
    maskable = any(len(ts) > 1 for ts in tags.values())
    for view in views:
        assert set(view) == set(tags)  # every category the item has is present
        for c, kept in view.items():
            assert 1 <= len(kept) <= min(cap, len(tags[c]))
            assert len(set(kept)) == len(kept) and set(kept) <= set(tags[c])
        if maskable:
            assert sum(map(len, view.values())) < sum(map(len, tags.values()))


def test_views_are_deterministic_and_distinct_when_possible():
    tags = {"genre": ["rock", "funk"], "mood": ["happy", "energetic", "groovy"], "instrument": ["bass", "drums", "organ", "brass"]}
    a, b = draw_views(tags, 3), draw_views(tags, 3)
    assert a == b and a != draw_views(tags, 4)
    assert len({json.dumps(v, sort_keys=True) for v in a}) == 10
    # one tag per category: a single possible view, repeated rather than invented
    assert draw_views({"genre": ["rock"], "mood": ["sad"]}, 0, ViewConfig(n_views=3)) == [{"genre": ["rock"], "mood": ["sad"]}] * 3
    assert draw_views({}, 0) == []


# --- TextSwap ------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(tags=_tag_dicts(), seed=st.integers(0, 2**32))
def test_swaps_never_produce_one_of_the_items_own_tags(tags, seed):
    # a view's caption names only some of the item's tags; the masked ones must not come back as swaps
    view = draw_views(tags, seed, ViewConfig(n_views=1, max_per_category=1))[0]
    text = TemplateCaptioner(V).caption(CaptionRequest(view, seed))
    own = {normalise(t) for ts in tags.values() for t in ts}
    swaps = text_swaps(text, tags, V, seed)
    assert [s.category for s in swaps] == [c for c in V.swap_categories if c in tags]
    for s in swaps:
        assert s.text is not None and s.text != text
        assert s.swapped_to and not {normalise(w) for w in s.swapped_to} & own
        assert all(V.lookup(w)[0] == s.category for w in s.swapped_to)
        after = {normalise(m.tag) for m in V.find_mentions(s.text, extra=tags) if m.category == s.category}
        assert not after & own, s.text  # every keyword of the category was replaced


def test_swap_works_on_free_text_records_words_and_fixes_articles():
    tags = {"genre": ["hip-hop"], "mood": ["mellow"], "instrument": ["piano"]}
    text = "A Hip Hop groove with a mellow vibe."
    swaps = {s.category: s for s in text_swaps(text, tags, V, seed=1)}
    genre = swaps["genre"]
    assert genre.swapped_from == ["Hip Hop"] and len(genre.swapped_to) == 1
    new = genre.swapped_to[0]
    assert genre.text == f"{'An' if new[0] in 'aeiou' else 'A'} {new[0].upper() + new[1:]} groove with a mellow vibe."
    assert swaps["mood"].swapped_from == ["mellow"] and "mellow" not in swaps["mood"].text
    assert swaps["instrument"].text is None and "no instrument tag" in swaps["instrument"].note
    # the article rule: 'a rock track' becomes 'an ambient track' when the dictionary holds only 'ambient'
    tiny = Vocabulary({"genre": {"rock": [], "ambient": []}}, {"genre": ["rock", "ambient"]})
    (s,) = text_swaps("It is a rock track, a rock one.", {"genre": ["rock"]}, tiny)
    assert s.text == "It is an ambient track, an ambient one." and s.swapped_from == ["rock"] and s.swapped_to == ["ambient"]
    (s,) = text_swaps("rock", {"genre": ["rock", "ambient"]}, tiny)
    assert s.text is None and "no descriptor" in s.note


# --- pipeline --------------------------------------------------------------------------------------


def _items(tmp_path: Path) -> list[Item]:
    return [
        Item("a", tmp_path / "a.wav", tags={"genre": ["rock"], "mood": ["happy", "energetic"], "instrument": ["electric guitar", "drums"],
                                            "tempo": ["fast"], "other": ["stadium crowd"]},
             captions=["An energetic rock song with electric guitar."], captions_i18n={"de": ["Ein energiegeladener Rocksong."]}),
        Item("b", tmp_path / "b.wav", tags={"tags": ["jazz", "mellow", "piano", "double bass"]}),
        Item("c", tmp_path / "c.wav", captions=["Someone hums along."]),
    ]


def test_pipeline_writes_every_kind_with_the_right_fields(tmp_path):
    with pytest.warns(UserWarning, match=r"1 tag\(s\).*'stadium crowd'"):
        result = run_augment(_items(tmp_path), TemplateCaptioner(V), n_views=4, seed=0)
    recs, report = result.records, result.report
    a = [r for r in recs if r.item == "a"]
    assert [r.text for r in a if r.kind == "tags"] == ["rock, happy, energetic, electric guitar, drums, fast, stadium crowd"]
    human = [r for r in a if r.kind == "caption" and r.source == "human"]
    assert [(r.text, r.lang) for r in human] == [("An energetic rock song with electric guitar.", "en"), ("Ein energiegeladener Rocksong.", "de")]
    full = [r for r in a if r.kind == "caption" and r.source == "template"]
    assert len(full) == 1 and full[0].view is None and set(full[0].tags) == {"rock", "happy", "energetic", "electric guitar", "drums", "fast", "stadium crowd"}
    assert [r.view for r in a if r.kind == "view"] == [0, 1, 2, 3]
    texts = {r.text for r in recs if r.kind != "swap"}
    for s in (r for r in recs if r.kind == "swap"):
        assert s.parent in texts and s.category in ("genre", "mood", "instrument") and s.source == "swap"
        assert s.lang == "en"  # the German caption is not swapped
    # item c has no tags: only its human caption, and nothing to swap in it
    assert not [r for r in recs if r.item == "c" and r.kind != "caption"]
    assert report.records_by_kind == {k: sum(r.kind == k for r in recs) for k in ("tags", "swap", "caption", "view", "label")}
    labels = [r.text for r in recs if r.kind == "label"]
    assert labels == sorted(set(labels)) and "rock" in labels and all(r.item == "" for r in recs if r.kind == "label")
    assert report.unknown_tags == 1 and report.items_without_tags == 1
    assert report.swaps_made == sum(r.kind == "swap" for r in recs)
    # item a: tags, 2 captions in English, 4 views -> 7 swappable texts x 3 categories
    assert sum(r.kind == "swap" and r.item == "a" for r in recs) == 7 * 3


def test_pipeline_notes_skipped_swaps_on_the_parent(tmp_path):
    item = Item("x", tmp_path / "x.wav", tags={"genre": ["folk"], "instrument": ["banjo"]}, captions=["A folk tune."])
    recs = augment_items([item], TemplateCaptioner(V), n_views=1)
    human = next(r for r in recs if r.source == "human" and r.kind == "caption")
    assert human.note == "no instrument tag of the item found in the text; no instrument swap"
    swaps = [r for r in recs if r.parent == "A folk tune."]
    assert [s.category for s in swaps] == ["genre"]


def test_pipeline_is_deterministic_and_round_trips_through_the_views_file(tmp_path):
    items = _items(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = augment_items(items, TemplateCaptioner(V), n_views=3, seed=5)
        b = augment_items(list(reversed(items)), TemplateCaptioner(V), n_views=3, seed=5)
        c = augment_items(items, TemplateCaptioner(V), n_views=3, seed=6)
    assert sorted(map(repr, a)) == sorted(map(repr, b))  # independent of item order
    assert a != c
    assert read_views(write_views(a, tmp_path / "v.jsonl")) == a


def test_cli_augment_writes_the_views_file_and_a_summary(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(i.to_json()) for i in _items(tmp_path)) + "\n")
    from duetmc.cli import main

    out = tmp_path / "views.jsonl"
    res = CliRunner().invoke(main, ["augment", str(manifest), "--out", str(out), "--n-views", "2", "--seed", "3", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    recs = read_views(out)
    assert summary["records"] == len(recs) and summary["records_by_kind"]["view"] == 4 and summary["unknown_tags"] == 1
    res = CliRunner().invoke(main, ["augment", str(manifest), "--out", str(out), "--captioner", "llm"])
    assert res.exit_code != 0 and "--endpoint" in res.output
    res = CliRunner().invoke(main, ["augment", str(tmp_path / "nope.jsonl"), "--out", str(out)])
    assert res.exit_code != 0
