"""The kernel-shrink router ("ours", ``variants.py``) as a gateway routing policy and artifact.

The artifact holds what the router knows: the probe prompts' embeddings (the training prompts,
routing text, the artifact's encoder) and every model's graded answers on them (its descriptor; a
``observed`` mask marks answers that were never graded: missing, not wrong), plus the
hyperparameters chosen by cross-validation, the answer-length parameters and a trade-off → λ table.

Rule (``rule_scores``, one function for serving, calibration and evaluation): argmax over candidates
of p̂_j(prompt) − λ·cost_j / max_k cost_k, with the gateway's per-request cost estimates. Dividing by
the dearest candidate's cost makes λ independent of the request's size and of how the gateway bounds
output tokens. A new model joins with ``add_expert(name, descriptor)``, a graded ``Descriptor``: its
answers on the probe prompts, 1 / 0 and NaN where it has none (``router_core.graded`` makes one from
live answers to the artifact's gradable probes): no retraining.

Trade-off table (``tradeoff_table``): on the training prompts (cross-fitted p̂), t ∈ [0, 1] gets the
smallest λ whose picks' mean estimated spend is exp(log S₀ − t·(log S₀ − log S₁)), S₀ the spend at
λ = 0 (best expected quality) and S₁ the cheapest model's: t moves the spend evenly on a log scale,
so t = 0.5 is the geometric middle, not "half of GPT-4's bill" (which is still mostly GPT-4).

    python -m router_core.kernel_policy --benchmark routerbench+alpacaeval --fit-on all \\
        --out router_core/artifacts/default-kernel-shrink       # the bundled default
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router_core.baselines import model_accuracy
from router_core.encoder import ROUTING_TEXT_VERSION, encoder_spec, get_encoder, routing_text
from router_core.graded import GRADED_PROBES_FILE, GradedProbes, build_graded_probes
from router_core.pricing import answer_tokens, list_prices, prompt_tokens, request_costs
from router_core.types import Candidate, Descriptor, DescriptorError, DescriptorSpec, Ranking, Scored, check_descriptor
from router_core.variants import (
    KernelShrinkRouter,
    LengthCostModel,
    NeighbourLengths,
    random_folds,
    select_hyperparams,
    select_length_params,
    similarities,
)

log = logging.getLogger(__name__)

VARIANT = "kernel-shrink"
LOADER = "router_core.kernel_policy:load_policy"
LAMBDA_GRID = np.concatenate([[0.0], np.geomspace(1e-4, 1e3, 400)])


def rule_scores(p_hat: np.ndarray, cost: np.ndarray, lam: float) -> np.ndarray:
    """p̂ − λ·cost / (dearest cost of the row): (M,) or (N, M). Scale-free in the cost's units."""
    c = np.asarray(cost, dtype=np.float64)
    return np.asarray(p_hat, dtype=np.float64) - lam * c / np.maximum(c.max(axis=-1, keepdims=True), 1e-15)


def decide(p_hat: np.ndarray, cost: np.ndarray, lams: Sequence[float] | np.ndarray) -> np.ndarray:
    """(L, N) picks of the rule per λ; exact ties to the cheaper model, as ``rank`` breaks them."""
    c = np.asarray(cost, dtype=np.float64)
    tie = 1e-12 * c / np.maximum(c.max(axis=-1, keepdims=True), 1e-15)
    return np.stack([np.argmax(rule_scores(p_hat, c, float(lam)) - tie, axis=1) for lam in lams])


