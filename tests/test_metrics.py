"""Metrics on hand-made curves: envelope, grid, AUDC, QNC, bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from router_core.baselines import oracle_choices, random_choices, sweep
from router_core.metrics import (
    CostGrid,
    bootstrap,
    cost_grid,
    curve_points,
    curve_stats,
    envelope,
    paired_difference,
    qnc,
)

# 4 prompts x 3 models: model 0 cheap and weak, 1 middling, 2 dear and always right
QUALITY = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 1]], dtype=float)
COST = np.array([[1, 2, 10], [1, 2, 10], [1, 2, 10], [1, 2, 10]], dtype=float)


def test_envelope_is_monotone_best_so_far_and_zero_below_first_point() -> None:
    pc = np.array([3.0, 1.0, 2.0])
    pq = np.array([0.8, 0.5, 0.4])  # the point at cost 2 is dominated
    grid = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0])
    np.testing.assert_allclose(envelope(pc, pq, grid), [0, 0.5, 0.5, 0.5, 0.5, 0.8, 0.8])


def test_grid_comes_from_single_models_only() -> None:
    g = cost_grid(QUALITY, COST)
    assert (g.lo, g.hi) == (1.0, 10.0)
    assert g.best_quality == 1.0 and g.best_cost == 10.0
    # whatever routers are compared, the grid is the same object of the data alone
    assert cost_grid(QUALITY, COST) == g


def test_best_single_ties_go_to_the_cheaper_model() -> None:
    q = np.array([[1.0, 1.0]])
    c = np.array([[5.0, 2.0]])
    g = cost_grid(q, c)
    assert g.best_cost == 2.0


def test_perfect_router_scores_one_and_single_models_their_step() -> None:
    g = cost_grid(QUALITY, COST)
    perfect = curve_stats(np.array([1.0]), np.array([1.0]), g)  # quality 1 at the cheapest cost
    assert perfect.audc == pytest.approx(1.0) and perfect.audc_log == pytest.approx(1.0)
    assert perfect.qnc == pytest.approx(0.1)
    dear = curve_stats(*curve_points(np.full((1, 4), 2), QUALITY, COST), g)
    assert dear.audc == pytest.approx(1 / 101)  # only the last grid point reaches its cost
    assert dear.qnc == pytest.approx(1.0)


def test_audc_log_weights_the_cheap_end() -> None:
    g = CostGrid(lo=1.0, hi=100.0, best_quality=1.0, best_cost=100.0)
    pc, pq = np.array([10.0]), np.array([1.0])
    s = curve_stats(pc, pq, g)
    assert s.audc == pytest.approx(np.mean(np.linspace(1, 100, 101) >= 10))
    assert s.audc_log == pytest.approx(51 / 101)  # 10 is the middle of 1..100 in log


def test_qnc_never() -> None:
    g = cost_grid(QUALITY, COST)
    assert qnc(np.array([1.0, 2.0]), np.array([0.25, 0.5]), g) == float("inf")


def test_oracle_picks_cheapest_correct_model() -> None:
    ch = oracle_choices(QUALITY, COST)
    np.testing.assert_array_equal(ch[0], [0, 1, 2, 2])
    pc, pq = curve_points(ch, QUALITY, COST)
    assert pq.max() == 1.0 and pc[0] == pytest.approx((1 + 2 + 10 + 10) / 4)


def test_sweep_moves_from_best_to_cheapest() -> None:
    p_hat = np.array([[0.2, 0.5, 0.9]])
    ch = sweep(p_hat, np.array([1.0, 2.0, 10.0]), np.array([0.0, 0.5, 100.0]))
    np.testing.assert_array_equal(ch[:, 0], [2, 1, 0])


def test_random_levels_use_the_k_cheapest() -> None:
    ch = random_choices(50, np.array([3.0, 1.0, 2.0]), seed=0)
    assert set(ch[0]) == {1} and set(ch[1]) <= {1, 2} and set(ch[2]) == {0, 1, 2}


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    q = (rng.random((200, 3)) < [0.5, 0.7, 0.9]).astype(float)
    c = np.tile([1.0, 2.0, 10.0], (200, 1))
    choices = {"oracle": oracle_choices(q, c), "dear": np.full((1, 200), 2)}
    a = bootstrap(choices, q, c, n_boot=100, seed=1)
    b = bootstrap(choices, q, c, n_boot=100, seed=1)
    assert a == b
    iv = a["oracle"]["audc"]
    assert iv.lo <= iv.value <= iv.hi
    assert a["dear"]["qnc"].value == pytest.approx(1.0) and a["dear"]["qnc"].never_frac == 0.0


def test_paired_difference_of_a_router_with_itself_is_zero() -> None:
    ch = oracle_choices(QUALITY, COST)
    d = paired_difference(ch, ch, QUALITY, COST, n_boot=20)
    assert d.value == 0.0 and d.lo == 0.0 and d.hi == 0.0
