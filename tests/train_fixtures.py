"""A small cache with a genuine learnable signal, built through the real featurizers.

Clips are tones whose pitch is set by the genre and whose amplitude modulation is set by the mood;
texts come from the real augment pipeline (template captions, views, TextSwap) and are featurized
with MiniLM; audio with the tiny random HuBERT. conftest.py builds it once per session as `signal_cache`.
"""

from __future__ import annotations

import numpy as np
import soundfile as sf

GENRES = ["rock", "jazz", "folk", "reggae", "ambient", "classical", "metal", "blues"]
MOODS = ["happy", "sad", "calm", "dark"]


def write_signal_corpus(root, n_items: int = 100, seconds: float = 1.5, sr: int = 16000, seed: int = 0):
    from duetmc.manifest import Item, write_manifest

    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    items = []
    t = np.arange(int(sr * seconds)) / sr
    for i in range(n_items):
        g, m = i % len(GENRES), (i // len(GENRES)) % len(MOODS)
        tone = np.sin(2 * np.pi * 110 * 2 ** (g / 2) * t) * (1 + 0.6 * np.sin(2 * np.pi * (1 + 2 * m) * t))
        x = 0.3 * tone + 0.01 * rng.standard_normal(len(t))
        path = root / "audio" / f"{i:03d}.wav"
        sf.write(path, x.astype(np.float32), sr)
        split = "train" if i < int(n_items * 0.6) else ("val" if i < int(n_items * 0.8) else "test")
        items.append(Item(f"clip{i:03d}", path, tags={"genre": [GENRES[g]], "mood": [MOODS[m]]}, split=split))
    write_manifest(items, root / "manifest.jsonl")
    return items


def build_signal_cache(root, n_items: int = 100, views: int = 4):
    from duetmc.augment.captions import TemplateCaptioner
    from duetmc.augment.pipeline import augment_items
    from duetmc.augment.viewsfile import write_views
    from duetmc.featurize.audio import AudioFeaturizeConfig, featurize_audio
    from duetmc.featurize.text import TextFeaturizeConfig, featurize_text

    items = write_signal_corpus(root, n_items)
    write_views(augment_items(items, TemplateCaptioner(), n_views=views, seed=0), root / "views.jsonl")
    cache = str(root / "cache.zarr")
    s = featurize_audio(AudioFeaturizeConfig(str(root / "manifest.jsonl"), cache, "tiny-audio", window_s=2.0,
                                             tokens=2, rows_per_shard=16, progress=False))
    assert s.failed == 0
    s = featurize_text(TextFeaturizeConfig(str(root / "views.jsonl"), cache, "minilm", batch_size=64, progress=False))
    assert s.failed == 0
    return cache
