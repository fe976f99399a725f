"""The bench corpus: truth by construction, noise at the configured rates, clean near-duplicate pairs,
human-style captions that state only true facts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from duetmc.augment.vocab import default_vocabulary
from duetmc.manifest import load_manifest
from duetmc.synth import HardConfig, SynthConfig, SynthError, TagNoise, compose, draw_spec, observe_tags, song_tags
from duetmc.synth import describe, preset_config, synth_corpus
from duetmc.synth.corpus import PAIRS_NAME, differing_categories, plan_item
from duetmc.synth.render import FLUIDR3_GM, TIMGM6MB

needs_soundfonts = pytest.mark.skipif(not (FLUIDR3_GM.is_file() and TIMGM6MB.is_file()),
                                      reason="needs fluid-soundfont-gm and timgm6mb-soundfont")


def _binomial_ok(hits: int, n: int, p: float, sds: float = 4.0) -> bool:
    return abs(hits / n - p) <= sds * np.sqrt(p * (1 - p) / n) + 1e-9


@pytest.fixture(scope="module")
def true_tags() -> list[dict]:
    out = []
    for i in range(40):
        rng = np.random.default_rng([11, i])
        spec = draw_spec(rng)
        out.append(song_tags(spec, compose(spec, i, 4.0)))
    return out


def test_noise_rates_are_as_configured(true_tags):
    noise = TagNoise(p_drop_category=0.3, p_drop_instrument=0.4, p_wrong=0.1)
    counts = dict.fromkeys(("cats", "cats_dropped", "tags", "wrong", "inst", "inst_missing", "inst_obs", "inst_wrong"), 0)
    for r in range(100):
        for k, true in enumerate(true_tags):
            obs = observe_tags(true, noise, np.random.default_rng([r, k]))
            assert obs, "no clip is left without tags"
            for cat in ("genre", "mood", "tempo", "key"):  # one tag each: absent only when the category was dropped
                counts["cats"] += 1
                counts["cats_dropped"] += cat not in obs
                if cat in obs:
                    counts["tags"] += 1
                    counts["wrong"] += obs[cat] != true[cat]
            # instruments measured with categories never dropped, so nothing is conditioned away
            obs = observe_tags(true, TagNoise(0.0, 0.4, 0.1), np.random.default_rng([r, k, 1]))
            counts["inst"] += len(true["instrument"])
            counts["inst_missing"] += len(set(true["instrument"]) - set(obs.get("instrument", [])))
            counts["inst_obs"] += len(obs.get("instrument", []))
            counts["inst_wrong"] += len(set(obs.get("instrument", [])) - set(true["instrument"]))
            if "bpm" in obs:  # a BPM is written only beside its true tempo
                assert obs["bpm"] == true["bpm"] and obs.get("tempo") == true["tempo"]
    assert _binomial_ok(counts["cats_dropped"], counts["cats"], 0.3)
    assert _binomial_ok(counts["wrong"], counts["tags"], 0.1)
    # a true instrument is missing when left out, or kept but replaced by a wrong one
    assert _binomial_ok(counts["inst_missing"], counts["inst"], 1 - 0.6 * 0.9)
    assert _binomial_ok(counts["inst_wrong"], counts["inst_obs"], 0.1, sds=5)


def test_zero_noise_keeps_the_truth(true_tags):
    for k, true in enumerate(true_tags):
        assert observe_tags(true, TagNoise(0.0, 0.0, 0.0), np.random.default_rng(k)) == {
            c: true[c] for c in ("genre", "instrument", "mood", "tempo", "key", "bpm")}


def test_near_duplicates_differ_in_exactly_the_stated_attribute():
    cfg = SynthConfig(out="unused", hard=HardConfig(p_near_duplicate=1.0), test_items=80, seconds=4.0)
    kinds = set()
    for j in range(1, 80, 2):
        b, _ = plan_item(cfg, "test", j)
        a, _ = plan_item(cfg, "test", j - 1)
        pair = b["pair"]
        if pair is None:
            continue
        kinds.add(pair["attribute"])
        assert pair["a"] == a["id"] and a["pair"] is None
        ta, tb = a["true_tags"], b["true_tags"]
        assert differing_categories(ta, tb) == {pair["attribute"]}
        cat = pair["attribute"]
        assert pair["before"] in ta[cat] and pair["before"] not in tb[cat]
        assert pair["after"] in tb[cat] and pair["after"] not in ta[cat]
        if cat == "instrument":
            assert set(ta[cat]) ^ set(tb[cat]) == {pair["before"], pair["after"]}
    assert kinds == {"mood", "tempo", "instrument"}


def test_near_duplicate_rate_is_as_configured():
    cfg = SynthConfig(out="unused", hard=HardConfig(p_near_duplicate=0.3), test_items=400, seconds=2.0)
    made = sum(plan_item(cfg, "test", j)[0]["pair"] is not None for j in range(1, 400, 2))
    # a variant fails only rarely (a genre with no second mood of its mode and one tempo class...)
    assert _binomial_ok(made, 200, 0.3 * 0.97, sds=4)


def test_human_captions_state_only_true_facts_in_other_words():
    cfg = SynthConfig(out="unused", hard=HardConfig(eval_captions=3), test_items=60, seconds=2.0)
    vocab = default_vocabulary()
    oov = 0
    for j in range(60):
        labels, _ = plan_item(cfg, "test", j)
        true = labels["true_tags"]
        assert labels["tags"] == true and len(labels["captions"]) == 3
        for caption in labels["captions"]:
            facts = describe.facts_in(caption)
            assert facts.get("genre") or facts.get("mood") or facts.get("instrument"), caption
            for cat, tags in facts.items():
                assert tags <= set(true[cat]), (caption, cat, true[cat])
            words = [w for table in (describe.MOOD_WORDS, describe.TEMPO_WORDS) for ws in table.values() for w in ws
                     if w.lower() in caption.lower()]
            oov += any(vocab.lookup(w) is None for w in words)
    assert oov > 30  # most captions use words the tag vocabulary does not know
    # the paraphrase tables are unambiguous: no phrase names two tags
    phrases = [w.lower() for table in (describe.MOOD_WORDS, describe.GENRE_WORDS, describe.INSTRUMENT_WORDS,
                                       describe.TEMPO_WORDS) for ws in table.values() for w in ws]
    assert len(phrases) == len(set(phrases))


def test_training_tags_are_partial_and_eval_tags_true():
    cfg = preset_config("bench", "unused", n_items=60, test_items=0, seconds=2.0)
    seen_partial = 0
    for i in range(60):
        labels, _ = plan_item(cfg, "main", i)
        if labels["split"] == "train":
            assert not labels["captions"]
            seen_partial += labels["tags"] != labels["true_tags"]
        else:
            assert labels["split"] == "val" and labels["tags"] == labels["true_tags"] and labels["captions"]
    assert seen_partial > 30


def test_quickstart_preset_is_the_plain_corpus():
    cfg = preset_config("quickstart", "unused", test_items=3)
    assert cfg.hard is None and cfg.n_items == 200
    labels, _ = plan_item(cfg, "test", 2)
    assert labels["id"] == "synth-test-000002" and labels["split"] == "test"
    assert labels["true_tags"] is None and labels["captions"] == [] and labels["pair"] is None
    assert "hard" not in cfg.content() and "test_items" not in cfg.content()
    with pytest.raises(SynthError, match="preset"):
        preset_config("huge", "unused")
    with pytest.raises(SynthError, match="p_wrong"):
        SynthConfig(out="unused", hard=HardConfig(noise=TagNoise(p_wrong=1.5)))


@needs_soundfonts
@pytest.mark.slow
def test_bench_corpus_end_to_end(tmp_path):
    hard = HardConfig(p_near_duplicate=1.0)
    cfg = SynthConfig(out=tmp_path / "c", n_items=4, test_items=2, seconds=1.0, splits=(0.9, 0.1, 0.0), hard=hard)
    rep = synth_corpus(cfg, progress=False)
    assert rep.failed == [] and rep.n_items == 6 and rep.splits["test"] == 2
    items = {it.id: it for it in load_manifest(rep.manifest)}
    assert all(it.true_tags for it in items.values())
    test = items["synth-test-000000"]
    assert test.tags == test.true_tags and len(test.captions) == 2
    held = {it.id: it for it in load_manifest(rep.heldout_manifest)}
    assert held["synth-test-000000-heldout-sf"].captions == test.captions
    pairs = [json.loads(line) for line in (tmp_path / "c" / PAIRS_NAME).read_text().splitlines()]
    assert pairs and rep.near_duplicates == len(pairs)
    for p in pairs:
        assert differing_categories(items[p["a"]].true_tags, items[p["b"]].true_tags) == {p["attribute"]}
    again = synth_corpus(cfg, progress=False)
    assert again.n_rendered == 0 and again.manifest.read_text() == rep.manifest.read_text()
    other = SynthConfig(out=tmp_path / "c", n_items=4, seconds=1.0, splits=(0.9, 0.1, 0.0),
                        hard=HardConfig(noise=TagNoise(p_wrong=0.2)))
    with pytest.raises(SynthError, match="hard"):
        synth_corpus(other, progress=False)


@needs_soundfonts
@pytest.mark.slow
def test_cli_bench_preset(tmp_path):
    from click.testing import CliRunner

    from duetmc.cli import main

    out = tmp_path / "c"
    res = CliRunner().invoke(main, ["synth", "--preset", "bench", "--items", "2", "--test-items", "1",
                                    "--seconds", "0.5", "--workers", "1", "--no-heldout-soundfont", "--out", str(out),
                                    "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["n_items"] == 3 and report["splits"]["test"] == 1 and report["heldout_manifest"] is None
    config = json.loads((out / "synth_config.json").read_text())
    assert config["hard"]["noise"]["p_wrong"] == 0.05 and config["test_items"] == 1
