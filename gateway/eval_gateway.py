"""``cscr eval-gateway``: score a RUNNING gateway's own routing decisions over HTTP.

    cscr serve --config gateway.yaml &           # with the replay upstream (cscr upstream) behind it
    cscr eval-gateway --url http://127.0.0.1:8000 --benchmark routerbench --split test \\
        --artifact bundled --out docs/results/eval-gateway/routerbench

Every test prompt of the benchmark goes to ``/v1/chat/completions`` as one user message, once per
trade-off T (``model: auto@T``); the gateway decides as it does for any client, and the answering
provider is read from the ``x-cscr-provider`` response header. The routers are scored from the
benchmark's *recorded* labels and costs of the model that answered, never from the live answer:
AUDC, AUDC-log, peak and QNC (``router_core.metrics``) on the benchmark's fixed cost grid (cheapest
to dearest single model's mean cost on the evaluated prompts), with bootstrap intervals, next to
K-means (K=20, ``router_core.baselines``) with the paired AUDC interval.

Provider -> benchmark model: through ``gateway.yaml`` (``--config``, the file the gateway serves):
a provider's ``expert`` field, else its name, must be a model column of the benchmark. Providers
that map to no column are unscorable; a request they answer stops the run (restrict the pool with
a key's ``allowed_providers`` and pass its secret with ``--key``: AlpacaEval labels 6 of the 11).

``--artifact`` (the artifact the gateway serves, ``bundled`` or a path) adds the same artifact's
decisions computed in-process on batch embeddings with ``kernel_policy.decide`` (the offline rule)
and the gateway's own cost estimates (``count_messages`` x the providers' prices): the report gives
their decision agreement per T and their AUDC side by side.

MMLU-Pro's 31 models are served by the replay upstream's MMLU-Pro mode (``cscr upstream --replay
mmlu_pro``) behind the gateway.yaml ``python -m gateway.replay_mmlu`` writes (docs/EVALUATION.md has
the recipe); its unrecorded answers count as wrong (``MISSING_AS_WRONG``), so all 2,000 test prompts
are scored.

``max_tokens`` is part of the gateway's cost estimate (prompt x input price + max_tokens x output
price, else ``server.estimate_output_tokens``), so it changes the decisions; requests carry none
unless ``--max-tokens`` is given, and the offline decisions use the same bound.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.config import GatewayConfig, ProviderConfig, load_config
from gateway.policy import expected_cost
from gateway.tokens import count_messages
from router_core.conversation import routing_prompt
from router_core.metrics import bootstrap, cost_grid, curve_points, paired_difference
from router_core.paths import write_results
from router_core.types import Candidate

if TYPE_CHECKING:
    from router_core.kernel_policy import KernelShrinkPolicy

log = logging.getLogger(__name__)

BENCHMARKS = ("routerbench", "mmlu_pro", "alpacaeval")
DEFAULT_TRADEOFFS = tuple(float(t) for t in np.round(np.linspace(0.0, 1.0, 11), 2))
# what the baseline trains on: the default artifact's training set, restricted to its train split
KMEANS_DATA = {"routerbench": "routerbench+alpacaeval", "alpacaeval": "routerbench+alpacaeval", "mmlu_pro": "mmlu_pro"}
KMEANS_ENCODER = "static-minilm"
# benchmarks scored as their loader fills them: an unrecorded answer counts as wrong (MMLU-Pro's
# convention, as in ``cscr eval``), so every test prompt is kept; elsewhere such prompts are left out
MISSING_AS_WRONG = ("mmlu_pro",)


class EvalGatewayError(RuntimeError):
    """The evaluation cannot be run or scored (unservable benchmark, failed or unscorable requests)."""


@dataclass(frozen=True)
class EvalSet:
    """The evaluated prompts and the recorded labels and costs of the benchmark's labelled models."""

    benchmark: str
    prompt_ids: list[str]
    prompts: list[str]
    models: list[str]
    quality: np.ndarray  # (N, M)
    cost: np.ndarray  # (N, M) USD per call as recorded
    versions: dict[str, str]


