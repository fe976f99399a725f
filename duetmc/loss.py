"""Symmetric InfoNCE over audio/text embeddings, with TextSwap hard negatives and DDP gathering.

Conventions (one place, tested in tests/test_loss.py):

- Inputs are L2-normalised embeddings; `logit_scale` is `1 / temperature` (see `DuetHeads.forward`).
  The loss is the mean of audio->text and text->audio cross-entropies over this rank's rows.
- **DDP** has one behaviour, open_clip's `--gather-with-grad --local-loss`: every rank all-gathers
  both modalities with gradients flowing back to their owners
  (`torch.distributed.nn.functional.all_gather`), then computes the loss only for its *local* rows
  against *all* gathered columns. Rank r's rows are global rows `r*b .. r*b+b-1`, so every rank must
  pass the same local batch size `b`. After DDP averages gradients over ranks, the parameter
  gradient equals that of the single-process loss on the whole global batch.
- **Hard negatives (TextSwap).** For anchor audio i, `hard_text[i]` holds up to K swapped variants
  of text i. They become K extra columns of row i of the audio->text logits only (row j sees its own
  variants, never i's). `replace_mask[i, c]` removes in-batch text column c from row i (its logit is
  -inf), which is how "a random subset of the in-batch negatives is replaced" is expressed; use
  `swap_replacement_mask` to draw it. The text->audio direction is the standard one. Hard negatives
  stay on their anchor's rank; columns in `replace_mask` are global (`world_size * b` of them).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather `[b, d]` from every rank into `[world_size * b, d]`, in rank order, keeping grads."""
    import torch.distributed.nn.functional as dist_fn

    # Still the public autograd-aware gather (its suggested successor lives in a private module);
    # silence its per-call deprecation notice so training logs stay readable.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        return torch.cat(dist_fn.all_gather(x), dim=0)


def swap_replacement_mask(
    hard_mask: torch.Tensor,
    n_columns: int,
    positive_columns: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw which in-batch negatives each anchor's hard negatives replace.

    Row i drops as many distinct random negative columns (never its positive) as it has valid hard
    negatives (`hard_mask[i].sum()`, capped at `n_columns - 1`). Returns `[b, n_columns]` bool.
    """
    b = hard_mask.shape[0]
    device = hard_mask.device
    keys = torch.rand(b, n_columns, generator=generator, device="cpu").to(device)
    rows = torch.arange(b, device=device)
    keys[rows, positive_columns] = 2.0  # sorts after every negative, so it is never picked
    order = keys.argsort(dim=1)
    n_drop = hard_mask.sum(dim=1).clamp(max=n_columns - 1)
    picked = torch.arange(n_columns, device=device).unsqueeze(0) < n_drop.unsqueeze(1)
    mask = torch.zeros(b, n_columns, dtype=torch.bool, device=device)
    mask.scatter_(1, order, picked)
    return mask


def contrastive_loss(
    audio: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor | float,
    hard_text: torch.Tensor | None = None,
    hard_mask: torch.Tensor | None = None,
    replace_mask: torch.Tensor | None = None,
    rank: int = 0,
    world_size: int = 1,
    gather: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE for this rank's `b` pairs (`audio[i]` matches `text[i]`).

    hard_text: `[b, K, d]` extra negatives for row i of audio->text only.
    hard_mask: `[b, K]` bool, True where `hard_text[i, k]` is real (rows without swaps: all False).
    replace_mask: `[b, N]` bool over the N (global) in-batch text columns; True drops column c
        from row i. Must never drop a row's positive.
    """
    if audio.dim() != 2 or audio.shape != text.shape:
        raise ValueError(
            f"audio and text must both be [batch, dim]; got {tuple(audio.shape)} and {tuple(text.shape)}"
        )
    b = audio.shape[0]
    if world_size > 1 and gather:
        all_audio, all_text = gather_with_grad(audio), gather_with_grad(text)
        if all_audio.shape[0] != world_size * b:
            raise ValueError("every rank must pass the same local batch size")
        offset = rank * b
    else:
        all_audio, all_text = audio, text
        offset = 0
    labels = torch.arange(b, device=audio.device) + offset

    logits_a2t = logit_scale * audio @ all_text.T
    if replace_mask is not None:
        if replace_mask.shape != logits_a2t.shape:
            raise ValueError(
                f"replace_mask must be [{b}, {logits_a2t.shape[1]}] (local rows x global text columns), "
                f"got {tuple(replace_mask.shape)}"
            )
        if bool(replace_mask[torch.arange(b, device=audio.device), labels].any()):
            raise ValueError("replace_mask drops a row's own positive text; only negatives may be replaced")
        logits_a2t = logits_a2t.masked_fill(replace_mask, float("-inf"))
    if hard_text is not None:
        if hard_text.dim() != 3 or hard_text.shape[0] != b or hard_text.shape[2] != audio.shape[1]:
            raise ValueError(
                f"hard_text must be [{b}, K, {audio.shape[1]}], got {tuple(hard_text.shape)}"
            )
        hard = logit_scale * torch.einsum("bd,bkd->bk", audio, hard_text)
        if hard_mask is not None:
            if hard_mask.shape != hard.shape:
                raise ValueError(f"hard_mask must be {tuple(hard.shape)}, got {tuple(hard_mask.shape)}")
            hard = hard.masked_fill(~hard_mask, float("-inf"))
        logits_a2t = torch.cat([logits_a2t, hard], dim=1)
    elif hard_mask is not None:
        raise ValueError("hard_mask given without hard_text")

    logits_t2a = logit_scale * text @ all_audio.T
    return (F.cross_entropy(logits_a2t, labels) + F.cross_entropy(logits_t2a, labels)) / 2


def textswap_negatives(
    hard: torch.Tensor | None,
    valid: torch.Tensor,
    global_hard_rows,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """TextSwap's inputs to `contrastive_loss` for this rank: (hard_text, hard_mask, replace_mask).

    hard: `[n, d]` embeddings of this rank's valid hard negatives, in row-major order of `valid`.
    valid: `[b, K]` bool, which of this rank's K hard-negative slots are real.
    global_hard_rows: `[B, K]` text rows of the whole global batch (-1 = none); every rank draws the
        same replacement mask over all B rows from `generator`, then keeps its own slice, so the
        draw is independent of the number of ranks.
    Returns (None, None, None) when no row of the batch has a hard negative.
    """
    if hard is None:
        return None, None, None
    mask = valid.to(hard.device)
    hard_text = torch.zeros(valid.shape + (hard.shape[1],), dtype=hard.dtype, device=hard.device)
    hard_text[mask] = hard
    b_global = len(global_hard_rows)
    b_local = b_global // world_size
    full_valid = torch.as_tensor(global_hard_rows >= 0)
    replace = swap_replacement_mask(full_valid, b_global, torch.arange(b_global), generator)
    return hard_text, mask, replace[rank * b_local:(rank + 1) * b_local].to(hard.device)
