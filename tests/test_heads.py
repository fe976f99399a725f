import math

import pytest
import torch
import torch.nn.functional as F

from duetmc.heads.aggregator import LayerAggregator
from duetmc.heads.model import DuetHeads, HeadsConfig
from duetmc.heads.projection import Projection, padding_mask


def small_config(**overrides) -> HeadsConfig:
    values = dict(audio_dim=12, audio_layers=3, text_dim=8, text_layers=1, dim=16, dropout=0.0)
    values.update(overrides)
    return HeadsConfig(**values)


# --- recipe defaults (docs/DESIGN.md §2) ---------------------------------------------------------------


def test_heads_config_defaults_are_the_papers_recipe():
    c = HeadsConfig(audio_dim=1024, audio_layers=25, text_dim=512, text_layers=1)
    assert c.dim == 256
    assert c.transformer_layers == 2
    assert c.heads == 2
    assert c.temperature == 0.03
    assert c.learn_temperature is False
    m = DuetHeads(c)
    for proj in (m.audio_projection, m.text_projection):
        assert proj.dim == 256
        assert len(proj.encoder.layers) == 2
        assert proj.encoder.layers[0].self_attn.num_heads == 2
        assert proj.encoder.layers[0].self_attn.batch_first
    assert m.logit_scale().item() == pytest.approx(1 / 0.03)
    assert "log_logit_scale" not in dict(m.named_parameters())  # fixed temperature


def test_mert330m_clip_trainable_parameter_count():
    m = DuetHeads(HeadsConfig(audio_dim=1024, audio_layers=25, text_dim=512, text_layers=1))
    # The paper: "about 3M", under 1 % of MERT-330M + CLIP-T.
    assert m.trainable_parameters() == 3_553_308
    m.audio_projection.requires_grad_(False)
    assert m.trainable_parameters() == 3_553_308 - sum(p.numel() for p in m.audio_projection.parameters())


def test_learned_temperature_is_a_parameter_and_is_capped():
    m = DuetHeads(small_config(learn_temperature=True))
    assert m.trainable_parameters() == DuetHeads(small_config()).trainable_parameters() + 1
    with torch.no_grad():
        m.log_logit_scale.fill_(math.log(1000.0))
    assert m.logit_scale().item() == pytest.approx(100.0)


# --- aggregator -----------------------------------------------------------------------------------


def test_aggregator_starts_as_uniform_layer_average():
    agg = LayerAggregator(5)
    assert torch.allclose(agg.layer_weights(), torch.full((5,), 0.2))
    assert agg.conv.bias.item() == 0.0
    x = torch.randn(2, 5, 7, 4)
    assert torch.allclose(agg(x), x.mean(dim=1), atol=1e-6)


def test_aggregator_applies_learned_layer_weights():
    agg = LayerAggregator(3)
    with torch.no_grad():
        agg.conv.weight.copy_(torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1))
        agg.conv.bias.fill_(0.25)
    x = torch.randn(2, 3, 4, 6)
    expected = x[:, 0] - 2 * x[:, 1] + 0.5 * x[:, 2] + 0.25
    assert torch.allclose(agg(x), expected, atol=1e-6)
    assert agg.layer_weights().tolist() == [1.0, -2.0, 0.5]


def test_single_layer_aggregator_is_identity_times_scale_plus_bias():
    agg = LayerAggregator(1)
    x = torch.randn(3, 1, 5, 4)
    assert torch.equal(agg(x), x[:, 0])
    with torch.no_grad():
        agg.conv.weight.fill_(2.0)
        agg.conv.bias.fill_(-1.0)
    assert torch.allclose(agg(x), 2 * x[:, 0] - 1)


def test_aggregator_rejects_wrong_layer_count():
    with pytest.raises(ValueError, match="3 layers"):
        LayerAggregator(3)(torch.randn(2, 4, 5, 6))


def test_aggregator_gets_gradients():
    agg = LayerAggregator(4)
    agg(torch.randn(2, 4, 3, 5)).pow(2).sum().backward()
    assert agg.conv.weight.grad.abs().sum() > 0


# --- projection -----------------------------------------------------------------------------------


def test_padding_mask():
    mask = padding_mask(torch.tensor([1, 3, 2]), 3)
    assert mask.tolist() == [[False, True, True], [False, False, False], [False, False, True]]


