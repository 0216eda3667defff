"""Unseen-model routing through the gateway's onboarding path, measured on MMLU-Pro.

The gateway adds a model the router never saw by its **graded descriptor**: answers to N of the
router's probe prompts, graded by answer letter (``router_core.graded``), NaN elsewhere, passed to
``KernelShrinkPolicy.add_expert``. Here the same keys are made from the recorded data instead of
live calls: for each model of MMLU-Pro's unseen third (``data.unseen_model_split``) its recorded
answer text (``responses.parquet``) on N probe-pool questions drawn and graded by the code the
gateway onboards with (``GradedProbes.select``: seeded, stratified by subject, largest remainder;
``GradedProbes.grade``: ``extract_letter`` against the gold letter). The router is fitted on the seen
two thirds (all training labels), the unseen models join through ``add_expert``, and all 31 models
are routed on the 2,000 test questions.

Compared, on one grid and shared bootstrap resamples:
- **in-distribution**: the same router with every model's full training labels (the bar: goal
  within 1 % AUDC of it);
- **onboarded (N)**: the gateway's keys, for several N;
- **K-means** (the strongest baseline) with the full training labels, and with the unseen models
  known only by the same graded N probes.

``add_expert`` completes a newcomer's answers from its peers (``kernel_policy.peer_fill``); without
that step (``--no-peer-fill``: ``add_answers(..., impute=False)``) N = 200 scored lower on every
draw (docs/DESCRIPTORS.md, "Unseen models through onboarding").

    python -m router_core.onboarding_eval --n 100 200 400 2026 --draws 0 1 2 --bootstrap 500 \
        --out docs/results/mmlu_pro-graded-onboarding
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router_core.baselines import KMeansRouter, model_costs, sweep
from router_core.evaluate import Setup, prepare
from router_core.graded import GRADER, GradedProbes
from router_core.kernel_policy import KernelShrinkPolicy
from router_core.metrics import Interval, bootstrap, paired_difference
from router_core.paths import write_results
from router_core.types import Descriptor
from router_core.variants import KernelShrinkRouter, LengthCostModel

log = logging.getLogger(__name__)

HP = {"k": 400, "bandwidth": 0.1, "prior_strength": 2.0}  # MMLU-Pro's cross-validated pick (EVALUATION.md)


@dataclass(frozen=True)
class RecordedAnswers:
    """MMLU-Pro's probe pool as the gateway would grade it, and every model's recorded answer text
    on it. Read once per run; every (N, draw) is drawn from it."""

    probes: GradedProbes  # the training prompts' probe-pool questions: rows, ids, subject, gold letter
    text: dict[tuple[str, str], str]  # (question id, model) -> recorded answer


def recorded_answers(s: Setup) -> RecordedAnswers:
    """The probe pool of ``s.train`` (stratified by subject, as ``GradedProbes.select`` draws it)
    with its gold letters, and the recorded answers (``responses.parquet``)."""
    import pandas as pd

    from router_core.paths import default_data_dir

    root = default_data_dir() / "mmlu_pro"
    resp = pd.read_parquet(root / "responses.parquet", columns=["question_id", "model", "response"])
    gold = pd.read_parquet(root / "questions.parquet", columns=["question_id", "answer"]).set_index(
        "question_id")["answer"].astype(str)
    pool = np.flatnonzero(s.train.extra["probe"].astype(bool))
    ids = tuple(s.train.prompt_ids[i] for i in pool)
    probes = GradedProbes(len(s.train), tuple(int(i) for i in pool), ids,
                          tuple(str(c) for c in s.train.extra["category"][pool]),
                          tuple(gold[int(q)] for q in ids), tuple(s.train.prompts[i] for i in pool))
    text = {(str(q), m): r for q, m, r in zip(resp.question_id, resp.model, resp.response, strict=True)}
    return RecordedAnswers(probes, text)


def graded_answers(s: Setup, recorded: RecordedAnswers, n: int,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """(N_train, M) grades and observed mask of the unseen models on ``n`` probe-pool questions,
    drawn (``GradedProbes.select``) and graded (``GradedProbes.grade``) as the gateway onboards a
    model, from their recorded answer text; and a report."""
    probes = recorded.probes
    picks = probes.select(n, seed)
    grades = np.zeros(s.train.quality.shape)
    observed = np.zeros(s.train.quality.shape, dtype=bool)
    ungradable = agree = total = 0
    for j, m in enumerate(s.bench.models):
        if m not in s.unseen:
            continue
        vector, report = probes.grade(picks, [recorded.text.get((probes.ids[i], m)) for i in picks])
        v = np.asarray(vector)
        observed[:, j] = np.isfinite(v)
        grades[:, j] = np.where(observed[:, j], v, 0.0)
        ungradable += report.ungradable
        total += report.answered
        agree += int((grades[observed[:, j], j] == s.train.quality[observed[:, j], j]).sum())
    report_: dict[str, object] = {"probes": len(picks), "graded": total, "ungradable": ungradable,
                                  "agreement_with_recorded_grades": round(agree / max(total, 1), 4)}
    return grades, observed, report_


def _policy(s: Setup, seen: np.ndarray) -> KernelShrinkPolicy:
    """A kernel-shrink policy fitted on the seen models' full training labels."""
    router = KernelShrinkRouter.from_hyperparams(HP, 0)
    labels, observed = s.train.quality[:, seen], np.ones((len(s.train), int(seen.sum())), dtype=bool)
    router.fit(s.train_emb, labels, observed)
    experts = [m for m, k in zip(s.bench.models, seen, strict=True) if k]
    return KernelShrinkPolicy(router, experts, [0.0, 1.0], "hash", s.train_emb, labels, observed)


