"""Out-of-distribution evaluation: how routers transfer to prompts unlike their training set.

    python -m router_core.ood_eval --out docs/results/ood          # ~5 min on 2 busy cores

Users judge the default router on *their* traffic, which no benchmark split resembles. This scores
every router on shifts where the test prompts come from a task or data set the router never saw:

- ``a``: train the RouterBench train split -> test the AlpacaEval test split (chat; the six models
  AlpacaEval labels; a missing verdict is missing, never wrong);
- ``b``: train the AlpacaEval train split -> test the RouterBench test split (the same six models);
- ``c:<task>``: leave one RouterBench task out (arc-challenge / winogrande / mbpp): train on the
  train-split rows of the other two, test on the test-split rows of the held-out one (11 models);
- ``d:<group>``: MMLU-Pro leave-categories-out, three fixed groups of its 14 categories (named in
  ``MMLU_GROUPS`` before any result was seen): train on the train split of the other categories,
  test on the test split of the held-out group (31 models; a missing grade counts as wrong, as in
  every MMLU-Pro result here).

Each shift has an in-distribution twin (``<shift>/id``): the same test prompts and models, trained on
the train split of every task, so the table shows what the shift itself costs. ``in-dist`` is the
default router's own setting (RouterBench + AlpacaEval train splits, both test splits, 11 models).

Routers (one rule for all: argmax_j p̂_j − λ·ĉ_j / max ĉ over a λ sweep):

- ``kernel-shrink``: the recipe of the artifact shipped before this evaluation (``kernel_policy.build``):
  kernel-shrink p̂, hyperparameters by 4-fold random CV on the training prompts, ranked by
  ``kernel_policy.decide`` on the expected cost of each model's predicted answer length
  (``NeighbourLengths``) at list prices, as ``rank`` serves it;
- candidate changes, the same otherwise: ``kernel-shrink+fallback`` (the distance-aware prior,
  ``KernelShrinkRouter.fallback_strength``) and ``kernel-shrink+task-cv`` (hyperparameters by CV
  whose folds hold out whole tasks / categories);
- ``kmeans`` / ``knn``: UniRoute-style K-means (K=20) and k-NN (k=20) as ``cscr eval`` builds them
  (p̂ from cluster / neighbour accuracy, each model's mean training cost);
- ``single-frontier``: prompt-blind, each model's training accuracy and mean cost: at every λ one
  model answers everything, the "always one model" curve a user could pick from the training data;
- ``oracle`` (reference).

Paired bootstrap (shared resamples of the test prompts) of each recipe − K-means and of each
candidate − ``kernel-shrink``, per shift. A candidate is judged by ``verdict`` on shifts a–c and the
in-distribution sets outside MMLU-Pro only; the d shifts confirm. Per shift the report also shows why
transfer fails (``diagnostics``). Metric definitions: ``router_core.metrics``, docs/EVALUATION.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from router_core.baselines import LAMBDAS, KMeansRouter, KNNRouter, model_accuracy, model_costs, oracle_choices, sweep
from router_core.data import Benchmark, load_benchmark, versions_of
from router_core.kernel_policy import LAMBDA_GRID, common_patterns, decide
from router_core.metrics import bootstrap, cost_grid, curve_points, curve_stats, paired_difference
from router_core.paths import write_results
from router_core.pricing import answer_tokens, price_table
from router_core.variants import (
    KernelShrinkRouter,
    NeighbourLengths,
    select_hyperparams,
    select_length_params,
)

log = logging.getLogger(__name__)

ENCODER = "static-minilm"
RB_TASKS = ("arc-challenge", "winogrande", "mbpp")
# MMLU-Pro's 14 categories in three held-out groups, fixed by topic before any result was seen
MMLU_GROUPS: dict[str, tuple[str, ...]] = {
    "quantitative": ("math", "physics", "chemistry", "engineering"),
    "humanities": ("law", "history", "philosophy", "other"),
    "life-social": ("biology", "health", "psychology", "economics", "business", "computer science"),
}


@dataclass(frozen=True)
class Shift:
    """One train -> test setting over a fixed set of models."""

    name: str  # "a", "c:mbpp", "c:mbpp/id", ...
    description: str
    kind: str  # "ood" | "id"
    bench: Benchmark  # rows of every split, columns = the routable models
    train: np.ndarray  # (N,) bool
    test: np.ndarray  # (N,) bool, only prompts with every model's verdict
    missing_is_missing: bool  # False: an unrecorded grade counts as wrong (MMLU-Pro's convention)
    prices: np.ndarray  # (M, 2) USD per token, input / output


def _complete(bench: Benchmark, rows: np.ndarray) -> np.ndarray:
    """``rows`` restricted to prompts where every model of ``bench`` has a verdict."""
    missing = bench.missing if bench.missing is not None else np.zeros(bench.quality.shape, dtype=bool)
    return rows & ~missing.any(axis=1)


def build_shifts(root: Path | None = None) -> list[Shift]:
    """Every shift and its in-distribution twin, in report order."""
    rbae = load_benchmark("routerbench+alpacaeval", root)
    src, task, split = rbae.extra["source"], rbae.extra["task"], rbae.split
    assert rbae.missing is not None
    ae_models = [m for j, m in enumerate(rbae.models) if not rbae.missing[src == "alpacaeval", j].all()]
    six = rbae.models_subset(ae_models)
    p6, p11 = price_table(six.models) / 1e6, price_table(rbae.models) / 1e6
    rb, ae, tr, te = src == "routerbench", src == "alpacaeval", split == "train", split == "test"
    out = [
        Shift("in-dist:routerbench", "RouterBench + AlpacaEval train -> RouterBench test (the default's setting)",
              "id", rbae, tr, _complete(rbae, te & rb), True, p11),
        Shift("in-dist:alpacaeval", "RouterBench + AlpacaEval train -> AlpacaEval test (the default's setting)",
              "id", six, tr, _complete(six, te & ae), True, p6),
        Shift("a", "RouterBench train -> AlpacaEval test (chat), 6 shared models", "ood",
              six, tr & rb, _complete(six, te & ae), True, p6),
        Shift("a/id", "AlpacaEval train -> AlpacaEval test, 6 models", "id", six, tr & ae, _complete(six, te & ae),
              True, p6),
        Shift("b", "AlpacaEval train -> RouterBench test, 6 shared models", "ood",
              six, tr & ae, _complete(six, te & rb), True, p6),
        Shift("b/id", "RouterBench train -> RouterBench test, 6 models", "id", six, tr & rb, _complete(six, te & rb),
              True, p6),
    ]
    for t in RB_TASKS:
        held = task == t
        out.append(Shift(f"c:{t}", f"RouterBench, {t} held out: other tasks' train -> {t} test, 11 models", "ood",
                         rbae, tr & rb & ~held, _complete(rbae, te & held), True, p11))
        out.append(Shift(f"c:{t}/id", f"RouterBench train (all tasks) -> {t} test, 11 models", "id",
                         rbae, tr & rb, _complete(rbae, te & held), True, p11))
    mmlu = load_benchmark("mmlu_pro", root)
    pm = price_table(mmlu.models, root) / 1e6
    cat, mtr, mte = mmlu.extra["category"], mmlu.split == "train", mmlu.split == "test"
    for g, cats in MMLU_GROUPS.items():
        held = np.isin(cat, cats)
        out.append(Shift(f"d:{g}", f"MMLU-Pro, {'/'.join(cats)} held out: the other categories' train -> their test, "
                         "31 models", "ood", mmlu, mtr & ~held, mte & held, False, pm))
        out.append(Shift(f"d:{g}/id", f"MMLU-Pro train (all categories) -> {g} test, 31 models", "id",
                         mmlu, mtr, mte & held, False, pm))
    return out


# ---------------------------------------------------------------------------------------------
# routers

# the kernel-shrink recipes compared: name -> (select_hyperparams(fallback=...), CV folds hold out tasks)
RECIPES: dict[str, tuple[bool, bool]] = {
    "kernel-shrink": (False, False),  # the recipe of the artifact shipped before this evaluation
    "kernel-shrink+fallback": (True, False),  # distance-aware prior (``fallback_strength``)
    "kernel-shrink+task-cv": (False, True),  # hyperparameters by leave-task-out CV
}
BASELINES = ("kmeans", "knn", "single-frontier")
PAIRS = [("kernel-shrink", "kmeans"), ("kernel-shrink+fallback", "kmeans"),
         ("kernel-shrink+fallback", "kernel-shrink"), ("kernel-shrink+task-cv", "kernel-shrink")]
CANDIDATES = ("kernel-shrink+fallback", "kernel-shrink+task-cv")


def default_recipe() -> str:
    """The recipe ``select_hyperparams`` runs when not told otherwise (what the default artifact gets)."""
    import inspect

    on = inspect.signature(select_hyperparams).parameters["fallback"].default
    return "kernel-shrink+fallback" if on else "kernel-shrink"


@dataclass(frozen=True)
class Fitted:
    """What a router hands the rule for the test prompts of one shift."""

    p_hat: np.ndarray  # (N_test, M)
    cost: np.ndarray  # (N_test, M) or (M,) the cost the rule ranks on
    served: bool  # True: ``kernel_policy.decide`` on LAMBDA_GRID (as served); False: ``sweep`` on LAMBDAS

    def choices(self) -> np.ndarray:
        if self.served:
            return decide(self.p_hat, np.broadcast_to(self.cost, self.p_hat.shape), LAMBDA_GRID)
        return sweep(self.p_hat, self.cost, LAMBDAS)


@dataclass(frozen=True)
class Context:
    """One shift's training rows as every router sees them, and its test rows."""

    shift: Shift
    train: Benchmark
    emb_tr: np.ndarray  # (N_train, D)
    observed: np.ndarray  # (N_train, M) labels a router may use
    test: Benchmark
    emb_te: np.ndarray  # (N_test, D)

    @property
    def key(self) -> tuple[str, int, bytes]:
        """Shifts with the same key train on the same rows and models (fits are shared)."""
        return self.shift.bench.name, len(self.shift.bench.models), self.shift.train.tobytes()


