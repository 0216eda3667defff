"""``cscr eval``: every router on one split and one cost grid, with bootstrap CIs, a table and a plot.

    cscr eval --benchmark routerbench --out docs/results/routerbench
    cscr eval --benchmark mmlu_pro --split unseen-models --out docs/results/mmlu_pro-unseen
    cscr eval --benchmark mmlu_pro --routers oracle knn kmeans ours --decisions-out d.csv

Routers (``--routers``, default all): ``oracle``, ``group-oracle`` (cheating reference: per-task
test accuracy), ``random``, ``single`` (one row per model),
``knn``, ``kmeans``, ``infonce`` (vanilla contrastive), ``cscr``, ``ours`` (``variants.py``); with
``--reference-models``, also ``reference-oracle-lr`` / ``-gbm`` (cheating: reads held-out models'
grades on each test prompt, ``ceiling.py``). Metric definitions: ``router_core.metrics`` and ``docs/EVALUATION.md``.

Splits:
- ``in-dist``: RouterBench's own test split; MMLU-Pro's seeded 2,000 held-out questions.
- ``unseen-models`` (MMLU-Pro): a seeded 2/3 of the models are seen; for the other 1/3 the
  routers see only their answers on the probe pool (their descriptor). Routing is over all 31.
- ``ood`` (MMLU-Pro): train on the STEM subjects, test on the other subjects.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from router_core.baselines import (
    LAMBDAS,
    KMeansRouter,
    KNNRouter,
    QualityRouter,
    model_costs,
    oracle_choices,
    random_choices,
    single_choices,
    sweep,
)
from router_core.ceiling import LEARNERS
from router_core.data import Benchmark, load_benchmark, unseen_model_split, versions_of
from router_core.metrics import Interval, bootstrap, cost_grid, curve_points

logger = logging.getLogger(__name__)

ALL_ROUTERS = ("oracle", "group-oracle", "random", "single", "knn", "kmeans", "infonce", "cscr", "ours")
SPLITS = ("in-dist", "unseen-models", "ood")


@dataclass(frozen=True)
class Setup:
    """One evaluation: who trains on what, who is scored on what."""

    bench: Benchmark  # the whole benchmark (all models)
    train: Benchmark
    test: Benchmark
    train_emb: np.ndarray  # (N_train, D)
    test_emb: np.ndarray  # (N_test, D)
    observed: np.ndarray  # (N_train, M) bool: labels routers may use
    split: str
    encoder: str
    unseen: tuple[str, ...] = ()
    # descriptor files per kind (``--descriptor-dir``): (M, F) in ``bench.models`` order
    descriptor_sets: dict[str, np.ndarray] = field(default_factory=dict)
    # ``--reference-models``: models moved out of the pool; their grades, shown only to the
    # reference oracle (``router_core.ceiling``): (N_train, R) and (N_test, R)
    reference: tuple[str, ...] = ()
    reference_train: np.ndarray | None = None
    reference_test: np.ndarray | None = None


def load_descriptor_sets(s: Setup, dirs: Sequence[Path]) -> Setup:
    """Attach descriptor files (one directory per kind, ``cscr describe ... --out DIR``) to ``s``;
    each adds the routers ``infonce+<kind>`` (keys from those descriptors alone) and
    ``infonce+accuracy+<kind>`` (accuracy fingerprint and those descriptors, concatenated)."""
    from router_core.train import load_descriptor_dir

    sets = dict(s.descriptor_sets)
    for d in dirs:
        vecs, spec = load_descriptor_dir(d, list(s.bench.models))
        sets[spec["kind"]] = vecs
    return replace(s, descriptor_sets=sets)


def descriptor_routers(s: Setup) -> list[str]:
    return [name for kind in s.descriptor_sets for name in (f"infonce+{kind}", f"infonce+accuracy+{kind}")]


def reference_routers(s: Setup) -> list[str]:
    """``reference-oracle-<learner>`` when the setup has reference models (``--reference-models``)."""
    return [f"reference-oracle-{learner}" for learner in LEARNERS] if s.reference else []


def prepare(
    benchmark: str,
    split: str = "in-dist",
    data_dir: Path | None = None,
    encoder: str = "minilm",
    seed: int = 0,
    max_prompts: int | None = None,
    reference_models: bool = False,
) -> Setup:
    """Load, split and embed. ``encoder="random"`` uses seeded Gaussian vectors (tests, ablation).

    ``reference_models``: a seeded third of the models (the unseen-models split's third) leaves the
    routing pool; their grades are kept for the reference oracle (``router_core.ceiling``).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if reference_models and split != "in-dist":
        raise ValueError("--reference-models goes with the in-dist split only")
    if benchmark == "routerbench" and split != "in-dist":
        raise ValueError("routerbench has only the in-dist split")
    opts: dict[str, Any] = {"split": "ood" if split == "ood" else "in-dist"} if benchmark == "mmlu_pro" else {}
    bench = load_benchmark(benchmark, data_dir, **opts)
    if max_prompts is not None:  # a small stratified slice for smoke tests
        rng = np.random.default_rng(seed)
        keep = np.concatenate(
            [rng.permutation(np.flatnonzero(bench.split == s))[: max_prompts // 2] for s in ("train", "test")]
        )
        bench = bench.subset(np.sort(keep))
    emb = embed(bench.prompts, encoder, seed)
    tr, te = bench.split == "train", bench.split == "test"
    observed = np.ones((int(tr.sum()), len(bench.models)), dtype=bool)
    unseen: tuple[str, ...] = ()
    if split == "unseen-models":
        _, unseen_list = unseen_model_split(bench.models, seed=seed)
        unseen = tuple(unseen_list)
        probe = bench.extra["probe"][tr].astype(bool)
        for j, m in enumerate(bench.models):
            if m in unseen:
                observed[:, j] = probe
    reference: tuple[str, ...] = ()
    ref_q: np.ndarray | None = None
    if reference_models:
        _, ref_list = unseen_model_split(bench.models, seed=seed)
        reference = tuple(ref_list)
        ref_q = bench.models_subset(ref_list).quality
        bench = bench.models_subset([m for m in bench.models if m not in reference])
        observed = np.ones((int(tr.sum()), len(bench.models)), dtype=bool)  # in-dist: every label
    return Setup(
        bench, bench.subset(tr), bench.subset(te), emb[tr], emb[te], observed, split, encoder, unseen,
        reference=reference,
        reference_train=None if ref_q is None else ref_q[tr],
        reference_test=None if ref_q is None else ref_q[te],
    )  # fmt: skip


def embed(prompts: Sequence[str], encoder: str, seed: int = 0) -> np.ndarray:
    if encoder == "random":
        return np.random.default_rng(seed).normal(size=(len(prompts), 64)).astype(np.float32)
    from router_core.encoder import embed_prompts

    return embed_prompts(prompts, encoder)


# ---------------------------------------------------------------------------------------------
# routers -> decisions


@dataclass(frozen=True)
class Decisions:
    lambdas: np.ndarray  # (L,) the trade-off values (NaN where a router has no λ)
    choices: np.ndarray  # (L, N_test) model indices


def _quality_router(router: QualityRouter, s: Setup) -> Decisions:
    router.fit(s.train_emb, s.train.quality, s.observed)
    p_hat = router.predict(s.test_emb)
    return Decisions(LAMBDAS, sweep(p_hat, model_costs(s.train.cost)))


def _group_oracle(s: Setup) -> Decisions:
    """A cheating reference: p̂ = each model's accuracy on the *test* prompts of the prompt's task
    (RouterBench ``task``, MMLU-Pro ``category``). It bounds what routing by task family can reach."""
    groups = s.test.task_groups()
    p_hat = np.zeros_like(s.test.quality)
    for g in np.unique(groups):
        p_hat[groups == g] = s.test.quality[groups == g].mean(axis=0)
    return Decisions(LAMBDAS, sweep(p_hat, model_costs(s.train.cost)))


@dataclass(frozen=True)
class _OursFit:
    hp: dict[str, float]  # chosen by cross-validation on the training prompts
    p_test: np.ndarray  # (N_test, M) p̂
    c_test: np.ndarray  # (N_test, M) per-prompt cost estimate


def _fit_ours(s: Setup, seed: int) -> _OursFit:
    from router_core.variants import KernelShrinkRouter, LengthCostModel, select_hyperparams

    lengths_tr = np.array([len(p) for p in s.train.prompts], dtype=np.float64)
    lengths_te = np.array([len(p) for p in s.test.prompts], dtype=np.float64)
    # out of distribution, validate on held-out subjects, as the test will be
    groups = s.train.extra["category"] if s.split == "ood" else None
    hp = select_hyperparams(
        s.train_emb, s.train.quality, s.train.cost, lengths_tr, s.observed, seed=seed, groups=groups
    )
    logger.info("ours: hyperparameters %s", hp)
    router = KernelShrinkRouter.from_hyperparams(hp, seed)
    router.fit(s.train_emb, s.train.quality, s.observed)
    c_hat = LengthCostModel().fit(lengths_tr, s.train.cost).predict(lengths_te)
    return _OursFit(hp, router.predict(s.test_emb), c_hat)


def _reference_oracle(s: Setup, ours: Callable[[], _OursFit], learner: str, seed: int) -> Decisions:
    """Cheating reference: our router's p̂ corrected by the reference models' grades on each test
    prompt (``router_core.ceiling``); our router's cost estimate."""
    from router_core.ceiling import cross_fitted, reference_oracle

    fit = ours()
    p_hat = reference_oracle(s, learner, cross_fitted(s, fit.hp, seed), fit.p_test, seed)
    return Decisions(LAMBDAS, sweep(p_hat, fit.c_test))


def _contrastive(s: Setup, loss: str, seed: int, descriptors: str = "accuracy") -> Decisions:
    """The other half of the project's router (``router_core.train``), with its own rule sim − λ·ĉ.

    Unseen-models split: the head and key map are trained on the seen models only; every model's
    key then comes from its accuracy fingerprint on the probe pool (``train.accuracy_fingerprints``
    over probe-pool prompts, where all models are labelled), so the unseen models enter through
    their descriptors alone, as the gateway would add them.
    """
    from router_core.encoder import ENCODERS
    from router_core.model import RouterConfig, numpy_head, numpy_key_map
    from router_core.router import calibrate_lam_max, choose, lambda_sweep, normalise_costs
    from router_core.train import (
        PROBE_CLUSTERS,
        PROBE_SIZE,
        accuracy_fingerprints,
        fit,
        similarities,
        train_artifact,
    )

    encoder = s.encoder if s.encoder in ENCODERS else "static-minilm"  # "random": recorded name only
    cfg = RouterConfig(encoder=encoder, in_dim=int(s.train_emb.shape[1]), loss=loss, seed=seed)
    cn = normalise_costs(model_costs(s.train.cost))  # (M,) log-normalised, the gateway's view
    kinds = descriptors.split("+")
    if kinds != ["accuracy"] or s.unseen:
        probe = s.observed.all(axis=1)  # rows where every model is labelled
        parts = []
        for kind in kinds:
            if kind == "accuracy":
                acc, _, _ = accuracy_fingerprints(
                    _unit_rows(s.train_emb[probe]), s.train.quality[probe], PROBE_SIZE, PROBE_CLUSTERS, seed
                )
                parts.append(acc)
            else:
                parts.append(s.descriptor_sets[kind])
        desc = np.concatenate(parts, axis=1).astype(np.float32)
        seen = np.array([m not in s.unseen for m in s.bench.models])
        cfg = replace(cfg, descriptor_dim=int(desc.shape[1]))
        weights, _, _ = fit(
            cfg, s.train_emb, s.train.quality[:, seen], s.train.cost[:, seen], desc[seen], progress=False
        )
        keys = numpy_key_map(weights, desc)  # (M, out): seen and unseen alike, from descriptors
        sims = numpy_head(weights, s.test_emb) @ keys.T
        lam_max = calibrate_lam_max(
            numpy_head(weights, s.train_emb) @ keys.T, np.broadcast_to(cn, (len(s.train), len(cn)))
        )
    else:
        train_only = replace(s.train, split=np.full(len(s.train), "train"))
        artifact = train_artifact(train_only, s.train_emb, cfg, progress=False)
        sims = similarities(artifact, s.test_emb)  # (N, M)
        lam_max = artifact.lam_max
    # Geometric sweep: the rule changes most at small λ; a linear one under-scores these routers.
    lams = np.concatenate([lambda_sweep(lam_max), [lam_max * 1e3]])
    return Decisions(lams, choose(sims, np.broadcast_to(cn, sims.shape), list(lams), cfg.top_k))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def run_routers(s: Setup, routers: Sequence[str], seed: int = 0) -> dict[str, Decisions]:
    """Every requested router's decisions on ``s.test``, in a stable order."""
    n = len(s.test)
    mc = model_costs(s.train.cost)
    ours = functools.cache(lambda: _fit_ours(s, seed))  # shared by ours and the reference oracle
    makers: dict[str, Callable[[], Decisions]] = {
        "oracle": lambda: Decisions(np.concatenate([[0.0], LAMBDAS[1:]]), oracle_choices(s.test.quality, s.test.cost)),
        "group-oracle": lambda: _group_oracle(s),
        "random": lambda: Decisions(np.full(len(mc), np.nan), random_choices(n, mc, seed)),
        "knn": lambda: _quality_router(KNNRouter(k=20), s),
        "kmeans": lambda: _quality_router(KMeansRouter(n_clusters=20, seed=seed), s),
        "infonce": lambda: _contrastive(s, "infonce", seed),
        "cscr": lambda: _contrastive(s, "cscr", seed),
        "ours": lambda: Decisions(LAMBDAS, sweep(ours().p_test, ours().c_test)),
    }
    for name in reference_routers(s):
        makers[name] = functools.partial(_reference_oracle, s, ours, name.removeprefix("reference-oracle-"), seed)
    for name in descriptor_routers(s):
        makers[name] = functools.partial(_contrastive, s, "infonce", seed, name.split("+", 1)[1])
    out: dict[str, Decisions] = {}
    for name in routers:
        if name == "single":
            for j, m in enumerate(s.bench.models):
                out[f"single:{m}"] = Decisions(np.array([np.nan]), single_choices(n, j))
            continue
        if name not in makers:
            if name.startswith("reference-oracle"):
                raise ValueError(f"router {name!r} needs --reference-models")
            known = ALL_ROUTERS + tuple(descriptor_routers(s)) + tuple(reference_routers(s))
            raise ValueError(f"unknown router {name!r}; expected some of {known}")
        t0 = time.perf_counter()
        try:
            out[name] = makers[name]()
        except (ImportError, NotImplementedError) as exc:
            logger.warning("router %s skipped: %s", name, exc)
            continue
        logger.info("router %s: %.1f s", name, time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------------------------
# reporting


def _fmt(iv: Interval, digits: int = 3) -> str:
    def num(x: float) -> str:
        return "never" if not np.isfinite(x) else f"{x:.{digits}f}"

    return f"{num(iv.value)} [{num(iv.lo)}, {num(iv.hi)}]"


def markdown_table(results: dict[str, dict[str, Interval]], title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| router | AUDC | AUDC (log grid) | peak accuracy | QNC |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        qnc = _fmt(r["qnc"], 2)
        if 0 < r["qnc"].never_frac < 1:
            qnc += f" (never in {r['qnc'].never_frac:.1%} of resamples)"
        lines.append(f"| {name} | {_fmt(r['audc'])} | {_fmt(r['audc_log'])} | {_fmt(r['peak'])} | {qnc} |")
    return "\n".join(lines) + "\n"


def plot_curves(s: Setup, decisions: dict[str, Decisions], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from router_core.metrics import envelope

    q, c = s.test.quality, s.test.cost
    grid = cost_grid(q, c)
    xs = grid.log(400)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, d in decisions.items():
        pc, pq = curve_points(d.choices, q, c)
        if name.startswith("single:"):
            ax.scatter(pc, pq, s=14, color="grey", alpha=0.6, zorder=3)
            continue
        if "@" in name:  # extra seeds: the seed-0 curve stands for them
            continue
        style: dict[str, Any] = {"linewidth": 2.6, "color": "black"} if name == "ours" else {"linewidth": 1.3}
        ax.step(xs, envelope(pc, pq, xs), where="post", label=name, **style)
    ax.set_xscale("log")
    ax.set_xlim(grid.lo, grid.hi)
    ax.set_xlabel("mean cost per prompt (USD, log scale; grid = cheapest .. dearest single model)")
    ax.set_ylabel("mean quality (accuracy)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_decisions(path: Path, s: Setup, decisions: dict[str, Decisions]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["router", "lam", "prompt_id", "model"])
        for name, d in decisions.items():
            for lam, row in zip(d.lambdas, d.choices, strict=True):
                lam_s = "" if np.isnan(lam) else f"{lam:.6g}"
                for pid, j in zip(s.test.prompt_ids, row, strict=True):
                    w.writerow([name, lam_s, pid, s.bench.models[int(j)]])


def evaluate(
    s: Setup, routers: Sequence[str], seeds: Sequence[int] = (0,), n_boot: int = 500, boot_seed: int = 0
) -> tuple[dict[str, Decisions], dict[str, dict[str, Interval]]]:
    """Decisions of every router (seeded ones once per seed, ``name@seed`` after the first) and
    their bootstrap intervals on shared resamples."""
    decisions = run_routers(s, routers, seeds[0])
    seeded = [r for r in routers if r in ("random", "kmeans", "infonce", "cscr", "ours")]
    for extra_seed in seeds[1:]:
        for name, d in run_routers(s, seeded, extra_seed).items():
            decisions[f"{name}@{extra_seed}"] = d
    results = bootstrap({k: d.choices for k, d in decisions.items()}, s.test.quality, s.test.cost, n_boot, boot_seed)
    return decisions, results


def paired_lines(
    s: Setup, decisions: dict[str, Decisions], results: dict[str, dict[str, Interval]], n_boot: int
) -> str:
    """Paired bootstrap of AUDC differences (same resamples): ours vs every prompt-aware baseline, and
    each cheating reference (group-oracle, reference-oracle-*) vs the best baseline, the bar's yardstick."""
    from router_core.metrics import paired_difference

    base = [b for b in ("kmeans", "knn", "infonce", "cscr") if b in results]
    if not base:
        return ""
    best = max(base, key=lambda b: results[b]["audc"].value)
    pairs = [("ours", b) for b in base if "ours" in decisions]
    pairs += [(r, best) for r in ("group-oracle", *reference_routers(s)) if r in decisions]
    if not pairs:
        return ""
    lines = ["", f"Paired bootstrap, AUDC difference ({n_boot} shared resamples):", ""]
    for a, b in pairs:
        d = paired_difference(decisions[a].choices, decisions[b].choices, s.test.quality, s.test.cost, n_boot)
        rel = d.value / results[b]["audc"].value
        mark = " (best baseline)" if b == best else ""
        lines.append(f"- {a} − {b}{mark}: {d.value:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}] ({rel:+.1%} relative)")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cscr eval", description=__doc__.split("\n")[0])
    p.add_argument("--benchmark", required=True, choices=["routerbench", "mmlu_pro"])
    p.add_argument("--split", default="in-dist", choices=SPLITS)
    p.add_argument("--data", type=Path, default=None, help="data directory (default: ../shared/data)")
    p.add_argument("--routers", nargs="+", default=list(ALL_ROUTERS),
                   help=f"some of {' '.join(ALL_ROUTERS)} (default: all), and infonce+KIND / infonce+accuracy+KIND "
                   "for every --descriptor-dir")
    p.add_argument("--descriptor-dir", type=Path, action="append", default=[],
                   help="descriptor files of every model, one kind per directory (repeatable): descriptor ablation")
    p.add_argument("--reference-models", action="store_true",
                   help="move a seeded third of the models out of the pool; their grades on each test prompt "
                   "feed the cheating reference-oracle-lr / -gbm routers (what knowing item difficulty buys)")
    p.add_argument("--encoder", default="minilm",
                   help="minilm | minilm-onnx | minilm-onnx-int8 | static-minilm | hash | random")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples")
    p.add_argument("--max-prompts", type=int, default=None, help="evaluate on a small slice (smoke test)")
    p.add_argument("--out", type=Path, default=None, help="directory for results.md, curves.png, results.json")
    p.add_argument("--decisions-out", type=Path, default=None, help="CSV of every decision")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    s = prepare(
        args.benchmark, args.split, args.data, args.encoder, args.seeds[0], args.max_prompts, args.reference_models
    )
    routers = list(args.routers) + [r for r in reference_routers(s) if r not in args.routers]
    if args.descriptor_dir:
        s = load_descriptor_sets(s, args.descriptor_dir)
        routers += [r for r in descriptor_routers(s) if r not in routers]
    decisions, results = evaluate(s, routers, args.seeds, args.bootstrap)
    grid = cost_grid(s.test.quality, s.test.cost)
    title = (
        f"{args.benchmark} / {args.split} / {args.encoder}: {len(s.train)} train, {len(s.test)} test prompts, "
        f"{len(s.bench.models)} models"
    )
    header = (
        f"{title}. Cost grid ${grid.lo:.3g} .. ${grid.hi:.3g} per prompt; best single model quality "
        f"{grid.best_quality:.3f} at ${grid.best_cost:.3g}. 95% bootstrap intervals "
        f"({args.bootstrap} resamples of the test prompts, grid recomputed per resample).\n"
    )
    if s.unseen:
        header += f"Unseen models (descriptor only): {', '.join(s.unseen)}.\n"
    if s.reference:
        header += (
            f"Reference models (not routable; their grades on each test prompt are shown to the cheating "
            f"reference-oracle routers only): {', '.join(s.reference)}.\n"
        )
    table = markdown_table(results, title)
    table += paired_lines(s, decisions, results, args.bootstrap)
    print(header)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        cmd = "cscr eval " + " ".join(argv)
        (args.out / "results.md").write_text(f"{header}\n{table}\nReproduce: `{cmd}`\n")
        plot_curves(s, decisions, args.out / "curves.png", title)
        summary = {
            "command": cmd,
            "grid": grid.__dict__,
            "data_versions": versions_of(s.bench),
            "encoder": args.encoder,
            "unseen_models": list(s.unseen),
            "reference_models": list(s.reference),
            "results": {k: {m: iv.__dict__ for m, iv in r.items()} for k, r in results.items()},
            "points": {
                k: [list(map(float, a)) for a in curve_points(d.choices, s.test.quality, s.test.cost)]
                for k, d in decisions.items()
            },
            "seconds": round(time.perf_counter() - t0, 1),
        }
        (args.out / "results.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    if args.decisions_out is not None:
        write_decisions(args.decisions_out, s, decisions)
    return 0
