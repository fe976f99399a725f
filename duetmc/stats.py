"""Uncertainty of measured numbers: bootstrap confidence intervals, seed spread and detectable effects.

Scores are arrays of per-unit values (a unit is a query, a clip or a listener's rating), either 1-D
`[units]` or 2-D `[seeds, units]` (one row per training seed, the same units in every row). The
bootstrap resamples units and, for 2-D input, seeds as well (a two-level bootstrap), so an interval
covers both the test sample and training randomness. `paired_bootstrap_ci` compares two systems on
the same units: one draw of units serves both systems, so what the two share (easy and hard queries)
cancels in the difference, as in a paired test. Intervals are percentile intervals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from duetmc.errors import UsageError

_CHUNK = 512  # bootstrap replicates per block: bounds memory at _CHUNK x units counts


@dataclass(frozen=True)
class Interval:
    estimate: float  # the statistic on the data as measured
    low: float
    high: float
    se: float  # bootstrap standard error (std of the replicates)
    alpha: float
    n_boot: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero}


def _as_2d(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise UsageError(f"{name} must be a non-empty [units] or [seeds, units] array, got shape {np.shape(x)}")
    if not np.isfinite(arr).all():
        raise UsageError(f"{name} holds non-finite values; remove or fix them before bootstrapping")
    return arr


def _check(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise UsageError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise UsageError(f"alpha must be in (0, 1), got {alpha}")


def _counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """How often each of n elements is drawn in `size` resamples of n with replacement."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(float)


def bootstrap_means(x, n_boot: int = 10_000, seed: int = 0, y=None, pair_seeds: bool = True) -> np.ndarray:
    """Replicates of mean(x), or of mean(y) - mean(x) when `y` is given (units drawn jointly).

    With 2-D input the seeds are resampled too: jointly for x and y when `pair_seeds` (seed i of one
    system is paired with seed i of the other), independently otherwise.
    """
    a = _as_2d(x, "x")
    b = None if y is None else _as_2d(y, "y")
    if b is not None and b.shape[1] != a.shape[1]:
        raise UsageError(f"the two systems must be scored on the same units: {a.shape[1]} vs {b.shape[1]}")
    if b is not None and pair_seeds and b.shape[0] != a.shape[0]:
        raise UsageError(f"paired seeds need the same number of seeds: {a.shape[0]} vs {b.shape[0]}")
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    units = a.shape[1]
    for lo in range(0, n_boot, _CHUNK):
        m = min(_CHUNK, n_boot - lo)
        cu = _counts(rng, units, m) / units  # unit weights, shared by both systems
        ca = _counts(rng, a.shape[0], m) / a.shape[0]
        rep = np.einsum("bs,su,bu->b", ca, a, cu)
        if b is not None:
            cb = ca if pair_seeds else _counts(rng, b.shape[0], m) / b.shape[0]
            rep = np.einsum("bs,su,bu->b", cb, b, cu) - rep
        out[lo:lo + m] = rep
    return out


def _interval(estimate: float, reps: np.ndarray, alpha: float) -> Interval:
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return Interval(float(estimate), float(low), float(high), float(reps.std(ddof=1)) if len(reps) > 1 else 0.0,
                    float(alpha), int(len(reps)))


def bootstrap_ci(x, n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05) -> Interval:
    """Percentile bootstrap interval of the mean of `x` ([units] or [seeds, units])."""
    _check(n_boot, alpha)
    return _interval(float(_as_2d(x, "x").mean()), bootstrap_means(x, n_boot, seed), alpha)


def paired_bootstrap_ci(a, b, n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05,
                        pair_seeds: bool = True) -> Interval:
    """Percentile bootstrap interval of mean(b) - mean(a), both scored on the same units."""
    _check(n_boot, alpha)
    estimate = float(_as_2d(b, "b").mean() - _as_2d(a, "a").mean())
    return _interval(estimate, bootstrap_means(a, n_boot, seed, y=b, pair_seeds=pair_seeds), alpha)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0:
        raise UsageError("mean_std needs at least one value")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def min_detectable_effect(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true difference a two-sided test at `alpha` detects with probability `power`,
    for an estimate with standard error `se` (normal approximation): (z_{1-alpha/2} + z_power) * se."""
    if se < 0 or not 0 < alpha < 1 or not 0 < power < 1:
        raise UsageError(f"need se >= 0, 0 < alpha < 1 and 0 < power < 1, got {se}, {alpha}, {power}")
    z = NormalDist()
    return (z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * se


def difference_se(seed_std: float, subset_std: float, n_seeds: int, n_subsets: int = 1) -> float:
    """Standard error of the difference of two configurations' means, unpaired, from variance parts.

    Each configuration is averaged over `n_seeds` training seeds (spread `seed_std`) and evaluated on
    a test sample whose subset-to-subset spread is `subset_std`. The subsets of one test split
    overlap, so they are not independent draws: `n_subsets=1` (the default) is the conservative
    choice, as if a new test sample of one subset's size were drawn for each configuration.
    """
    if n_seeds < 1 or n_subsets < 1:
        raise UsageError(f"n_seeds and n_subsets must be at least 1, got {n_seeds} and {n_subsets}")
    return float(np.sqrt(2 * seed_std ** 2 / n_seeds + 2 * subset_std ** 2 / n_subsets))
