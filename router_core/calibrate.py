"""``cscr calibrate``: what each trade-off would spend on *your* prompts, before you serve them.

    cscr calibrate --prompts my_prompts.jsonl [--target-spend-per-1k 0.50] [--artifact DIR]

Each line of the file is a JSON object with ``messages`` (the chat request's list, as sent to
``/v1/chat/completions``) and optionally ``max_tokens`` / ``max_completion_tokens`` and ``n``. The
router reads what the gateway reads: the last user message. For each trade-off t = 0, 0.1, …, 1 it
prints the expected spend per 1,000 requests and the model mix of the default router (or
``--artifact``) over every model it knows; with ``--target-spend-per-1k`` also the largest-quality t
whose spend stays within the target (``auto@t``).

Decisions and spend use the cost the router ranks on when it serves (``pricing.expected_tokens``,
as ``KernelShrinkPolicy.rank`` prices ``Candidate.cost_at``): each model's expected answer length
for the prompt, from the recorded lengths of its nearest probe prompts, capped at ``max_tokens``,
times ``n``, at the RouterBench pool's list prices; the prompt side is ~characters / 4 of every
message's text (the gateway counts it with tiktoken). An estimate of typical answers, not a bound.
An artifact without answer lengths ranks on the gateway's bound when it serves, so it is priced at
that bound here (``max_tokens``, else 512 output tokens). Decisions use the rule the gateway
serves (``kernel_policy.rule_scores``). Exit 2 on a malformed file, naming the line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from router_core.conversation import message_text, routing_prompt
from router_core.pricing import GATEWAY_OUTPUT_TOKENS

if TYPE_CHECKING:
    from router_core.kernel_policy import KernelShrinkPolicy

TRADEOFFS = np.round(np.linspace(0.0, 1.0, 11), 2)


class PromptFileError(ValueError):
    """A prompts file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class CalibrationRequest:
    """One line of the prompts file, as the gateway would read it."""

    prompt: str  # what the router reads: routing_prompt (the last user message, a follow-up with its question)
    chars: int  # the text of every message: the prompt side of the cost (~chars / 4 tokens)
    max_output_tokens: int | None  # max_completion_tokens, else max_tokens (as gateway.wire)
    n: int = 1


def _count(doc: dict[str, Any], name: str, where: str) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PromptFileError(f"{where}: {name!r} must be a positive integer, got {value!r:.40}")
    return value