def onboarded_p_hat(s: Setup, recorded: RecordedAnswers, n: int, seed: int = 0,
                    peer_fill: bool = True) -> tuple[np.ndarray, dict[str, object]]:
    """(N_test, M) p̂ with the unseen models added through ``add_expert`` (graded descriptors);
    ``peer_fill=False``: the ablation without completing them from their peers."""
    seen = np.array([m not in s.unseen for m in s.bench.models])
    policy = _policy(s, seen)
    grades, observed, report = graded_answers(s, recorded, n, seed)
    spec = policy.descriptor_spec
    for j in np.flatnonzero(~seen):
        vector = np.where(observed[:, j], grades[:, j], np.nan)
        if not peer_fill:
            policy.add_answers(s.bench.models[j], vector, impute=False)
            continue
        policy.add_expert(s.bench.models[j], Descriptor([float(v) for v in vector], spec.kind, spec.probe_set,
                                                        spec.scorer, s.bench.models[j], dict(spec.settings)))
    p = policy.router.predict(s.test_emb)
    order = [policy.experts.index(m) for m in s.bench.models]
    return p[:, order], report


def _full_p_hat(s: Setup) -> np.ndarray:
    router = KernelShrinkRouter.from_hyperparams(HP, 0)
    router.fit(s.train_emb, s.train.quality, np.ones(s.train.quality.shape, dtype=bool))
    return router.predict(s.test_emb)


