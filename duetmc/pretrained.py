"""A trained model, ready to embed new audio and text: `DuetModel`.

A `DuetModel` is the trained heads plus everything needed to reproduce the cache's features for new
material: the two locked encoders (name, source, revision, weights sha256) and the featurizer settings
(sample rate, windows, pooling tokens, layers, compute dtype, maximum text length). New audio goes
through the featurizer's own functions (decode, resample, windowing, pooling; duetmc.featurize.audio),
is rounded to float16 as the cache stores it, then through the audio head; a clip's embedding is the
normalised mean of its windows' embeddings, as in evaluation (duetmc.evaluate.embed_items).

Each encoder loads once per `DuetModel`, on first use, and is refused when its weights differ from the
ones that featurized the training cache. `model_id` identifies heads, encoders and settings together:
an index built with one model refuses queries from another.

The saved form (`save_pretrained`, `duetmc export`) is a folder: `config.json`, `heads.safetensors` and
a model card `README.md`; `from_pretrained` reads it, or downloads it from the Hugging Face Hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# As the CLI does (duetmc/cli/__init__.py): on a busy machine OpenMP's spin-waiting made a warm text
# query ~60x slower (1.1 s vs 18 ms, BENCHMARKS.md "Search index"). Only effective before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from duetmc.errors import DuetmcError, PathError, UsageError
from duetmc.heads.model import DuetHeads, HeadsConfig

FORMAT = "duetmc-model"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "heads.safetensors", "README.md"
PROGRESS_MIN = 256  # show a progress bar from this many inputs on


class ModelError(DuetmcError, ValueError):
    """A model that cannot be used as asked: another encoder, a malformed export, another model's index."""


class AudioInputError(DuetmcError, ValueError):
    """Some audio inputs could not be embedded; the embeddings of the others travel with the error."""

    def __init__(self, message: str, result: "AudioEmbeddings"):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class AudioSide:
    """How the cache's audio features were made (from the audio group's attributes)."""

    encoder: dict  # name, family, source, revision, class, weights_sha256
    settings: dict  # the cache key: encoder, window_s, hop_s, tokens, layers
    sample_rate: int
    window_samples: int
    hop_samples: int
    layers: list[int]
    min_samples: int
    compute_dtype: str = "float32"

    @staticmethod
    def from_attrs(attrs: dict) -> "AudioSide":
        return AudioSide(dict(attrs["encoder"]), dict(attrs["settings"]), int(attrs["sample_rate"]),
                         int(attrs["window_samples"]), int(attrs["hop_samples"]), list(attrs["layers"]),
                         int(attrs.get("min_samples", 1)), attrs.get("compute_dtype", "float32"))

    @property
    def tokens(self) -> int:
        return int(self.settings["tokens"])


@dataclass(frozen=True)
class TextSide:
    """How the cache's text features were made (from the text group's attributes)."""

    encoder: dict
    settings: dict  # the cache key: encoder, layers, max_tokens
    layers: list[int]
    max_tokens: int  # the text encoder's own token limit (not the cache's longest text): the heads take any length
    compute_dtype: str = "float32"
    languages: list[str] = field(default_factory=list)

    @staticmethod
    def from_attrs(attrs: dict) -> "TextSide":
        from duetmc.featurize.text import token_limit

        return TextSide(dict(attrs["encoder"]), dict(attrs["settings"]), list(attrs["layers"]),
                        token_limit(attrs), attrs.get("compute_dtype", "float32"),
                        list(attrs.get("languages", [])))


@dataclass
class AudioEmbeddings:
    """`embeddings[j]` belongs to input `indices[j]`; `failures` are (input index, name, reason)."""

    embeddings: np.ndarray
    indices: np.ndarray
    failures: list[tuple[int, str, str]]


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _check_encoder(loaded: dict, recorded: dict, what: str) -> None:
    if loaded["weights_sha256"] != recorded["weights_sha256"]:
        raise ModelError(
            f"the {what} encoder loaded now ({loaded['name']} from {loaded['source']}, weights sha256 "
            f"{loaded['weights_sha256'][:12]}…) differs from the one the model was trained on "
            f"({recorded['weights_sha256'][:12]}…); install or point to those exact weights")


