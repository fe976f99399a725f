import math
import socket
from datetime import timedelta

import pytest
import torch
import torch.nn.functional as F

from duetmc.heads.model import HeadsConfig
from duetmc.loss import contrastive_loss, swap_replacement_mask

SCALE = 1 / HeadsConfig(1, 1, 1, 1).temperature


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def reference_loss(audio, text, scale, hard_text=None, hard_mask=None, replace_mask=None):
    """Row-by-row symmetric InfoNCE written out with Python loops, independent of the library."""
    b = audio.shape[0]
    a2t, t2a = [], []
    for i in range(b):
        negatives = [scale * audio[i] @ text[j] for j in range(b) if j != i and not (
            replace_mask is not None and replace_mask[i, j])]
        if hard_text is not None:
            negatives += [scale * audio[i] @ hard_text[i, k] for k in range(hard_text.shape[1])
                          if hard_mask is None or hard_mask[i, k]]
        positive = scale * audio[i] @ text[i]
        a2t.append(torch.logsumexp(torch.stack([positive] + negatives), 0) - positive)
        column = torch.stack([scale * text[i] @ audio[j] for j in range(b)])
        t2a.append(torch.logsumexp(column, 0) - column[i])
    return (torch.stack(a2t).mean() + torch.stack(t2a).mean()) / 2


def test_default_temperature_is_003():
    assert HeadsConfig(1, 1, 1, 1).temperature == 0.03


def test_symmetric_infonce_matches_reference():
    audio, text = unit(6, 8, seed=1), unit(6, 8, seed=2)
    loss = contrastive_loss(audio, text, SCALE)
    assert loss.item() == pytest.approx(reference_loss(audio, text, SCALE).item(), rel=1e-5)
    # symmetric: swapping the modalities gives the same loss
    assert contrastive_loss(text, audio, SCALE).item() == pytest.approx(loss.item(), rel=1e-6)


def test_aligned_pairs_beat_random_pairs():
    audio = unit(8, 16, seed=3)
    assert contrastive_loss(audio, audio, SCALE) < 0.01
    assert contrastive_loss(audio, unit(8, 16, seed=4), SCALE) > 1.0


def test_uniform_scores_give_log_batch_size():
    audio = torch.zeros(5, 4)
    assert contrastive_loss(audio, audio, SCALE).item() == pytest.approx(math.log(5), rel=1e-6)


def aligned_pair(b, d, seed):
    """Audio and text that match pairwise, as after some training."""
    audio = unit(b, d, seed=seed)
    return audio, F.normalize(audio + 0.3 * unit(b, d, seed=seed + 1), dim=-1)


def test_hard_negatives_enter_only_their_anchor_row_of_audio_to_text():
    b, k, d = 5, 3, 8
    audio, text = aligned_pair(b, d, seed=5)
    anchor = 2
    # swapped variants that look almost like the positive: strong hard negatives
    hard = F.normalize(text.unsqueeze(1).repeat(1, k, 1) + 0.1 * unit(b, k, d, seed=7), dim=-1)
    hard.requires_grad_(True)
    hard_mask = torch.zeros(b, k, dtype=torch.bool)
    hard_mask[anchor] = True

    base = contrastive_loss(audio, text, SCALE)
    with_hard = contrastive_loss(audio, text, SCALE, hard_text=hard, hard_mask=hard_mask)
    assert with_hard > base + 0.1
    assert with_hard.item() == pytest.approx(
        reference_loss(audio, text, SCALE, hard.detach(), hard_mask).item(), rel=1e-5)

    # The increase is exactly the change of the anchor's own audio->text term (1/(2b) of the mean).
    logits = SCALE * audio[anchor] @ text.T
    row_before = torch.logsumexp(logits, 0) - logits[anchor]
    extended = torch.cat([logits, SCALE * hard[anchor].detach() @ audio[anchor]])
    row_after = torch.logsumexp(extended, 0) - logits[anchor]
    assert (with_hard - base).item() == pytest.approx(((row_after - row_before) / (2 * b)).item(), rel=1e-4)

    with_hard.backward()
    assert hard.grad[anchor].abs().sum() > 0
    others = torch.ones(b, dtype=torch.bool)
    others[anchor] = False
    assert torch.count_nonzero(hard.grad[others]) == 0


