"""Benchmark 1: one epoch of heads training from the cache vs the same epoch with the audio encoder
running on every step (as end-to-end peers do). Target: cached >= 500x faster per epoch.

Cached epoch (measured): the trainer's data path (`epoch_batches` -> `fetch` from a `MemorySource`
through the `Prefetcher`) and the trainer's step (DuetHeads forward, InfoNCE, backward, AdamW), over
N clips of a MERT-95M-shaped cache (13 layers x T x 768, random values) with MiniLM-shaped texts.

Online epoch: the same steps, plus a frozen MERT-95M-sized HuBERT (random weights; FLOPs do not
depend on them) run in inference mode on each step's 10 s, 24 kHz clips, then time pooling to T
tokens. Its per-clip forward is measured (warm-up + repeats) and the online epoch is computed as
`cached epoch + N x per-clip forward`; a directly measured online step (encoder + heads on a small
batch) checks that the two parts add up. This leaves out decoding and resampling, which would only
make the online side slower.

MERT-330M: the per-clip forward of a 1024-d, 24-layer HuBERT is measured the same way, and the cached
step on 25 x T x 1024 features is measured on in-memory tensors; the ratio uses the same formula.

    .venv/bin/python bench/cached_vs_online.py [--quick] [--clips 1024] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import build_cache, emit, fmt, timeit

SR = 24000


def hubert(size: str):
    from transformers import HubertConfig, HubertModel

    common = dict(conv_dim=(512,) * 7, do_stable_layer_norm=True, vocab_size=32)
    if size == "95m":  # MERT-v1-95M: HuBERT-base sized, group norm in the conv stack
        cfg = HubertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                           feat_extract_norm="group", **common)
    else:  # MERT-v1-330M: HuBERT-large sized
        cfg = HubertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                           feat_extract_norm="layer", **common)
    torch.manual_seed(0)
    model = HubertModel(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def encode(model, wav: torch.Tensor, tokens: int) -> torch.Tensor:
    """The online featurization of one batch: hidden states of every layer, pooled to `tokens`."""
    from duetmc.featurize.audio import time_pool

    with torch.inference_mode():
        hidden = torch.stack(model(wav, output_hidden_states=True).hidden_states, dim=1)
        return time_pool(hidden, tokens).to(torch.float16)


class Step:
    """The trainer's optimisation step (duetmc.train.train without hard negatives or DDP)."""

    def __init__(self, hcfg):
        from duetmc.heads.model import DuetHeads

        torch.manual_seed(0)
        self.model = DuetHeads(hcfg)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.05)

    def __call__(self, audio, text, text_len):
        from duetmc.loss import contrastive_loss

        a = self.model.encode_audio(audio)
        t = self.model.encode_text(text, text_len)
        loss = contrastive_loss(a, t, self.model.logit_scale())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def cached_epoch_fn(indices, source, batch_size: int, step: Step):
    from duetmc.sampler import SamplerConfig, epoch_batches
    from duetmc.train import Prefetcher, fetch

    sampler = SamplerConfig(p_cap=0.0, views=False, swap=False)
    epoch = [0]

    def run():
        specs = epoch_batches(indices, sampler, 0, epoch[0], batch_size, 0.0)
        epoch[0] += 1
        pre = Prefetcher(lambda s: fetch(source, s, 0, len(s.ds)), specs, 4)
        for audio, text, text_len, _, _, _ in pre:
            step(audio, text, text_len)
        pre.close()
        return len(specs)

    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=1024, help="N: clips per epoch")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--enc-batch", type=int, default=2, help="clips per measured encoder forward")
    ap.add_argument("--skip-330m", action="store_true")
    ap.add_argument("--quick", action="store_true", help="N=256, batch 64, 3 repeats of the 330M forward")
    args = ap.parse_args()
    if args.quick:
        args.clips, args.batch_size = 256, 64
    from duetmc.feature_source import MemorySource
    from duetmc.pairs import PairIndex
    from duetmc.heads.model import HeadsConfig
    from duetmc.train import TrainConfig, heads_config

    tmp = Path(tempfile.mkdtemp(prefix="duetmc_bench1_", dir="/tmp"))
    result: dict = {"clips": args.clips, "batch_size": args.batch_size, "tokens": args.tokens}
    try:
        t0 = time.perf_counter()
        spec = build_cache(tmp / "cache", args.clips, audio_encoder="mert-v1-95m", audio_layers=13, audio_dim=768,
                           tokens=args.tokens, views=False, work=tmp, splits=(0.0, 0.0))
        result["build_cache_s"] = time.perf_counter() - t0
        index = PairIndex(spec)
        source = MemorySource([index])
        hcfg = heads_config([index], TrainConfig(data=[spec], out=""))
        step = Step(hcfg)
        steps = [0]

        def epoch():
            steps[0] = cached_epoch_fn([index], source, args.batch_size, step)()

        cached = timeit(epoch, repeat=args.repeat)
        result["cached_epoch_s"] = cached
        result["steps_per_epoch"] = steps[0]

        wav = torch.from_numpy(np.random.default_rng(0).standard_normal((args.enc_batch, 10 * SR), dtype=np.float32))
        m95 = hubert("95m")
        enc95 = timeit(lambda: encode(m95, wav, args.tokens), repeat=args.repeat)
        per_clip95 = {k: (v / args.enc_batch if isinstance(v, float) else v) for k, v in enc95.items() if k != "values"}
        result["mert95m_forward_per_clip_s"] = per_clip95
        # direct check: one online step (encoder + heads) on enc_batch clips vs the sum of its parts
        text, text_len = source.text_batch(np.zeros(args.enc_batch, int), np.arange(args.enc_batch))
        online_step = timeit(lambda: step(encode(m95, wav, args.tokens), text, text_len), repeat=args.repeat)
        heads_small = timeit(lambda: step(source.audio_batch(np.zeros(args.enc_batch, int), np.arange(args.enc_batch)),
                                          text, text_len), repeat=args.repeat)
        result["online_step_check"] = {"measured_online_step_s": online_step, "encoder_s": enc95,
                                       "heads_step_s": heads_small,
                                       "parts_sum_s": enc95["median"] + heads_small["median"]}
        del m95
        online95 = cached["median"] + args.clips * per_clip95["median"]
        result["mert95m"] = {"online_epoch_s": online95, "cached_epoch_s": cached["median"],
                             "speedup": online95 / cached["median"],
                             "speedup_range": [(cached["min"] + args.clips * per_clip95["min"]) / cached["max"],
                                               (cached["max"] + args.clips * per_clip95["max"]) / cached["min"]]}
        md = [f"N = {args.clips} clips, batch {args.batch_size} ({steps[0]} steps), T = {args.tokens}.",
              "", "| | MERT-95M-sized | MERT-330M-sized |", "|---|---|---|"]
        rows = {"encoder forward per 10 s clip": [fmt(per_clip95)], "cached epoch (measured)": [fmt(cached)],
                "online epoch (cached + N x forward)": [f"{online95:.1f} s"],
                "cached speed-up per epoch": [f"**{online95 / cached['median']:.0f}x**"]}
        if not args.skip_330m:
            m330 = hubert("330m")
            one = wav[:1]
            enc330 = timeit(lambda: encode(m330, one, args.tokens), repeat=3 if args.quick else args.repeat)
            del m330
            h330 = HeadsConfig(audio_dim=1024, audio_layers=25, text_dim=hcfg.text_dim, text_layers=hcfg.text_layers,
                               audio_max_tokens=args.tokens, text_max_tokens=hcfg.text_max_tokens)
            step330 = Step(h330)
            pool = torch.randn(args.clips, 25, args.tokens, 1024).to(torch.float16)
            rng = np.random.default_rng(0)

            def epoch330():
                order = rng.permutation(args.clips)
                for lo in range(0, args.clips - args.batch_size + 1, args.batch_size):
                    rows_ = order[lo:lo + args.batch_size]
                    text_rows = np.array([index.fixed_text(int(k), 0.0) for k in rows_])
                    text, text_len = source.text_batch(np.zeros(len(rows_), int), text_rows)
                    step330(pool[torch.from_numpy(rows_)], text, text_len)

            cached330 = timeit(epoch330, repeat=args.repeat)
            online330 = cached330["median"] + args.clips * enc330["median"]
            result["mert330m"] = {"forward_per_clip_s": enc330, "cached_epoch_s": cached330,
                                  "online_epoch_s": online330, "speedup": online330 / cached330["median"]}
            rows["encoder forward per 10 s clip"].append(fmt(enc330))
            rows["cached epoch (measured)"].append(fmt(cached330))
            rows["online epoch (cached + N x forward)"].append(f"{online330:.1f} s")
            rows["cached speed-up per epoch"].append(f"**{online330 / cached330['median']:.0f}x**")
        md += [f"| {k} | " + " | ".join(v) + " |" for k, v in rows.items()]
        c = result["online_step_check"]
        md += ["", f"Check, {args.enc_batch} clips: measured online step {fmt(online_step)}; encoder "
                   f"{enc95['median']:.3f} s + heads step {heads_small['median']:.3f} s = {c['parts_sum_s']:.3f} s."]
        emit("cached_vs_online", result, "\n".join(md))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
