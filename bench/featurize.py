"""Benchmark 3: featurize throughput. For each encoder, side by side and interleaved in one run: a plain
per-item loop (decode/tokenise, forward, write one row, one item at a time), `duetmc featurize` at
its default settings, and the previous commit's featurizer (`--before DIR`, a checkout of it).
Target: the featurizer >= 1.5x the plain loop for every encoder.

Audio input: N synthetic 10 s clips, 44.1 kHz stereo FLAC (tones plus noise), so every path decodes,
downmixes and resamples like real files. Text input: a manifest of captions and tag lists (~15
tokens) plus a tenth of long captions (~60-90 tokens). Every run is its own subprocess (so the
previous commit's code can run too), writes a fresh cache, and is timed inside, from the cache plan
(encoder load, header scans) to the last write; imports (torch, transformers' model modules: seconds
on this box, paid once per process by every path) are not timed. Reports items/s, the time shares (plan, decode or
tokenise, encoder, write) and the largest feature difference between the paths.

    .venv/bin/python bench/featurize.py [--quick] [--repeat 3] [--before /tmp/feat_before]
        [--encoders tiny-audio musicnn-mtt tiny-text minilm]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

AUDIO = {"tiny-audio", "musicnn-mtt", "musicnn-msd", "mert-v1-95m"}


# --- inputs ----------------------------------------------------------------------------------


def write_clips(folder: Path, n: int, sr: int = 44100, seconds: float = 10.0) -> Path:
    import soundfile as sf

    from duetmc.manifest import Item, write_manifest

    rng = np.random.default_rng(0)
    t = np.arange(int(sr * seconds)) / sr
    items = []
    for i in range(n):
        f0 = 110 * 2 ** (rng.integers(0, 36) / 12)
        x = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) / h for h in range(1, 5))
        x = 0.2 * x * (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
        stereo = np.stack([x, np.roll(x, 100)], 1) + 0.01 * rng.standard_normal((len(t), 2))
        path = folder / f"clip{i:04d}.flac"
        sf.write(str(path), stereo.astype(np.float32), sr)
        items.append(Item(f"clip{i:04d}", path, tags={"genre": ["rock"]}, split="train"))
    return write_manifest(items, folder / "manifest.jsonl")


WORDS = {
    "genre": ["rock", "jazz", "ambient", "hip hop", "folk", "techno", "classical", "blues", "reggae", "metal"],
    "mood": ["happy", "melancholic", "energetic", "calm", "dark", "uplifting", "tense", "dreamy"],
    "instrument": ["piano", "electric guitar", "drums", "strings", "synthesizer", "bass", "saxophone",
                   "acoustic guitar", "violin", "organ", "flute", "trumpet"],
}


def write_texts(folder: Path, n_items: int) -> Path:
    """A manifest whose records are ~2 texts per item: a tag list and a caption; every tenth caption is long."""
    rng = np.random.default_rng(0)
    pick = lambda k, m: [str(w) for w in rng.choice(WORDS[k], m, replace=False)]  # noqa: E731
    rows = []
    for i in range(n_items):
        g, mo, ins = pick("genre", 1), pick("mood", 2), pick("instrument", int(rng.integers(1, 4)))
        cap = f"a {mo[0]} {g[0]} piece with {' and '.join(ins)}, {rng.integers(60, 180)} bpm"
        if i % 10 == 0:  # long captions: several sentences
            cap += "".join(f". the {w} enters after {rng.integers(2, 90)} seconds and plays a {mo[-1]} "
                           f"{pick('genre', 1)[0]} line over a steady groove" for w in pick("instrument", 3))
        rows.append({"id": f"t{i:05d}", "audio": "none.wav", "tags": {"genre": g, "mood": mo, "instrument": ins},
                     "captions": [cap], "split": "train"})
    path = folder / "texts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- one run, in its own process -------------------------------------------------------------


def plain_audio(manifest: str, cache: str, encoder_name: str) -> dict:
    """One clip at a time: decode, resample, forward, time-pool, write its row."""
    import torch

    from duetmc.featurize.audio import AudioFeaturizeConfig, load_audio, prepare_audio_cache, time_pool

    cfg = AudioFeaturizeConfig(manifest=manifest, cache=cache, encoder=encoder_name, progress=False)
    group, items, encoder, _ = prepare_audio_cache(cfg)
    layers, tokens = group.attrs["layers"], cfg.tokens
    features, done = group["features"], group["done"]
    t = {"decode": 0.0, "encoder": 0.0, "write": 0.0}
    for r, item in enumerate(items):  # 10 s clips: one window per item
        t0 = time.perf_counter()
        wav = load_audio(item, encoder.sample_rate)
        t1 = time.perf_counter()
        row = time_pool(encoder(torch.from_numpy(wav)[None])[:, layers].float(), tokens)[0].numpy()
        t2 = time.perf_counter()
        features[r] = row.astype(np.float16)
        done[r] = True
        t3 = time.perf_counter()
        t["decode"] += t1 - t0
        t["encoder"] += t2 - t1
        t["write"] += t3 - t2
    return t


def plain_text(manifest: str, cache: str, encoder_name: str) -> dict:
    """One text at a time: tokenise and forward (no padding at all), write its row."""
    from duetmc.featurize.text import TextFeaturizeConfig, prepare_text_cache

    cfg = TextFeaturizeConfig(input=manifest, cache=cache, encoder=encoder_name, progress=False)
    group, encoder = prepare_text_cache(cfg)
    layers, T = group.attrs["layers"], int(group.attrs["max_tokens"])
    texts = [str(s) for s in group["texts"][:]]
    features, done = group["features"], group["done"]
    t = {"decode": 0.0, "encoder": 0.0, "write": 0.0}  # tokenising is inside the encoder call here
    for r, text in enumerate(texts):
        t1 = time.perf_counter()
        feats, n = encoder([text], layers, T)
        t2 = time.perf_counter()
        row = np.zeros((len(layers), T, encoder.dim), np.float16)
        row[:, : int(n[0])] = feats[0, :, : int(n[0])].numpy()
        features[r] = row
        done[r] = True
        t["encoder"] += t2 - t1
        t["write"] += time.perf_counter() - t2
    return t


def featurizer(manifest: str, cache: str, encoder_name: str) -> dict:
    """The library at its defaults (the CLI's batch size, workers)."""
    if encoder_name in AUDIO:
        from duetmc.featurize.audio import AudioFeaturizeConfig, featurize_audio

        summary = featurize_audio(AudioFeaturizeConfig(manifest=manifest, cache=cache, encoder=encoder_name,
                                                       progress=False))
    else:
        from duetmc.featurize.text import TextFeaturizeConfig, featurize_text

        summary = featurize_text(TextFeaturizeConfig(input=manifest, cache=cache, encoder=encoder_name, progress=False))
    assert summary.failed == 0, summary.failures
    out = {"rows": summary.seconds}
    out.update(getattr(summary, "timings", None) or {})  # the previous commit has no timers
    return out


def worker(kind: str, manifest: str, cache: str, encoder_name: str) -> None:
    import duetmc.featurize.audio  # noqa: F401 (imports are the interpreter's cost, not the featurizer's)
    import duetmc.featurize.text  # noqa: F401
    from transformers import AutoModel, CLIPTextModel, HubertModel  # noqa: F401 (lazy modules: seconds)

    t0 = time.perf_counter()
    if kind == "featurizer":
        shares = featurizer(manifest, cache, encoder_name)
    else:
        shares = (plain_audio if encoder_name in AUDIO else plain_text)(manifest, cache, encoder_name)
    total = time.perf_counter() - t0
    print("RESULT " + json.dumps({"seconds": total, "shares": shares}))


# --- the comparison --------------------------------------------------------------------------


def run_one(kind: str, src: Path, manifest: Path, cache: Path, encoder_name: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), DUETMC_BENCH_SRC=str(src))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = [sys.executable, __file__, "--worker", kind, str(manifest), str(cache), encoder_name]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode or line is None:
        raise RuntimeError(f"{kind} {encoder_name} failed: {out.stderr[-2000:]}")
    return json.loads(line[len("RESULT "):])


