"""Per-prompt cost: how well each cost estimate predicts a request's recorded cost, and what it does
to the default router's AUDC.

    python -m router_core.cost_eval --out docs/results/per-prompt-cost

Trains on the train splits of ``routerbench+alpacaeval`` only and scores the RouterBench and
AlpacaEval test splits (as ``default_eval``: the prompts every routable model has a verdict on).
Three estimates of one request's USD on model j, all ~len/4 prompt tokens at the list input price
plus an output side:

- ``bound-512``: the gateway's conservative bound, 512 output tokens (``server.estimate_output_tokens``);
- ``length-only``: ``LengthCostModel``, USD = a_j + b_j · len(prompt) (the artifact's cost model);
- ``neighbours``: ``NeighbourLengths``, the expected output tokens from the k nearest training
  prompts' recorded answer lengths (k, m chosen by 4-fold CV on train).

Reported: per model, the median |ĉ − c| / c against the recorded cost c; and the AUDC of the
kernel-shrink rule (``kernel_policy.decide``, same p̂, full λ sweep) deciding with each estimate,
the realised curve on recorded costs, with paired bootstrap differences.
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np

from router_core.baselines import oracle_choices
from router_core.data import Benchmark, versions_of
from router_core.default_eval import ENCODER, _p_hat, gateway_costs, held_out, start
from router_core.kernel_policy import LAMBDA_GRID, decide
from router_core.metrics import bootstrap, paired_difference
from router_core.paths import write_results
from router_core.pricing import answer_tokens, expected_costs, list_prices
from router_core.variants import LengthCostModel, NeighbourLengths, select_length_params

log = logging.getLogger(__name__)

ESTIMATES = ("bound-512", "length-only", "neighbours")


def estimates(bench: Benchmark, emb: np.ndarray, seed: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """(N_test, M) USD per estimate for every test prompt, fitted on the train split; and the
    neighbour model's CV-chosen parameters."""
    tr, te = bench.split == "train", bench.split == "test"
    train, test = bench.subset(tr), bench.subset(te)
    observed = ~train.missing if train.missing is not None else np.ones(train.cost.shape, dtype=bool)
    tokens = answer_tokens(train.prompts, train.cost, *list_prices(bench.models), observed)
    params = select_length_params(emb[tr], tokens, seed=seed)
    lengths = NeighbourLengths(k=int(params["k"]), bandwidth=params["bandwidth"],
                               prior_strength=params["prior_strength"]).fit(emb[tr], tokens)
    len_tr = np.array([len(p) for p in train.prompts], dtype=np.float64)
    len_te = np.array([len(p) for p in test.prompts], dtype=np.float64)
    out = {"bound-512": gateway_costs(test.prompts, bench.models),
           "length-only": LengthCostModel().fit(len_tr, train.cost).predict(len_te),
           "neighbours": expected_costs(lengths, emb[te], test.prompts, bench.models)}
    return out, params


def score_set(bench: Benchmark, p_hat: np.ndarray, est: dict[str, np.ndarray], source: str, n_boot: int,
              seed: int) -> dict[str, object]:
    test, rows, cols = held_out(bench, source)
    q, c = test.quality[np.ix_(rows, cols)], test.cost[np.ix_(rows, cols)]
    models = [bench.models[j] for j in cols]
    error = {name: {m: float(np.median(np.abs(e[np.ix_(rows, cols)][:, i] - c[:, i]) / c[:, i]))
                    for i, m in enumerate(models)} for name, e in est.items()}
    choices = {"oracle": oracle_choices(q, c)}
    choices |= {name: decide(p_hat[np.ix_(rows, cols)], e[np.ix_(rows, cols)], LAMBDA_GRID) for name, e in est.items()}
    results = bootstrap(choices, q, c, n_boot, seed)
    paired = {f"neighbours - {b}": paired_difference(choices["neighbours"], choices[b], q, c, n_boot, seed).__dict__
              for b in ("bound-512", "length-only")}
    return {"prompts": len(rows), "models": models, "median_abs_rel_error": error,
            "results": {k: {m: iv.__dict__ for m, iv in r.items()} for k, r in results.items()},
            "paired_audc": paired}


def report(summary: dict[str, object]) -> str:
    lines: list[str] = [f"Neighbour lengths: {summary['length_params']} (4-fold CV on train)", ""]
    sets = summary["sets"]
    assert isinstance(sets, dict)
    for name, s in sets.items():
        lines += [f"### {name} test: {s['prompts']} prompts", "", "Median |estimate − recorded| / recorded, per model:",
                  "", "| model | " + " | ".join(ESTIMATES) + " |", "|---|" + "---|" * len(ESTIMATES)]
        err = s["median_abs_rel_error"]
        for m in s["models"]:
            lines.append(f"| {m} | " + " | ".join(f"{err[e][m]:.3f}" for e in ESTIMATES) + " |")
        lines.append("| **median over models** | " + " | ".join(
            f"**{np.median(list(err[e].values())):.3f}**" for e in ESTIMATES) + " |")
        lines += ["", "| decides with | AUDC | AUDC-log | peak |", "|---|---|---|---|"]
        for router, r in s["results"].items():
            cells = [f"{r[m]['value']:.4f} [{r[m]['lo']:.4f}, {r[m]['hi']:.4f}]" for m in ("audc", "audc_log", "peak")]
            lines.append(f"| {router} | " + " | ".join(cells) + " |")
        lines += ["", "Paired bootstrap, AUDC difference:", ""]
        lines += [f"- {k}: {d['value']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" for k, d in s["paired_audc"].items()]
        lines.append("")
    return "\n".join(lines) + f"\nReproduce: `{summary['command']}`\n"


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    args, bench, emb = start("router_core.cost_eval", __doc__, "results.json and results.md", argv)
    tr, te = bench.split == "train", bench.split == "test"
    p_hat = _p_hat(bench.subset(tr), emb[tr], emb[te], args.seed)
    est, params = estimates(bench, emb, args.seed)
    sets = {s: score_set(bench, p_hat, est, s, args.bootstrap, args.seed) for s in ("routerbench", "alpacaeval")}
    shown = sys.argv[1:] if argv is None else argv
    summary = {"command": "python -m router_core.cost_eval " + " ".join(shown), "encoder": ENCODER,
               "length_params": params, "data_versions": versions_of(bench), "sets": sets,
               "seconds": round(time.perf_counter() - t0, 1)}
    write_results(args.out, summary, report(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