def test_gradients_with_hard_negatives_match_reference():
    """The reference puts hard negatives in audio->text rows only; text->audio stays standard."""
    b, d = 4, 8
    audio, text = aligned_pair(b, d, seed=8)
    hard = unit(b, 2, d, seed=10)
    grads = []
    for fn in (contrastive_loss, reference_loss):
        a, t = audio.clone().requires_grad_(True), text.clone().requires_grad_(True)
        fn(a, t, SCALE, hard).backward()
        grads.append((a.grad, t.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-5)
    # putting them in the text->audio direction too would be a different loss
    swapped = reference_loss(text, audio, SCALE, hard)
    assert contrastive_loss(audio, text, SCALE, hard).item() != pytest.approx(swapped.item(), rel=1e-3)


def test_replace_mask_removes_negatives_from_that_row_only():
    b, d = 5, 8
    audio, text = aligned_pair(b, d, seed=11)
    text[3] = F.normalize(audio[1] + 0.2 * text[3], dim=0)  # a strong in-batch negative for row 1
    replace = torch.zeros(b, b, dtype=torch.bool)
    replace[1, 3] = replace[1, 4] = True
    hard = unit(b, 2, d, seed=13)
    hard_mask = torch.zeros(b, 2, dtype=torch.bool)
    hard_mask[1] = True
    loss = contrastive_loss(audio, text, SCALE, hard_text=hard, hard_mask=hard_mask, replace_mask=replace)
    expected = reference_loss(audio, text, SCALE, hard, hard_mask, replace)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    without_replacement = contrastive_loss(audio, text, SCALE, hard, hard_mask)
    assert loss < without_replacement - 0.05


def test_replace_mask_may_not_drop_the_positive():
    audio = unit(3, 4)
    replace = torch.zeros(3, 3, dtype=torch.bool)
    replace[2, 2] = True
    with pytest.raises(ValueError, match="positive"):
        contrastive_loss(audio, audio, SCALE, replace_mask=replace)


def test_shape_errors_are_explicit():
    audio = unit(3, 4)
    with pytest.raises(ValueError, match="hard_text must be"):
        contrastive_loss(audio, audio, SCALE, hard_text=unit(3, 4))
    with pytest.raises(ValueError, match="replace_mask must be"):
        contrastive_loss(audio, audio, SCALE, replace_mask=torch.zeros(3, 4, dtype=torch.bool))


def test_swap_replacement_mask_drops_one_negative_per_hard_negative():
    hard_mask = torch.tensor([[True, True, True], [False, False, False], [True, False, True], [True] * 3])
    positives = torch.tensor([0, 1, 2, 3]) + 4  # rank 1 of a 2-rank world with b=4: 8 global columns
    g = torch.Generator().manual_seed(0)
    mask = swap_replacement_mask(hard_mask, 8, positives, generator=g)
    assert mask.shape == (4, 8)
    assert mask.sum(dim=1).tolist() == [3, 0, 2, 3]
    assert not mask[torch.arange(4), positives].any()
    again = swap_replacement_mask(hard_mask, 8, positives, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    # random: over many draws every negative column gets replaced at some point
    seen = torch.zeros(8, dtype=torch.bool)
    for _ in range(50):
        seen |= swap_replacement_mask(hard_mask[:1], 8, positives[:1], generator=g)[0]
    assert seen.sum() == 7 and not seen[4]
    # never more than the available negatives
    tiny = swap_replacement_mask(torch.ones(2, 3, dtype=torch.bool), 2, torch.tensor([0, 1]))
    assert tiny.tolist() == [[False, True], [True, False]]


# --- DDP: 2 gloo processes == 1 process with the full batch ---------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def full_batch_case():
    b, k, d = 8, 3, 16
    audio, text = unit(b, d, seed=20), unit(b, d, seed=21)
    hard = unit(b, k, d, seed=22)
    hard_mask = torch.rand(b, k, generator=torch.Generator().manual_seed(23)) < 0.6
    replace = swap_replacement_mask(hard_mask, b, torch.arange(b), torch.Generator().manual_seed(24))
    return audio, text, hard, hard_mask, replace


def ddp_worker(rank, world_size, port, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=60))
    try:
        audio, text, hard, hard_mask, replace = full_batch_case()
        b = audio.shape[0] // world_size
        rows = slice(rank * b, (rank + 1) * b)
        a = audio[rows].clone().requires_grad_(True)
        t = text[rows].clone().requires_grad_(True)
        h = hard[rows].clone().requires_grad_(True)
        loss = contrastive_loss(a, t, SCALE, hard_text=h, hard_mask=hard_mask[rows],
                                replace_mask=replace[rows], rank=rank, world_size=world_size)
        loss.backward()
        torch.save({"loss": loss.detach(), "a": a.grad, "t": t.grad, "h": h.grad}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.barrier()  # gloo aborts a rank whose peer tears down its pairs mid-exchange
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gather_with_grad_equals_full_batch(tmp_path):
    import torch.multiprocessing as mp

    world_size = 2
    mp.spawn(ddp_worker, args=(world_size, free_port(), str(tmp_path)), nprocs=world_size, join=True)

    audio, text, hard, hard_mask, replace = full_batch_case()
    audio.requires_grad_(True)
    text.requires_grad_(True)
    hard.requires_grad_(True)
    full = contrastive_loss(audio, text, SCALE, hard_text=hard, hard_mask=hard_mask, replace_mask=replace)
    full.backward()

    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    # DDP averages over ranks: the mean of local losses is the full-batch loss ...
    assert torch.stack([r["loss"] for r in results]).mean().item() == pytest.approx(full.item(), rel=1e-5)
    # ... and the all_gather backward sums every rank's loss gradient into the owner, so after DDP's
    # division by world_size the local gradients are exactly the full-batch gradients.
    b = audio.shape[0] // world_size
    for rank, r in enumerate(results):
        rows = slice(rank * b, (rank + 1) * b)
        assert torch.allclose(r["a"] / world_size, audio.grad[rows], atol=1e-6)
        assert torch.allclose(r["t"] / world_size, text.grad[rows], atol=1e-6)
        assert torch.allclose(r["h"] / world_size, hard.grad[rows], atol=1e-6)
    assert results[0]["loss"].item() != pytest.approx(results[1]["loss"].item())