def load_eval_set(benchmark: str, split: str = "test", data_dir: Path | None = None,
                  max_prompts: int | None = None, seed: int = 0) -> EvalSet:
    """``split``'s prompts with a verdict from every model the set labels at all (AlpacaEval: 6 of
    the RouterBench pool; MMLU-Pro: every prompt, unrecorded answers wrong, ``MISSING_AS_WRONG``);
    ``max_prompts``: a seeded random subset, in the loader's order."""
    from router_core.data import load_benchmark, versions_of

    bench = load_benchmark(benchmark, data_dir)
    part = bench.subset(bench.split == split)
    if len(part) == 0:
        raise EvalGatewayError(f"{benchmark} has no {split!r} split")
    rows, cols = part.scored(np.ones(len(part), dtype=bool), missing_as_wrong=benchmark in MISSING_AS_WRONG)
    if max_prompts is not None and max_prompts < rows.size:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_prompts, replace=False))
    return EvalSet(benchmark, [part.prompt_ids[i] for i in rows], [part.prompts[i] for i in rows],
                   [part.models[j] for j in cols], part.quality[np.ix_(rows, cols)],
                   part.cost[np.ix_(rows, cols)], versions_of(bench))


@dataclass(frozen=True)
class Pool:
    """The providers the gateway may route these requests to, and the benchmark column of each."""

    providers: tuple[ProviderConfig, ...]
    column: dict[str, int]  # provider name -> model column; unscorable providers are absent
    expected_output: int  # output tokens the gateway's estimates assume
    image_tokens: int
    max_tokens: int | None = None  # the requests' max_tokens (None: not sent)


def served_pool(config: GatewayConfig, models: Sequence[str], key: str | None = None,
                max_tokens: int | None = None) -> Pool:
    """The chat providers ``key`` may use (all without one) and their benchmark columns."""
    allowed: tuple[str, ...] | None = None
    if key is not None:
        digest = hashlib.sha256(key.encode()).hexdigest()
        match = [k for k in config.keys if k.secret_sha256 == digest]
        if not match:
            raise EvalGatewayError(f"--key matches no key of {config.source}")
        allowed = match[0].allowed_providers
    providers = tuple(p for p in config.providers if p.mode == "chat" and (allowed is None or p.name in allowed))
    column = {p.name: models.index(m) for p in providers for m in [p.expert or p.name] if m in models}
    if not column:
        raise EvalGatewayError(f"the gateway serves none of the benchmark's models (its providers map to "
                               f"{sorted(p.expert or p.name for p in providers)}; the benchmark has "
                               f"{len(models)} others, e.g. {list(models)[:3]})")
    unscorable = [p.name for p in providers if p.name not in column]
    if unscorable:
        log.warning("providers without labels in this benchmark: %s; a request they answer stops the run "
                    "(pass --key of a key whose allowed_providers leaves them out)", unscorable)
    return Pool(providers, column, max_tokens or config.server.estimate_output_tokens, config.server.image_tokens,
                max_tokens)


# a prompt (sent as one user message) or a whole conversation
Conversation = str | list[dict[str, Any]]
# --follow-up: generic second turns, which say nothing of the task on their own
FOLLOW_UPS = ("Are you sure? Please check your answer.", "Explain that in more detail.", "Can you make it shorter?",
              "Why?", "Thanks. What would you change to make it better?")
ANSWER_STUB = "Here is my answer."


def messages_of(c: Conversation) -> list[dict[str, Any]]:
    return [{"role": "user", "content": c}] if isinstance(c, str) else c


def with_follow_up(prompt: str, i: int) -> list[dict[str, Any]]:
    """The prompt, an answer, and a generic follow-up (the i-th, cyclically): what a chat client sends
    on its second turn. It is scored with the prompt's recorded labels and costs (a proxy: the model
    that answers the question well is taken to answer the follow-up well)."""
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": ANSWER_STUB},
            {"role": "user", "content": FOLLOW_UPS[i % len(FOLLOW_UPS)]}]


async def _ask_all(url: str, prompts: Sequence[Conversation], tradeoffs: Sequence[float], key: str | None,
                   concurrency: int, max_tokens: int | None, timeout_s: float) -> list[list[str]]:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    out = [["" for _ in prompts] for _ in tradeoffs]
    done = 0

    async def one(client: httpx.AsyncClient, li: int, i: int) -> None:
        nonlocal done
        body: dict[str, Any] = {"model": f"auto@{tradeoffs[li]:g}", "messages": messages_of(prompts[i])}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        async with sem:
            r = await client.post("/v1/chat/completions", json=body, headers=headers)
        if r.status_code != 200 or "x-cscr-provider" not in r.headers:
            raise EvalGatewayError(f"prompt {i} at auto@{tradeoffs[li]:g}: HTTP {r.status_code}: {r.text[:300]}")
        out[li][i] = r.headers["x-cscr-provider"]
        done += 1
        if done % 1000 == 0:
            log.info("%d / %d requests", done, len(prompts) * len(tradeoffs))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout_s, limits=limits) as client:
        await asyncio.gather(*(one(client, li, i) for li in range(len(tradeoffs)) for i in range(len(prompts))))
    return out


