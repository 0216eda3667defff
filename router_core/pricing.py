"""What a request costs on a model, before the call: one formula for the data, the evaluations and
the kernel-shrink router.

    USD = prompt tokens × input price + answer tokens × output price

Before the call neither count is known. The benchmarks record USD per answer, not token counts, so
the prompt side is ~len/4 tokens (``prompt_tokens``) and the answer side is either a bound (the
gateway's 512 tokens), a recorded length (``answer_tokens`` inverts the formula on a recorded
cost) or the length a model is expected to give: ``expected_tokens``, the answer lengths its
nearest training prompts got (``variants.NeighbourLengths``), for N prompts in one k-NN pass.
``expected_costs`` prices them: the cost the kernel-shrink rule ranks on. The gateway prices the
same expected lengths with its own counts and prices (``Candidate.cost_at``); its token count of
the prompt is tiktoken's, not len/4.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from router_core.variants import NeighbourLengths

# USD per million input / output tokens of the RouterBench pool, as in gateway.yaml: used to read
# answer lengths off recorded costs and to price requests of these models before the call.
LIST_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4-1106-preview": (10.0, 30.0), "gpt-3.5-turbo-1106": (1.0, 2.0), "claude-v2": (8.0, 24.0),
    "claude-v1": (8.0, 24.0), "claude-instant-v1": (0.8, 2.4), "meta/llama-2-70b-chat": (0.9, 0.9),
    "meta/code-llama-instruct-34b-chat": (0.776, 0.776), "mistralai/mixtral-8x7b-chat": (0.6, 0.6),
    "mistralai/mistral-7b-chat": (0.2, 0.2), "zero-one-ai/Yi-34B-Chat": (0.8, 0.8),
    "WizardLM/WizardLM-13B-V1.2": (0.3, 0.3),
}


def prompt_tokens(prompts: Sequence[str]) -> np.ndarray:
    """(N,) ~characters / 4: the data's estimate of each prompt's tokens."""
    return np.array([len(p) / 4.0 for p in prompts])


MMLU_PRICES_FILE = Path("mmlu_pro") / "model_prices.csv"
# the output tokens the gateway prices a request at when it sets no max_tokens (gateway.yaml
# server.estimate_output_tokens, default 512): what offline tools assume the gateway assumes
GATEWAY_OUTPUT_TOKENS = 512


def price_table(models: Sequence[str], data_dir: Path | None = None) -> np.ndarray:
    """(M, 2) USD per million (input, output) tokens of each model: ``LIST_PRICES`` for the
    RouterBench pool, else ``<data>/mmlu_pro/model_prices.csv`` (the basis of MMLU-Pro's recorded
    costs); KeyError names a model with neither."""
    prices = dict(LIST_PRICES)
    if any(m not in prices for m in models):
        import pandas as pd

        from router_core.paths import DataNotFoundError, default_data_dir

        try:
            root: Path | None = Path(data_dir) if data_dir is not None else default_data_dir()
        except DataNotFoundError:  # a clone without the benchmark data: only LIST_PRICES
            root = None
        if root is not None and (root / MMLU_PRICES_FILE).is_file():
            df = pd.read_csv(root / MMLU_PRICES_FILE)
            prices.update({str(m): (float(i), float(o)) for m, i, o in
                           zip(df["model"], df["input_usd_per_mtok"], df["output_usd_per_mtok"], strict=True)})
    unknown = [m for m in models if m not in prices]
    if unknown:
        raise KeyError(f"no list price for {unknown}: neither LIST_PRICES nor {MMLU_PRICES_FILE} has one")
    return np.array([prices[m] for m in models], dtype=np.float64).reshape(len(models), 2)


def list_prices(models: Sequence[str], data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(M,) input and (M,) output USD per token (``price_table`` / 1e6)."""
    table = price_table(models, data_dir) / 1e6
    return table[:, 0], table[:, 1]


def request_costs(tokens_in: np.ndarray, tokens_out: np.ndarray | float, models: Sequence[str]) -> np.ndarray:
    """(N, M) USD at list prices: ``tokens_in`` (N,) prompt tokens and ``tokens_out`` answer tokens
    per answer (a number, (N, 1) or (N, M))."""
    price_in, price_out = list_prices(models)
    return np.asarray(tokens_in)[:, None] * price_in[None, :] + np.asarray(tokens_out) * price_out[None, :]


def answer_tokens(prompts: Sequence[str], cost: np.ndarray, price_in: np.ndarray, price_out: np.ndarray,
                  observed: np.ndarray | None = None) -> np.ndarray:
    """(N, M) output tokens each recorded answer cost: (USD − ~len/4 prompt tokens × input price) /
    output price, at least 1 (the data's prompt counts are estimates: a one-letter answer comes out
    near 0 ± 8); NaN where the answer was not recorded (``observed`` False, or the cost is NaN).
    Prices in USD per token, (M,)."""
    in_tok = prompt_tokens(prompts)[:, None]
    out = np.maximum((cost - in_tok * price_in[None, :]) / price_out[None, :], 1.0)
    return out if observed is None else np.where(observed, out, np.nan)


def expected_tokens(lengths: NeighbourLengths, emb: np.ndarray, cols: Sequence[int | None]) -> np.ndarray:
    """(N, K) answer tokens each of K models is expected to give N prompts (``emb`` (N, D)), one
    k-NN pass. ``cols[k]``: model k's column in ``lengths``; None (a model added by descriptor,
    no recorded lengths), or a model whose prediction is NaN, takes the median of the others' for
    that prompt (of every column of ``lengths`` when none of the K has one)."""
    tokens = lengths.predict(emb)  # (N, M0)
    picked = np.full((tokens.shape[0], len(cols)), np.nan)  # (N, K)
    for k, j in enumerate(cols):
        if j is not None:
            picked[:, k] = tokens[:, j]
    missing = ~np.isfinite(picked)
    if not missing.any():
        return picked
    known = np.isfinite(picked).any(axis=1)
    typical = np.full(picked.shape[0], np.nan)  # (N,)
    if known.any():
        typical[known] = np.nanmedian(picked[known], axis=1)
    if not known.all():
        typical[~known] = np.nanmedian(tokens[~known], axis=1)
    return np.where(missing, typical[:, None], picked)


def expected_costs(lengths: NeighbourLengths, emb: np.ndarray, prompts: Sequence[str], models: Sequence[str],
                   cols: Sequence[int | None] | None = None) -> np.ndarray:
    """(N, K) USD the kernel-shrink rule ranks on for N prompts at list prices: ~len/4 prompt tokens
    and each model's ``expected_tokens`` (``cols`` as there; default: ``lengths``' columns 0..K-1)."""
    cols = list(range(len(models))) if cols is None else cols
    return request_costs(prompt_tokens(prompts), expected_tokens(lengths, emb, cols), models)