def context(shift: Shift, emb: np.ndarray) -> Context:
    """Training rows as ``kernel_policy.build`` keeps them: with missing verdicts, only prompts whose
    pattern of labelled models is common (``common_patterns``); MMLU-Pro: every row, missing = wrong."""
    train, emb_tr = shift.bench.subset(shift.train), emb[shift.train]
    observed = np.ones(train.quality.shape, dtype=bool)
    if shift.missing_is_missing and train.missing is not None:
        keep = common_patterns(~train.missing) & (~train.missing).any(axis=1)
        train, emb_tr = train.subset(keep), emb_tr[keep]
        observed = ~train.missing  # type: ignore[operator]
    return Context(shift, train, emb_tr, observed, shift.bench.subset(shift.test), emb[shift.test])


def length_model(ctx: Context, seed: int) -> NeighbourLengths:
    """Each model's answer length from its nearest training prompts (params by 4-fold CV), as
    ``kernel_policy.build`` ships it."""
    pin, pout = ctx.shift.prices[:, 0], ctx.shift.prices[:, 1]
    tokens = answer_tokens(ctx.train.prompts, ctx.train.cost, pin, pout, ctx.observed)
    lp = select_length_params(ctx.emb_tr, tokens, seed=seed)
    return NeighbourLengths(k=int(lp["k"]), bandwidth=float(lp["bandwidth"]),
                            prior_strength=float(lp["prior_strength"])).fit(ctx.emb_tr, tokens)


