"""The kernel-shrink router ("ours", ``variants.py``) as a gateway routing policy and artifact.

The artifact holds what the router knows: the probe prompts' embeddings (the training prompts,
routing text, the artifact's encoder) and every model's graded answers on them (its descriptor),
plus the hyperparameters chosen by cross-validation and a trade-off → λ table. The rule is the one
evaluated in docs/EVALUATION.md: argmax over candidates of p̂_j(prompt) − λ·cost_j in USD, with the
gateway's per-request cost estimate as cost_j. A new model joins with ``add_expert(name, answers)``,
its graded answers on the probe prompts (NaN where it has none): no retraining.

    python -m router_core.kernel_policy --benchmark routerbench --out router_core/artifacts/routerbench-kernel-shrink
    # gateway.yaml:  router: {artifact: <that directory>}
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router_core.encoder import ROUTING_TEXT_VERSION, encoder_spec, get_encoder, routing_text
from router_core.types import Candidate, Ranking, Scored
from router_core.variants import KernelShrinkRouter, LengthCostModel, select_hyperparams

log = logging.getLogger(__name__)

VARIANT = "kernel-shrink"
LOADER = "router_core.kernel_policy:load_policy"


class KernelShrinkPolicy:
    """``RoutingPolicy`` over a fitted ``KernelShrinkRouter``."""

    name = VARIANT

    def __init__(self, router: KernelShrinkRouter, experts: list[str], lam_table: list[float], encoder: str,
                 embeddings: np.ndarray, labels: np.ndarray, observed: np.ndarray) -> None:
        self.router = router
        self.experts = list(experts)
        self.lam_table = np.asarray(lam_table, dtype=np.float64)
        self.encoder = get_encoder(encoder)
        self._emb, self._labels, self._observed = embeddings, labels, observed

    def lam(self, tradeoff: float) -> float:
        t = float(min(max(tradeoff, 0.0), 1.0))
        grid = np.linspace(0.0, 1.0, len(self.lam_table))
        return float(np.interp(t, grid, self.lam_table))

    def predict(self, prompt: str) -> np.ndarray:
        """p̂ per expert for one prompt: (M,)."""
        q = self.encoder.encode(routing_text(prompt))[None, :]  # (1, D)
        return self.router.predict(q)[0]

    def add_expert(self, name: str, descriptor: np.ndarray) -> None:
        """A new (or replaced) model from its graded answers on the probe prompts (NaN = unknown)."""
        answers = np.asarray(descriptor, dtype=np.float64).reshape(-1)
        if answers.shape[0] != self._labels.shape[0]:
            raise ValueError(f"descriptor has {answers.shape[0]} answers; this artifact has "
                             f"{self._labels.shape[0]} probe prompts")
        seen = np.isfinite(answers)
        labels, observed = self._labels, self._observed
        if name in self.experts:
            j = self.experts.index(name)
            labels, observed = labels.copy(), observed.copy()
            labels[:, j], observed[:, j] = np.where(seen, answers, 0.0), seen
            experts = self.experts
        else:
            labels = np.concatenate([labels, np.where(seen, answers, 0.0)[:, None]], axis=1)
            observed = np.concatenate([observed, seen[:, None]], axis=1)
            experts = [*self.experts, name]
        router = KernelShrinkRouter(k=self.router.k, bandwidth=self.router.bandwidth,
                                    prior_strength=self.router.prior_strength, seed=self.router.seed)
        router.fit(self._emb, labels, observed)
        # swap whole objects: a concurrent rank sees the old pool or the new one, never a mix
        self.router, self._labels, self._observed, self.experts = router, labels, observed, experts

    def rank(self, prompt: str, candidates: Sequence[Candidate], tradeoff: float) -> Ranking:
        experts, router = self.experts, self.router
        pos = {n: i for i, n in enumerate(experts)}
        known = [c for c in candidates if c.expert is not None and c.expert in pos]
        unknown = sorted((c for c in candidates if c.expert is None or c.expert not in pos),
                         key=lambda c: (c.cost, c.name))
        order: list[Scored] = []
        if known:
            q = self.encoder.encode(routing_text(prompt))[None, :]
            p_all = router.predict(q)[0]
            p = np.array([p_all[pos[c.expert]] for c in known if c.expert is not None])  # (K,)
            cost = np.array([c.cost for c in known])
            if tradeoff >= 1.0:  # cheapest outright, the likelier-right first among equals
                idx = np.lexsort((-p, cost))
                scores = -cost
            else:
                scores = p - self.lam(tradeoff) * cost
                idx = np.lexsort((cost, -scores))
            order = [Scored(known[i].name, float(scores[i]), float(p[i]), known[i].cost) for i in idx]
        floor = min((s.score for s in order), default=0.0) - 1.0
        order += [Scored(c.name, floor - i, None, c.cost) for i, c in enumerate(unknown)]
        return Ranking(order=tuple(order), policy=self.name)


def _lam_table(p_hat: np.ndarray, cost: np.ndarray, n: int = 21) -> list[float]:
    """λ per trade-off in linspace(0, 1, n): t moves the mean USD spend of the training prompts'
    picks evenly from its value at λ=0 down to the cheapest model's."""
    lams = np.concatenate([[0.0], np.geomspace(1e-2, 1e5, 300)])
    rows = np.arange(p_hat.shape[0])
    spend = np.array([cost[rows, (p_hat - lam * cost).argmax(axis=1)].mean() for lam in lams])
    spend = np.minimum.accumulate(spend)
    lo, hi = spend[-1], spend[0]
    table = []
    for t in np.linspace(0.0, 1.0, n):
        ok = np.flatnonzero(spend <= hi - t * (hi - lo) + 1e-15)
        table.append(float(lams[ok[0]]) if ok.size else float(lams[-1]))
    table[0] = 0.0
    return list(np.maximum.accumulate(table))


