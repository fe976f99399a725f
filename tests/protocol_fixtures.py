"""Small caches for the evaluation-protocol tests: human captions on test clips, tiny encoders.

`short` holds the training cache (short texts: tags, a few-word human caption, template captions);
`long` holds the same clips with long human captions (well over 43 tokens), to evaluate a model
trained on the short cache across datasets.
"""

from __future__ import annotations

import numpy as np
import soundfile as sf

GENRES = ["rock", "jazz", "folk", "reggae"]
MOODS = ["happy", "sad", "calm"]


def write_corpus(root, n_items: int = 24, sr: int = 16000, long_captions: bool = False):
    from duetmc.manifest import Item, write_manifest

    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    t = np.arange(int(sr * 1.0)) / sr
    items = []
    for i in range(n_items):
        g, m = GENRES[i % 4], MOODS[(i // 4) % 3]
        path = root / "audio" / f"{i:03d}.wav"
        sf.write(path, (0.3 * np.sin(2 * np.pi * 110 * 2 ** ((i % 4) / 2) * t)
                        + 0.01 * rng.standard_normal(len(t))).astype(np.float32), sr)
        split = "train" if i < 12 else ("val" if i < 16 else "test")
        caption = (f"a long and winding {m} {g} recording with layered instruments, a steady groove and a "
                   f"memorable melody that returns near the end, number {i}") if long_captions else f"{m} {g}"
        items.append(Item(f"clip{i:03d}", path, tags={"genre": [g], "mood": [m]},
                          captions=[caption] if split != "train" else [], split=split))
    write_manifest(items, root / "manifest.jsonl")
    return items


def build_cache(root, long_captions: bool = False) -> str:
    from duetmc.augment.captions import TemplateCaptioner
    from duetmc.augment.pipeline import augment_items
    from duetmc.augment.viewsfile import write_views
    from duetmc.featurize.audio import AudioFeaturizeConfig, featurize_audio
    from duetmc.featurize.text import TextFeaturizeConfig, featurize_text

    items = write_corpus(root, long_captions=long_captions)
    write_views(augment_items(items, TemplateCaptioner(), n_views=2, seed=0), root / "views.jsonl")
    cache = str(root / "cache.zarr")
    s = featurize_audio(AudioFeaturizeConfig(str(root / "manifest.jsonl"), cache, "tiny-audio", window_s=1.0,
                                             tokens=2, rows_per_shard=16, workers=1, progress=False))
    assert s.failed == 0
    s = featurize_text(TextFeaturizeConfig(str(root / "views.jsonl"), cache, "tiny-text", batch_size=64,
                                           progress=False))
    assert s.failed == 0
    return cache


def train_run(cache: str, out, **overrides) -> str:
    from duetmc.pairs import resolve_spec
    from duetmc.train import TrainConfig, train

    cfg = TrainConfig(data=[resolve_spec(cache)], out=str(out), epochs=1, batch_size=8, warmup_epochs=0,
                      dim=32, plots=False, progress=False, **overrides)
    assert train(cfg)["status"] == "finished"
    return str(out)