def _encoder_path(enc: dict) -> str | None:
    """Where to load a recorded encoder from: registered built-ins regenerate or resolve themselves."""
    return None if enc["family"] in ("musicnn", "tiny-hubert", "minilm", "tiny-clip") else enc["source"]


def _flat_config(cfg) -> dict:
    """The run's options as one flat dict (the model card's recipe), caches absolute."""
    import dataclasses

    from duetmc.config import absolute_cache

    flat = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("data", "out")}
    flat["data"] = [dict(s.to_json(), cache=absolute_cache(s.cache)) for s in cfg.data]
    return flat


class DuetModel:
    """Trained DuET-MC heads with their locked encoders: embed new audio and text into one 256-d space.

    >>> model = DuetModel.from_run("runs/main")            # or DuetModel.from_pretrained("export/")
    >>> a = model.embed_audio(["song.wav", "other.flac"])  # [2, 256], unit rows
    >>> t = model.embed_text(["calm piano for studying"])  # [1, 256]
    >>> model.similarity(t, a)                             # [1, 2] cosine similarities
    """

    def __init__(self, heads: DuetHeads, audio: AudioSide, text: TextSide, card: dict | None = None,
                 device: str = "cpu", progress: bool = True):
        self.heads = heads.to(device).eval()
        self.audio, self.text, self.card = audio, text, card or {}
        self.device, self.progress = device, progress
        self._audio_encoder = self._text_encoder = None
        from duetmc.cache_spec import state_dict_sha256

        self.heads_sha256 = state_dict_sha256(self.heads.state_dict())

    # --- identity and loading ------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.heads.config.dim

    @property
    def model_id(self) -> str:
        """sha256 over the heads' weights, both encoders' weights and the featurizer settings."""
        def side(s):  # where an encoder was loaded from is not part of its identity; its weights are
            d = asdict(s)
            d["encoder"] = {k: d["encoder"].get(k) for k in ("name", "weights_sha256")}
            d.pop("languages", None)
            return d

        return _sha({"heads": self.heads_sha256, "audio": side(self.audio), "text": side(self.text)})

    def describe(self) -> dict:
        """The identity an index records: model id, encoders and their weights."""
        return {"model_id": self.model_id, "heads_sha256": self.heads_sha256,
                "audio_encoder": self.audio.encoder, "text_encoder": self.text.encoder}

    @classmethod
    def load(cls, run_or_export: str | Path, device: str = "cpu", progress: bool = True) -> "DuetModel":
        """A run directory, an exported folder or a Hub id: whichever `run_or_export` is."""
        path = Path(run_or_export)
        conf = path / CONFIG_FILE
        if conf.is_file() and json.loads(conf.read_text()).get("format") != FORMAT:
            return cls.from_run(path, device=device, progress=progress)
        return cls.from_pretrained(run_or_export, device=device, progress=progress)

    @classmethod
    def from_run(cls, run: str | Path, device: str = "cpu", checkpoint: str = "best",
                 cache: str | None = None, progress: bool = True) -> "DuetModel":
        """The run's heads; featurizer settings and encoders from its training cache (or `cache`)."""
        from duetmc import cache_spec
        from duetmc.run import load_run

        heads, cfg = load_run(run, checkpoint, device)
        spec = cfg.data[0]
        url = cache or spec.cache
        try:
            root = cache_spec.open_root(url)
        except (FileNotFoundError, OSError) as exc:
            raise PathError(f"{url}: cannot open the run's cache ({exc}); pass the cache with --cache, "
                            "or use an exported model (duetmc export)") from None
        audio = dict(cache_spec.open_features(root, "audio", spec.audio, url).attrs)
        text = dict(cache_spec.open_features(root, "text", spec.text, url).attrs)
        card = {"run": str(Path(run).resolve()), "checkpoint": checkpoint, "train": _flat_config(cfg)}
        return cls(heads, AudioSide.from_attrs(audio), TextSide.from_attrs(text), card, device, progress)

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, device: str = "cpu", revision: str | None = None,
                        progress: bool = True) -> "DuetModel":
        """Load an exported folder, or a Hugging Face Hub repository id holding one."""
        from safetensors.torch import load_file

        folder = Path(path_or_id)
        if not folder.exists():
            folder = _download(str(path_or_id), revision)
        conf_path = folder / CONFIG_FILE
        if not conf_path.is_file():
            raise PathError(f"{folder}: not an exported duetmc model (no {CONFIG_FILE}); make one with "
                            "`duetmc export RUN --out DIR`")
        conf = json.loads(conf_path.read_text())
        if conf.get("format") != FORMAT or conf.get("format_version", 0) > FORMAT_VERSION:
            raise ModelError(f"{conf_path}: format {conf.get('format')!r} v{conf.get('format_version')} is not a "
                             f"{FORMAT} v{FORMAT_VERSION} export; upgrade duetmc or re-export the model")
        heads = DuetHeads(HeadsConfig(**conf["heads"]))
        missing, unexpected = heads.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=False)
        if missing or unexpected:
            raise ModelError(f"{folder / WEIGHTS_FILE}: does not fit the heads in {CONFIG_FILE} "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]}); re-export the model")
        model = cls(heads, AudioSide(**conf["audio"]), TextSide(**conf["text"]), conf.get("card"), device, progress)
        if conf.get("model_id") and conf["model_id"] != model.model_id:
            raise ModelError(f"{folder}: the weights do not match the recorded model id; re-export the model")
        return model

    def save_pretrained(self, out: str | Path, card_text: str | None = None) -> Path:
        """Write `config.json`, `heads.safetensors` (and the model card, when given) into `out`."""
        from safetensors.torch import save_file

        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            weights = {k: v.detach().cpu().contiguous() for k, v in self.heads.state_dict().items()}
            save_file(weights, str(out / WEIGHTS_FILE))
            conf = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_id": self.model_id,
                    "heads_sha256": self.heads_sha256, "heads": asdict(self.heads.config),
                    "audio": asdict(self.audio), "text": asdict(self.text), "card": self.card}
            (out / CONFIG_FILE).write_text(json.dumps(conf, indent=2, default=str))
            if card_text is not None:
                (out / CARD_FILE).write_text(card_text)
        except OSError as exc:
            from duetmc.errors import path_error

            raise path_error(exc, "while writing the model") from None
        return out

    def audio_encoder(self):
        """The locked audio encoder, loaded once and checked against the recorded weights."""
        if self._audio_encoder is None:
            from duetmc.featurize.audio import COMPUTE_DTYPES, load_audio_encoder

            enc = self.audio.encoder
            encoder = load_audio_encoder(enc["name"], _encoder_path(enc), enc.get("revision"))
            _check_encoder(encoder.info, enc, "audio")
            self._audio_encoder = encoder.to(self.device, COMPUTE_DTYPES[self.audio.compute_dtype])
        return self._audio_encoder

    def text_encoder(self):
        """The locked text encoder, loaded once and checked against the recorded weights."""
        if self._text_encoder is None:
            from duetmc.featurize.text import load_text_encoder

            enc = self.text.encoder
            encoder = load_text_encoder(enc["name"], _encoder_path(enc), enc.get("revision"))
            _check_encoder(encoder.info, enc, "text")
            encoder.model.to(self.device).eval()
            self._text_encoder = encoder
        return self._text_encoder

    # --- embedding -----------------------------------------------------------------------------

    @torch.no_grad()
    def embed_text(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Texts -> [N, dim] unit vectors (each text cut at the cache's token length, as in training)."""
        from duetmc.featurize.audio import COMPUTE_DTYPES

        texts = [texts] if isinstance(texts, str) else list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise UsageError(f"text {i} is {'empty' if isinstance(t, str) else type(t).__name__}; "
                                 "give a non-empty string")
        encoder = self.text_encoder()
        dtype = COMPUTE_DTYPES[self.text.compute_dtype]
        lengths = encoder.token_lengths(texts, self.text.max_tokens) if texts else np.zeros(0, int)
        order = np.argsort(-lengths, kind="stable")  # similar lengths share a batch, as when featurizing
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for lo in self._progress(range(0, len(texts), batch_size), len(texts), "texts", batch_size):
            rows = order[lo:lo + batch_size]
            feats, lens = encoder([texts[r] for r in rows], self.text.layers, self.text.max_tokens,
                                  self.device, dtype)
            emb = self.heads.encode_text(feats.half(), lens.to(self.device))  # float16, as the cache stores it
            out[rows] = emb.float().cpu().numpy()
        return out

    def embed_audio(self, inputs, sample_rate: int | None = None, errors: str = "raise",
                    batch_size: int = 16) -> np.ndarray:
        """Audio files (paths, or manifest Items for a segment) or waveforms (arrays [samples] or
        [samples, channels] at `sample_rate`) -> [N, dim] unit vectors.

        errors="raise": any input that cannot be embedded raises AudioInputError after all inputs were
        tried (its `.result` holds the others' embeddings). errors="skip": returns only the good
        inputs' rows, in order, and warns once per bad input; use `embed_audio_report` to get their
        indices too.
        """
        if errors not in ("raise", "skip"):
            raise UsageError(f"errors={errors!r}; choose 'raise' or 'skip'")
        result = self.embed_audio_report(inputs, sample_rate, batch_size)
        if result.failures:
            first = result.failures[0]
            more = f" (and {len(result.failures) - 1} more)" if len(result.failures) > 1 else ""
            if errors == "raise":
                raise AudioInputError(f"{first[1]}: {first[2]}{more}; {len(result.indices)} other inputs were "
                                      "embedded: pass errors='skip' to keep them", result)
            for i, name, reason in result.failures:
                warnings.warn(f"audio input {i} ({name}) skipped: {reason}", stacklevel=2)
        return result.embeddings

    @torch.no_grad()
    def embed_audio_report(self, inputs, sample_rate: int | None = None, batch_size: int = 16,
                           chunk: int = 32) -> AudioEmbeddings:
        """Like `embed_audio`, never raising for a bad input: the embeddings, their input indices and
        every failure with its reason."""
        from duetmc.manifest import Item

        inputs = [inputs] if isinstance(inputs, (str, Path, Item)) else list(inputs)
        if any(not isinstance(x, (str, Path, Item)) for x in inputs) and sample_rate is None:
            raise UsageError("waveform inputs need sample_rate=… (the rate the arrays were sampled at)")
        encoder = self.audio_encoder()
        embs, kept, failures = [], [], []
        with ThreadPoolExecutor(2) as pool:  # decoding the next chunk overlaps the encoder
            starts = list(range(0, len(inputs), chunk))
            futures = [pool.submit(self._decode_chunk, inputs[s:s + chunk], s, sample_rate) for s in starts[:1]]
            for n, s in enumerate(self._progress(starts, len(inputs), "clips", chunk)):
                if n + 1 < len(starts):
                    futures.append(pool.submit(self._decode_chunk, inputs[starts[n + 1]:starts[n + 1] + chunk],
                                               starts[n + 1], sample_rate))
                windows, owners, bad = futures[n].result()
                failures += bad
                if windows:
                    e, k = self._embed_windows(encoder, windows, owners, batch_size)
                    embs.append(e)
                    kept += k
        emb = np.concatenate(embs) if embs else np.zeros((0, self.dim), dtype=np.float32)
        return AudioEmbeddings(emb, np.array(kept, dtype=np.int64), failures)

    def _decode_chunk(self, inputs, offset: int, sample_rate: int | None):
        """Decode and window inputs; -> (windows, owning input index per window, failures)."""
        from duetmc.featurize.audio import AudioError, load_audio, to_encoder_input, window_layout
        from duetmc.manifest import Item

        sr, a = self.audio.sample_rate, self.audio
        windows, owners, failures = [], [], []
        for j, x in enumerate(inputs):
            i = offset + j
            name = str(x.audio) if isinstance(x, Item) else str(x) if isinstance(x, (str, Path)) else f"array {i}"
            try:
                if isinstance(x, (str, Path, Item)):  # an Item also gives a segment (start, end)
                    wav = load_audio(x if isinstance(x, Item) else Item(str(i), Path(x)), sr)
                else:
                    arr = np.asarray(x, dtype=np.float32)
                    wav = to_encoder_input(arr[:, None] if arr.ndim == 1 else arr, int(sample_rate), sr)
                lay = window_layout(len(wav), a.window_samples, a.hop_samples)
                if lay[0][1] < a.min_samples:
                    raise AudioError(f"too short: {lay[0][1] / sr:.4f} s, the encoder needs at least "
                                     f"{a.min_samples / sr:.4f} s")
            except AudioError as exc:
                failures.append((i, name, str(exc)))
                continue
            windows += [wav[s:s + n] for s, n in lay]
            owners += [i] * len(lay)
        return windows, owners, failures

    def _embed_windows(self, encoder, windows, owners, batch_size):
        """Windows -> per-clip embeddings (mean of windows, renormalised), as evaluation pools them."""
        from duetmc.featurize.audio import COMPUTE_DTYPES, window_features
        from duetmc.featurize.rows import fixed_batches

        dtype = COMPUTE_DTYPES[self.audio.compute_dtype]
        lengths = np.array([len(w) for w in windows])
        order = np.argsort(lengths, kind="stable")  # equal lengths batch together: no padding, as featurizing
        emb = torch.zeros(len(windows), self.dim)
        for batch in fixed_batches(lengths[order], 0, len(order), batch_size):
            rows = order[batch]
            feats = window_features(encoder, [windows[r] for r in rows], self.audio.layers, self.audio.tokens,
                                    self.device, dtype)
            x = torch.from_numpy(feats.astype(np.float16)).to(self.device)  # float16, as the cache stores it
            emb[torch.from_numpy(rows)] = self.heads.encode_audio(x).float().cpu()
        clips = list(dict.fromkeys(owners))
        slot = {c: n for n, c in enumerate(clips)}
        owner = torch.tensor([slot[o] for o in owners])
        pooled = torch.zeros(len(clips), self.dim).index_add_(0, owner, emb)
        return torch.nn.functional.normalize(pooled, dim=1).numpy(), clips

    def similarity(self, text_emb: np.ndarray, audio_emb: np.ndarray) -> np.ndarray:
        """Cosine similarity [N_text, N_audio] of unit embeddings (times 1/temperature gives logits)."""
        t, a = np.atleast_2d(np.asarray(text_emb, np.float32)), np.atleast_2d(np.asarray(audio_emb, np.float32))
        if t.shape[1] != a.shape[1]:
            raise UsageError(f"embedding sizes differ: text {t.shape[1]}, audio {a.shape[1]}")
        return t @ a.T

    def _progress(self, it, n_items: int, unit: str, step: int):
        if not self.progress or n_items < PROGRESS_MIN:
            return it
        from tqdm.auto import tqdm

        return tqdm(it, desc=f"embedding {unit}", unit=f"×{step} {unit}")


def _download(repo_id: str, revision: str | None) -> Path:
    """A Hub repository id -> its local snapshot folder (huggingface_hub's cache)."""
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise PathError(f"{repo_id}: no such folder, and not a Hub repository id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision))
    except Exception as exc:  # the hub client raises many types (offline, 404, auth)
        raise PathError(f"{repo_id}: cannot download from the Hugging Face Hub "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def push_to_hub(model_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload an exported folder to the Hub (creating the repository); returns the commit URL."""
    from huggingface_hub import HfApi

    folder = Path(model_dir)
    if not (folder / CONFIG_FILE).is_file():
        raise PathError(f"{folder}: not an exported duetmc model (no {CONFIG_FILE})")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="duetmc export")
    return str(getattr(info, "commit_url", info))
