"""``cscr calibrate``: what each trade-off would spend on *your* prompts, before you serve them.

    cscr calibrate --prompts my_prompts.jsonl [--target-spend-per-1k 0.50] [--artifact DIR]

Each line of the file is a JSON object with ``messages`` (the chat request's list, as sent to
``/v1/chat/completions``). The router reads what the gateway reads: the last user message. For each
trade-off t = 0, 0.1, …, 1 it prints the expected spend per 1,000 requests and the model mix of the
default router (or ``--artifact``) over every model it knows; with ``--target-spend-per-1k`` also the
largest-quality t whose spend stays within the target (``auto@t``).

Spend is estimated with the artifact's cost model (USD per call by prompt length, fitted on the
training data's recorded costs at the RouterBench pool's list prices): it is an estimate of typical
answers, not a bound. Decisions use the rule the gateway serves (``kernel_policy.rule_scores``).
Exit 2 on a malformed file, naming the line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TRADEOFFS = np.round(np.linspace(0.0, 1.0, 11), 2)


class PromptFileError(ValueError):
    """A prompts file that cannot be read; the message names the file and line."""


def _text(message: Any) -> str | None:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return None


def read_prompts(path: Path) -> list[str]:
    """The routing text of every request in a JSONL file (the last user message, as the gateway's
    ``wire.routing_prompt``). Blank lines are skipped; anything else malformed raises, naming the line."""
    prompts: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PromptFileError(f"{path}:{n}: not JSON ({exc.msg})") from None
            messages = doc.get("messages") if isinstance(doc, dict) else None
            if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
                raise PromptFileError(f'{path}:{n}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
            users = [m for m in messages if m.get("role") == "user"]
            text = _text(users[-1] if users else messages[-1])
            if text is None:
                raise PromptFileError(f"{path}:{n}: the last user message has no text content")
            prompts.append(text)
    if not prompts:
        raise PromptFileError(f"{path}: no requests")
    return prompts


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
        prompts = read_prompts(args.prompts)
    except (OSError, PromptFileError) as exc:
        print(f"cscr calibrate: {exc}", file=sys.stderr)
        return 2
    from router_core.encoder import embed_prompts
    from router_core.kernel_policy import load_policy
    from router_core.router import default_artifact_path

    policy = load_policy(args.artifact or default_artifact_path())
    if policy.cost_model is None:
        print("cscr calibrate: this artifact has no cost model; rebuild it", file=sys.stderr)
        return 2
    p_hat = policy.router.predict(embed_prompts(prompts, policy.encoder.name, cache=False))  # user data: not cached
    cost = policy.cost_model.predict(np.array([len(x) for x in prompts], dtype=np.float64))
    rows = calibrate(p_hat, cost, policy.experts, policy.lam)
    print(f"{len(prompts)} requests from {args.prompts}; expected spend per 1,000 requests and model mix:")
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
