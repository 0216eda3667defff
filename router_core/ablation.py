"""Where the kernel-shrink router's gain comes from, by 4-fold CV on the training prompts only.

    python -m router_core.ablation --benchmark routerbench --k 100 --bandwidth 0.2 --prior 2
    python -m router_core.ablation --benchmark mmlu_pro --k 400 --bandwidth 0.1 --prior 2

Prints mean held-out-fold AUDC for: k-NN (20), K-means (20), the kernel alone (no shrinkage), the
kernel shrunk toward the cluster estimate, and the same with the per-prompt length cost model.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from router_core.baselines import KMeansRouter, KNNRouter, model_costs, sweep
from router_core.data import load_benchmark
from router_core.metrics import cost_grid, curve_points, curve_stats
from router_core.variants import KernelShrinkRouter, LengthCostModel


def cv_ablation(
    benchmark: str, encoder: str, k: int, bandwidth: float, prior: float, folds: int = 4, seed: int = 0
) -> dict[str, float]:
    from router_core.encoder import embed_prompts

    b = load_benchmark(benchmark)
    emb = embed_prompts(b.prompts, encoder)
    train = np.flatnonzero(b.split == "train")
    lengths = np.array([len(p) for p in b.prompts], dtype=np.float64)
    fold = np.random.default_rng(seed).permutation(len(train)) % folds
    scores: dict[str, list[float]] = {}
    for f in range(folds):
        tr, va = train[fold != f], train[fold == f]
        q, c = b.quality[va], b.cost[va]
        grid = cost_grid(q, c)
        mean_cost = model_costs(b.cost[tr])
        len_cost = LengthCostModel().fit(lengths[tr], b.cost[tr]).predict(lengths[va])
        ks = KernelShrinkRouter(k=k, bandwidth=bandwidth, prior_strength=prior, seed=seed)
        ks.fit(emb[tr], b.quality[tr])
        nb = ks.neighbours(emb[va], k)
        knn, km = KNNRouter(k=20), KMeansRouter(n_clusters=20, seed=seed)
        knn.fit(emb[tr], b.quality[tr])
        km.fit(emb[tr], b.quality[tr])
        rows = [
            ("k-NN (20)", knn.predict(emb[va]), mean_cost),
            ("K-means (20)", km.predict(emb[va]), mean_cost),
            ("kernel alone", ks.combine(nb, k, bandwidth, 1e-6), mean_cost),
            ("kernel + cluster shrinkage", ks.combine(nb, k, bandwidth, prior), mean_cost),
            ("... + length cost model (ours)", ks.combine(nb, k, bandwidth, prior), len_cost),
        ]
        for name, p_hat, cost_est in rows:
            stats = curve_stats(*curve_points(sweep(p_hat, cost_est), q, c), grid)
            scores.setdefault(name, []).append(stats.audc)
    return {name: float(np.mean(v)) for name, v in scores.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m router_core.ablation", description=__doc__.split("\n")[0])
    p.add_argument("--benchmark", required=True, choices=["routerbench", "mmlu_pro"])
    p.add_argument("--encoder", default="minilm")
    p.add_argument("--k", type=int, default=400)
    p.add_argument("--bandwidth", type=float, default=0.1)
    p.add_argument("--prior", type=float, default=2.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name, audc in cv_ablation(args.benchmark, args.encoder, args.k, args.bandwidth, args.prior).items():
        print(f"{name:34s} {audc:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
