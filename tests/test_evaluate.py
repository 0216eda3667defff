"""A tiny end-to-end ``cscr eval`` on a slice of the real data with random features (seconds)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from router_core.data import load_benchmark
from router_core.evaluate import evaluate, main, prepare, run_routers

FAST_ROUTERS = ["oracle", "random", "single", "knn", "kmeans", "ours"]
needs_data = pytest.mark.usefixtures("benchmark_data_dir")  # skipped, with the reason, without the data


@pytest.mark.slow  # ~5-12 s on 2 shared cores, mostly importing matplotlib and faiss
@needs_data
def test_eval_cli_writes_table_plot_json_and_decisions(tmp_path: Path) -> None:
    out = tmp_path / "res"
    dec = tmp_path / "decisions.csv"
    rc = main(
        ["--benchmark", "routerbench", "--encoder", "random", "--max-prompts", "240", "--bootstrap", "30",
         "--routers", *FAST_ROUTERS, "--out", str(out), "--decisions-out", str(dec)]
    )  # fmt: skip
    assert rc == 0
    table = (out / "results.md").read_text()
    for name in ("oracle", "random", "knn", "kmeans", "ours", "single:gpt-4-1106-preview"):
        assert f"| {name} |" in table
    assert (out / "curves.png").stat().st_size > 10_000
    summary = json.loads((out / "results.json").read_text())
    oracle = summary["results"]["oracle"]["audc"]
    assert oracle["lo"] <= oracle["value"] <= oracle["hi"]
    with open(dec) as fh:
        rows = list(csv.DictReader(fh))
    assert set(rows[0]) == {"router", "lam", "prompt_id", "model"}
    assert {r["router"] for r in rows} >= {"oracle", "knn", "ours"}


@needs_data
def test_rescoring_decisions_reproduces_the_table(tmp_path: Path) -> None:
    """Anyone can re-score the decisions CSV: same points as the harness."""
    s = prepare("routerbench", encoder="random", max_prompts=200)
    decisions, results = evaluate(s, ["oracle", "knn"], n_boot=10)
    from router_core.metrics import cost_grid, curve_points, curve_stats

    g = cost_grid(s.test.quality, s.test.cost)
    knn = curve_stats(*curve_points(decisions["knn"].choices, s.test.quality, s.test.cost), g)
    assert results["knn"]["audc"].value == pytest.approx(knn.audc)
    assert results["oracle"]["audc"].value >= knn.audc


@needs_data
def test_unseen_models_split_hides_labels_outside_the_probe_pool() -> None:
    s = prepare("mmlu_pro", split="unseen-models", encoder="random", max_prompts=400)
    assert len(s.unseen) == 10
    cols = [s.bench.models.index(m) for m in s.unseen]
    probe = s.train.extra["probe"].astype(bool)
    assert (s.observed[:, cols] == probe[:, None]).all()
    assert s.observed[:, [j for j in range(31) if j not in cols]].all()
    decisions, _ = evaluate(s, ["kmeans", "ours"], n_boot=5)
    picked = np.unique(decisions["ours"].choices)
    assert picked.max() < 31


@pytest.mark.slow
@needs_data
def test_contrastive_routers_run_in_the_harness() -> None:
    s = prepare("routerbench", encoder="random", max_prompts=300)
    decisions, results = evaluate(s, ["infonce", "cscr"], n_boot=10)
    assert set(decisions) == {"infonce", "cscr"}


def test_kernel_shrink_follows_close_neighbours_and_falls_back_to_the_cluster() -> None:
    from router_core.variants import KernelShrinkRouter, LengthCostModel

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 8))
    quality = np.zeros((60, 2))
    quality[:30, 0] = 1.0  # model 0 right on the first half, model 1 right on the second
    quality[30:, 1] = 1.0
    r = KernelShrinkRouter(k=10, bandwidth=0.01, prior_strength=0.1, n_clusters=2)
    r.fit(emb, quality)
    near = r.predict(emb[[0, 45]])  # identical to a training prompt: its labels dominate
    assert near[0, 0] > 0.9 and near[1, 1] > 0.9
    far = r.predict(rng.normal(size=(1, 8)))  # a fresh random direction: no close neighbour
    assert np.all((far > 0) & (far < 1))  # nothing close: the shrunk cluster estimate, never 0/1
    lengths = np.array([10.0, 20.0, 30.0])
    cm = LengthCostModel().fit(lengths, np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]]))
    np.testing.assert_allclose(cm.predict(np.array([40.0])), [[4.0, 5.0]], rtol=1e-6)


@needs_data
def test_reference_models_leave_the_pool_and_only_the_reference_oracle_reads_them() -> None:
    s = prepare("routerbench", encoder="random", max_prompts=400, reference_models=True)
    assert len(s.reference) == 4 and not set(s.reference) & set(s.bench.models)
    assert len(s.bench.models) == 7 and s.observed.shape == (len(s.train), 7)
    assert s.reference_train is not None and s.reference_train.shape == (len(s.train), 4)
    assert s.reference_test is not None and s.reference_test.shape == (len(s.test), 4)
    full = load_benchmark("routerbench")
    col = full.models.index(s.reference[0])
    rows = [full.prompt_ids.index(p) for p in s.test.prompt_ids]
    assert (s.reference_test[:, 0] == full.quality[rows, col]).all()  # the reference's real grades
    with pytest.raises(ValueError, match="needs --reference-models"):
        run_routers(prepare("routerbench", encoder="random", max_prompts=100), ["reference-oracle-lr"])


@needs_data
def test_reference_oracle_uses_the_grades_it_is_shown() -> None:
    """Shown a copy of one pool model's grades, the reference oracle predicts that model almost
    perfectly, while ours (random features) cannot; the harness routes better with it."""
    from router_core.ceiling import cross_fitted, reference_oracle
    from router_core.evaluate import _fit_ours

    s = prepare("routerbench", encoder="random", max_prompts=600, reference_models=True)
    j = s.bench.models.index("gpt-3.5-turbo-1106")
    s = replace(s, reference_train=s.train.quality[:, [j]], reference_test=s.test.quality[:, [j]])
    ours = _fit_ours(s, 0)
    p_hat = reference_oracle(s, "lr", cross_fitted(s, ours.hp, 0), ours.p_test, 0)
    y = s.test.quality[:, j] > 0.5
    assert p_hat[y, j].min() > p_hat[~y, j].max()  # separates right from wrong answers
    _, results = evaluate(s, ["ours", "reference-oracle-lr", "reference-oracle-gbm"], n_boot=20)
    for learner in ("lr", "gbm"):
        assert results[f"reference-oracle-{learner}"]["audc"].value > results["ours"]["audc"].value
