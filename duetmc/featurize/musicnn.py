"""musicnn (Pons & Serra, 2019) as a locked audio encoder: a PyTorch port that reads the TF1 weights.

The ``musicnn`` wheel (ISC) ships the MagnaTagATune and Million Song Dataset taggers as TF1
checkpoints. ``duetmc.featurize.tfcheckpoint`` reads them and this module rebuilds the network from
its published architecture, so neither TensorFlow nor musicnn's own code runs here (the wheel is
installed ``--no-deps`` only for its checkpoint files).

Pipeline, per waveform (16 kHz mono float32):

1. Log-mel: |STFT|^2 (n_fft 512, hop 256, periodic Hann, centred with reflect padding as the
   librosa 0.7-0.9 musicnn was written for), 96 Slaney mel bands (librosa's default filterbank),
   then ``log10(10000 * mel + 1)`` in float32. Upstream casts the mel to float16 first; we do not,
   since float16 overflows to inf for loud input (10000 * mel > 65504) and float32 is what DESIGN
   fixes. A waveform of S samples gives ``1 + S // 256`` frames.
2. Patches of 187 frames (3 s): non-overlapping from the start; if frames remain, one last patch
   aligned to the end of the clip, overlapping the one before (never zero padding, which the
   network never saw in training). Input shorter than one patch raises ``ValueError``.
3. Per patch: front-end (batch norm of the input; two timbral convs of 204 filters, 7 frames x
   38 or 67 bands; three temporal convs of 51 filters, 128/64/32 frames x 1 band; each ReLU, batch
   norm, max over frequency) gives 561-d per frame. Mid-end: three 1-D convs of 64 (7 frames) with
   ReLU and batch norm, the 2nd and 3rd residual. Back-end: max and mean over time of the 753-d
   [front, c1, c2, c3], batch norm, dense 200 + ReLU + batch norm (the "penultimate" layer),
   dense 50, sigmoid.

Encoder output (the choice the cache and heads rely on): ``forward`` returns per-frame features
``[B, 1, F, 753]``: the front-end (561) and the three mid-end outputs (64 each) concatenated along
the feature axis. MERT-style encoders return a stack of same-width hidden layers; musicnn's parts
have different widths, so the "layer" axis has size 1 and ``part_slices`` says where each part
lies. F equals the number of mel frames: every frame appears once, taken from the first patch
that covers it (frames of the end-aligned patch that overlap the previous patch are dropped).
Each patch is processed independently (its convs see only its own 187 frames), as in training.

Upstream's ``extractor()`` has a bug (it keeps the first batch's mid-end outputs for every later
batch); this port computes every patch for itself and is checked per patch against the TF graph.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from duetmc.featurize.tfcheckpoint import read_checkpoint
from duetmc.errors import DuetmcError

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187  # 3 s, what the models were trained on
FRONT_DIM = 561
MID_DIM = 64
FRAME_DIM = FRONT_DIM + 3 * MID_DIM  # 753
_PATCH_CHUNK = 2  # patches per network call: bounds memory on long tracks, and 2 patches of front-end
# activations stay in cache (CPU: 1.5x faster per clip than 16, bit-identical; BENCHMARKS.md §3)

TAG_NAMES_MTT = [
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
    "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
    "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice",
    "weird", "country", "metal", "female voice", "choral",
]  # fmt: skip
TAG_NAMES_MSD = [
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists",
    "classic rock", "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill",
    "instrumental", "punk", "oldies", "blues", "hard rock", "ambient", "acoustic", "experimental",
    "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country", "easy listening", "sexy",
    "catchy", "funk", "electro", "heavy metal", "Progressive rock", "60s", "rnb", "indie pop",
    "sad", "House", "happy",
]  # fmt: skip

# encoder name -> (checkpoint directory inside the musicnn package, tag names)
MODELS = {
    "musicnn-mtt": ("MTT_musicnn", TAG_NAMES_MTT),
    "musicnn-msd": ("MSD_musicnn", TAG_NAMES_MSD),
}

# Training-only checkpoint entries, skipped on load: Adam's moment slots and bias-correction powers.
IGNORED_SUFFIXES = ("/Adam", "/Adam_1")
IGNORED_NAMES = ("beta1_power", "beta2_power", "global_step")

# TF1 layer names (auto-numbered in graph-building order) -> torch module, and how to convert.
_TF_LAYERS = [
    ("batch_normalization", "input_bn", "bn"),
    ("conv2d", "timbral.0.conv", "conv2d"),
    ("batch_normalization_1", "timbral.0.bn", "bn"),
    ("conv2d_1", "timbral.1.conv", "conv2d"),
    ("batch_normalization_2", "timbral.1.bn", "bn"),
    ("conv2d_2", "temporal.0.conv", "conv2d"),
    ("batch_normalization_3", "temporal.0.bn", "bn"),
    ("conv2d_3", "temporal.1.conv", "conv2d"),
    ("batch_normalization_4", "temporal.1.bn", "bn"),
    ("conv2d_4", "temporal.2.conv", "conv2d"),
    ("batch_normalization_5", "temporal.2.bn", "bn"),
    ("conv2d_5", "midend.0.conv", "conv1d"),
    ("batch_normalization_6", "midend.0.bn", "bn"),
    ("conv2d_6", "midend.1.conv", "conv1d"),
    ("batch_normalization_7", "midend.1.bn", "bn"),
    ("conv2d_7", "midend.2.conv", "conv1d"),
    ("batch_normalization_8", "midend.2.bn", "bn"),
    ("batch_normalization_9", "pool_bn", "bn"),
    ("dense", "dense", "dense"),
    ("batch_normalization_10", "dense_bn", "bn"),
    ("dense_1", "classifier", "dense"),
]
_TF_BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization default


class MusicnnError(DuetmcError, RuntimeError):
    """The musicnn checkpoint cannot be found or does not match the architecture."""


class _ConvBlock(nn.Module):
    """Conv, ReLU, then batch norm (musicnn's order), as one front-end or mid-end unit."""

    def __init__(self, conv: nn.Module, channels: int, bn: type[nn.Module]):
        super().__init__()
        self.conv = conv
        self.bn = bn(channels, eps=_TF_BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(F.relu(self.conv(x)))


class MusicnnEncoder(nn.Module):
    """Frozen musicnn tagger exposing per-frame 753-d features (see the module docstring).

    Attributes: ``name``, ``sample_rate`` (16000), ``n_layers`` (1), ``dim`` (753),
    ``min_samples`` (shortest waveform accepted: one 187-frame patch), ``layer_names``,
    ``part_slices`` (where front/cnn1/cnn2/cnn3 lie in the 753), ``tag_names`` and
    ``weights_sha256`` (set by ``load_musicnn``).
    """

    sample_rate = SAMPLE_RATE
    n_layers = 1
    dim = FRAME_DIM
    min_samples = (PATCH_FRAMES - 1) * HOP  # 1 + S // HOP >= PATCH_FRAMES
    layer_names = ("front561+cnn1_64+cnn2_64+cnn3_64",)
    part_slices = {
        "front": slice(0, FRONT_DIM),
        "cnn1": slice(FRONT_DIM, FRONT_DIM + MID_DIM),
        "cnn2": slice(FRONT_DIM + MID_DIM, FRONT_DIM + 2 * MID_DIM),
        "cnn3": slice(FRONT_DIM + 2 * MID_DIM, FRAME_DIM),
    }

    def __init__(self, name: str, tag_names: list[str]):
        super().__init__()
        self.name = name
        self.tag_names = list(tag_names)
        self.weights_sha256 = ""
        self.input_bn = nn.BatchNorm2d(1, eps=_TF_BN_EPS)
        # timbral: 7 frames x 40 % / 70 % of the 96 bands, valid in frequency
        self.timbral = nn.ModuleList(
            _ConvBlock(nn.Conv2d(1, 204, (7, int(frac * N_MELS))), 204, nn.BatchNorm2d) for frac in (0.4, 0.7)
        )
        self.temporal = nn.ModuleList(
            _ConvBlock(nn.Conv2d(1, 51, (k, 1)), 51, nn.BatchNorm2d) for k in (128, 64, 32)
        )
        self.midend = nn.ModuleList(
            _ConvBlock(nn.Conv1d(c, MID_DIM, 7), MID_DIM, nn.BatchNorm1d) for c in (FRONT_DIM, MID_DIM, MID_DIM)
        )
        self.pool_bn = nn.BatchNorm1d(2 * FRAME_DIM, eps=_TF_BN_EPS)
        self.dense = nn.Linear(2 * FRAME_DIM, 200)
        self.dense_bn = nn.BatchNorm1d(200, eps=_TF_BN_EPS)
        self.classifier = nn.Linear(200, len(tag_names))
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        mel_fb = torchaudio.functional.melscale_fbanks(
            N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, N_MELS, SAMPLE_RATE, norm="slaney", mel_scale="slaney"
        )
        self.register_buffer("mel_fb", mel_fb, persistent=False)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> MusicnnEncoder:
        """Stay in eval mode: the encoder is locked, and batch statistics would corrupt features."""
        return super().train(False)

    # -- front-end signal processing ------------------------------------------------------------

    def logmel(self, wav: Tensor) -> Tensor:
        """[B, S] waveform at 16 kHz -> [B, 1 + S // 256, 96] log-compressed mel spectrogram, float32.

        Always float32 (the buffers too), even if the network was cast to a lower precision.
        """
        spec = torch.stft(
            wav.float(), N_FFT, HOP, window=self.window.float(), center=True, pad_mode="reflect", return_complex=True
        )
        mel = torch.matmul(spec.abs().pow(2).transpose(1, 2), self.mel_fb.float())
        return torch.log10(10000.0 * mel + 1.0)

    @staticmethod
    def patch_starts(n_frames: int) -> list[int]:
        """Start frames of the 187-frame patches covering ``n_frames`` (last one end-aligned)."""
        if n_frames < PATCH_FRAMES:
            raise ValueError(f"{n_frames} mel frames is shorter than one musicnn patch ({PATCH_FRAMES} frames)")
        starts = list(range(0, n_frames - PATCH_FRAMES + 1, PATCH_FRAMES))
        if n_frames % PATCH_FRAMES:
            starts.append(n_frames - PATCH_FRAMES)
        return starts

    # -- network ---------------------------------------------------------------------------------

    def run_patches(self, patches: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[N, 187, 96] log-mel patches -> (frames [N, 187, 753], penultimate [N, 200], logits [N, 50])."""
        x = self.input_bn(patches.unsqueeze(1))  # [N, 1, T, F]
        front = []
        for block in self.timbral:
            front.append(block(F.pad(x, (0, 0, 3, 3))).amax(dim=3))  # [N, 204, T]
        for block in self.temporal:
            k = block.conv.kernel_size[0]
            before = (k - 1) // 2  # TF "same" padding puts the extra frame after
            front.append(block(F.pad(x, (0, 0, before, k - 1 - before))).amax(dim=3))  # [N, 51, T]
        h = torch.cat(front, dim=1)  # [N, 561, T]
        parts = [h]
        for i, block in enumerate(self.midend):
            out = block(F.pad(parts[-1], (3, 3)))
            parts.append(out if i == 0 else out + parts[-1])
        frames = torch.cat(parts, dim=1)  # [N, 753, T]
        # TF flattens [753, (max, mean)] row-major, so the two pools interleave feature by feature
        pooled = torch.stack([frames.amax(dim=2), frames.mean(dim=2)], dim=2).flatten(1)
        penultimate = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))
        return frames.transpose(1, 2), penultimate, self.classifier(penultimate)

    def _patches(self, wav: Tensor) -> tuple[Tensor, list[int], int]:
        if wav.ndim != 2:
            raise ValueError(f"musicnn expects a [batch, samples] waveform, got shape {tuple(wav.shape)}")
        if wav.shape[1] < self.min_samples:
            raise ValueError(
                f"waveform of {wav.shape[1]} samples ({wav.shape[1] / SAMPLE_RATE:.2f} s) is shorter than one "
                f"musicnn patch: need at least {self.min_samples} samples at {SAMPLE_RATE} Hz"
            )
        mel = self.logmel(wav)
        starts = self.patch_starts(mel.shape[1])
        patches = torch.stack([mel[:, s : s + PATCH_FRAMES] for s in starts], dim=1)  # [B, P, 187, 96]
        return patches.flatten(0, 1).to(self.dense.weight.dtype), starts, mel.shape[1]

    def _run_chunked(self, patches: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outs = [self.run_patches(patches[i : i + _PATCH_CHUNK]) for i in range(0, len(patches), _PATCH_CHUNK)]
        return tuple(torch.cat(o) for o in zip(*outs))

    @torch.no_grad()
    def forward(self, wav: Tensor) -> Tensor:
        """[B, S] float32 waveform at 16 kHz -> [B, 1, F, 753] per-frame features, F = 1 + S // 256."""
        patches, starts, n_frames = self._patches(wav)
        frames = self._run_chunked(patches)[0].unflatten(0, (wav.shape[0], len(starts)))
        pieces = [frames[:, i] for i in range(len(starts) - 1)]
        covered = (len(starts) - 1) * PATCH_FRAMES
        pieces.append(frames[:, -1, covered - starts[-1] :])  # drop the end patch's overlap
        out = torch.cat(pieces, dim=1)
        assert out.shape[1] == n_frames
        return out.unsqueeze(1)

    @torch.no_grad()
    def tags(self, wav: Tensor) -> Tensor:
        """[B, S] waveform -> [B, 50] tag probabilities, the mean of the per-patch sigmoids."""
        patches, starts, _ = self._patches(wav)
        logits = self._run_chunked(patches)[2].unflatten(0, (wav.shape[0], len(starts)))
        return torch.sigmoid(logits).mean(dim=1)


def checkpoint_dir(name: str) -> Path:
    """Directory of the TF1 checkpoint for encoder ``name`` inside the installed musicnn wheel."""
    if name not in MODELS:
        raise MusicnnError(f"unknown musicnn encoder {name!r}; choose one of {sorted(MODELS)}")
    spec = importlib.util.find_spec("musicnn")  # locate without importing (its code needs TensorFlow)
    if spec is None or not spec.submodule_search_locations:
        raise MusicnnError(
            "the musicnn package is not installed; it ships the weights: pip install --no-deps musicnn==0.1.0"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / MODELS[name][0]
    if not (path / ".index").is_file():
        raise MusicnnError(f"{path}: no TF checkpoint (.index) for {name}; reinstall musicnn==0.1.0 --no-deps")
    return path


def model_variables(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop the training-only entries (``IGNORED_SUFFIXES``, ``IGNORED_NAMES``) from a checkpoint."""
    return {
        k: v for k, v in state.items() if k not in IGNORED_NAMES and not k.endswith(IGNORED_SUFFIXES)
    }


def weights_sha256(state: dict[str, np.ndarray]) -> str:
    """SHA-256 over the sorted variable names with each one's dtype, shape and little-endian bytes."""
    h = hashlib.sha256()
    for key in sorted(state):
        arr = np.ascontiguousarray(state[key])
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        h.update(f"{key}\0{arr.dtype.str}\0{arr.shape}\0".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def tf_to_torch_state(state: dict[str, np.ndarray], source: str = "checkpoint") -> dict[str, Tensor]:
    """Map TF1 musicnn variables to this module's state dict; fail on any missing or unexpected name."""
    variables = model_variables(state)
    used: set[str] = set()
    out: dict[str, Tensor] = {}

    def take(tf_name: str) -> np.ndarray:
        if tf_name not in variables:
            raise MusicnnError(f"{source}: variable {tf_name!r} is missing; the checkpoint does not match musicnn")
        used.add(tf_name)
        return variables[tf_name]

    for tf_layer, mod, kind in _TF_LAYERS:
        if kind == "bn":
            out[f"{mod}.weight"] = take(f"{tf_layer}/gamma")
            out[f"{mod}.bias"] = take(f"{tf_layer}/beta")
            out[f"{mod}.running_mean"] = take(f"{tf_layer}/moving_mean")
            out[f"{mod}.running_var"] = take(f"{tf_layer}/moving_variance")
            out[f"{mod}.num_batches_tracked"] = np.array(0, dtype=np.int64)
            continue
        kernel = take(f"{tf_layer}/kernel")
        if kind == "conv2d":  # TF [h, w, in, out] -> torch [out, in, h, w]
            out[f"{mod}.weight"] = kernel.transpose(3, 2, 0, 1)
        elif kind == "conv1d":  # TF [7, width, 1, out] (a conv over the full width) -> [out, width, 7]
            out[f"{mod}.weight"] = kernel[:, :, 0, :].transpose(2, 1, 0)
        else:  # dense: TF [in, out] -> torch [out, in]
            out[f"{mod}.weight"] = kernel.T
        out[f"{mod}.bias"] = take(f"{tf_layer}/bias")
    unexpected = sorted(set(variables) - used)
    if unexpected:
        raise MusicnnError(f"{source}: unexpected variables {unexpected}; the checkpoint does not match musicnn")
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


def load_musicnn(name: str, device: str | torch.device = "cpu") -> MusicnnEncoder:
    """Build ``musicnn-mtt`` or ``musicnn-msd`` from the wheel's TF1 checkpoint, frozen, in eval mode."""
    ckpt = checkpoint_dir(name)
    state = read_checkpoint(ckpt)
    encoder = MusicnnEncoder(name, MODELS[name][1])
    torch_state = tf_to_torch_state(state, source=str(ckpt))
    try:
        encoder.load_state_dict(torch_state, strict=True)
    except RuntimeError as err:  # shape mismatch: same names, wrong architecture
        raise MusicnnError(f"{ckpt}: weights do not fit the musicnn architecture: {err}") from err
    encoder.weights_sha256 = weights_sha256(model_variables(state))
    return encoder.to(device).eval()
