"""Checkpoints without pickle: safetensors for weights and optimizer tensors, JSON for the rest.

`<prefix>.safetensors` holds the model, `<prefix>.optim.safetensors` the optimizer's tensors (when
saved) and `<prefix>.json` the step, the training state and the optimizer's hyper-parameters. The
JSON is written last, so a checkpoint whose JSON exists is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from duetmc.errors import PathError


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".partial")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(prefix: str | Path, model: torch.nn.Module, state: dict,
                    optimizer: torch.optim.Optimizer | None = None) -> Path:
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic(prefix.with_suffix(".safetensors"), lambda p: save_file(weights, str(p)))
    meta = dict(state)
    if optimizer is not None:
        opt = optimizer.state_dict()
        tensors = {f"{i}.{name}": t.detach().cpu().contiguous()
                   for i, s in opt["state"].items() for name, t in s.items() if torch.is_tensor(t)}
        _atomic(prefix.with_suffix(".optim.safetensors"), lambda p: save_file(tensors, str(p)))
        meta["optimizer"] = {"param_groups": opt["param_groups"],
                             "scalars": {f"{i}.{n}": v for i, s in opt["state"].items()
                                         for n, v in s.items() if not torch.is_tensor(v)}}
    _atomic(prefix.with_suffix(".json"), lambda p: p.write_text(json.dumps(meta, indent=2, default=str)))
    return prefix.with_suffix(".json")


def load_checkpoint(prefix: str | Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, map_location: str = "cpu") -> dict:
    """Load weights (strictly) and, when given, the optimizer; returns the JSON state."""
    prefix = Path(prefix)
    meta_path = prefix.with_suffix(".json")
    if not meta_path.exists():
        raise PathError(f"{meta_path}: no complete checkpoint here")
    meta = json.loads(meta_path.read_text())
    missing, unexpected = model.load_state_dict(load_file(str(prefix.with_suffix(".safetensors")), device=map_location),
                                                strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{prefix}.safetensors does not fit the model: missing {missing}, unexpected {unexpected}")
    if optimizer is not None:
        tensors = load_file(str(prefix.with_suffix(".optim.safetensors")), device=map_location)
        state: dict = {}
        for key, t in tensors.items():
            i, name = key.split(".", 1)
            state.setdefault(int(i), {})[name] = t
        for key, v in meta["optimizer"]["scalars"].items():
            i, name = key.split(".", 1)
            state.setdefault(int(i), {})[name] = v
        optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    return meta