def expected_cost(ctx: Context, lengths: NeighbourLengths) -> np.ndarray:
    """(N_test, M) USD the served rule ranks on: ~len/4 prompt tokens at the input price plus the
    predicted answer length at the output price (``rank`` with the gateway's pricing callback)."""
    pin, pout = ctx.shift.prices[:, 0], ctx.shift.prices[:, 1]
    prompt_tok = np.array([len(p) / 4.0 for p in ctx.test.prompts])[:, None]
    return prompt_tok * pin[None, :] + lengths.predict(ctx.emb_te) * pout[None, :]


def kernel_shrink(ctx: Context, recipe: str, seed: int) -> tuple[KernelShrinkRouter, dict[str, float]]:
    """One recipe's router: hyperparameters by CV on the training prompts, then fitted on all of them."""
    fallback, task_cv = RECIPES[recipe]
    lengths = np.array([len(p) for p in ctx.train.prompts], dtype=np.float64)
    groups = ctx.train.task_groups() if task_cv else None
    hp = select_hyperparams(ctx.emb_tr, ctx.train.quality, ctx.train.cost, lengths, ctx.observed, seed=seed,
                            groups=groups, fallback=fallback)
    router = KernelShrinkRouter.from_hyperparams(hp, seed)
    router.fit(ctx.emb_tr, ctx.train.quality, ctx.observed)
    return router, hp