def features_of(cache: Path) -> np.ndarray:
    import zarr

    root = zarr.open_group(str(cache), mode="r")
    mod = "audio" if "audio" in root else "text"
    key = next(iter(root[mod].group_keys()))
    return root[mod][key]["features"][:].astype(np.float32)


def compare(args, tmp: Path, name: str, manifest: Path, n: int) -> dict:
    from common import stats

    variants = {"plain": ("plain", ROOT), "featurizer": ("featurizer", ROOT)}
    if args.before:
        variants["before"] = ("featurizer", Path(args.before))
    run_one("featurizer", ROOT, manifest, tmp / f"{name}-warm", name)  # warm-up: encoder files, page cache
    runs = {v: [] for v in variants}
    for rep in range(args.repeat):
        for v, (kind, src) in variants.items():  # interleaved: drift on a shared box hits all alike
            cache = tmp / f"{name}-{v}-{rep}"
            runs[v].append(run_one(kind, src, manifest, cache, name))
            if rep:
                shutil.rmtree(cache, ignore_errors=True)
    ref = features_of(tmp / f"{name}-plain-0")
    entry = {"items": n}
    for v in variants:
        secs = stats([r["seconds"] for r in runs[v]])
        shares = {k: float(np.median([r["shares"].get(k, 0.0) for r in runs[v]])) for k in runs[v][0]["shares"]}
        diff = float(np.abs(features_of(tmp / f"{name}-{v}-0") - ref).max())
        entry[v] = {"seconds": secs, "items_per_s": n / secs["median"], "shares_s": shares, "max_abs_diff_vs_plain": diff}
    return entry