def read_requests(path: Path) -> list[CalibrationRequest]:
    """Every request in a JSONL file. Blank lines are skipped; anything else malformed raises,
    naming the line."""
    requests: list[CalibrationRequest] = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PromptFileError(f"{path}:{n}: not UTF-8 text (byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PromptFileError(f"{path}:{n}: not JSON ({exc.msg})") from None
            try:
                json.dumps(doc, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise PromptFileError(f"{path}:{n}: lone UTF-16 surrogate (\\ud800-\\udfff): not valid text") from None
            messages = doc.get("messages") if isinstance(doc, dict) else None
            if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
                raise PromptFileError(f'{path}:{n}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
            users = [m for m in messages if m.get("role") == "user"]
            if not isinstance((users[-1] if users else messages[-1]).get("content"), str | list):
                raise PromptFileError(f"{path}:{n}: the last user message has no text content")
            text = routing_prompt(messages)  # as the gateway reads it: a follow-up with its question
            cap = _count(doc, "max_completion_tokens", f"{path}:{n}") or _count(doc, "max_tokens", f"{path}:{n}")
            chars = sum(len(message_text(m)) for m in messages)
            requests.append(CalibrationRequest(text, chars, cap, _count(doc, "n", f"{path}:{n}") or 1))
    if not requests:
        raise PromptFileError(f"{path}: no requests")
    return requests


def served_costs(policy: KernelShrinkPolicy, requests: Sequence[CalibrationRequest],
                  emb: np.ndarray) -> np.ndarray:
    """(N, M) USD per request and expert as ``rank`` prices it (module docstring); ``emb`` (N, D)
    the requests' routing embeddings."""
    from router_core import pricing

    cap = np.array([r.max_output_tokens or np.inf for r in requests])[:, None]  # (N, 1)
    n = np.array([r.n for r in requests], dtype=np.float64)[:, None]
    if policy.lengths is None:
        tokens = np.broadcast_to(np.where(np.isfinite(cap), cap, GATEWAY_OUTPUT_TOKENS), (len(requests), 1))
    else:
        tokens = np.minimum(pricing.expected_tokens(policy.lengths, emb, range(len(policy.experts))), cap)
    chars = np.array([r.chars for r in requests], dtype=np.float64)
    return pricing.request_costs(chars / 4.0, tokens * n, policy.experts)


@dataclass(frozen=True)
class TradeoffRow:
    tradeoff: float
    spend_per_1k: float  # USD per 1,000 requests
    mix: dict[str, float]  # model -> share of requests


def calibrate(p_hat: np.ndarray, cost: np.ndarray, experts: Sequence[str], lam: Any,
              tradeoffs: Sequence[float] = tuple(TRADEOFFS)) -> list[TradeoffRow]:
    """Rows per trade-off from (N, M) p̂ and cost estimates; ``lam`` maps t to λ (the policy's table)."""
    from router_core.kernel_policy import decide

    rows = []
    r = np.arange(p_hat.shape[0])
    for t in tradeoffs:
        picks = np.argmin(cost, axis=1) if t >= 1.0 else decide(p_hat, cost, [lam(float(t))])[0]
        share = np.bincount(picks, minlength=len(experts)) / len(picks)
        rows.append(TradeoffRow(float(t), float(cost[r, picks].mean() * 1000),
                                {experts[j]: float(share[j]) for j in np.argsort(-share) if share[j] > 0}))
    return rows


def tradeoff_for_spend(rows: Sequence[TradeoffRow], target_per_1k: float) -> TradeoffRow | None:
    """The smallest t (best quality) whose spend is within the target; None if even t = 1 is over."""
    within = [row for row in rows if row.spend_per_1k <= target_per_1k]
    return min(within, key=lambda row: row.tradeoff) if within else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cscr calibrate", description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=Path, required=True, help='JSONL, one {"messages": [...]} per line')
    p.add_argument("--target-spend-per-1k", type=float, default=None, help="USD per 1,000 requests")
    p.add_argument("--artifact", type=Path, default=None, help="kernel-shrink artifact (default: the bundled one)")
    args = p.parse_args(argv)
    try:
        requests = read_requests(args.prompts)
    except (OSError, PromptFileError) as exc:
        print(f"cscr calibrate: {exc}", file=sys.stderr)
        return 2
    from router_core.encoder import embed_prompts
    from router_core.kernel_policy import load_policy
    from router_core.pricing import price_table
    from router_core.router import default_artifact_path

    policy = load_policy(args.artifact or default_artifact_path())
    try:
        price_table(policy.experts)  # what served_costs prices with: LIST_PRICES, else MMLU-Pro's price file
    except KeyError as exc:
        print(f"cscr calibrate: {exc.args[0]}", file=sys.stderr)
        return 2
    emb = embed_prompts([r.prompt for r in requests], policy.encoder.name, cache=False)  # user data: not cached
    p_hat = policy.router.predict(emb)
    rows = calibrate(p_hat, served_costs(policy, requests, emb), policy.experts, policy.lam)
    priced = "the gateway's output bound: no answer lengths" if policy.lengths is None else "expected answer lengths"
    print(f"{len(requests)} requests from {args.prompts}; spend per 1,000 requests ({priced}) and model mix:")
    for row in rows:
        mix = ", ".join(f"{m} {s:.0%}" if s >= 0.005 else f"{m} <1%" for m, s in row.mix.items())
        print(f"  auto@{row.tradeoff:.1f}  ${row.spend_per_1k:9.4f}  {mix}")
    if args.target_spend_per_1k is not None:
        hit = tradeoff_for_spend(rows, args.target_spend_per_1k)
        if hit is None:
            print(f"target ${args.target_spend_per_1k:g} per 1,000: below even auto@1.0 "
                  f"(${rows[-1].spend_per_1k:.4f})")
        else:
            print(f"target ${args.target_spend_per_1k:g} per 1,000: use auto@{hit.tradeoff:.1f} "
                  f"(${hit.spend_per_1k:.4f})")
    return 0
