"""GPU throughput: training steps of the heads, and MERT-sized featurizing, in float32 and bf16 autocast.

Training: `DuetHeads` through the trainer's own pieces (`PairForward`, `param_groups`, AdamW,
`contrastive_loss`) on MERT-95M-shaped audio features (13 layers x 4 tokens x 768) and MiniLM text
features (1 layer x 32 tokens x 384), batch 1024, float32 and bf16 autocast; samples/s. Featurizing:
random-weight HubertModels of MERT-v1-95M and -330M size (no downloads) through the featurizer's
`window_features` (pinned host memory, non-blocking copies), 10 s windows at 24 kHz, batch 8, float32
and `--dtype bf16`; clips/s. Results go to `--out` as JSON.

Without a CUDA device it prints one line and exits 0. `--device cpu --tiny` runs the same code on tiny
shapes (a smoke test: tests/test_bench_gpu.py), so the script cannot rot on machines without a GPU.

    .venv/bin/python bench/gpu.py --out gpu.json [--steps 20] [--clips 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

SKIPPED = "no CUDA device: bench/gpu.py measures GPU throughput and was skipped"


@dataclass(frozen=True)
class Shapes:
    batch: int = 1024
    audio: tuple[int, int, int] = (13, 4, 768)  # MERT-v1-95M: layers, tokens, dim
    text: tuple[int, int, int] = (1, 32, 384)  # MiniLM: final layer, tokens, dim
    window_s: float = 10.0
    clip_batch: int = 8
    encoders: tuple[str, ...] = ("mert-v1-95m", "mert-v1-330m")


TINY = Shapes(batch=8, audio=(3, 4, 16), text=(1, 6, 12), window_s=0.5, clip_batch=2, encoders=("tiny",))


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def autocast(device: str, precision: str):
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def train_rate(shapes: Shapes, device: str, precision: str, steps: int) -> float:
    """Samples/s of the trainer's optimisation step (no hard negatives, one process)."""
    from duetmc.heads.model import DuetHeads, HeadsConfig
    from duetmc.loss import contrastive_loss
    from duetmc.train import PairForward, param_groups

    (la, ta, da), (lt, tt, dt), b = shapes.audio, shapes.text, shapes.batch
    torch.manual_seed(0)
    heads = DuetHeads(HeadsConfig(audio_dim=da, audio_layers=la, text_dim=dt, text_layers=lt,
                                  audio_max_tokens=ta, text_max_tokens=tt)).to(device)
    net = PairForward(heads)
    opt = torch.optim.AdamW(param_groups(heads, 0.05), lr=1e-3)
    audio = torch.randn(b, la, ta, da, device=device).half()  # the cache stores float16
    text = torch.randn(b, lt, tt, dt, device=device).half()
    text_len = torch.randint(4, tt + 1, (b,), device=device)

    def step():
        with autocast(device, precision):
            a, t, _, scale = net(audio.float(), text.float(), text_len)
            loss = contrastive_loss(a.float(), t.float(), scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return b * steps / timed(step, steps, device)


def timed(fn, n: int, device: str, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return time.perf_counter() - t0


def hubert_encoder(size: str, device: str):
    """A random-weight HubertModel of MERT's size, wrapped as the featurizer's AudioEncoder."""
    from transformers import HubertConfig, HubertModel

    from duetmc.featurize.audio import AudioEncoder

    if size == "tiny":
        cfg = HubertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                           conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    else:  # MERT-v1-95M: HuBERT-base sized, group norm; 330M: HuBERT-large sized, layer norm
        big = size == "mert-v1-330m"
        cfg = HubertConfig(hidden_size=1024 if big else 768, num_hidden_layers=24 if big else 12,
                           num_attention_heads=16 if big else 12, intermediate_size=4096 if big else 3072,
                           feat_extract_norm="layer" if big else "group", conv_dim=(512,) * 7,
                           do_stable_layer_norm=True, vocab_size=32)
    torch.manual_seed(0)
    model = HubertModel(cfg).eval().requires_grad_(False)

    def forward(wav):
        return torch.stack(model(wav, output_hidden_states=True).hidden_states, dim=1)

    return AudioEncoder(size, model, 24000, cfg.num_hidden_layers + 1, cfg.hidden_size, 400, {},
                        normalize=True, forward=forward)


def featurize_rate(size: str, shapes: Shapes, device: str, precision: str, batches: int) -> float:
    """Clips/s of the featurizer's encoder step (window_features), one window per clip; bf16 as
    `duetmc featurize audio --dtype bf16` runs it (weights and input in bf16)."""
    import numpy as np

    from duetmc.featurize.audio import COMPUTE_DTYPES, window_features

    dtype = COMPUTE_DTYPES["bf16" if precision == "bf16" else "float32"]
    encoder = hubert_encoder(size, device).to(device, dtype)
    n = int(shapes.window_s * 24000)
    wavs = list(np.random.default_rng(0).standard_normal((shapes.clip_batch, n)).astype(np.float32))
    layers = list(range(encoder.n_layers))
    rate = shapes.clip_batch * batches / timed(lambda: window_features(encoder, wavs, layers, 4, device, dtype),
                                               batches, device, warmup=1)
    del encoder
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rate


def measure(shapes: Shapes, device: str, steps: int, batches: int) -> dict:
    out = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else device,
           "shapes": shapes.__dict__, "train_samples_per_s": {}, "featurize_clips_per_s": {}}
    for precision in ("fp32", "bf16"):
        out["train_samples_per_s"][precision] = round(train_rate(shapes, device, precision, steps), 1)
        for size in shapes.encoders:
            rate = featurize_rate(size, shapes, device, precision, batches)
            out["featurize_clips_per_s"].setdefault(size, {})[precision] = round(rate, 2)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="where to write the JSON results")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes: a smoke test of this script")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per precision")
    ap.add_argument("--batches", type=int, default=4, help="timed featurizer batches per encoder and precision")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(SKIPPED)
        return 0
    result = measure(TINY if args.tiny else Shapes(), args.device, args.steps, args.batches)
    result["command"] = " ".join(["bench/gpu.py"] + (argv if argv is not None else sys.argv[1:]))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/gpu.py` from a checkout
    sys.exit(main())