class KernelShrinkPolicy:
    """``RoutingPolicy`` over a fitted ``KernelShrinkRouter``."""

    name = VARIANT

    def __init__(self, router: KernelShrinkRouter, experts: list[str], lam_table: list[float], encoder: str,
                 embeddings: np.ndarray, labels: np.ndarray, observed: np.ndarray,
                 graded: GradedProbes | None = None, graded_file: str | None = None,
                 lengths: NeighbourLengths | None = None) -> None:
        self.router = router
        self.experts = list(experts)
        self.lam_table = np.asarray(lam_table, dtype=np.float64)
        self._lam_grid = np.linspace(0.0, 1.0, len(self.lam_table))
        self.encoder = get_encoder(encoder)
        # the search and the rule are ~0.5 ms: on the gateway's event loop unless the encoder is slow
        self.blocking = not encoder_spec(encoder).inline
        self._emb, self._labels, self._observed = embeddings, labels, observed
        self.graded = graded  # the gradable probes shipped with the artifact (onboarding by probing)
        self._graded_file = graded_file
        self.lengths = lengths  # expected answer lengths per trained expert (None: rank on Candidate.cost)
        self._length_cols = {e: j for j, e in enumerate(experts)}
        self._shared_keys = self._same_keys()

    @property
    def descriptor_spec(self) -> DescriptorSpec:
        """Graded answers on this artifact's probe prompts. Without a shipped graded probe file the
        space is still graded (a descriptor file made elsewhere), but the gateway cannot probe."""
        if self.graded is not None:
            return self.graded.spec(self._graded_file)
        return DescriptorSpec("graded", f"probes-n{self._labels.shape[0]}", "letter-v1",
                              settings={"answer_format": "letter", "probes": int(self._labels.shape[0])})

    def _same_keys(self) -> bool:
        """Whether the answer lengths are searched among the same probe prompts as p̂ (they are when
        both are fitted on the artifact's embeddings): then one similarity pass serves both."""
        return self.lengths is not None and np.array_equal(self.lengths.keys, self.router.keys)

    def lam(self, tradeoff: float) -> float:
        t = float(min(max(tradeoff, 0.0), 1.0))
        return float(np.interp(t, self._lam_grid, self.lam_table))

    def predict(self, prompt: str) -> np.ndarray:
        """p̂ per expert for one prompt: (M,)."""
        return self.router.predict(self._embed(prompt))[0]

    def _embed(self, prompt: str) -> np.ndarray:
        return self.encoder.encode(routing_text(prompt))[None, :]  # (1, D)

    def expected_costs(self, q: np.ndarray, known: Sequence[Candidate], sims: np.ndarray | None = None) -> np.ndarray:
        """(K,) USD the rule ranks on: each candidate priced (``Candidate.cost_at``) at the answer
        length its model gave the prompts nearest ``q``; a model without recorded lengths (added by
        descriptor) at the median of the others' for this prompt. ``Candidate.cost`` when the artifact
        has no lengths or the gateway gave no pricing callback. ``sims``: ``q``'s similarities to the
        probe prompts, when p̂'s search made them (``rank``)."""
        if self.lengths is None or any(c.cost_at is None for c in known):
            return np.array([c.cost for c in known])
        # (M0,) the trained experts, as Python floats: what follows is scalar work on a dozen candidates;
        # the same rule as pricing.expected_tokens (the batch path), which tests/test_pricing.py checks it against
        tokens = self.lengths.predict(q, sims if self._shared_keys else None)[0].tolist()
        cols = self._length_cols
        per = [tokens[cols[c.expert]] if c.expert in cols else math.nan for c in known]
        finite = [t for t in per if math.isfinite(t)]
        if len(finite) < len(per):  # only then is a typical length needed (np.median is ~20 µs)
            typical = float(np.median(finite)) if finite else float(np.nanmedian(tokens))
            per = [t if math.isfinite(t) else typical for t in per]
        return np.array([c.cost_at(t) for c, t in zip(known, per, strict=True) if c.cost_at is not None])

    def add_expert(self, name: str, descriptor: Descriptor) -> None:
        """A new (or replaced) model from its graded answers on the probe prompts (NaN = unknown);
        ``DescriptorError`` for a descriptor of another space."""
        check_descriptor(self.descriptor_spec, descriptor, f"descriptor of {name}")
        self.add_answers(name, np.asarray(descriptor.vector, dtype=np.float64))

    def add_answers(self, name: str, answers: np.ndarray, impute: bool = True) -> None:
        """``add_expert`` on a bare answer vector (evaluation; the space is the caller's to check).
        ``impute``: fill the prompts it was not asked from its peers (``peer_fill``)."""
        answers = np.asarray(answers, dtype=np.float64).reshape(-1)
        if answers.shape[0] != self._labels.shape[0]:
            raise DescriptorError(f"descriptor has {answers.shape[0]} answers; this artifact has "
                                  f"{self._labels.shape[0]} probe prompts")
        if impute:
            peers = [j for j, e in enumerate(self.experts) if e != name]
            answers = peer_fill(self._labels[:, peers], self._observed[:, peers], answers)
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
        router = self.router.unfitted()
        router.fit(self._emb, labels, observed, centroids=self.router.centroids)
        # swap whole objects: a concurrent rank sees the old pool or the new one, never a mix
        self.router, self._labels, self._observed, self.experts = router, labels, observed, experts
        self._shared_keys = self._same_keys()

    def rank(self, prompt: str, candidates: Sequence[Candidate], tradeoff: float) -> Ranking:
        pos = {n: i for i, n in enumerate(self.experts)}
        known = [c for c in candidates if c.expert is not None and c.expert in pos]
        unknown = sorted((c for c in candidates if c.expert is None or c.expert not in pos),
                         key=lambda c: (c.cost, c.name))
        order: list[Scored] = []
        if known:
            q = self._embed(prompt)
            router = self.router  # one pool for the whole decision (``add_answers`` swaps it)
            sims = similarities(q, router.keys)  # (1, R): one pass for p̂ and the answer lengths
            p_all = router.predict(q, sims)[0]
            p = np.array([p_all[pos[c.expert]] for c in known if c.expert is not None])  # (K,)
            cost = self.expected_costs(q, known, sims)
            if tradeoff >= 1.0:  # cheapest outright, the likelier-right first among equals
                idx = np.lexsort((-p, cost))
                scores = -cost
            else:
                scores = rule_scores(p, cost, self.lam(tradeoff))
                idx = np.lexsort((cost, -scores))
            score_l, p_l, cost_l = scores.tolist(), p.tolist(), cost.tolist()  # Python floats, as float() gives
            order = [Scored(known[i].name, score_l[i], p_l[i], cost_l[i]) for i in idx.tolist()]
        floor = min((s.score for s in order), default=0.0) - 1.0
        order += [Scored(c.name, floor - i, None, c.cost) for i, c in enumerate(unknown)]
        return Ranking(order=tuple(order), policy=self.name)