def baseline(ctx: Context, name: str, seed: int) -> Fitted:
    """K-means, k-NN and the prompt-blind frontier as ``cscr eval`` builds them (mean training cost)."""
    mc = model_costs(ctx.train.cost)
    if name == "kmeans":
        km = KMeansRouter(n_clusters=20, seed=seed)
        km.fit(ctx.emb_tr, ctx.train.quality, ctx.observed)
        return Fitted(km.predict(ctx.emb_te), mc, False)
    if name == "knn":
        kn = KNNRouter(k=20)
        kn.fit(ctx.emb_tr, ctx.train.quality, ctx.observed)
        return Fitted(kn.predict(ctx.emb_te), mc, False)
    if name == "single-frontier":
        return Fitted(np.broadcast_to(train_accuracy(ctx), (len(ctx.test), len(mc))).copy(), mc, False)
    raise ValueError(f"unknown baseline {name!r}")


def train_accuracy(ctx: Context) -> np.ndarray:
    """(M,) each model's accuracy on its labelled training prompts."""
    return model_accuracy(ctx.train.quality, ctx.observed)


def diagnostics(ctx: Context, router: KernelShrinkRouter, cost: np.ndarray) -> dict[str, float]:
    """Why transfer fails: how close the test prompts are to training prompts, how much of p̂ the
    kernel carries (W / (W + m)), and the AUDC of each ingredient of p̂ alone, on the served rule."""
    nb = router.neighbours(ctx.emb_te, router.k)
    top1 = np.max(np.stack([sims[:, 0] for _, sims, _ in nb.groups]), axis=0)
    mass = np.mean([np.exp((sims - 1.0) / router.bandwidth).sum(axis=1) for _, sims, _ in nb.groups], axis=0)
    q, c = ctx.test.quality, ctx.test.cost
    parts = {"kernel only": router.combine(nb, router.k, router.bandwidth, 1e-9),
             "cluster prior only": nb.prior, "overall accuracy only": np.broadcast_to(nb.overall, q.shape)}
    out = {"top1_similarity_median": float(np.median(top1)),
           "kernel_share_median": float(np.median(mass / (mass + router.prior_strength)))}
    for name, p in parts.items():
        ch = decide(p, cost, LAMBDA_GRID)
        out[f"audc {name}"] = curve_stats(*curve_points(ch, q, c), cost_grid(q, c)).audc
    return out


@dataclass
class Fits:
    """Fitted models shared by shifts that train on the same rows (the twins of c and d)."""

    lengths: dict[tuple[str, int, bytes], NeighbourLengths] = field(default_factory=dict)
    routers: dict[tuple[tuple[str, int, bytes], str], tuple[KernelShrinkRouter, dict[str, float]]] = \
        field(default_factory=dict)


def run_shift(ctx: Context, seed: int, fits: Fits) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Every router's decisions on one shift, and what the report shows of the fits."""
    info: dict[str, object] = {}
    if ctx.key not in fits.lengths:
        fits.lengths[ctx.key] = length_model(ctx, seed)
    cost = expected_cost(ctx, fits.lengths[ctx.key])
    choices = {"oracle": oracle_choices(ctx.test.quality, ctx.test.cost)}
    for recipe in RECIPES:
        if (ctx.key, recipe) not in fits.routers:
            fits.routers[(ctx.key, recipe)] = kernel_shrink(ctx, recipe, seed)
        router, hp = fits.routers[(ctx.key, recipe)]
        choices[recipe] = Fitted(router.predict(ctx.emb_te), cost, True).choices()
        info[f"hyperparameters {recipe}"] = hp
        if recipe == "kernel-shrink":
            info["diagnostics"] = diagnostics(ctx, router, cost)
    for name in BASELINES:
        choices[name] = baseline(ctx, name, seed).choices()
    acc = train_accuracy(ctx)
    best = int(np.argmax(acc))
    info["best_single_by_train"] = {"model": ctx.train.models[best], "train_accuracy": float(acc[best]),
                                    "test_accuracy": float(ctx.test.quality[:, best].mean())}
    return choices, info


