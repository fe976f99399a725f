"""Refusing MERT checkpoints that transformers' native HubertModel would not compute identically.

MERT (m-a-p/MERT-v1-*) ships a `config.json` of model_type "mert_model" for its own remote code
(`MERTModel`, a HubertModel subclass). duetmc loads the weights into transformers' `HubertModel`
without remote code, so every MERT-only field that changes computation must be at its inert value:

- `feature_extractor_cqt: true` concatenates nnAudio CQT bins to the conv features (extra input);
- `deepnorm: true` scales each residual by (2 * layers) ** 0.25 with the *same* parameter names, so a
  strict key check passes while the numbers differ;
- `attention_relax > 0` is only read by MERT's own post-LN encoder layer (the deepnorm path); on the
  stable-layer-norm path MERT builds transformers' `HubertEncoderStableLayerNorm`, which ignores it.

Fields HubertModel honours (norm placement, conv bias, positional conv, `feat_proj_layer_norm`,
`conv_pos_batch_norm`, ...) pass through; any other field HubertConfig does not know is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from duetmc.featurize.hf import EncoderLoadError

# MERT-only fields that are inert in every configuration, and config bookkeeping keys
INERT_FIELDS = frozenset({
    "feature_extractor_cqt_bins",  # read only when feature_extractor_cqt is true (refused)
    "sample_rate",  # read only by the CQT front end; checked against the encoder's rate
    "auto_map", "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
})
CHECKED_FIELDS = frozenset({"feature_extractor_cqt", "deepnorm", "attention_relax"})


def _hubert_fields() -> frozenset[str]:
    from transformers import HubertConfig

    return frozenset(HubertConfig().to_dict())


def mert_config_problem(config: dict, sample_rate: int | None = None) -> str | None:
    """The first field of a MERT/HuBERT config.json that HubertModel would compute differently, or None."""
    if config.get("feature_extractor_cqt"):
        return ("feature_extractor_cqt is true (MERT adds CQT input features that HubertModel does not "
                "compute); use a checkpoint with feature_extractor_cqt: false")
    if config.get("deepnorm"):
        return ("deepnorm is true (MERT scales residuals under the same weight names, so HubertModel would "
                "load it silently wrong); use a checkpoint with deepnorm: false")
    relax = config.get("attention_relax", -1)
    if relax is not None and float(relax) > 0 and not config.get("do_stable_layer_norm"):
        return (f"attention_relax is {relax} on the post-layer-norm path (MERT's own attention, not "
                "HubertModel's); use a checkpoint with attention_relax: -1")
    if sample_rate is not None and config.get("sample_rate", sample_rate) != sample_rate:
        return (f"sample_rate is {config['sample_rate']}, not the encoder's {sample_rate}; "
                "register the checkpoint under an encoder with that rate")
    known = _hubert_fields() | INERT_FIELDS | CHECKED_FIELDS
    unknown = sorted(k for k in config if k not in known and not k.startswith("_"))  # _commit_hash ...
    if unknown:
        return (f"unknown field {unknown[0]}={config[unknown[0]]!r} (not a HubertConfig field; it may change "
                "what MERT computes); check the checkpoint's modeling code and extend duetmc's MERT check")
    return None


def _read_config(source: str, revision: str | None) -> dict:
    from transformers import HubertConfig

    local = Path(source).expanduser()
    try:
        config, _ = HubertConfig.get_config_dict(
            str(local) if local.exists() else source, revision=revision,
            local_files_only=local.exists() or os.environ.get("HF_HUB_OFFLINE") == "1")
    except (OSError, ValueError):
        return {}  # no readable config: the strict weight load reports the missing checkpoint in its own words
    return config


def check_mert_config(source: str, revision: str | None = None, sample_rate: int | None = None) -> dict:
    """Read the checkpoint's config.json and raise EncoderLoadError (one line) if HubertModel cannot run it."""
    config = _read_config(source, revision)
    problem = mert_config_problem(config, sample_rate)
    if problem:
        raise EncoderLoadError(f"{source!r} cannot run as transformers.HubertModel: {problem}.")
    return config
