"""DuetModel: new audio and text embed exactly as the cache did; bad input; export, from_pretrained, the Hub."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import soundfile as sf

from duetmc.dataset import MemorySource, PairIndex, resolve_spec
from duetmc.evaluate import embed_items, embed_texts
from duetmc.pretrained import AudioInputError, DuetModel, ModelError
from duetmc.errors import PathError, UsageError
from audio_fixtures import write_bad
from model_fixtures import build_run, tiny_run  # noqa: F401  (fixture)


def cache_embeddings(model: DuetModel, cache: str):
    """Every clip's and every tags text's embedding, computed from the cache as evaluation does."""
    from duetmc.cache_spec import read_strings

    index = PairIndex(resolve_spec(cache))
    source = MemorySource([index])
    items = np.arange(len(index.ids))
    audio = embed_items(model.heads, source, 0, index, items)
    rows = index.tags_row[items]
    texts = [str(t) for t in read_strings(index.text["texts"])[rows]]
    return audio, embed_texts(model.heads, source, 0, rows), texts


def assert_matches_cache(run: dict) -> DuetModel:
    model = DuetModel.from_run(run["run"])
    audio, text, texts = cache_embeddings(model, run["cache"])
    new_audio = model.embed_audio([it.audio for it in run["items"]])
    new_text = model.embed_text(texts)
    assert new_audio.shape == audio.shape == (len(run["items"]), 256)
    assert np.min(np.sum(new_audio * audio, axis=1)) >= 0.999
    assert np.min(np.sum(new_text * text, axis=1)) >= 0.999
    return model


def test_new_audio_and_text_embed_as_the_cache_did_tiny(tiny_run):
    model = assert_matches_cache(tiny_run)
    # a waveform in memory at another rate, stereo: decoded the featurizer's way, same embedding
    data, sr = sf.read(tiny_run["items"][3].audio, dtype="float32")
    from_array = model.embed_audio([np.stack([data, data], axis=1)], sample_rate=sr)
    assert float(from_array[0] @ model.embed_audio([tiny_run["items"][3].audio])[0]) >= 0.999
    sims = model.similarity(model.embed_text(["rock happy"]), model.embed_audio([tiny_run["items"][0].audio]))
    assert sims.shape == (1, 1) and -1.0 <= sims[0, 0] <= 1.0


@pytest.mark.slow
def test_new_audio_and_text_embed_as_the_cache_did_musicnn_minilm(tmp_path):
    # musicnn needs about 3 s per window
    assert_matches_cache(build_run(tmp_path, "musicnn-mtt", "minilm", n_items=4, seconds=5.0, window_s=3.0))


def test_encoders_load_once_and_a_different_encoder_is_refused(tiny_run, monkeypatch):
    model = DuetModel.from_run(tiny_run["run"])
    assert model.text_encoder() is model.text_encoder() and model.audio_encoder() is model.audio_encoder()
    other = DuetModel.from_run(tiny_run["run"])
    other.text = type(other.text)(**{**other.text.__dict__, "encoder": {**other.text.encoder, "weights_sha256": "0" * 64}})
    with pytest.raises(ModelError, match="differs from the one the model was trained on"):
        other.embed_text(["x"])


def test_a_bad_file_is_reported_and_the_others_embedded(tiny_run, tmp_path):
    model = DuetModel.from_run(tiny_run["run"])
    good = [it.audio for it in tiny_run["items"][:3]]
    bad = write_bad(tmp_path / "broken.wav", "text")
    inputs = [good[0], bad, good[1], tmp_path / "missing.wav", good[2]]
    with pytest.raises(AudioInputError, match="broken.wav: cannot decode.*and 1 more.*3 other inputs") as exc:
        model.embed_audio(inputs)
    res = exc.value.result
    assert res.indices.tolist() == [0, 2, 4] and [f[0] for f in res.failures] == [1, 3]
    assert "not found" in res.failures[1][2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb = model.embed_audio(inputs, errors="skip")
    assert emb.shape == (3, 256) and np.isfinite(emb).all() and len(caught) == 2
    np.testing.assert_allclose(emb, model.embed_audio(good), atol=1e-6)
    with pytest.raises(UsageError, match="sample_rate"):
        model.embed_audio([np.zeros(100)])
    with pytest.raises(UsageError, match="text 1 is empty"):
        model.embed_text(["fine", "  "])


def test_export_loads_without_run_or_cache_and_through_the_hub(tiny_run, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub

    from duetmc.export import export_run

    (tiny_run["run"] / "eval.json").write_text(json.dumps([{"cache": tiny_run["cache"], "n_items": 12,
        "text_to_music": {"en": {"R@1": 10.0, "R@5": 50.0, "R@10": 90.0, "MedR": 5.0, "MeanR": 5.5}}}]))
    out = tmp_path / "export"
    result = export_run(tiny_run["run"], out)
    card = (out / "README.md").read_text()
    assert "tiny-audio" in card and "tiny-text" in card and "| p_cap | 0.5 |" in card and "90.0" in card
    conf = json.loads((out / "config.json").read_text())
    assert conf["audio"]["encoder"]["weights_sha256"] and conf["text"]["max_tokens"] > 0
    # the export alone: move the run and the cache away
    moved = tmp_path / "moved"
    shutil.copytree(tiny_run["root"], moved)
    run_model = DuetModel.from_run(tiny_run["run"])
    texts = ["calm jazz", "happy rock"]
    expected = run_model.embed_text(texts)
    hidden = tiny_run["root"].with_name(tiny_run["root"].name + "_hidden")
    tiny_run["root"].rename(hidden)
    try:
        model = DuetModel.from_pretrained(out)
        assert model.model_id == result["model_id"] == run_model.model_id
        np.testing.assert_allclose(model.embed_text(texts), expected, atol=1e-6)
        np.testing.assert_allclose(model.embed_audio([moved / "audio" / "000.wav"]),
                                   run_model.embed_audio([moved / "audio" / "000.wav"]), atol=1e-6)
        # the Hub, offline: upload into and download from a local folder
        hub = tmp_path / "hub"
        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: None)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                            lambda self, folder_path, repo_id, **kw: shutil.copytree(folder_path, hub / repo_id) and "ok")
        monkeypatch.setattr(huggingface_hub, "snapshot_download",
                            lambda repo_id, revision=None, **kw: str(hub / repo_id))
        from duetmc.pretrained import push_to_hub

        push_to_hub(out, "lab/duet-tiny")
        assert (hub / "lab/duet-tiny" / "heads.safetensors").exists()
        hubbed = DuetModel.from_pretrained("lab/duet-tiny")
        assert hubbed.model_id == model.model_id
    finally:
        hidden.rename(tiny_run["root"])
    with pytest.raises(PathError, match="not an exported duetmc model"):
        DuetModel.from_pretrained(tmp_path)
    with pytest.raises(PathError, match="not a Hub repository id"):
        DuetModel.from_pretrained(tmp_path / "nope")


def test_import_duetmc_stays_light():
    code = ("import sys, duetmc; assert 'torch' not in sys.modules, 'torch imported'; "
            "from duetmc import DuetModel, Index; assert 'torch' in sys.modules; print(DuetModel.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "DuetModel"