# ---------------------------------------------------------------------------------------------
# scoring and the selection rule


def quick_audc(ctx: Context, choices: np.ndarray) -> float:
    q, c = ctx.test.quality, ctx.test.cost
    return curve_stats(*curve_points(choices, q, c), cost_grid(q, c)).audc


def score(shift: Shift, choices: dict[str, np.ndarray], n_boot: int, seed: int) -> dict[str, object]:
    """Bootstrap intervals of every router and the paired AUDC differences, on shared resamples."""
    test = shift.bench.subset(shift.test)
    q, c = test.quality, test.cost
    res = bootstrap(choices, q, c, n_boot, seed)
    paired = {f"{a} - {b}": paired_difference(choices[a], choices[b], q, c, n_boot, seed).__dict__ for a, b in PAIRS}
    return {"description": shift.description, "kind": shift.kind, "selection": not shift.name.startswith("d:"),
            "train_prompts": int(shift.train.sum()), "test_prompts": len(test), "models": len(test.models),
            "grid": cost_grid(q, c).__dict__,
            "results": {k: {m: iv.__dict__ for m, iv in r.items()} for k, r in res.items()},
            "paired_audc": paired}


def verdict(shifts: dict[str, dict[str, object]], candidate: str, base: str = "kernel-shrink",
            max_id_loss: float = 0.002) -> dict[str, object]:
    """The rule a candidate recipe must pass, on the selection shifts only (a, b, c and every
    in-distribution set outside MMLU-Pro), fixed before the run: (1) its mean paired AUDC difference
    over the out-of-distribution shifts is positive; (2) no such shift is significantly worse (95%
    interval entirely below 0) and either one is significantly better or none is below 0 at all
    (consistent); (3) no in-distribution set is significantly worse and their mean loss is at most
    ``max_id_loss``. MMLU-Pro's shifts (d) only confirm."""
    pair = f"{candidate} - {base}"

    def diffs(kind: str, selection: bool) -> dict[str, dict[str, float]]:
        return {n: s["paired_audc"][pair] for n, s in shifts.items()  # type: ignore[index]
                if s["kind"] == kind and s["selection"] == selection}

    ood, ind = diffs("ood", True), diffs("id", True)
    mean_ood = float(np.mean([d["value"] for d in ood.values()]))
    mean_id = float(np.mean([d["value"] for d in ind.values()]))
    worse = [n for n, d in {**ood, **ind}.items() if d["hi"] < 0]
    better = [n for n, d in ood.items() if d["lo"] > 0]
    consistent = bool(better) or all(d["value"] >= 0 for d in ood.values())
    wins = mean_ood > 0 and not worse and consistent and mean_id >= -max_id_loss
    conf = diffs("ood", False)
    return {"candidate": candidate, "wins": wins, "mean_ood_difference": mean_ood, "mean_id_difference": mean_id,
            "significantly_better": better, "significantly_worse": worse,
            "confirmation_mean_ood_difference": float(np.mean([d["value"] for d in conf.values()])) if conf else None,
            "confirmation_significantly_worse": [n for n, d in conf.items() if d["hi"] < 0],
            "confirmation_significantly_better": [n for n, d in conf.items() if d["lo"] > 0]}


# ---------------------------------------------------------------------------------------------
# report


ROUTER_ORDER = ("oracle", *RECIPES, "kmeans", "knn", "single-frontier")


