"""The distance-aware prior of kernel-shrink (``fallback_strength``) and the out-of-distribution
evaluation (``router_core.ood_eval``): its shifts, its selection rule, one shift end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router_core.variants import FALLBACK_GRID, KernelShrinkRouter, select_hyperparams


def _two_tasks() -> tuple[np.ndarray, np.ndarray]:
    """45 prompts near e0 where model 0 is right, 15 near e1 where model 1 is right (8-d)."""
    rng = np.random.default_rng(0)
    emb = np.zeros((60, 8))
    emb[:45, 0], emb[45:, 1] = 1.0, 1.0
    emb += 0.05 * rng.normal(size=emb.shape)
    quality = np.zeros((60, 2))
    quality[:45, 0], quality[45:, 1] = 1.0, 1.0
    return emb, quality


def test_far_prompt_falls_back_to_overall_accuracy_not_its_nearest_cluster() -> None:
    emb, quality = _two_tasks()
    far = np.zeros((1, 8))
    far[0, 1], far[0, 2] = 0.2, 1.0  # unlike both tasks, a little nearer the second one
    off = KernelShrinkRouter(k=20, bandwidth=0.05, prior_strength=2.0, n_clusters=2)
    on = KernelShrinkRouter(k=20, bandwidth=0.05, prior_strength=2.0, n_clusters=2, fallback_strength=1.0)
    for r in (off, on):
        r.fit(emb, quality)
    overall = quality.mean(axis=0)  # [0.75, 0.25]
    p_off = off.predict(far)[0]  # the nearest cluster's accuracy (shrunk): model 1 looks best
    assert p_off[1] > 0.6 > 0.4 > p_off[0]
    np.testing.assert_allclose(on.predict(far)[0], overall, atol=0.01)  # the models' overall accuracy
    near = emb[[0, 50]]  # a training prompt itself: the kernel carries it, fallback or not
    np.testing.assert_allclose(on.predict(near), off.predict(near), atol=0.01)
    assert on.predict(near)[0, 0] > 0.9 and on.predict(near)[1, 1] > 0.9


def test_fallback_off_is_the_recipe_before() -> None:
    emb, quality = _two_tasks()
    r = KernelShrinkRouter(k=10, bandwidth=0.1, prior_strength=2.0, n_clusters=2)
    r.fit(emb, quality)
    q = np.random.default_rng(1).normal(size=(5, 8))
    nb = r.neighbours(q, 10)
    (cols, sims, y), = nb.groups
    w = np.exp((sims - 1.0) / 0.1)
    before = (np.einsum("nk,nkm->nm", w, y) + 2.0 * nb.prior[:, cols]) / (w.sum(axis=1, keepdims=True) + 2.0)
    np.testing.assert_allclose(r.predict(q), before, rtol=1e-12)


def test_fallback_strength_travels_with_the_hyperparameters() -> None:
    old = KernelShrinkRouter.from_hyperparams({"k": 100, "bandwidth": 0.1, "prior_strength": 2.0})
    assert old.fallback_strength == 0.0  # an artifact from before: off
    new = KernelShrinkRouter.from_hyperparams({"k": 100, "bandwidth": 0.1, "prior_strength": 2.0,
                                               "fallback_strength": 5.0}, seed=3)
    twin = new.unfitted()  # what hot-add and cross-fitting refit
    assert (twin.k, twin.bandwidth, twin.prior_strength, twin.fallback_strength, twin.seed) == (100, 0.1, 2.0, 5.0, 3)


def test_select_hyperparams_picks_the_fallback_from_its_grid_and_groups_need_two() -> None:
    emb, quality = _two_tasks()
    cost = np.tile([2.0, 1.0], (60, 1))
    lengths = np.full(60, 100.0)
    hp_off = select_hyperparams(emb, quality, cost, lengths, folds=2, fallback=False)
    assert set(hp_off) == {"k", "bandwidth", "prior_strength"}  # the output before, when off
    hp_on = select_hyperparams(emb, quality, cost, lengths, folds=2)  # on by default
    assert hp_on["fallback_strength"] in FALLBACK_GRID
    one_group = select_hyperparams(emb, quality, cost, lengths, folds=2, groups=np.full(60, "t"), fallback=False)
    assert one_group == hp_off  # a single task cannot be held out: random folds


def _pair(value: float, lo: float, hi: float) -> dict[str, float]:
    return {"value": value, "lo": lo, "hi": hi, "never_frac": 0.0}


def _shifts(ood: list[tuple[float, float, float]], ind: list[tuple[float, float, float]],
            conf: tuple[float, float, float] = (0.0, -0.01, 0.01)) -> dict[str, dict[str, object]]:
    pair = "cand - kernel-shrink"
    out: dict[str, dict[str, object]] = {}
    for i, d in enumerate(ood):
        out[f"o{i}"] = {"kind": "ood", "selection": True, "paired_audc": {pair: _pair(*d)}}
    for i, d in enumerate(ind):
        out[f"i{i}"] = {"kind": "id", "selection": True, "paired_audc": {pair: _pair(*d)}}
    out["d:x"] = {"kind": "ood", "selection": False, "paired_audc": {pair: _pair(*conf)}}
    return out


def test_selection_rule() -> None:
    from router_core.ood_eval import verdict

    flat = (0.0, -0.002, 0.002)
    win = verdict(_shifts([(0.02, 0.01, 0.04), (0.001, -0.01, 0.01), (-0.001, -0.01, 0.01)], [flat, flat]), "cand")
    assert win["wins"] and win["significantly_better"] == ["o0"]
    # significantly worse somewhere out of distribution: no
    assert not verdict(_shifts([(0.03, 0.01, 0.05), (-0.01, -0.02, -0.001)], [flat]), "cand")["wins"]
    # better out of distribution, but it costs in distribution: no
    assert not verdict(_shifts([(0.02, 0.01, 0.04)], [(-0.003, -0.006, 0.001)]), "cand")["wins"]
    # a positive mean from noise alone, one shift below 0: not consistent, no
    assert not verdict(_shifts([(0.004, -0.002, 0.01), (-0.001, -0.01, 0.01)], [flat]), "cand")["wins"]
    # the confirmation shifts never decide
    lost = verdict(_shifts([(0.02, 0.01, 0.04)], [flat], conf=(-0.05, -0.08, -0.02)), "cand")
    assert lost["wins"] and lost["confirmation_significantly_worse"] == ["d:x"]


pytestmark_data = pytest.mark.usefixtures("benchmark_data_dir")


@pytestmark_data
def test_shifts_hold_out_what_they_say() -> None:
    from router_core.ood_eval import MMLU_GROUPS, build_shifts

    shifts = {s.name: s for s in build_shifts()}
    a, b = shifts["a"], shifts["b"]
    src = a.bench.extra["source"]
    assert len(a.bench.models) == 6 and "mistralai/mistral-7b-chat" not in a.bench.models
    assert set(src[a.train]) == {"routerbench"} and set(a.bench.split[a.train]) == {"train"}
    assert set(src[a.test]) == {"alpacaeval"} and set(a.bench.split[a.test]) == {"test"}
    assert not a.bench.missing[a.test].any()  # scored only where every model has a verdict
    assert set(src[b.train]) == {"alpacaeval"} and set(src[b.test]) == {"routerbench"}
    for t in ("arc-challenge", "winogrande", "mbpp"):
        c, twin = shifts[f"c:{t}"], shifts[f"c:{t}/id"]
        task = c.bench.extra["task"]
        assert t not in set(task[c.train]) and set(task[c.test]) == {t} and len(c.bench.models) == 11
        assert (twin.test == c.test).all() and t in set(task[twin.train])
    cats = [c for g in MMLU_GROUPS.values() for c in g]
    assert len(cats) == len(set(cats)) == 14
    for g, held in MMLU_GROUPS.items():
        d = shifts[f"d:{g}"]
        cat = d.bench.extra["category"]
        assert not set(cat[d.train]) & set(held) and set(cat[d.test]) == set(held)
        assert len(d.bench.models) == 31 and not d.missing_is_missing


@pytest.mark.slow
@pytestmark_data
def test_one_shift_end_to_end(tmp_path: Path) -> None:
    from router_core.ood_eval import main

    assert main(["--out", str(tmp_path), "--only", "c:mbpp", "--bootstrap", "20"]) == 0
    r = json.loads((tmp_path / "results.json").read_text())
    s = r["shifts"]["c:mbpp"]
    assert s["test_prompts"] == 128 and s["models"] == 11
    audc = {k: v["audc"]["value"] for k, v in s["results"].items()}
    assert audc["oracle"] == max(audc.values())
    assert set(audc) == {"oracle", "kernel-shrink", "kernel-shrink+fallback", "kernel-shrink+task-cv", "kmeans",
                         "knn", "single-frontier"}
    assert s["hyperparameters kernel-shrink+fallback"]["fallback_strength"] > 0
    assert "fallback_strength" not in s["hyperparameters kernel-shrink"]
    assert "| c:mbpp | 128 |" in (tmp_path / "results.md").read_text()
