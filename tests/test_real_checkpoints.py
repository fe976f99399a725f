"""Real encoder checkpoints (issue 11): the recorded facts of MERT-v1-95M/330M, CLIP ViT-B/32 text and
mT5-base pass duetmc's checks; tiny look-alikes with the real layout and key naming load strictly; MERT
fields that HubertModel would compute differently are refused in one line. No downloads."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from fixtures import real_encoder_configs as real  # noqa: E402
from test_featurize_text import copy_minilm_tokenizer  # noqa: E402

from duetmc.featurize.audio import load_audio_encoder  # noqa: E402
from duetmc.featurize.hf import EncoderLoadError, strict_from_pretrained  # noqa: E402
from duetmc.featurize.mert_config import mert_config_problem  # noqa: E402
from duetmc.featurize.text import TEXT_ENCODERS, _tiny_clip_dir, load_text_encoder  # noqa: E402

TINY_SIZES = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
              "conv_dim": [8] * 7}


def tiny_mert_config(real_config: dict, **overrides) -> dict:
    """The real config.json with only the sizes shrunk: every structural choice and MERT field is kept."""
    return {**real_config, **TINY_SIZES, "vocab_size": 8, **overrides}


def save_tiny_mert(folder: Path, config: dict, edit=None) -> Path:
    """A random HubertModel saved the way MERT's checkpoint is: pytorch_model.bin, legacy weight-norm keys."""
    from transformers import HubertConfig, HubertModel

    hubert_fields = {k: v for k, v in config.items() if k in HubertConfig().to_dict() and k != "model_type"}
    torch.manual_seed(0)
    state = HubertModel(HubertConfig(**hubert_fields)).state_dict()
    legacy = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    for new, old in legacy.items():
        for key in [k for k in state if k.endswith(new)]:
            state[key[: -len(new)] + old] = state.pop(key)
    if edit:
        edit(state)
    folder.mkdir(parents=True)
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# --- the recorded facts against the refusal logic --------------------------------------------


@pytest.mark.parametrize("facts", [real.MERT_V1_95M, real.MERT_V1_330M], ids=["95M", "330M"])
def test_real_mert_configs_are_accepted(facts):
    assert mert_config_problem(facts, 24000) is None
    assert facts["sample_rate"] == real.MERT_PREPROCESSOR["sampling_rate"] == 24000


@pytest.mark.parametrize("facts", [real.MERT_V1_95M, real.MERT_V1_330M], ids=["95M", "330M"])
@pytest.mark.parametrize("field, value", sorted(real.MERT_REFUSED.items()))
def test_real_mert_configs_with_a_refused_value_are_refused(facts, field, value):
    problem = mert_config_problem({**facts, field: value}, 24000)
    assert problem and problem.startswith(f"{field} is ") and "\n" not in problem


def test_attention_relax_refused_on_post_ln_path_and_inert_on_stable_ln():
    problem = mert_config_problem({**real.MERT_V1_95M, "attention_relax": 32.0}, 24000)
    assert problem and problem.startswith("attention_relax is 32.0")
    # MERT builds transformers' own HubertEncoderStableLayerNorm there, which never reads attention_relax
    assert mert_config_problem({**real.MERT_V1_330M, "attention_relax": 32.0}, 24000) is None


def test_unknown_mert_field_and_wrong_sample_rate_are_refused():
    assert mert_config_problem({**real.MERT_V1_95M, "residual_scale": 2.0}).startswith("unknown field residual_scale")
    assert mert_config_problem(real.MERT_V1_95M, 16000).startswith("sample_rate is 24000")


def test_encoder_registry_agrees_with_the_facts():
    from duetmc.featurize.audio import AUDIO_ENCODERS

    for name in ("mert-v1-95m", "mert-v1-330m"):
        spec = AUDIO_ENCODERS[name]
        assert spec.sample_rate == real.MERT_PREPROCESSOR["sampling_rate"]
        assert spec.normalize == real.MERT_PREPROCESSOR["do_normalize"]
    assert TEXT_ENCODERS["clip-text"].max_tokens == real.CLIP_VIT_B32_TEXT["max_position_embeddings"]
