import math

import numpy as np
import pytest

from lmlab.runs.stats import bootstrap_ci, bootstrap_mean_ci, rng_for, wilson


def test_wilson_matches_the_formula_and_edges():
    lo, hi = wilson(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # textbook value
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_bootstrap_is_seeded_and_brackets_the_mean():
    x = np.random.default_rng(0).normal(1.0, 1.0, size=400)
    a = bootstrap_ci(x, 1000, rng_for(3, "cell", 1))
    b = bootstrap_ci(x, 1000, rng_for(3, "cell", 1))
    c = bootstrap_ci(x, 1000, rng_for(3, "cell", 2))
    assert a == b and a != c
    assert a[0] < x.mean() < a[1] and a[1] - a[0] == pytest.approx(2 * 1.96 / 20, rel=0.2)
    assert bootstrap_ci([2.0, 2.0], 100, rng_for(0)) == (2.0, 2.0)
    assert all(math.isnan(v) for v in bootstrap_ci([], 100, rng_for(0)))


def test_bootstrap_over_items_averages_seeds_first():
    correct = np.array([[1, 0, 1, 1], [1, 1, 1, 0]])  # seeds x items
    mean, lo, hi = bootstrap_mean_ci(correct, reps=500)
    assert mean == pytest.approx(0.75) and lo <= mean <= hi
