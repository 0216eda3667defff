"""The default router's recipe (what ``router.artifact: bundled`` serves), scored on RouterBench and chat.

    python -m router_core.default_eval --out docs/results/default-router

Trains on the train splits only of ``routerbench+alpacaeval`` (RouterBench subset + AlpacaEval chat
prompts over the RouterBench pool; AlpacaEval's unlabelled models are missing, not wrong) and
scores two held-out sets side by side, with bootstrap intervals and paired differences:

- RouterBench test (953 prompts, all 11 models routable);
- AlpacaEval test (the prompts every one of its six models has a verdict on; those six routable).

Routers: ``ours`` = the kernel-shrink recipe of the bundled artifact, trained on both sets;
``ours-rb`` = the same recipe on RouterBench only (the former ``routerbench-kernel-shrink``);
``kmeans`` / ``kmeans-rb`` = UniRoute-style K-means (K=20) on the same data; ``cscr-bundled`` =
the CSCR artifact that was the default before (trained on RouterBench); ``oracle``; single models.

``ours`` decides with ``kernel_policy.decide`` on the p̂ of ``KernelShrinkRouter.predict`` — the
functions ``KernelShrinkPolicy.rank`` serves with — and the gateway-style 512-token cost bound
(the expected-cost variant is scored in ``cost_eval``). The trade-off table's ``rank`` calls get the
gateway's pricing callback as served (expected cost from answer lengths). The report also checks
it: for test prompts and several trade-offs, the fraction whose ``rank(...)`` first choice (live
encoder, the gateway's path) equals the batch decision. And it prints, per trade-off t = 0, 0.1,
…, 1, the dearest model's share and the mean cost of the train-only artifact's picks on the test
prompts (the trade-off table).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from router_core.baselines import KMeansRouter, model_costs, oracle_choices, single_choices, sweep
from router_core.data import Benchmark, load_benchmark, versions_of
from router_core.kernel_policy import LAMBDA_GRID, build, common_patterns, decide, load_policy
from router_core.metrics import bootstrap, paired_difference
from router_core.paths import write_results
from router_core.pricing import GATEWAY_OUTPUT_TOKENS, LIST_PRICES, expected_costs, prompt_tokens, request_costs
from router_core.types import Candidate

log = logging.getLogger(__name__)

ENCODER = "static-minilm"
TRADEOFFS = np.round(np.linspace(0.0, 1.0, 11), 2)


def gateway_costs(prompts: list[str], models: list[str]) -> np.ndarray:
    """(N, M) USD as the gateway estimates a request before the call: ~len/4 prompt tokens and the
    default 512-token output bound at each model's list price (gateway.yaml)."""
    return request_costs(prompt_tokens(prompts), GATEWAY_OUTPUT_TOKENS, models)


def _gateway_candidates(prompt: str, models: list[str], bound: np.ndarray) -> list[Candidate]:
    """The candidates as the gateway hands them over: the bound as ``cost`` and a pricing callback
    (``gateway.policy.expected_cost``: ~len/4 prompt tokens, list prices) the router ranks on."""
    tok = len(prompt) / 4.0

    def at(m: str) -> Callable[[float], float]:
        return lambda t: (tok * LIST_PRICES[m][0] + t * LIST_PRICES[m][1]) / 1e6

    return [Candidate(m, m, float(e), at(m)) for m, e in zip(models, bound, strict=True)]


def _p_hat(train: Benchmark, emb_tr: np.ndarray, emb_te: np.ndarray, seed: int) -> np.ndarray:
    from router_core.variants import KernelShrinkRouter, select_hyperparams

    observed = ~train.missing if train.missing is not None else np.ones(train.quality.shape, dtype=bool)
    keep = common_patterns(observed)  # as ``kernel_policy.build`` does
    train, emb_tr, observed = train.subset(keep), emb_tr[keep], observed[keep]
    lengths = np.array([len(p) for p in train.prompts], dtype=np.float64)
    hp = select_hyperparams(emb_tr, train.quality, train.cost, lengths, observed, seed=seed)
    router = KernelShrinkRouter.from_hyperparams(hp, seed)
    router.fit(emb_tr, train.quality, observed)
    return router.predict(emb_te)


def _cscr_sims(bench: Benchmark, emb_te: np.ndarray) -> np.ndarray:
    """(N, M) the former default CSCR artifact's similarities, in ``bench.models`` order."""
    from router_core.model import RouterArtifact
    from router_core.router import bundled_artifact_path
    from router_core.train import similarities

    art = RouterArtifact.load(bundled_artifact_path())
    sims = similarities(art, emb_te)
    return sims[:, [art.experts.index(m) for m in bench.models]]