def test_projection_outputs_unit_vectors_and_accepts_one_token():
    torch.manual_seed(0)
    proj = Projection(10, dim=16).eval()
    for t in (1, 7):
        out = proj(torch.randn(4, t, 10))
        assert out.shape == (4, 16)
        assert torch.allclose(out.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_projection_disables_nested_tensor_fast_path():
    assert Projection(10, dim=16).encoder.enable_nested_tensor is False


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_padded_batch_gives_same_embedding_as_unpadded_item(grad):
    """An item's embedding must not depend on batch-mates' lengths or on padding content."""
    torch.manual_seed(0)
    proj = Projection(10, dim=16, dropout=0.1).eval()
    lengths = torch.tensor([3, 9, 1, 6])
    x = torch.randn(4, 9, 10)
    garbage = x.clone()
    for i, n in enumerate(lengths.tolist()):
        garbage[i, n:] = 1e4 * torch.randn(9 - n, 10)
    with torch.set_grad_enabled(grad):
        batched = proj(x, lengths)
        batched_garbage = proj(garbage, lengths)
        alone = torch.cat([proj(x[i : i + 1, :n]) for i, n in enumerate(lengths.tolist())])
    assert torch.allclose(batched, alone, atol=1e-5)
    assert torch.allclose(batched_garbage, batched, atol=1e-6)
    # and the mask matters: without lengths the padding is attended to
    assert not torch.allclose(proj(x)[0], batched[0], atol=1e-3)


def test_projection_is_deterministic_in_eval():
    torch.manual_seed(0)
    proj = Projection(10, dim=16).eval()
    x, lengths = torch.randn(3, 5, 10), torch.tensor([5, 2, 4])
    assert torch.equal(proj(x, lengths), proj(x, lengths))


def test_projection_rejects_bad_lengths():
    proj = Projection(10, dim=16)
    with pytest.raises(ValueError, match="lengths"):
        proj(torch.randn(2, 4, 10), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="lengths"):
        proj(torch.randn(2, 4, 10), torch.tensor([2, 5]))


def test_positional_embedding_is_optional_and_makes_order_matter():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 10)
    flipped = x.flip(1)
    no_pos = Projection(10, dim=16).eval()
    assert no_pos.pos is None
    # without positions the CLS output is a function of the token *set*
    assert torch.allclose(no_pos(x), no_pos(flipped), atol=1e-5)
    with_pos = Projection(10, dim=16, max_tokens=5).eval()
    assert with_pos.pos.shape == (1, 6, 16)
    assert not torch.allclose(with_pos(x), with_pos(flipped), atol=1e-4)
    with pytest.raises(ValueError, match="positions cover 5"):
        with_pos(torch.randn(2, 6, 10))


# --- model ----------------------------------------------------------------------------------------


def test_model_forward_shapes_and_scale():
    torch.manual_seed(0)
    m = DuetHeads(small_config())
    audio = torch.randn(4, 3, 6, 12)
    text = torch.randn(4, 1, 5, 8).half()  # the cache stores float16
    a, t, scale = m(audio, text, text_lengths=torch.tensor([5, 3, 1, 2]))
    assert a.shape == t.shape == (4, 16)
    assert a.dtype == t.dtype == torch.float32
    assert torch.allclose(a.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert scale.item() == pytest.approx(1 / 0.03)
    (a * t).sum().mul(scale).backward()
    assert m.audio_aggregator.conv.weight.grad is not None
    assert m.text_projection.linear.weight.grad is not None


def test_model_rejects_wrong_layout_with_a_clear_message():
    m = DuetHeads(small_config())
    with pytest.raises(ValueError, match="audio features must be"):
        m.encode_audio(torch.randn(4, 6, 12))
    with pytest.raises(ValueError, match="3 layers"):
        m.encode_audio(torch.randn(4, 2, 6, 12))


def test_config_validation():
    with pytest.raises(ValueError, match="temperature"):
        small_config(temperature=0.0)
    with pytest.raises(ValueError, match="divisible"):
        small_config(dim=15, heads=2)


@pytest.mark.parametrize("train_mode", [False, True])
def test_cls_only_last_layer_equals_the_full_encoders_cls_output(train_mode):
    from duetmc.heads.projection import padding_mask

    torch.manual_seed(0)
    proj = Projection(12, 16, layers=2, heads=2, dropout=0.0 if train_mode else 0.1).train(train_mode)
    x, lengths = torch.randn(7, 9, 12), torch.tensor([9, 3, 1, 5, 9, 2, 7])
    token_pad = padding_mask(lengths, 9)
    h = torch.cat([proj.cls.expand(7, -1, -1), proj.linear(x).masked_fill(token_pad.unsqueeze(-1), 0.0)], dim=1)
    pad = torch.cat([torch.zeros(7, 1, dtype=torch.bool), token_pad], dim=1)
    full = F.normalize(proj.encoder(h, src_key_padding_mask=pad)[:, 0], dim=-1)
    torch.testing.assert_close(proj(x, lengths), full, atol=1e-6, rtol=1e-5)