def peer_fill(labels: np.ndarray, observed: np.ndarray, answers: np.ndarray, ridge: float = 1.0,
              min_answers: int = 20) -> np.ndarray:
    """A new model's answers completed from its peers: on the prompts it was not asked, a ridge
    regression of its grades on the known models' labels of the same prompt (fitted on the prompts it
    answered), clipped to [0, 1]; NaN stays where it was asked nothing useful (fewer than
    ``min_answers`` answers: nothing is fitted).

    Why: a few hundred graded probes say well how strong a model is and whom it resembles, but they
    are too few to be the only neighbours of a prompt: with only its own 200 answers as labels the
    kernel falls back to coarse cluster means for it (measured on MMLU-Pro's unseen models: lower
    AUDC on every probe draw, ``onboarding_eval --no-peer-fill``). Its peers' labels, which cover
    every probe prompt, carry the per-prompt difficulty; the regression transfers it at the
    newcomer's own level."""
    asked = np.isfinite(answers)
    if asked.sum() < min_answers or labels.shape[1] == 0:
        return answers
    col_mean = model_accuracy(labels, observed)
    x = np.where(observed, labels, col_mean[None, :])  # (R, M) peers' labels, unknown -> their mean
    x1 = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    xa, ya = x1[asked], answers[asked]
    reg = ridge * np.eye(x1.shape[1])
    reg[-1, -1] = 0.0  # the intercept is not shrunk
    coef = np.linalg.solve(xa.T @ xa + reg, xa.T @ ya)
    return np.where(asked, answers, np.clip(x1 @ coef, 0.0, 1.0))


def tradeoff_table(p_hat: np.ndarray, cost: np.ndarray, n: int = 101) -> tuple[list[float], dict[str, float]]:
    """λ per trade-off in linspace(0, 1, n), moving the mean spend evenly on a log scale from its
    λ = 0 value to the cheapest model's (module docstring), and the two ends in USD per prompt."""
    rows = np.arange(p_hat.shape[0])
    picks = decide(p_hat, cost, LAMBDA_GRID)  # (L, N)
    spend = np.minimum.accumulate(cost[rows[None, :], picks].mean(axis=1))  # (L,) non-increasing
    hi = float(spend[0])
    lo = float(min(cost.mean(axis=0).min(), spend[-1]))
    table = []
    for t in np.linspace(0.0, 1.0, n):
        target = float(np.exp(np.log(hi) - t * (np.log(hi) - np.log(lo))))
        ok = np.flatnonzero(spend <= target * (1 + 1e-9))
        table.append(float(LAMBDA_GRID[ok[0]]) if ok.size else float(LAMBDA_GRID[-1]))
    table[0] = 0.0
    return [float(x) for x in np.maximum.accumulate(table)], {"spend_hi_usd": hi, "spend_lo_usd": lo}