def ask_gateway(url: str, prompts: Sequence[Conversation], tradeoffs: Sequence[float], key: str | None = None,
                concurrency: int = 8, max_tokens: int | None = None, timeout_s: float = 120.0) -> list[list[str]]:
    """(L, N) the provider that answered each prompt at each trade-off (``x-cscr-provider``)."""
    return asyncio.run(_ask_all(url, prompts, tradeoffs, key, concurrency, max_tokens, timeout_s))


def to_choices(names: list[list[str]], pool: Pool) -> np.ndarray:
    """(L, N) model columns of the answering providers; an unscorable provider is an error."""
    bad = sorted({n for row in names for n in row if n not in pool.column})
    if bad:
        raise EvalGatewayError(f"answered by providers with no labels in this benchmark: {bad}")
    return np.array([[pool.column[n] for n in row] for row in names], dtype=np.int64)


def gateway_estimates(prompts: Sequence[Conversation], pool: Pool) -> np.ndarray:
    """(N, P) the gateway's cost estimate of each provider before the call (``plan_request``)."""
    tokens = [count_messages(messages_of(p), None, pool.image_tokens) for p in prompts]
    return np.array([[p.cost(t, pool.expected_output) for p in pool.providers] for t in tokens])


def ranking_costs(policy: KernelShrinkPolicy, emb: np.ndarray, prompts: Sequence[Conversation],
                  pool: Pool) -> np.ndarray:
    """(N, P) the costs ``rank`` ranks on, from the same candidates ``plan_request`` builds: the
    estimate, and the pricing callback the router prices at its predicted answer length."""
    est = gateway_estimates(prompts, pool)  # (N, P)
    out = np.empty_like(est)
    for i, prompt in enumerate(prompts):
        tokens = count_messages(messages_of(prompt), None, pool.image_tokens)
        candidates = [Candidate(p.name, p.expert, float(est[i, j]), expected_cost(p, tokens, pool.max_tokens, 1))
                      for j, p in enumerate(pool.providers)]
        out[i] = policy.expected_costs(emb[i:i + 1], candidates)
    return out


def artifact_path(artifact: str) -> Path:
    """``--artifact``: ``bundled`` (what ``router.artifact: bundled`` serves) or a directory."""
    from router_core.router import default_artifact_path

    return default_artifact_path() if artifact == "bundled" else Path(artifact)


