"""Loading locked transformers encoders strictly: a missing, unexpected or mis-shaped weight is an error.

Peers lost weeks to encoders that loaded silently random-initialised after a library update
(docs/DESIGN.md §5). Every load here goes through `strict_from_pretrained`.
"""

from __future__ import annotations

import os
from pathlib import Path
from duetmc.errors import DuetmcError


class EncoderLoadError(DuetmcError, RuntimeError):
    """The encoder's weights do not match its architecture, or cannot be found offline."""


def duetmc_home() -> Path:
    """Where duetmc keeps generated test encoders; $DUETMC_HOME overrides ~/.cache/duetmc."""
    return Path(os.environ.get("DUETMC_HOME", Path.home() / ".cache" / "duetmc"))


def strict_from_pretrained(cls, source: str, revision: str | None = None,
                           ignore_unexpected: tuple[str, ...] = (), **kwargs):
    """`cls.from_pretrained` that fails on any key mismatch and returns the model in eval mode.

    `ignore_unexpected` lists key prefixes that belong to the rest of a bigger checkpoint (a CLIP
    vision tower when loading the text tower, a T5 decoder when loading the encoder).
    """
    from transformers.utils import logging as hf_logging

    local = Path(source).expanduser()
    if not local.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise EncoderLoadError(f"cannot load {cls.__name__}: no directory {source!r}; check --encoder-path")
    # report a mis-shaped weight by name in `mismatched_keys` (refused below) instead of a bare RuntimeError
    kwargs.setdefault("ignore_mismatched_sizes", True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its key warnings are replaced by the hard check below
    try:
        model, info = cls.from_pretrained(
            str(local) if local.exists() else source,
            revision=revision,
            output_loading_info=True,
            local_files_only=local.exists() or os.environ.get("HF_HUB_OFFLINE") == "1",
            **kwargs,
        )
    except OSError as exc:
        raise EncoderLoadError(
            f"cannot load {cls.__name__} from {source!r}: {exc}. Pass a local directory with "
            "--encoder-path, or pre-download the model on a machine with Hub access "
            "(huggingface-cli download) and point HF_HOME at it."
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        found = info.get(kind) or []
        if kind == "unexpected_keys":
            found = [k for k in found if not k.startswith(ignore_unexpected)]
        if found:
            shown = ", ".join(map(str, list(found)[:8]))
            problems.append(f"{len(found)} {kind.replace('_', ' ')} ({shown}{', ...' if len(found) > 8 else ''})")
    if problems:
        raise EncoderLoadError(
            f"{source!r} does not match {cls.__name__}: " + "; ".join(problems)
            + ". Refusing to run an encoder with random or unused weights; check the checkpoint, "
            "the encoder name and the transformers version (pinned in pyproject.toml)."
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
