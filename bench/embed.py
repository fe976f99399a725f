"""Benchmark: embedding throughput of `DuetModel`. `embed_audio` (equal-length windows batched, the next
chunk decoded in a thread while the encoder runs) against a plain loop over the same encoder and heads
(decode one file, encode its windows one by one, pool); `embed_text` (length-sorted batches) against
one text at a time. Both sides use the same loaded encoders and give the same embeddings (checked).

Input: `--clips` synthetic 10 s clips, 44.1 kHz stereo FLAC (decode, downmix and resample are real),
and `--texts` caption-like texts of 5-20 words. Model: a run trained for 0 epochs on a small cache of
the chosen encoders (the heads' cost does not depend on their weights).

    .venv/bin/python bench/embed.py [--clips 64] [--texts 1000] [--audio-encoder tiny-audio] [--text-encoder minilm]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, emit, fmt, timeit
from featurize import write_clips


@torch.no_grad()
def plain_audio_loop(model, paths) -> np.ndarray:
    from duetmc.featurize.audio import load_audio, time_pool, window_layout
    from duetmc.manifest import Item

    enc, a = model.audio_encoder(), model.audio
    out = []
    for i, p in enumerate(paths):
        wav = load_audio(Item(str(i), Path(p)), a.sample_rate)
        embs = []
        for s, n in window_layout(len(wav), a.window_samples, a.hop_samples):
            hidden = enc(torch.from_numpy(wav[s:s + n])[None])[:, a.layers]
            feats = time_pool(hidden.float(), a.tokens).half()
            embs.append(model.heads.encode_audio(feats))
        out.append(torch.nn.functional.normalize(torch.cat(embs).sum(0), dim=0).numpy())
    return np.stack(out)


@torch.no_grad()
def plain_text_loop(model, texts) -> np.ndarray:
    enc, t = model.text_encoder(), model.text
    out = []
    for text in texts:
        feats, lens = enc([text], t.layers, t.max_tokens)
        out.append(model.heads.encode_text(feats.half(), lens)[0].numpy())
    return np.stack(out)


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ("calm dark happy sad energetic mellow jazz rock folk ambient piano guitar drums strings synth "
             "bass vocals slow fast groove dreamy upbeat melancholic track song with a and the of in").split()
    return [" ".join(rng.choice(words, rng.integers(5, 21))) for _ in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--audio-encoder", default="tiny-audio")
    ap.add_argument("--text-encoder", default="minilm")
    ap.add_argument("--window-s", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from model_fixtures import build_run

    from duetmc.pretrained import DuetModel

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = build_run(tmp / "run", args.audio_encoder, args.text_encoder, n_items=6, seconds=args.window_s + 1,
                        window_s=args.window_s)
        model = DuetModel.from_run(run["run"], progress=False)
        (tmp / "clips").mkdir()
        write_clips(tmp / "clips", args.clips)
        paths = sorted((tmp / "clips").glob("*.flac"))
        texts = make_texts(args.texts)
        agree_a = float(np.min(np.sum(model.embed_audio(paths) * plain_audio_loop(model, paths), axis=1)))
        agree_t = float(np.min(np.sum(model.embed_text(texts) * plain_text_loop(model, texts), axis=1)))
        audio_api = timeit(lambda: model.embed_audio(paths), repeat=args.repeat)
        audio_loop = timeit(lambda: plain_audio_loop(model, paths), repeat=args.repeat)
        text_api = timeit(lambda: model.embed_text(texts), repeat=args.repeat)
        text_loop = timeit(lambda: plain_text_loop(model, texts), repeat=args.repeat)
    per = lambda s, n: n / s["median"]  # noqa: E731
    result = {"clips": args.clips, "clip_seconds": 10.0, "texts": args.texts, "audio_encoder": args.audio_encoder,
              "text_encoder": args.text_encoder, "window_s": args.window_s, "torch_threads": torch.get_num_threads(),
              "audio": {"api_s": audio_api, "loop_s": audio_loop, "api_clips_per_s": per(audio_api, args.clips),
                        "loop_clips_per_s": per(audio_loop, args.clips),
                        "speedup": audio_loop["median"] / audio_api["median"], "min_cosine": agree_a},
              "text": {"api_s": text_api, "loop_s": text_loop, "api_texts_per_s": per(text_api, args.texts),
                       "loop_texts_per_s": per(text_loop, args.texts),
                       "speedup": text_loop["median"] / text_api["median"], "min_cosine": agree_t}}
    a, t = result["audio"], result["text"]
    emit("embed", result, "\n".join([
        f"audio ({args.audio_encoder}, {args.clips} x 10 s FLAC): embed_audio {a['api_clips_per_s']:.1f} clips/s, "
        f"plain loop {a['loop_clips_per_s']:.1f} clips/s: {a['speedup']:.2f}x (min cosine {a['min_cosine']:.5f})",
        f"  embed_audio {fmt(audio_api)}; loop {fmt(audio_loop)}",
        f"text ({args.text_encoder}, {args.texts} texts): embed_text {t['api_texts_per_s']:.0f} texts/s, "
        f"plain loop {t['loop_texts_per_s']:.0f} texts/s: {t['speedup']:.2f}x (min cosine {t['min_cosine']:.5f})",
        f"  embed_text {fmt(text_api)}; loop {fmt(text_loop)}"]))


if __name__ == "__main__":
    main()