def offline_choices(artifact: str, prompts: Sequence[Conversation], pool: Pool,
                    tradeoffs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The served artifact's decisions without HTTP: batch embeddings, ``kernel_policy.decide`` with
    λ = the artifact's λ(T) (T = 1: the cheapest, likelier-right first, as ``rank``), on the
    gateway's estimates. Returns ((L, N) at ``tradeoffs``, (401, N) over the whole λ grid), as columns."""
    from router_core.encoder import embed_prompts
    from router_core.kernel_policy import LAMBDA_GRID, KernelShrinkPolicy, decide
    from router_core.router import load_routing_policy

    policy = load_routing_policy(artifact_path(artifact))
    if not isinstance(policy, KernelShrinkPolicy):
        raise EvalGatewayError(f"--artifact {artifact}: offline decisions need a kernel-shrink artifact")
    known = [i for i, p in enumerate(pool.providers) if p.expert in policy.experts and p.name in pool.column]
    if len(known) < len(pool.providers):  # the policy ranks unknown experts last; keep it simple
        raise EvalGatewayError("offline decisions need every provider in the pool to be a known, scored expert")
    emb = embed_prompts([routing_prompt(messages_of(c)) for c in prompts], policy.encoder.name)  # (N, D)
    p_all = policy.router.predict(emb)  # (N, E)
    p_hat = p_all[:, [policy.experts.index(p.expert or "") for p in pool.providers]]  # (N, P)
    est = ranking_costs(policy, emb, prompts, pool)  # (N, P) what rank ranks on
    rows = []
    for t in tradeoffs:
        if t >= 1.0:
            rows.append(np.lexsort((-p_hat, est), axis=1)[:, 0])
        else:
            rows.append(decide(p_hat, est, [policy.lam(t)])[0])
    cols = np.array([pool.column[p.name] for p in pool.providers])
    return cols[np.stack(rows)], cols[decide(p_hat, est, LAMBDA_GRID)]


def artifact_recipe(artifact: str) -> dict[str, Any]:
    """What the served artifact was built from (its config.json): variant, split, hyperparameters, so a
    result file says which recipe it scored, not only a path that may since hold another build."""
    config = json.loads((artifact_path(artifact) / "config.json").read_text())
    return {k: config[k] for k in ("variant", "fit_on", "n_prompts", "encoder", "hyperparameters") if k in config}


def kmeans_choices(es: EvalSet, data_dir: Path | None = None, seed: int = 0) -> np.ndarray:
    """UniRoute-style K-means (K=20) on the train split of the default artifact's data, swept over
    ``baselines.LAMBDAS`` with mean training costs (as ``router_core.default_eval``)."""
    from router_core.baselines import KMeansRouter, model_costs, sweep
    from router_core.data import load_benchmark
    from router_core.encoder import embed_prompts

    bench = load_benchmark(KMEANS_DATA[es.benchmark], data_dir)
    train = bench.subset(bench.split == "train")
    km = KMeansRouter(n_clusters=20, seed=seed)
    km.fit(embed_prompts(train.prompts, KMEANS_ENCODER), train.quality,
           ~train.missing if train.missing is not None else None)
    cols = [train.models.index(m) for m in es.models]
    p_hat = km.predict(embed_prompts(es.prompts, KMEANS_ENCODER))[:, cols]
    return sweep(p_hat, model_costs(train.cost[:, cols]))


def score(es: EvalSet, choices: dict[str, np.ndarray], n_boot: int, seed: int = 0) -> dict[str, Any]:
    """Intervals of every router (single models added) and paired AUDC differences against the gateway."""
    from router_core.baselines import oracle_choices, single_choices

    all_choices = dict(choices)
    all_choices["oracle"] = oracle_choices(es.quality, es.cost)
    for j, m in enumerate(es.models):
        all_choices[f"single:{m}"] = single_choices(len(es.prompts), j)
    results = bootstrap(all_choices, es.quality, es.cost, n_boot, seed)
    paired = {f"gateway - {b}": paired_difference(choices["gateway"], choices[b], es.quality, es.cost, n_boot,
                                                  seed).__dict__
              for b in choices if b != "gateway"}
    points = {k: [list(map(float, a)) for a in curve_points(c, es.quality, es.cost)] for k, c in choices.items()}
    return {"grid": cost_grid(es.quality, es.cost).__dict__, "paired_audc": paired, "points": points,
            "results": {k: {m: iv.__dict__ for m, iv in r.items()} for k, r in results.items()}}


def mix_of(names: list[list[str]], tradeoffs: Sequence[float]) -> list[dict[str, Any]]:
    """Per T: each provider's share of the answers."""
    out = []
    for t, row in zip(tradeoffs, names, strict=True):
        counts = {n: row.count(n) for n in sorted(set(row))}
        out.append({"tradeoff": t, "mix": {n: round(c / len(row), 4) for n, c in counts.items()}})
    return out


def agreement(a: np.ndarray, b: np.ndarray, tradeoffs: Sequence[float]) -> dict[str, Any]:
    same = a == b  # (L, N)
    return {"overall": float(same.mean()), "per_tradeoff": {f"{t:g}": float(s.mean()) for t, s in
                                                            zip(tradeoffs, same, strict=True)}}


def write_decisions(path: Path, es: EvalSet, tradeoffs: Sequence[float], names: list[list[str]],
                    choices: np.ndarray) -> None:
    with gzip.open(path, "wt", newline="") as fh:  # ~20k rows per RouterBench run: 1.5 MB as plain text
        w = csv.writer(fh)
        w.writerow(["tradeoff", "prompt_id", "provider", "model", "quality", "cost_usd"])
        for li, t in enumerate(tradeoffs):
            for i, pid in enumerate(es.prompt_ids):
                j = int(choices[li, i])
                w.writerow([f"{t:g}", pid, names[li][i], es.models[j], f"{es.quality[i, j]:g}",
                            f"{es.cost[i, j]:.8g}"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cscr eval-gateway", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="the running gateway, e.g. http://127.0.0.1:8000")
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    p.add_argument("--split", default="test", help="the benchmark split whose prompts are sent (default test)")
    p.add_argument("--config", type=Path, default=Path("gateway.yaml"),
                   help="the gateway.yaml the gateway serves: provider -> benchmark model through `expert`")
    p.add_argument("--tradeoffs", default=",".join(f"{t:g}" for t in DEFAULT_TRADEOFFS),
                   help="comma-separated T values in [0, 1], sent as model auto@T (default 0,0.1,...,1)")
    p.add_argument("--key", default=None, help="a virtual key's secret (sent as Bearer; its allowed_providers "
                   "is the routing pool)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=None,
                   help="send max_tokens (it changes the gateway's cost estimates, hence its decisions)")
    p.add_argument("--artifact", default=None, help="the artifact the gateway serves (bundled | path): adds its "
                   "offline decisions and their agreement with the gateway's")
    p.add_argument("--max-prompts", type=int, default=None, help="a seeded random subset of the split")
    p.add_argument("--follow-up", action="store_true",
                   help="send each prompt as a conversation ending in a generic follow-up (\"Why?\"), scored "
                        "with the prompt's labels: how `auto` routes a chat's second turn"),
    p.add_argument("--bootstrap", type=int, default=500)
    p.add_argument("--no-kmeans", action="store_true", help="skip the K-means baseline (needs the training data)")
    p.add_argument("--data", type=Path, default=None, help="data directory (default: ../shared/data)")
    p.add_argument("--out", type=Path, default=None, help="directory for results.json, decisions.csv.gz, results.md")
    return p


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Send, decide offline, score; the summary written to results.json."""
    t0 = time.perf_counter()
    tradeoffs = [float(x) for x in args.tradeoffs.split(",")]
    if not tradeoffs or not all(0.0 <= t <= 1.0 for t in tradeoffs):
        raise EvalGatewayError(f"--tradeoffs must be numbers in [0, 1], got {args.tradeoffs!r}")
    es = load_eval_set(args.benchmark, args.split, args.data, args.max_prompts)
    pool = served_pool(load_config(args.config), es.models, args.key, args.max_tokens)
    sent: list[Conversation] = [with_follow_up(p, i) for i, p in enumerate(es.prompts)] if args.follow_up \
        else list(es.prompts)
    log.info("%s %s: %d prompts x %d trade-offs to %s", args.benchmark, args.split, len(es.prompts),
             len(tradeoffs), args.url)
    t_send = time.perf_counter()
    names = ask_gateway(args.url, sent, tradeoffs, args.key, args.concurrency, args.max_tokens)
    send_s = time.perf_counter() - t_send
    choices = {"gateway": to_choices(names, pool)}
    agree: dict[str, Any] | None = None
    if args.artifact is not None:
        choices["offline"], choices["offline-all-lambdas"] = offline_choices(args.artifact, sent, pool, tradeoffs)
        agree = agreement(choices["gateway"], choices["offline"], tradeoffs)
    if not args.no_kmeans:
        choices["kmeans"] = kmeans_choices(es, args.data)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_decisions(args.out / "decisions.csv.gz", es, tradeoffs, names, choices["gateway"])
    return {"command": command, "benchmark": args.benchmark, "split": args.split, "prompts": len(es.prompts),
            "models": es.models, "pool": {p: es.models[j] for p, j in pool.column.items()},
            "tradeoffs": tradeoffs, "follow_up": args.follow_up, "artifact": args.artifact,
            "artifact_recipe": None if args.artifact is None else artifact_recipe(args.artifact),
            "max_tokens": args.max_tokens,
            "data_versions": es.versions, "agreement_gateway_vs_offline": agree, "mix": mix_of(names, tradeoffs),
            **score(es, choices, args.bootstrap), "requests_per_s": round(len(tradeoffs) * len(es.prompts) / send_s, 1),
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str]) -> int:
    from gateway.eval_gateway_report import render_one

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    try:
        summary = run(args, "cscr eval-gateway " + " ".join(argv))
    except EvalGatewayError as exc:
        print(f"cscr eval-gateway: {exc}", file=sys.stderr)
        return 2
    table = render_one(summary)
    if args.out is None:
        print(table)
    else:
        write_results(args.out, summary, table)  # atomic; also prints the table
    return 0
