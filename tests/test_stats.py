"""Bootstrap intervals and power against cases small enough to enumerate or solve by hand."""

import itertools

import numpy as np
import pytest

from duetmc.errors import UsageError
from duetmc.stats import (
    bootstrap_ci, bootstrap_means, difference_se, mean_std, min_detectable_effect, paired_bootstrap_ci,
)


def _exact_quantile(values, q):
    """Inverse CDF of the exact bootstrap distribution, with its distance to the nearest CDF jump."""
    v = np.sort(np.asarray(values))
    atoms, counts = np.unique(v, return_counts=True)
    cdf = np.cumsum(counts) / len(v)
    k = int(np.searchsorted(cdf, q))
    margin = min(abs(cdf[k] - q), abs(q - (cdf[k - 1] if k else 0.0)))
    return atoms[k], margin


def test_bootstrap_ci_matches_enumerated_distribution():
    x = np.array([0.0, 1.0, 2.0, 4.0])
    # all 4^4 = 256 equally likely resamples: the exact bootstrap distribution of the mean
    exact = [np.mean(s) for s in itertools.product(x, repeat=4)]
    ci = bootstrap_ci(x, n_boot=100_000, seed=1)
    for got, q in ((ci.low, 0.025), (ci.high, 0.975)):
        want, margin = _exact_quantile(exact, q)
        assert margin > 0.003  # far enough from a jump that 100k draws land on the same atom
        assert got == pytest.approx(want)
    assert ci.estimate == pytest.approx(1.75)
    # the bootstrap SE of a mean is the plug-in std / sqrt(n): sqrt(mean((x - 1.75)^2) / 4)
    assert ci.se == pytest.approx(np.sqrt(np.mean((x - 1.75) ** 2) / 4), rel=0.02)
    assert ci.se == pytest.approx(np.std(exact), rel=0.02)


def test_paired_interval_of_a_constant_shift_is_that_shift():
    rng = np.random.default_rng(0)
    a = rng.random(50)
    ci = paired_bootstrap_ci(a, a + 0.1, n_boot=2000, seed=0)
    assert ci.low == pytest.approx(0.1) and ci.high == pytest.approx(0.1) and ci.estimate == pytest.approx(0.1)
    assert ci.excludes_zero
    assert not paired_bootstrap_ci(a, a, n_boot=200).excludes_zero


def test_pairing_cancels_shared_unit_difficulty():
    # per-query hits: b finds every query a finds plus 10 more of 200; unpaired noise would swamp that
    a = np.zeros(200)
    a[:100] = 1
    b = a.copy()
    b[100:110] = 1
    paired = paired_bootstrap_ci(a, b, n_boot=5000, seed=0)
    assert paired.excludes_zero
    # hand computation: d is 1 on 10 of 200 units, so SE = sqrt(p (1 - p) / n) with p = 0.05
    assert paired.se == pytest.approx(np.sqrt(0.05 * 0.95 / 200), rel=0.05)
    independent = np.sqrt(2 * 0.25 / 200)  # what two separate samples would give
    assert paired.se < independent / 3


def test_two_level_bootstrap_over_seeds_is_enumerable():
    # scores vary across seeds only: the seed draw is all that matters; means 0, 0.5, 1 w.p. 1/4, 1/2, 1/4
    x = np.array([[0.0] * 5, [1.0] * 5])
    reps = bootstrap_means(x, n_boot=40_000, seed=2)
    values, counts = np.unique(np.round(reps, 9), return_counts=True)
    assert values.tolist() == [0.0, 0.5, 1.0]
    assert counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25], abs=0.01)
    ci = bootstrap_ci(x, n_boot=40_000, seed=2)
    assert (ci.low, ci.high) == (0.0, 1.0)
    assert ci.se == pytest.approx(np.sqrt(0.125), rel=0.02)


def test_unpaired_seeds_are_drawn_independently():
    a = np.array([[0.0, 0.0], [1.0, 1.0]])
    paired = bootstrap_means(a, 4000, 0, y=a, pair_seeds=True)
    assert np.all(paired == 0)  # the same seed draw for both systems: no difference at all
    unpaired = bootstrap_means(a, 4000, 0, y=a, pair_seeds=False)
    assert unpaired.std() == pytest.approx(0.5, rel=0.05)  # difference of two independent 0/.5/1 draws


def test_power_and_summaries():
    assert min_detectable_effect(1.0) == pytest.approx(1.959964 + 0.841621, rel=1e-5)
    assert min_detectable_effect(2.0, alpha=0.05, power=0.5) == pytest.approx(2 * 1.959964, rel=1e-5)
    assert difference_se(3.0, 4.0, n_seeds=2) == pytest.approx(np.sqrt(2 * 9 / 2 + 2 * 16))
    assert mean_std([1, 2, 3]) == (2.0, 1.0)
    assert mean_std([5]) == (5.0, 0.0)


def test_bad_input_is_a_usage_error():
    with pytest.raises(UsageError, match="same units"):
        paired_bootstrap_ci(np.zeros(3), np.zeros(4))
    with pytest.raises(UsageError, match="non-finite"):
        bootstrap_ci([1.0, np.nan])
    with pytest.raises(UsageError, match="alpha"):
        bootstrap_ci([1.0, 2.0], alpha=1.5)