def share_text(e: dict) -> str:
    s, total = e["shares_s"], e["seconds"]["median"]
    if "encoder" not in s:
        return "(no timers)"
    plan = total - s.get("rows", sum(s.values()))
    parts = [f"plan+load {plan / total:.0%}"] + [f"{k} {s[k] / total:.0%}" for k in ("decode", "wait", "encoder", "write")
                                                  if k in s]
    return ", ".join(parts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--text-items", type=int, default=1000, help="~2 texts each (tag list + caption)")
    ap.add_argument("--encoders", nargs="+", default=["tiny-audio", "musicnn-mtt", "tiny-text", "minilm"])
    ap.add_argument("--before", default=None, help="checkout of the previous commit (git worktree add --detach DIR main)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="16 clips, 300 text items, 2 repetitions")
    args = ap.parse_args()
    if args.quick:
        args.clips, args.text_items, args.repeat = 16, 300, 2
    from common import emit, fmt

    tmp = Path(tempfile.mkdtemp(prefix="duetmc_bench3_", dir="/tmp"))
    try:
        clips, texts = write_clips(tmp, args.clips), write_texts(tmp, args.text_items)
        result, lines = {"clips": args.clips, "text_items": args.text_items, "encoders": {}}, []
        for name in args.encoders:
            audio = name in AUDIO
            n = args.clips if audio else n_texts(texts)
            e = compare(args, tmp, name, clips if audio else texts, n)
            result["encoders"][name] = e
            unit = "clips/s" if audio else "texts/s"
            for v in ("plain", "before", "featurizer"):
                if v in e:
                    sp = e["plain"]["seconds"]["median"] / e[v]["seconds"]["median"]
                    lines.append(f"| {name} ({n}) | {v} | {fmt(e[v]['seconds'])} | {e[v]['items_per_s']:.1f} {unit} "
                                 f"| **{sp:.2f}x** | {share_text(e[v])} | {e[v]['max_abs_diff_vs_plain']:.2g} |")
            print("\n".join(lines[-len(e) + 1:]), file=sys.stderr, flush=True)  # as each encoder finishes
        md = ("| encoder (items) | path | seconds | throughput | vs plain | time shares | max diff vs plain |\n"
              "|---|---|---|---|---|---|---|\n" + "\n".join(lines))
        emit("featurize", result, md)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def n_texts(texts: Path) -> int:
    """Distinct texts of the set: the rows every path writes."""
    from duetmc.featurize.text import records_from_input

    return len(dict.fromkeys(r.text for r in records_from_input(texts)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.path.insert(0, os.environ.get("DUETMC_BENCH_SRC", str(Path(__file__).resolve().parents[1])))
        worker(*sys.argv[2:6])
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from common import ROOT  # noqa: E402 (also puts the checkout on sys.path)

        main()