def run(ns: Sequence[int], n_boot: int, encoder: str, draws: Sequence[int] = (0,),
        peer_fill: bool = True) -> tuple[str, dict[str, object]]:
    """Every router's decisions on the test prompts, bootstrap intervals, paired differences to
    in-distribution; one onboarded row per (N, probe draw seed)."""
    started = time.perf_counter()
    s = prepare("mmlu_pro", "unseen-models", encoder=encoder, seed=0)
    recorded = recorded_answers(s)
    lengths = np.array([len(p) for p in s.train.prompts], dtype=np.float64)
    c_hat = LengthCostModel().fit(lengths, s.train.cost).predict(np.array([len(p) for p in s.test.prompts], float))
    choices: dict[str, np.ndarray] = {"in-distribution (full labels)": sweep(_full_p_hat(s), c_hat)}
    reports: dict[str, object] = {}
    for n in ns:
        for draw in draws:
            tag = f"N={n}" + (f", draw {draw}" if len(draws) > 1 else "")
            p, reports[tag] = onboarded_p_hat(s, recorded, n, draw, peer_fill)
            choices[f"onboarded, graded on {tag}"] = sweep(p, c_hat)
    mc = model_costs(s.train.cost)
    full = np.ones(s.train.quality.shape, dtype=bool)
    km = KMeansRouter(n_clusters=20, seed=0)
    km.fit(s.train_emb, s.train.quality, full)
    choices["K-means (full labels)"] = sweep(km.predict(s.test_emb), mc)
    seen = np.array([m not in s.unseen for m in s.bench.models])
    for n in ns:
        grades, observed, _ = graded_answers(s, recorded, n, draws[0])
        km.fit(s.train_emb, np.where(seen, s.train.quality, grades), np.where(seen, full, observed))
        choices[f"K-means (unseen models graded on N={n})"] = sweep(km.predict(s.test_emb), mc)
    results = bootstrap(choices, s.test.quality, s.test.cost, n_boot, 0)
    base = "in-distribution (full labels)"
    diffs = {k: paired_difference(v, choices[base], s.test.quality, s.test.cost, n_boot, 0)
             for k, v in choices.items() if k != base}
    command = (f"python -m router_core.onboarding_eval --n {' '.join(map(str, ns))} --draws "
               f"{' '.join(map(str, draws))} --encoder {encoder} --bootstrap {n_boot}"
               + ("" if peer_fill else " --no-peer-fill"))
    return _report(s, results, diffs, reports, n_boot, encoder, command, time.perf_counter() - started,
                   {"peer_fill": peer_fill, "probe_pool": len(recorded.probes), "ns": list(ns), "draws": list(draws)})


def _report(s: Setup, results: dict[str, dict[str, Interval]], diffs: dict[str, Interval],
            reports: dict[str, object], n_boot: int, encoder: str, command: str, seconds: float,
            extra: dict[str, object]) -> tuple[str, dict[str, object]]:
    bar = results["in-distribution (full labels)"]["audc"].value
    lines = [f"# MMLU-Pro unseen models, onboarded by graded probes ({encoder}, grader {GRADER})", "",
             f"{len(s.train)} train / {len(s.test)} test prompts, {len(s.bench.models)} models; unseen: "
             f"{', '.join(s.unseen)}. Kernel-shrink {HP}. {n_boot} shared bootstrap resamples.", "",
             "| router | AUDC | AUDC-log | peak | AUDC − in-dist (paired) | relative |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        d = diffs.get(name)
        diff = "—" if d is None else f"{d.value:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]"
        rel = "—" if d is None else f"{d.value / bar:+.2%}"
        lines.append(f"| {name} | {r['audc'].value:.4f} [{r['audc'].lo:.3f}, {r['audc'].hi:.3f}] | "
                     f"{r['audc_log'].value:.4f} | {r['peak'].value:.4f} | {diff} | {rel} |")
    lines += ["", "Grading of the recorded answers (per N): " + json.dumps(reports), "",
              f"Made in {seconds:.0f} s by `{command}`.", ""]
    data = {"command": command, "results": {k: {m: iv.value for m, iv in v.items()} for k, v in results.items()},
            "audc_intervals": {k: [v["audc"].value, v["audc"].lo, v["audc"].hi] for k, v in results.items()},
            "paired_vs_in_distribution": {k: [d.value, d.lo, d.hi] for k, d in diffs.items()},
            "grading": reports, "hyperparameters": HP, "encoder": encoder, "unseen": list(s.unseen),
            "models": len(s.bench.models), "train_prompts": len(s.train), "test_prompts": len(s.test),
            "bootstrap": n_boot, "seconds": round(seconds, 1), **extra}
    return "\n".join(lines), data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Unseen-model AUDC through graded onboarding (MMLU-Pro).")
    parser.add_argument("--n", type=int, nargs="+", default=[100, 200, 400, 2026])
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2], help="seeds of the probe draw")
    parser.add_argument("--encoder", default="static-minilm")
    parser.add_argument("--no-peer-fill", action="store_true", help="ablation: add_answers without peer_fill")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("docs/results/mmlu_pro-graded-onboarding"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    text, data = run(args.n, args.bootstrap, args.encoder, args.draws, not args.no_peer_fill)
    write_results(args.out, data, text)  # atomic; also prints the table
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
