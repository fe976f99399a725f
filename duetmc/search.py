"""Free-text search over a cache's clips, and exporting clip embeddings.

Search is the one place after featurization where a text encoder runs: the query is new text, so the
run's locked text encoder (named in the cache's provenance) encodes it with the cache's settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from duetmc.cache_spec import read_strings
from duetmc.feature_source import open_source
from duetmc.pairs import DataSpec, PairIndex
from duetmc.evaluate import embed_items
from duetmc.run import check_weights, load_run
from duetmc.errors import UsageError


def _index(run, cache: str | None):
    model, cfg = load_run(run)
    spec = cfg.data[0]
    index = PairIndex(DataSpec(cache or spec.cache, spec.audio, spec.text))
    check_weights(run, index.spec.cache, {"audio": dict(index.audio.attrs), "text": dict(index.text.attrs)})
    return model, index


def _items(index: PairIndex, split: str) -> np.ndarray:
    return np.flatnonzero(index.usable) if split == "all" else index.items(split)


def audio_embeddings(model, index: PairIndex, items: np.ndarray) -> np.ndarray:
    source, _ = open_source([index], modalities=("audio",))
    try:
        return embed_items(model, source, 0, index, items)
    finally:
        source.close()


@torch.no_grad()
def encode_query(model, index: PairIndex, query: str) -> np.ndarray:
    from duetmc.featurize.text import load_text_encoder

    attrs = dict(index.text.attrs)
    enc = attrs["encoder"]
    encoder = load_text_encoder(enc["name"], None if enc["family"] in ("minilm", "tiny-clip") else enc["source"],
                                enc.get("revision"))
    if encoder.info["weights_sha256"] != enc["weights_sha256"]:
        raise UsageError(f"the text encoder loaded now ({encoder.info['source']}) differs from the one that "
                           f"built the cache (weights sha256 {enc['weights_sha256'][:12]}…); queries would not match")
    # up to the encoder's own limit, not the cache's longest text; the heads take any length
    from duetmc.featurize.text import token_limit

    feats, lens = encoder([query], attrs["layers"], token_limit(attrs))
    return model.encode_text(feats.half(), lens).float().numpy()[0]


def search(run, query: str, cache: str | None = None, top_k: int = 10, split: str = "all") -> list[dict]:
    model, index = _index(run, cache)
    items = _items(index, split)
    emb = audio_embeddings(model, index, items)
    scores = emb @ encode_query(model, index, query)
    top = np.argsort(-scores, kind="stable")[:top_k]
    tags = read_strings(index.audio["tags"]) if "tags" in index.audio else None
    return [{"id": str(index.ids[items[i]]), "score": float(scores[i]),
             "tags": json.loads(tags[items[i]]) if tags is not None else {}} for i in top]


def export_embeddings(run, cache: str | None, out: str | Path, split: str = "all") -> int:
    model, index = _index(run, cache)
    items = _items(index, split)
    emb = audio_embeddings(model, index, items)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, ids=np.array([str(i) for i in index.ids[items]]), audio=emb.astype(np.float32))
    return len(items)