def report(summary: dict[str, object]) -> str:
    """Markdown: AUDC per shift and router, the paired differences, the diagnostics, the verdicts."""
    shifts = summary["shifts"]
    assert isinstance(shifts, dict)
    lines = ["| shift | test prompts | " + " | ".join(ROUTER_ORDER) + " |", "|---|---|" + "---|" * len(ROUTER_ORDER)]
    for name, s in shifts.items():
        r = s["results"]
        cells = [f"{r[k]['audc']['value']:.3f} [{r[k]['audc']['lo']:.3f}, {r[k]['audc']['hi']:.3f}]"
                 if k in RECIPES or k == "kmeans" else f"{r[k]['audc']['value']:.3f}" for k in ROUTER_ORDER]
        lines.append(f"| {name} | {s['test_prompts']} | " + " | ".join(cells) + " |")
    lines += ["", "Paired AUDC differences (95% bootstrap intervals, shared resamples):", "",
              "| shift | " + " | ".join(f"{a} − {b}" for a, b in PAIRS) + " |", "|---|" + "---|" * len(PAIRS)]
    for name, s in shifts.items():
        cells = [f"{d['value']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" for d in s["paired_audc"].values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    keys = list(next(iter(shifts.values()))["diagnostics"])
    lines += ["", "Diagnostics (kernel-shrink as shipped before; AUDC of each ingredient of p̂ alone):", "",
              "| shift | " + " | ".join(keys) + " | hyperparameters (k, h, m[, m_g]) |",
              "|---|" + "---|" * (len(keys) + 1)]
    for name, s in shifts.items():
        hp = "; ".join(f"{r.removeprefix('kernel-shrink') or 'shipped'} "
                       + ",".join(f"{v:g}" for v in s[f"hyperparameters {r}"].values()) for r in RECIPES)
        lines.append(f"| {name} | " + " | ".join(f"{s['diagnostics'][k]:.3f}" for k in keys) + f" | {hp} |")
    lines += ["", "Selection (shifts a–c and the in-distribution sets; MMLU-Pro (d) only confirms):", ""]
    for v in summary["verdicts"]:  # type: ignore[attr-defined]
        lines.append(f"- {v['candidate']}: {'WINS' if v['wins'] else 'does not win'}; mean OOD difference "
                     f"{v['mean_ood_difference']:+.4f}, mean in-distribution {v['mean_id_difference']:+.4f}; "
                     f"significantly better on {v['significantly_better'] or 'none'}, worse on "
                     f"{v['significantly_worse'] or 'none'}; confirmation (d): mean "
                     f"{v['confirmation_mean_ood_difference']:+.4f}, better on "
                     f"{v['confirmation_significantly_better'] or 'none'}, worse on "
                     f"{v['confirmation_significantly_worse'] or 'none'}")
    return "\n".join(lines) + (f"\n\nDefault recipe now: `{summary['default_recipe']}`. "
                               f"Reproduce: `{summary['command']}`\n")


def main(argv: list[str] | None = None) -> int:
    from router_core.encoder import embed_prompts

    p = argparse.ArgumentParser(prog="python -m router_core.ood_eval", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory for results.json and results.md")
    p.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples (shared by all routers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", default=None, help="shift names to run (default: all)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    shifts = [s for s in build_shifts() if args.only is None or s.name in args.only]
    embs: dict[str, np.ndarray] = {}
    fits = Fits()
    scored: dict[str, dict[str, object]] = {}
    for s in shifts:
        if s.bench.name not in embs:
            embs[s.bench.name] = embed_prompts(s.bench.prompts, ENCODER)
        ctx = context(s, embs[s.bench.name])
        choices, info = run_shift(ctx, args.seed, fits)
        scored[s.name] = {**score(s, choices, args.bootstrap, args.seed), **info}
        log.info("%s: %s (%.0f s)", s.name, {k: round(quick_audc(ctx, ch), 4) for k, ch in choices.items()},
                 time.perf_counter() - t0)
    shown = sys.argv[1:] if argv is None else argv
    summary: dict[str, object] = {
        "command": "python -m router_core.ood_eval " + " ".join(shown), "encoder": ENCODER,
        "bootstrap": args.bootstrap, "default_recipe": default_recipe(), "mmlu_groups": MMLU_GROUPS,
        "data_versions": {k: v for s in shifts for k, v in versions_of(s.bench).items()},
        "shifts": scored, "verdicts": [verdict(scored, c) for c in CANDIDATES] if args.only is None else [],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_results(args.out, summary, report(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