def common_patterns(observed: np.ndarray, min_share: float = 0.01) -> np.ndarray:
    """(N,) rows whose pattern of labelled models is shared by at least ``min_share`` of the rows.

    Each distinct pattern makes the router search its own neighbours (one pass per group of models,
    ``variants.label_groups``); a handful of prompts with a stray ungraded answer (~1% here) would
    multiply the passes per request for nothing. They are left out of the probe set; models absent
    from a whole data set (AlpacaEval's five) are a common pattern and stay missing, never wrong."""
    keys = np.packbits(observed, axis=1)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)] >= min_share * observed.shape[0]


def cross_fitted(router: KernelShrinkRouter, emb: np.ndarray, quality: np.ndarray, observed: np.ndarray,
                 folds: int = 4) -> np.ndarray:
    """(N, M) p̂ of each training prompt from a router fitted without its fold: in-sample p̂ sees the
    prompt's own label and would make the trade-off table too confident."""
    fold = random_folds(emb.shape[0], folds, router.seed)
    out = np.zeros(quality.shape)
    for f in range(folds):
        r = router.unfitted()
        r.fit(emb[fold != f], quality[fold != f], observed[fold != f])
        out[fold == f] = r.predict(emb[fold == f])
    return out


def cross_fitted_lengths(params: dict[str, float], emb: np.ndarray, tokens: np.ndarray, seed: int = 0,
                         folds: int = 4) -> np.ndarray:
    """(N, M) expected answer lengths of the training prompts, each from a model fitted without its fold."""
    fold = random_folds(emb.shape[0], folds, seed)
    out = np.zeros(tokens.shape)
    for f in range(folds):
        m = NeighbourLengths(k=int(params["k"]), bandwidth=float(params["bandwidth"]),
                             prior_strength=float(params["prior_strength"]))
        out[fold == f] = m.fit(emb[fold != f], tokens[fold != f]).predict(emb[fold == f])
    return out


