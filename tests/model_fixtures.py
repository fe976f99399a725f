"""A small trained run for the model API, index and export tests (tiny encoders; built once per session).

`tiny_run` featurizes 12 short tone clips (half of them longer than one window, so clips have several
windows) with tiny-audio and tiny-text, and trains heads for 0 epochs (seeded initial weights: enough
for equality and format tests, which is all these tests need). Import it with
`from model_fixtures import tiny_run`.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def build_run(root: Path, audio_encoder: str = "tiny-audio", text_encoder: str = "tiny-text", n_items: int = 12,
              seconds: float = 2.5, window_s: float = 1.0) -> dict:
    from duetmc.dataset import resolve_spec
    from duetmc.featurize.audio import AudioFeaturizeConfig, featurize_audio
    from duetmc.featurize.text import TextFeaturizeConfig, featurize_text
    from duetmc.train import TrainConfig, train
    from train_fixtures import write_signal_corpus

    items = write_signal_corpus(root, n_items, seconds=seconds)
    cache = str(root / "cache.zarr")
    s = featurize_audio(AudioFeaturizeConfig(str(root / "manifest.jsonl"), cache, audio_encoder, window_s=window_s,
                                             hop_s=window_s * 0.75, tokens=2, progress=False))
    assert s.failed == 0
    s = featurize_text(TextFeaturizeConfig(str(root / "manifest.jsonl"), cache, text_encoder, progress=False))
    assert s.failed == 0
    run = root / "run"
    train(TrainConfig(data=[resolve_spec(cache)], out=str(run), epochs=0, progress=False, plots=False))
    return {"root": root, "cache": cache, "run": run, "items": items}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return build_run(tmp_path_factory.mktemp("tiny_run"))
