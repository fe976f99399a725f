"""Named corpus presets: `quickstart` (small and clean) and `bench` (large and hard).

bench sizes follow the paper's protocol: at least 2,000 training clips, and more than 500 test clips
on each soundfont so that ten random 500-clip subsets differ (with exactly 500 they would coincide).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from duetmc.synth.corpus import HardConfig, SynthConfig, SynthError

PRESETS: dict[str, dict] = {
    # the SynthConfig defaults: every tag true and complete, 80/10/10 splits
    "quickstart": {},
    # 2,250 clips dealt 90/10 into train (2,025) and val (225), plus 600 test-only clips
    "bench": {"n_items": 2250, "splits": (0.9, 0.1, 0.0), "test_items": 600, "hard": HardConfig()},
}


def preset_config(name: str, out: str | Path, **overrides) -> SynthConfig:
    """The preset's SynthConfig; `overrides` whose value is None keep the preset's value."""
    if name not in PRESETS:
        raise SynthError(f"unknown corpus preset {name!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in dataclasses.fields(SynthConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise SynthError(f"unknown synth setting(s) {bad}; known are {sorted(known)}")
    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return SynthConfig(out=out, **values)