def build(benchmark: str, out: Path, encoder: str = "static-minilm", seed: int = 0) -> Path:
    """Fit on the benchmark's training split and write the artifact directory."""
    from router_core.data import load_benchmark, versions_of
    from router_core.encoder import embed_prompts

    started = time.perf_counter()
    bench = load_benchmark(benchmark)
    train = bench.subset(bench.split == "train")
    emb = embed_prompts(train.prompts, encoder, progress=True)
    lengths = np.array([len(p) for p in train.prompts], dtype=np.float64)
    hp = select_hyperparams(emb, train.quality, train.cost, lengths, seed=seed)
    router = KernelShrinkRouter.from_hyperparams(hp, seed)
    router.fit(emb, train.quality)
    c_hat = LengthCostModel().fit(lengths, train.cost).predict(lengths)
    table = _lam_table(router.predict(emb), c_hat)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "arrays.npz", embeddings=emb.astype(np.float16),
                        labels=train.quality.astype(np.float16), observed=np.ones(train.quality.shape, bool))
    config = {
        "variant": VARIANT, "loader": LOADER, "encoder": encoder, "encoder_version": encoder_spec(encoder).version,
        "routing_text": ROUTING_TEXT_VERSION, "hyperparameters": hp, "seed": seed, "experts": list(train.models),
        "probe_ids": list(train.prompt_ids), "lam_table": table, "data_versions": versions_of(bench),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    log.info("kernel-shrink artifact written to %s (%s)", out, hp)
    return out


def load_policy(path: Path, top_k: int | None = None) -> KernelShrinkPolicy:
    """``load_routing_policy`` entry point (``top_k`` does not apply: every candidate is scored)."""
    config = json.loads((Path(path) / "config.json").read_text())
    if config.get("routing_text") != ROUTING_TEXT_VERSION:
        raise ValueError(f"artifact {path} was built for routing text {config.get('routing_text')!r}")
    arrays = np.load(Path(path) / "arrays.npz")
    emb = arrays["embeddings"].astype(np.float32)
    labels = arrays["labels"].astype(np.float64)
    observed = arrays["observed"].astype(bool)
    hp = config["hyperparameters"]
    router = KernelShrinkRouter.from_hyperparams(hp, int(config["seed"]))
    router.fit(emb, labels, observed)
    return KernelShrinkPolicy(router, config["experts"], config["lam_table"], config["encoder"], emb, labels,
                              observed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a kernel-shrink router artifact for the gateway.")
    parser.add_argument("--benchmark", default="routerbench", choices=["routerbench", "mmlu_pro"])
    parser.add_argument("--encoder", default="static-minilm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build(args.benchmark, args.out, args.encoder, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
