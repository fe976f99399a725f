"""The evaluation protocol (docs/PROTOCOL.md): which queries, any text length, non-finite values
refused, chance levels and warnings, probes, baseline embedding files, the ablation's p_cap sweep."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocol_fixtures import build_cache, train_run

from duetmc import metrics
from duetmc.errors import DuetmcError, UsageError
from duetmc.evaluate import EvalConfig, evaluate_embeddings, evaluate_index, evaluate_run, queries


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    short, long = build_cache(root / "short"), build_cache(root / "long", long_captions=True)
    return short, long, train_run(short, root / "run")


def _index(cache):
    from duetmc.pairs import PairIndex, resolve_spec

    return PairIndex(resolve_spec(cache))


# --- queries ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_queries_are_human_captions_and_are_counted(caches):
    short, _, run = caches
    human = evaluate_run(run, [short], EvalConfig())[0]
    assert "fewer than the protocol's subsets of 500" in human["warnings"][0]
    assert human["queries"] == {"selection": "human", "by_lang": {"en": {"human": 8}}}
    assert human["text_to_music"]["en"]["n_queries"] == 8
    every = evaluate_run(run, [short], EvalConfig(queries="all"))[0]
    assert every["queries"]["by_lang"]["en"] == {"human": 8, "template": 8}
    generated = evaluate_run(run, [short], EvalConfig(queries="generated"))[0]
    assert generated["queries"]["by_lang"]["en"] == {"template": 8}
    from click.testing import CliRunner

    from duetmc.cli import main

    res = CliRunner().invoke(main, ["eval", run, "--cache", short], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for line in ("queries (human): en: 8 human", "chance level     R@1 12.5  R@5 62.5  R@10 100.0",
                 "warning: ", "swap accuracy    genre", "partial R@10     genre", "swap acc", "partial R@10 |"):
        assert line in res.output, line
    res = CliRunner().invoke(main, ["eval", run, "--cache", short, "--split", "train"])
    assert res.exit_code == 2 and "--queries all" in res.output


@pytest.mark.slow
def test_a_split_without_human_captions_is_an_error_naming_the_fix(caches):
    index = _index(caches[0])
    train_items = index.items("train")  # the fixture gives train clips no human caption
    with pytest.raises(UsageError, match=r"no human caption queries.*found: 12 template.*--queries all"):
        queries(index, train_items, "human")
    assert set(queries(index, train_items, "all")["en"].counts()) == {"template"}


def test_query_choice_is_checked():
    with pytest.raises(UsageError, match="queries must be one of"):
        EvalConfig(queries="llm")


# --- any text length -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_model_trained_on_short_texts_evaluates_and_searches_long_ones(caches, monkeypatch):
    from duetmc.heads.model import DuetHeads
    from duetmc.search import search

    short, long, run = caches
    assert 43 <= _index(short).text_shape[1] < _index(long).text_shape[1] == 77  # 77: the encoder limit
    res = evaluate_run(run, [long], EvalConfig())[0]
    assert res["text_to_music"]["en"]["n_queries"] == 8
    seen = []
    original = DuetHeads.encode_text
    monkeypatch.setattr(DuetHeads, "encode_text", lambda self, x, lens=None: seen.append(int(lens[0])) or original(self, x, lens))
    long_query = "a calm jazz recording with a slow walking bass, brushed drums and a soft piano melody"
    assert len(search(run, "rock", short, top_k=3)) == 3
    assert len(search(run, long_query, short, top_k=3)) == 3
    # tiny tokenizer: one token per non-space character plus start/end, up to the encoder's 77
    assert seen == [len("rock") + 2, len(long_query.replace(" ", "")) + 2]
    assert seen[1] > _index(short).text_shape[1]  # longer than any training text, not cut to it


@pytest.mark.slow
def test_positions_when_asked_cover_the_encoder_limit(caches, tmp_path):
    from duetmc.run import load_run

    short, long, _ = caches
    run = train_run(short, tmp_path / "pos", positions=True)
    model, _ = load_run(run, "last")
    assert model.config.text_max_tokens == 77  # tiny-text's own limit, not the cache's longest text
    assert model.text_projection.pos.shape[1] == 78
    assert evaluate_run(run, [long], EvalConfig(), "last")[0]["text_to_music"]["en"]["n_queries"] == 8


def test_old_runs_with_short_positions_still_load_and_say_why_longer_texts_fail():
    from duetmc.heads.model import DuetHeads, HeadsConfig

    m = DuetHeads(HeadsConfig(8, 1, 8, 1, dim=16, text_max_tokens=30)).eval()
    m.load_state_dict(DuetHeads(HeadsConfig(8, 1, 8, 1, dim=16, text_max_tokens=30)).state_dict())
    assert m.encode_text(torch.randn(1, 1, 30, 8)).shape == (1, 16)
    with pytest.raises(DuetmcError, match="positions cover 30"):
        m.encode_text(torch.randn(1, 1, 43, 8))


def test_heads_default_to_no_positions():
    from duetmc.heads.model import DuetHeads, HeadsConfig

    m = DuetHeads(HeadsConfig(8, 1, 8, 1, dim=16))
    assert m.text_projection.pos is None and m.audio_projection.pos is None


# --- non-finite values -----------------------------------------------------------------------------


def test_nan_embeddings_are_refused_not_counted_as_hits():
    items = np.eye(4, dtype=np.float32)
    q = np.full((4, 4), np.nan, dtype=np.float32)
    with pytest.raises(metrics.NonFiniteError, match="query embeddings: 4 of 4 row"):
        metrics.retrieval_metrics(q, items, np.arange(4))
    with pytest.raises(metrics.NonFiniteError, match="scores"):
        metrics.retrieval_ranks(np.array([[np.nan, 0.1]]), np.array([0]))
    with pytest.raises(metrics.NonFiniteError):
        metrics.best_positive_ranks(np.array([[np.inf, 0.1]]), np.array([[True, False]]))
    with pytest.raises(metrics.NonFiniteError):
        metrics.music_to_text_metrics(q, items, np.arange(4))


def test_text_featurizer_fails_rows_that_overflow_float16(tmp_path, monkeypatch):
    from duetmc.augment.viewsfile import TextRecord, write_views
    from duetmc.featurize import text as ft

    write_views([TextRecord("a", "caption", "quiet text"), TextRecord("b", "caption", "loud text")],
                tmp_path / "v.jsonl")
    tokenize, encode = ft.TextEncoder.tokenize, ft.TextEncoder.encode

    def marked(self, texts, *a, **k):  # the featurizer tokenises ahead of the encoder: mark rows here
        enc = tokenize(self, texts, *a, **k)
        return {**enc, "loud": torch.tensor([t.startswith("loud") for t in texts])}

    def loud(self, enc, *a, **k):
        enc = dict(enc)
        scale = torch.where(enc.pop("loud"), 1e6, 1.0).view(-1, 1, 1, 1)
        feats, lens = encode(self, enc, *a, **k)
        return feats * scale, lens  # finite in float32, Inf once stored as float16

    monkeypatch.setattr(ft.TextEncoder, "tokenize", marked)
    monkeypatch.setattr(ft.TextEncoder, "encode", loud)
    s = ft.featurize_text(ft.TextFeaturizeConfig(str(tmp_path / "v.jsonl"), str(tmp_path / "c.zarr"), "tiny-text",
                                                 progress=False))
    assert s.failed == 1 and "overflows float16" in s.failures[0][1] and s.failures[0][0] == "loud text"


# --- context: chance and warnings --------------------------------------------------------------------


def test_chance_levels_and_small_split_warnings():
    from duetmc.evaluate import context

    assert metrics.chance_levels(500) == {"R@1": 0.2, "R@5": 1.0, "R@10": 2.0}
    assert metrics.chance_levels(6)["R@10"] == 100.0
    chance, warns = context(6, EvalConfig(), "x")
    assert chance["R@1"] == pytest.approx(100 / 6) and len(warns) == 2 and "R@10 = 100.0 %" in warns[1]
    chance, warns = context(2000, EvalConfig(), "x")
    assert chance["R@10"] == 2.0 and warns == []
    assert context(300, EvalConfig(), "x")[1][0].startswith("x: 300 clips is fewer")


@pytest.mark.slow
def test_training_without_a_val_split_warns(caches, tmp_path):
    import dataclasses

    from duetmc.pairs import PairIndex, resolve_spec
    from duetmc.evaluate import warn_no_validation

    index = PairIndex(resolve_spec(caches[0]))
    warn_no_validation([index])  # has val clips: silent
    index.split = np.where(index.split == "val", "train", index.split)
    with pytest.warns(UserWarning, match="no clips in split 'val', so early stopping is off"):
        warn_no_validation([index])
    assert dataclasses.is_dataclass(EvalConfig)


# --- probes ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_probes_are_reported_for_every_run(caches):
    res = evaluate_run(caches[2], [caches[0]], EvalConfig())[0]
    swap = res["probes"]["swap_accuracy"]
    assert swap["variants"] == "probe_swap" and set(swap["per_category"]) == {"genre", "mood"}
    for cat in swap["per_category"].values():
        assert cat["n_texts"] == 16  # 8 test clips x (tags text + human caption)
        assert cat["n_variants"] > cat["n_texts"] and 0 <= cat["accuracy"] <= 100
    partial = res["probes"]["partial_query"]["per_category"]
    assert set(partial) == {"genre", "mood"} and all(p["n_queries"] == 8 for p in partial.values())


def test_swap_accuracy_counts_variants_scored_below_the_true_text():
    from duetmc.probes import run_probes

    # clip 0's true caption (row 0) scores 1; its genre variants (rows 1, 2) score 0.5 and 1.5
    text = np.array([[1, 0], [0.5, 0.866], [1, 0], [0, 1]], dtype=np.float32)
    rec = {"kind": np.array(["caption", "probe_swap", "probe_swap", "probe_partial"]),
           "source": np.array(["human", "swap", "swap", "tags"]), "lang": np.array(["en"] * 4),
           "pos": np.array([0, 0, 0, 1]), "row": np.array([0, 1, 2, 3]), "parent": np.array([-1, 0, 0, -1]),
           "category": np.array(["", "genre", "genre", "mood"])}
    text[2] = [0.9, -0.1]  # scored 0.9 < 1: below the true text
    out = run_probes(lambda rows: text[rows], rec, 2, np.array([0, 1]), np.eye(2, dtype=np.float32), None, 1, 0)
    assert out["swap_accuracy"]["per_category"]["genre"] == {"accuracy": 100.0, "n_texts": 1, "n_variants": 2}
    text[1] = [1, 0.2]  # normalised: scores 0.98 < 1 still; make one tie the truth instead
    text[1] = [1, 0]
    out = run_probes(lambda rows: text[rows], rec, 2, np.array([0, 1]), np.eye(2, dtype=np.float32), None, 1, 0)
    assert out["swap_accuracy"]["per_category"]["genre"]["accuracy"] == 50.0  # a tie is not "below"
    assert out["partial_query"]["per_category"]["mood"]["R@1"] == 100.0


def test_augment_writes_probe_records_for_test_items_only():
    from duetmc.augment.captions import TemplateCaptioner
    from duetmc.augment.pipeline import augment_items
    from duetmc.manifest import Item

    items = [Item("tr", "a.wav", {"genre": ["rock"], "mood": ["happy"]}, ["a happy rock song"], split="train"),
             Item("te", "b.wav", {"genre": ["jazz"], "mood": ["sad"]}, ["a sad jazz song"], split="test")]
    recs = augment_items(items, TemplateCaptioner(), n_views=2)
    probes = [r for r in recs if r.kind.startswith("probe_")]
    assert {r.item for r in probes} == {"te"}
    partial = {r.category: r.text for r in probes if r.kind == "probe_partial"}
    assert partial == {"genre": "jazz", "mood": "sad"}
    swaps = [r for r in probes if r.kind == "probe_swap"]
    assert {r.parent for r in swaps} == {"jazz, sad", "a sad jazz song"}
    assert len({r.text for r in swaps}) == len(swaps) > 4  # several distinct variants per text and category


def test_duplicate_texts_of_one_item_get_their_swaps_once():
    from duetmc.augment.captions import CaptionRequest, Caption
    from duetmc.augment.pipeline import augment_items
    from duetmc.manifest import Item

    class Same:
        def caption_many(self, requests: list[CaptionRequest]):
            return [Caption("a rock song that feels happy", "template") for _ in requests]

    recs = augment_items([Item("x", "a.wav", {"genre": ["rock"], "mood": ["happy"]})], Same(), n_views=3)
    swaps = [r for r in recs if r.kind == "swap" and r.parent == "a rock song that feels happy"]
    assert len([r for r in recs if r.text == "a rock song that feels happy"]) == 4  # caption + 3 views
    assert sorted(r.category for r in swaps) == ["genre", "mood"]  # one set, not four merged


# --- baseline embedding files ------------------------------------------------------------------------


def _baseline(tmp_path, rng, n=40, **extra):
    ids = np.array([f"c{i:02d}" for i in range(n)])
    audio = rng.standard_normal((n, 8)).astype(np.float32)
    query = audio + 0.8 * rng.standard_normal((n, 8)).astype(np.float32)
    arrays = dict(audio_ids=ids, audio=audio, query=query, query_item=ids, query_source=np.array(["human"] * n),
                  query_lang=np.array(["en"] * n))
    arrays.update(extra)
    path = tmp_path / f"b{len(list(tmp_path.iterdir()))}.npz"
    np.savez(path, **arrays)
    return path, arrays


def test_baseline_numbers_do_not_depend_on_row_order(tmp_path):
    rng = np.random.default_rng(0)
    path, a = _baseline(tmp_path, rng)
    cfg = EvalConfig(subset_size=20, n_subsets=5)
    ref = evaluate_embeddings(path, cfg)
    p, q = rng.permutation(40), rng.permutation(40)
    shuffled, _ = _baseline(tmp_path, rng, audio_ids=a["audio_ids"][p], audio=a["audio"][p], query=a["query"][q],
                            query_item=a["query_item"][q])
    got = evaluate_embeddings(shuffled, cfg)
    assert got["text_to_music"] == ref["text_to_music"]
    assert ref["queries"]["by_lang"] == {"en": {"human": 40}} and ref["chance"]["R@10"] == 50.0


def test_baseline_files_are_checked_array_by_array(tmp_path):
    rng = np.random.default_rng(1)
    cfg = EvalConfig()
    ids = np.array([f"c{i:02d}" for i in range(40)])
    dup, _ = _baseline(tmp_path, rng, audio_ids=np.where(ids == "c03", "c01", ids))
    with pytest.raises(UsageError, match=r"'audio_ids' repeats 1 id\(s\): 'c01'"):
        evaluate_embeddings(dup, cfg)
    bad = rng.standard_normal((40, 8)).astype(np.float32)
    bad[5, 2] = np.nan
    nan, _ = _baseline(tmp_path, rng, query=bad)
    with pytest.raises(UsageError, match=r"b\d\.npz: array 'query' holds 1 row\(s\) with NaN or Inf \(first row 5\)"):
        evaluate_embeddings(nan, cfg)
    inf, _ = _baseline(tmp_path, rng, audio=np.full((40, 8), np.inf, dtype=np.float32))
    with pytest.raises(UsageError, match="array 'audio' holds 40 row"):
        evaluate_embeddings(inf, cfg)
    gen, _ = _baseline(tmp_path, rng, query_source=np.array(["template"] * 40))
    with pytest.raises(UsageError, match="no human queries .*40 template.*--queries all"):
        evaluate_embeddings(gen, cfg)
    assert evaluate_embeddings(gen, EvalConfig(queries="all"))["queries"]["by_lang"] == {"en": {"template": 40}}
    np.savez(tmp_path / "old.npz", ids=ids, audio=np.zeros((40, 8)))
    with pytest.raises(UsageError, match=r"missing arrays \['audio_ids', 'query', 'query_item'\]"):
        evaluate_embeddings(tmp_path / "old.npz", cfg)


def test_baseline_without_optional_arrays_defaults_to_human_english(tmp_path):
    rng = np.random.default_rng(2)
    path, a = _baseline(tmp_path, rng)
    np.savez(tmp_path / "min.npz", **{k: a[k] for k in ("audio_ids", "audio", "query", "query_item")})
    res = evaluate_embeddings(tmp_path / "min.npz", EvalConfig())
    assert res["text_to_music"] == evaluate_embeddings(path, EvalConfig())["text_to_music"]


# --- ablation ----------------------------------------------------------------------------------------


def test_p_cap_sweep_is_tag_to_caption_alone():
    from duetmc.ablate import AblateConfig, configurations
    from duetmc.train import TrainConfig

    rows = configurations(AblateConfig(TrainConfig(data=[], out="x")))
    sweep = [o for name, o in rows if name.startswith("p_cap=")]
    assert sweep and all(o["views"] is False and o["swap"] is False for o in sweep)
    by_name = dict(rows)
    assert by_name["tags only"] == {"p_cap": 0.0, "views": False, "swap": False}  # the sweep's p_cap = 0 point
    assert {o["p_cap"] for o in sweep} == {1.0}
    assert len({tuple(sorted(o.items())) for _, o in rows}) == len(rows)  # no configuration twice
