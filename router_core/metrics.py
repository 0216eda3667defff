"""Deferral curves and the numbers read off them: AUDC, AUDC on a log grid, peak, QNC, bootstrap CIs.

The protocol (``DESIGN.md``, spelled out in ``docs/EVALUATION.md``):

- A router yields one *point* per trade-off value λ: (mean cost, mean quality) of its choices over
  the evaluated prompts.
- Its curve is monotone: q(c) = the best mean quality among its points with cost <= c, 0 where
  it has none.
- The cost grid belongs to the benchmark and the evaluated prompt set, never to the routers: from
  the mean cost of the cheapest single model to that of the most expensive single model.
- AUDC = mean of q over 101 evenly spaced grid points; AUDC-log = the same over 101 geometrically
  spaced points. Peak = best mean quality over all points.
- QNC = the smallest point cost at which the router's quality reaches the best single model's,
  divided by that model's mean cost; ``inf`` ("never") if no point reaches it.

Everything here is pure numpy on arrays: choices are model indices, never names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

GRID_POINTS = 101


@dataclass(frozen=True)
class CostGrid:
    """The evaluation grid of one benchmark's evaluated prompt set."""

    lo: float  # mean cost of the cheapest single model
    hi: float  # mean cost of the most expensive single model
    best_quality: float  # mean quality of the best single model (ties: the cheaper)
    best_cost: float  # its mean cost

    def linear(self, n: int = GRID_POINTS) -> np.ndarray:
        return np.linspace(self.lo, self.hi, n)

    def log(self, n: int = GRID_POINTS) -> np.ndarray:
        return np.geomspace(self.lo, self.hi, n)


@dataclass(frozen=True)
class CurveStats:
    audc: float
    audc_log: float
    peak: float
    qnc: float  # inf = never


def cost_grid(quality: np.ndarray, cost: np.ndarray) -> CostGrid:
    """Grid from single models only. quality, cost: (N, M) over the evaluated prompts."""
    mean_q = quality.mean(axis=0)  # (M,)
    mean_c = cost.mean(axis=0)  # (M,)
    best = int(np.lexsort((mean_c, -mean_q))[0])  # highest quality, then cheapest
    return CostGrid(float(mean_c.min()), float(mean_c.max()), float(mean_q[best]), float(mean_c[best]))


