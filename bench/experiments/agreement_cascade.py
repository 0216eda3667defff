"""Would an agreement cascade beat routing on RouterBench? (issue 3: information the prompt lacks)

A cascade sees answers before it decides: send a multiple-choice prompt (arc-challenge,
winogrande) to two cheap models; if both give the same letter, return it; otherwise pay for a
fallback model too. mbpp prompts (code: no letter to compare) go straight to the fallback. Every
call is paid for. The recorded answers and costs of RouterBench make this exact, no model is run.

Policies: every pair of the six cheapest models (by mean training cost) × every fallback model.
The policies on the *training* prompts' cost/quality Pareto front are kept and scored on the test
prompts with the evaluation's fixed cost grid (``router_core.metrics``), so nothing is picked on
test. Run from the repository root:

    .venv/bin/python bench/experiments/agreement_cascade.py
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd

from router_core.data import load_benchmark
from router_core.metrics import cost_grid, curve_stats
from router_core.paths import default_data_dir

LETTER = re.compile(r"\b([A-E])\b")


def first_letter(raw: object) -> str | None:
    m = LETTER.search(str(raw).strip("[]'\" \\n"))
    return m.group(1) if m else None


def main() -> None:
    bench = load_benchmark("routerbench")
    df = pd.read_parquet(default_data_dir() / "routerbench_subset" / "routerbench_subset.parquet")
    if df["sample_id"].astype(str).tolist() != [p.split("#")[0] for p in bench.prompt_ids]:
        raise SystemExit("row order of the parquet file and the loader differ")
    models = bench.models
    answers = np.array([[first_letter(r) for r in df[f"{m}|model_response"]] for m in models], dtype=object).T
    letters = bench.extra["task"] != "mbpp"
    quality, cost = bench.quality, bench.cost

    def point(rows: np.ndarray, pair: tuple[int, int], fallback: int) -> tuple[float, float]:
        a, b = pair
        agree = letters[rows] & (answers[rows, a] == answers[rows, b]) & (answers[rows, a] != None)  # noqa: E711
        paid = np.where(letters[rows], cost[rows, a] + cost[rows, b], 0.0) + np.where(agree, 0.0, cost[rows, fallback])
        got = np.where(agree, quality[rows, a], quality[rows, fallback])
        return float(paid.mean()), float(got.mean())

    train, test = np.flatnonzero(bench.split == "train"), np.flatnonzero(bench.split == "test")
    cheap = np.argsort(cost[train].mean(axis=0))[:6]
    policies = [(pair, f) for pair in itertools.combinations(cheap, 2) for f in range(len(models))]
    on_train = np.array([point(train, p, f) for p, f in policies])
    front = [
        i for i in range(len(policies))
        if not ((on_train[:, 0] <= on_train[i, 0]) & (on_train[:, 1] > on_train[i, 1])).any()
    ]  # fmt: skip
    on_test = np.array([point(test, *policies[i]) for i in front])
    for i, (c, q) in zip(front, on_test, strict=True):
        (a, b), f = policies[i]
        print(f"{models[a]} + {models[b]} -> {models[f]}: ${c:.5f} per prompt, quality {q:.3f}")
    stats = curve_stats(on_test[:, 0], on_test[:, 1], cost_grid(quality[test], cost[test]))
    print(f"agreement cascade, test: AUDC {stats.audc:.3f}, AUDC-log {stats.audc_log:.3f}, peak {stats.peak:.3f}")


if __name__ == "__main__":
    main()