def decisions(bench: Benchmark, emb: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """(N_test, M) p̂ / similarity per learned router, all test prompts of both sets."""
    tr, te = bench.split == "train", bench.split == "test"
    rb_tr = tr & (bench.extra["source"] == "routerbench")
    out = {"ours": _p_hat(bench.subset(tr), emb[tr], emb[te], seed),
           "ours-rb": _p_hat(bench.subset(rb_tr), emb[rb_tr], emb[te], seed)}
    for name, rows in (("kmeans", tr), ("kmeans-rb", rb_tr)):
        sub = bench.subset(rows)
        km = KMeansRouter(n_clusters=20, seed=seed)
        km.fit(emb[rows], sub.quality, ~sub.missing if sub.missing is not None else None)
        out[name] = km.predict(emb[te])
    out["cscr-bundled"] = _cscr_sims(bench, emb[te])
    return out


def held_out(bench: Benchmark, source: str) -> tuple[Benchmark, np.ndarray, np.ndarray]:
    """The test split, and the rows and model columns of it that one held-out set (``source``)
    is scored on: the models it labels at all, the prompts each of them has a verdict on."""
    test = bench.subset(bench.split == "test")
    rows, cols = test.scored(test.extra["source"] == source)
    return test, rows, cols


def score_set(bench: Benchmark, emb: np.ndarray, scores: dict[str, np.ndarray], source: str,
              n_boot: int, seed: int = 0) -> dict[str, object]:
    """Curves of every router on one held-out set, restricted to its labelled models and prompts."""
    from router_core.router import calibrate_lam_max, choose, lambda_sweep, normalise_costs

    tr = bench.split == "train"
    test, rows, cols = held_out(bench, source)
    q, c = test.quality[np.ix_(rows, cols)], test.cost[np.ix_(rows, cols)]
    est = gateway_costs([test.prompts[i] for i in rows], [bench.models[j] for j in cols])
    rb_tr = tr & (bench.extra["source"] == "routerbench")
    choices: dict[str, np.ndarray] = {"oracle": oracle_choices(q, c)}
    for name in ("ours", "ours-rb"):
        choices[name] = decide(scores[name][np.ix_(rows, cols)], est, LAMBDA_GRID)
    for name, train_rows in (("kmeans", tr), ("kmeans-rb", rb_tr)):
        choices[name] = sweep(scores[name][np.ix_(rows, cols)], model_costs(bench.cost[train_rows][:, cols]))
    sims = scores["cscr-bundled"][np.ix_(rows, cols)]
    cn = normalise_costs(est)
    lam_max = calibrate_lam_max(sims, cn)
    choices["cscr-bundled"] = choose(sims, cn, list(np.concatenate([lambda_sweep(lam_max), [lam_max * 1e3]])))
    for j in range(len(cols)):
        choices[f"single:{bench.models[cols[j]]}"] = single_choices(len(rows), j)
    results = bootstrap(choices, q, c, n_boot, seed)
    paired = {f"{a} - {b}": paired_difference(choices[a], choices[b], q, c, n_boot, seed).__dict__
              for a, b in (("ours", "kmeans"), ("ours", "ours-rb"), ("ours", "kmeans-rb"), ("ours", "cscr-bundled"),
                           ("kmeans", "kmeans-rb"))}
    return {"prompts": len(rows), "models": [bench.models[j] for j in cols],
            "results": {k: {m: iv.__dict__ for m, iv in r.items()} for k, r in results.items()},
            "paired_audc": paired}


def tradeoff_rows(bench: Benchmark, artifact: Path, source: str) -> list[dict[str, object]]:
    """Per trade-off: the train-only artifact's picks on one test set through ``rank`` (the serving
    path, live encoder), its dearest-model share, mean recorded cost, mean quality where graded,
    and agreement of ``rank``'s first choice with the batch rule on cached embeddings."""
    from router_core.encoder import embed_prompts

    policy = load_policy(artifact)
    test = bench.subset((bench.split == "test") & (bench.extra["source"] == source))
    missing = test.missing if test.missing is not None else np.zeros(test.quality.shape, dtype=bool)
    cols = np.flatnonzero(~missing.all(axis=0))
    models = [bench.models[j] for j in cols]
    est = gateway_costs(test.prompts, models)
    emb = embed_prompts(test.prompts, ENCODER)
    idx = [policy.experts.index(m) for m in models]
    p_batch = policy.router.predict(emb)[:, idx]
    # what ``rank`` ranks on: the expected cost where the artifact has answer lengths
    rule_cost = est if policy.lengths is None else expected_costs(policy.lengths, emb, test.prompts, models, idx)
    dearest = int(np.argmax(est.mean(axis=0)))
    out = []
    for t in TRADEOFFS:
        batch = decide(p_batch, rule_cost, [policy.lam(float(t))])[0] if t < 1 else np.argmin(rule_cost, axis=1)
        served = np.array([models.index(policy.rank(p, _gateway_candidates(p, models, row), float(t)).order[0].name)
                           for p, row in zip(test.prompts, est, strict=True)])
        r = np.arange(len(served))
        graded = ~missing[r, cols[served]]
        mix = np.bincount(served, minlength=len(models)) / len(served)
        out.append({"set": source, "tradeoff": float(t), "lambda": policy.lam(float(t)),
                    "dearest_share": float(mix[dearest]), "mean_cost_usd": float(test.cost[r, cols[served]].mean()),
                    "mean_quality_graded": float(test.quality[r, cols[served]][graded].mean()),
                    "agreement_rank_vs_batch": float((served == batch).mean()),
                    "mix": {models[j]: round(float(mix[j]), 3) for j in np.flatnonzero(mix)}})
    return out


def start(prog: str, doc: str, outputs: str,
          argv: list[str] | None) -> tuple[argparse.Namespace, Benchmark, np.ndarray]:
    """What this module's and ``cost_eval``'s CLIs share: ``--out``, ``--bootstrap``, ``--seed``,
    logging, and ``routerbench+alpacaeval`` with its embeddings."""
    from router_core.encoder import embed_prompts

    p = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help=f"directory for {outputs}")
    p.add_argument("--bootstrap", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    bench = load_benchmark("routerbench+alpacaeval")
    return args, bench, embed_prompts(bench.prompts, ENCODER)


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    args, bench, emb = start("router_core.default_eval", __doc__, "results.json, results.md, tradeoff.csv", argv)
    scores = decisions(bench, emb, args.seed)
    sets = {s: score_set(bench, emb, scores, s, args.bootstrap, args.seed) for s in ("routerbench", "alpacaeval")}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:  # the shipped artifact's recipe, on the train splits only
        artifact = build("routerbench+alpacaeval", Path(tmp), ENCODER, args.seed, "train")
        table = [row for s in ("routerbench", "alpacaeval") for row in tradeoff_rows(bench, artifact, s)]
    shown = sys.argv[1:] if argv is None else argv
    summary = {"command": "python -m router_core.default_eval " + " ".join(shown), "encoder": ENCODER,
               "data_versions": versions_of(bench), "sets": sets, "tradeoff_table": table,
               "seconds": round(time.perf_counter() - t0, 1)}
    with open(args.out / "tradeoff.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["set", "tradeoff", "lambda", "dearest_share", "mean_cost_usd", "mean_quality_graded",
                    "agreement_rank_vs_batch", "mix"])
        for row in table:
            w.writerow([row["set"], row["tradeoff"], f"{row['lambda']:.4g}", f"{row['dearest_share']:.3f}",
                        f"{row['mean_cost_usd']:.6f}", f"{row['mean_quality_graded']:.3f}",
                        f"{row['agreement_rank_vs_batch']:.3f}", json.dumps(row["mix"])])
    write_results(args.out, summary, report(summary))
    return 0


