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


# --- tiny MERT look-alikes through duetmc's strict path --------------------------------------


@pytest.mark.parametrize("name, facts", [("mert-v1-95m", real.MERT_V1_95M), ("mert-v1-330m", real.MERT_V1_330M)])
def test_tiny_mert_with_real_layout_and_key_names_loads(tmp_path, name, facts):
    folder = save_tiny_mert(tmp_path / "ckpt", tiny_mert_config(facts))
    saved = torch.load(folder / "pytorch_model.bin", weights_only=True)
    assert "encoder.pos_conv_embed.conv.weight_g" in saved  # MERT's legacy weight-norm naming
    enc = load_audio_encoder(name, path=str(folder))
    cfg = enc.module.config
    for field in ("do_stable_layer_norm", "feat_extract_norm", "conv_bias", "num_conv_pos_embeddings",
                  "num_conv_pos_embedding_groups", "conv_kernel", "conv_stride", "feat_proj_layer_norm"):
        assert getattr(cfg, field) == facts[field], field
    conv = enc.module.encoder.pos_conv_embed.conv
    torch.testing.assert_close(conv.parametrizations.weight.original0, saved["encoder.pos_conv_embed.conv.weight_g"])
    torch.testing.assert_close(conv.parametrizations.weight.original1, saved["encoder.pos_conv_embed.conv.weight_v"])
    out = enc(torch.randn(1, 24000 // 4))
    assert out.shape[:2] == (1, TINY_SIZES["num_hidden_layers"] + 1) and torch.isfinite(out).all()


@pytest.mark.parametrize("field, value", [("deepnorm", True), ("feature_extractor_cqt", True),
                                          ("attention_relax", 32.0)])
def test_tiny_mert_with_mert_only_computation_is_refused(tmp_path, field, value):
    folder = save_tiny_mert(tmp_path / "ckpt", tiny_mert_config(real.MERT_V1_95M, **{field: value}))
    with pytest.raises(EncoderLoadError) as err:
        load_audio_encoder("mert-v1-95m", path=str(folder))
    msg = str(err.value)
    assert "\n" not in msg and f"{field} is {json.dumps(value)}" in msg and f"use a checkpoint with {field}" in msg


def test_tiny_mert_with_a_renamed_key_is_refused(tmp_path):
    old, new = "encoder.layers.0.attention.k_proj.weight", "encoder.layers.0.attention.key_proj.weight"
    folder = save_tiny_mert(tmp_path / "ckpt", tiny_mert_config(real.MERT_V1_95M),
                            edit=lambda s: s.__setitem__(new, s.pop(old)))
    with pytest.raises(EncoderLoadError, match=rf"missing keys \({old}\).*unexpected keys \({new}\)") as err:
        load_audio_encoder("mert-v1-95m", path=str(folder))
    assert "\n" not in str(err.value)


# --- text towers: tiny checkpoints with the real layout and key naming -----------------------


def test_tiny_clip_full_checkpoint_loads_text_tower_strictly(tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig

    tok_dir = _tiny_clip_dir()
    vocab = json.loads((tok_dir / "vocab.json").read_text())
    facts = real.CLIP_VIT_B32_TEXT
    text = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=facts["max_position_embeddings"],
                          hidden_act=facts["hidden_act"], bos_token_id=vocab["<|startoftext|>"],
                          eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 16}
    torch.manual_seed(0)
    folder = tmp_path / "clip"
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision, projection_dim=32)).save_pretrained(folder)
    for f in tok_dir.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, folder / f.name)
    enc = load_text_encoder("clip-text", path=str(folder))
    assert enc.info["class"] == "transformers.CLIPTextModel" and enc.model.config.hidden_act == "quick_gelu"
    feats, lengths = enc(["a calm piano piece"], [0, -1], 77)
    assert feats.shape[:2] == (1, 2) and torch.isfinite(feats).all()


def test_tiny_mt5_full_checkpoint_loads_encoder_strictly(tmp_path):
    from transformers import MT5Config, MT5EncoderModel, MT5ForConditionalGeneration

    facts = real.MT5_BASE
    layout = {k: facts[k] for k in ("feed_forward_proj", "tie_word_embeddings", "relative_attention_num_buckets",
                                    "relative_attention_max_distance", "layer_norm_epsilon")}
    config = MT5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                       num_heads=4, decoder_start_token_id=0, pad_token_id=0, **layout)
    torch.manual_seed(0)
    folder = tmp_path / "mt5"
    MT5ForConditionalGeneration(config).save_pretrained(folder)
    copy_minilm_tokenizer(folder)
    model = strict_from_pretrained(MT5EncoderModel, str(folder),
                                   ignore_unexpected=TEXT_ENCODERS["mt5-base"].ignore_unexpected)
    assert model.config.feed_forward_proj == "gated-gelu" and not model.config.tie_word_embeddings
    enc = load_text_encoder("mt5-base", path=str(folder))
    assert enc.info["class"] == "transformers.MT5EncoderModel" and (enc.n_layers, enc.dim) == (3, 32)