def build(benchmark: str, out: Path, encoder: str = "static-minilm", seed: int = 0, fit_on: str = "train",
          answer_lengths: bool = True, max_prompts: int | None = None, fallback: bool = True) -> Path:
    """Fit on the benchmark's training split (``fit_on="all"``: every labelled prompt) and write
    the artifact directory. ``answer_lengths``: ship each model's recorded answer lengths, so the
    rule ranks on expected cost (``NeighbourLengths``); the trade-off table is then made on the
    same expected costs (cross-fitted). ``max_prompts``: a seeded random subset of those prompts (a
    quick artifact for smoke tests, not one to serve). ``fallback``: the distance-aware prior
    (``select_hyperparams``), on by default since the out-of-distribution evaluation
    (``router_core.ood_eval``)."""
    from router_core.data import load_benchmark, versions_of
    from router_core.encoder import embed_prompts

    started = time.perf_counter()
    bench = load_benchmark(benchmark)
    train = bench if fit_on == "all" else bench.subset(bench.split == "train")
    if train.missing is not None:
        train = train.subset(common_patterns(~train.missing))
    if max_prompts is not None and max_prompts < len(train):
        train = train.subset(np.sort(np.random.default_rng(seed).choice(len(train), max_prompts, replace=False)))
    emb = embed_prompts(train.prompts, encoder, progress=True)
    observed = ~train.missing if train.missing is not None else np.ones(train.quality.shape, dtype=bool)
    lengths = np.array([len(p) for p in train.prompts], dtype=np.float64)
    hp = select_hyperparams(emb, train.quality, train.cost, lengths, observed, seed=seed, fallback=fallback)
    router = KernelShrinkRouter.from_hyperparams(hp, seed)
    router.fit(emb, train.quality, observed)
    arrays = {"embeddings": emb.astype(np.float16), "labels": train.quality.astype(np.float16),
              "observed": observed, "centroids": router.centroids}
    length_params = None
    if answer_lengths:
        tokens = answer_tokens(train.prompts, train.cost, *list_prices(train.models), observed)
        length_params = select_length_params(emb, tokens, seed=seed)
        table_cost = request_costs(prompt_tokens(train.prompts), cross_fitted_lengths(length_params, emb, tokens, seed),
                                   train.models)
        arrays["answer_tokens"] = np.minimum(tokens, 60000).astype(np.float16)  # NaN: not recorded
    else:  # without answer lengths the rule ranks on the gateway's bound: the table on USD by prompt length
        table_cost = LengthCostModel().fit(lengths, train.cost).predict(lengths)
    table, ends = tradeoff_table(cross_fitted(router, emb, train.quality, observed), table_cost)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "arrays.npz", **arrays)  # type: ignore[arg-type]
    config = {
        "variant": VARIANT, "loader": LOADER, "encoder": encoder, "encoder_version": encoder_spec(encoder).version,
        "routing_text": ROUTING_TEXT_VERSION, "hyperparameters": hp, "seed": seed, "experts": list(train.models),
        "fit_on": fit_on, "n_prompts": len(train), "lam_table": table, "tradeoff_scale": "log-spend-v1",
        "answer_lengths": length_params,
        "tradeoff_ends": ends,
        "data_versions": versions_of(bench), "train_seconds": round(time.perf_counter() - started, 1),
        "probe_ids": list(train.prompt_ids),
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    if "routerbench" in benchmark:  # the probes a new model can be graded on (onboarding)
        build_graded_probes(list(train.prompt_ids)).save(out / GRADED_PROBES_FILE)
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
    router = KernelShrinkRouter.from_hyperparams(config["hyperparameters"], int(config["seed"]))
    router.fit(emb, labels, observed, centroids=arrays["centroids"] if "centroids" in arrays.files else None)
    lengths = None
    if config.get("answer_lengths") and "answer_tokens" in arrays.files:
        lp = config["answer_lengths"]
        lengths = NeighbourLengths(k=int(lp["k"]), bandwidth=float(lp["bandwidth"]),
                                   prior_strength=float(lp["prior_strength"]))
        lengths.fit(emb, arrays["answer_tokens"].astype(np.float64), keys=router.keys)  # the same unit rows
    graded_file = Path(path) / GRADED_PROBES_FILE
    graded = GradedProbes.load(graded_file) if graded_file.exists() else None
    if graded is not None and graded.artifact_probes != labels.shape[0]:
        raise ValueError(f"{graded_file} is for {graded.artifact_probes} probe prompts; "
                         f"the artifact has {labels.shape[0]}")
    return KernelShrinkPolicy(router, config["experts"], config["lam_table"], config["encoder"], emb, labels,
                              observed, graded, str(graded_file) if graded is not None else None, lengths)


def main(argv: list[str] | None = None) -> int:
    from router_core.data import BENCHMARKS

    parser = argparse.ArgumentParser(description="Build a kernel-shrink router artifact for the gateway.")
    parser.add_argument("--benchmark", default="routerbench+alpacaeval", choices=BENCHMARKS)
    parser.add_argument("--fit-on", default="train", choices=["train", "all"],
                        help="the training split only (for numbers on the test split) or every labelled prompt")
    parser.add_argument("--encoder", default="static-minilm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-fallback", action="store_true",
                        help="no distance-aware prior (fallback_strength 0): a prompt unlike every probe prompt takes "
                        "its nearest cluster's accuracy, as before (docs/EVALUATION.md, 'Out of distribution')")
    parser.add_argument("--no-answer-lengths", action="store_true",
                        help="rank on the gateway's cost bound, not on expected cost from recorded answer lengths")
    parser.add_argument("--max-prompts", type=int, default=None,
                        help="fit on a seeded random subset of that many prompts (quick smoke-test artifacts)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build(args.benchmark, args.out, args.encoder, args.seed, args.fit_on, not args.no_answer_lengths,
          args.max_prompts, not args.no_fallback)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