def report(summary: dict[str, object]) -> str:
    """Markdown tables of ``summary`` (AUDC with intervals, paired differences, the trade-off table)."""
    lines: list[str] = []
    sets = summary["sets"]
    assert isinstance(sets, dict)
    for name, s in sets.items():
        lines += [f"### {name} test: {s['prompts']} prompts, {len(s['models'])} models", "",
                  "| router | AUDC | AUDC-log | peak | QNC |", "|---|---|---|---|---|"]
        for router, r in s["results"].items():
            cells = [f"{r[m]['value']:.3f} [{r[m]['lo']:.3f}, {r[m]['hi']:.3f}]" for m in ("audc", "audc_log", "peak")]
            lines.append(f"| {router} | " + " | ".join(cells) + f" | {r['qnc']['value']:.2f} |")
        lines += ["", "Paired bootstrap, AUDC difference:", ""]
        lines += [f"- {k}: {d['value']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" for k, d in s["paired_audc"].items()]
        lines.append("")
    lines += ["### Trade-off table (train-only artifact, served through `rank`, gateway-style cost estimates)", "",
              "| set | t | dearest share | mean cost $ | mean quality (graded) | rank = batch |",
              "|---|---|---|---|---|---|"]
    table = summary["tradeoff_table"]
    assert isinstance(table, list)
    for row in table:
        lines.append(f"| {row['set']} | {row['tradeoff']:.1f} | {row['dearest_share']:.2f} | "
                     f"{row['mean_cost_usd']:.5f} | {row['mean_quality_graded']:.3f} | "
                     f"{row['agreement_rank_vs_batch']:.3f} |")
    return "\n".join(lines) + f"\n\nReproduce: `{summary['command']}`\n"


if __name__ == "__main__":
    raise SystemExit(main())