def curve_points(choices: np.ndarray, quality: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points of a router. choices: (L, N) model index per λ and prompt -> (costs (L,), qualities (L,))."""
    rows = np.arange(quality.shape[0])[None, :]  # (1, N)
    return cost[rows, choices].mean(axis=1), quality[rows, choices].mean(axis=1)


def envelope(point_cost: np.ndarray, point_quality: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Monotone curve on ``grid``: best quality among points with cost <= c, 0 where none."""
    order = np.argsort(point_cost, kind="stable")
    costs = point_cost[order]
    best = np.maximum.accumulate(point_quality[order])
    # last point with cost <= c; the relative slack absorbs summation-order rounding (a single model's
    # point must sit exactly on the grid end it defines)
    pos = np.searchsorted(costs, grid * (1 + 1e-9), side="right") - 1
    return np.where(pos >= 0, best[np.maximum(pos, 0)], 0.0)


def qnc(point_cost: np.ndarray, point_quality: np.ndarray, grid: CostGrid, tol: float = 1e-9) -> float:
    """Smallest cost reaching the best single model's quality, over that model's cost; inf if never."""
    ok = point_quality >= grid.best_quality - tol
    if not ok.any():
        return float("inf")
    return float(point_cost[ok].min() / grid.best_cost)


def curve_stats(point_cost: np.ndarray, point_quality: np.ndarray, grid: CostGrid) -> CurveStats:
    return CurveStats(
        audc=float(envelope(point_cost, point_quality, grid.linear()).mean()),
        audc_log=float(envelope(point_cost, point_quality, grid.log()).mean()),
        peak=float(point_quality.max()),
        qnc=qnc(point_cost, point_quality, grid),
    )


@dataclass(frozen=True)
class Interval:
    value: float  # on the full evaluated set
    lo: float  # 2.5th percentile of the bootstrap
    hi: float  # 97.5th percentile
    never_frac: float = 0.0  # QNC only: share of resamples where the router never matched


def _interval(value: float, samples: np.ndarray, level: float = 0.95) -> Interval:
    finite = samples[np.isfinite(samples)]
    never = 1.0 - finite.size / samples.size
    if finite.size == 0:
        return Interval(value, float("inf"), float("inf"), never)
    a = (1 - level) / 2
    # "never" (inf) sorts last, so a QNC interval's upper end is inf once >2.5% of resamples never match
    lo, hi = np.quantile(samples, [a, 1 - a], method="nearest")
    return Interval(value, float(lo), float(hi), never)


def bootstrap(
    choices: Mapping[str, np.ndarray],
    quality: np.ndarray,
    cost: np.ndarray,
    n_boot: int = 500,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, Interval]]:
    """Percentile CIs of AUDC, AUDC-log, peak and QNC for every router, on shared resamples.

    Each resample draws the evaluated prompts with replacement and recomputes everything from it:
    the routers' points, the single models' means, hence the grid and the best single model. The
    same resamples are used for every router, so their intervals are comparable.
    """
    n = quality.shape[0]
    rng = np.random.default_rng(seed)
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)])
    weights = weights.astype(np.float64) / n  # (B, N), rows sum to 1
    mean_q = weights @ quality  # (B, M)
    mean_c = weights @ cost  # (B, M)
    grids = []
    for b in range(n_boot):
        best = int(np.lexsort((mean_c[b], -mean_q[b]))[0])
        grids.append(CostGrid(mean_c[b].min(), mean_c[b].max(), mean_q[b, best], mean_c[b, best]))

    full_grid = cost_grid(quality, cost)
    rows = np.arange(n)[None, :]
    out: dict[str, dict[str, Interval]] = {}
    for name, ch in choices.items():
        q_sel = quality[rows, ch]  # (L, N)
        c_sel = cost[rows, ch]  # (L, N)
        pq = q_sel @ weights.T  # (L, B)
        pc = c_sel @ weights.T  # (L, B)
        samples = np.array([_astuple(curve_stats(pc[:, b], pq[:, b], grids[b])) for b in range(n_boot)])
        full = curve_stats(c_sel.mean(axis=1), q_sel.mean(axis=1), full_grid)
        out[name] = {
            key: _interval(getattr(full, key), samples[:, k], level)
            for k, key in enumerate(("audc", "audc_log", "peak", "qnc"))
        }
    return out


def _astuple(s: CurveStats) -> tuple[float, float, float, float]:
    return (s.audc, s.audc_log, s.peak, s.qnc)


def paired_difference(
    a: np.ndarray,
    b: np.ndarray,
    quality: np.ndarray,
    cost: np.ndarray,
    n_boot: int = 500,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """CI of AUDC(a) - AUDC(b) on shared resamples (a paired test; tighter than two intervals)."""
    n = quality.shape[0]
    rng = np.random.default_rng(seed)
    rows = np.arange(n)[None, :]
    full_grid = cost_grid(quality, cost)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, n)
        g = cost_grid(quality[idx], cost[idx])
        sa = curve_stats(*curve_points(a[:, idx], quality[idx], cost[idx]), g)
        sb = curve_stats(*curve_points(b[:, idx], quality[idx], cost[idx]), g)
        diffs[i] = sa.audc - sb.audc
    value = (
        curve_stats(cost[rows, a].mean(1), quality[rows, a].mean(1), full_grid).audc
        - curve_stats(cost[rows, b].mean(1), quality[rows, b].mean(1), full_grid).audc
    )
    return _interval(value, diffs, level)
