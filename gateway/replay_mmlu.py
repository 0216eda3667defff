"""MMLU-Pro for the replay upstream (``cscr upstream --replay mmlu_pro``) and a gateway.yaml that
serves its 31 models from it, so ``cscr eval-gateway --benchmark mmlu_pro`` has a gateway to score.

Prompts are the benchmark's routing text (``router_core.data.mmlu_pro_prompt``: what eval-gateway
sends); the last user message, whitespace-stripped, is looked up against them, the request's model
picks the column as for RouterBench (exactly, or after leading ``provider/`` segments).

What a known (question, model) answers:

- the recorded answer where ``responses.parquet`` has it (the 2,026 probe questions, all in the
  train split; its first 4,000 characters), header ``x-replay: recorded``;
- else a **stand-in**: the data has only the answer's length (``response_chars.csv``), so the text
  is a label saying so (``STAND_IN_TAG``) padded with filler to that many characters (the label
  alone when the answer was shorter than it), header ``x-replay: stand-in``. Where the length is not
  recorded either (1,571 cells), it is the length the recorded cost implies.

``x-replay-chars`` carries the recorded length. Usage reproduces ``costs.csv``, which the data
computed as (len(question + options) / 4 x input price + response_chars / 4 x output price) / 1e6
at ``model_prices.csv``: ``prompt_tokens`` = round(len(question + options) / 4) and
``completion_tokens`` = the whole number of tokens that makes up the rest of the recorded cost
(``replay.recorded_completion_tokens``, as for RouterBench). So a gateway pricing the providers at
``model_prices.csv`` bills each answer its ``costs.csv`` cost: exactly, up to float rounding, on all
307,613 (prompt, model) cells (the method alone guarantees half an output token).
Unknown prompts and models get the labelled synthetic answer, as with RouterBench.

    python -m gateway.replay_mmlu --api-base http://127.0.0.1:18731/v1 \\
        --artifact /tmp/evalgw/ks-mmlu_pro-train --out docs/results/eval-gateway/gateway-eval-mmlu_pro.yaml
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken

from gateway.replay import (
    Recorded,
    load_cl100k,
    model_candidates,
    normalise_prompt,
    recorded_completion_tokens,
    synthetic_words,
)

logger = logging.getLogger(__name__)

SOURCE = Path("mmlu_pro")
STAND_IN_TAG = ("[stand-in from replay upstream: MMLU-Pro records the length of {model}'s answer to question "
                "{qid} ({chars} characters), not its text]")
EVAL_SECRET = "sk-eval-all"  # the local evaluation key of the generated config (as gateway-eval.yaml's)
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9._:-]+")


def mmlu_pro_root(data_dir: Path | None = None) -> Path:
    """``<data>/mmlu_pro`` of ``data_dir``, else the project's data folder (``$CSCR_DATA_DIR``, else
    ``shared/data`` above the repository); FileNotFoundError when it holds no MMLU-Pro."""
    from router_core.paths import default_data_dir

    root = (data_dir or default_data_dir()) / SOURCE
    if not (root / "questions.parquet").is_file():
        raise FileNotFoundError(f"MMLU-Pro data not found: {root / 'questions.parquet'}")
    return root


def stand_in_content(model: str, qid: str, chars: int) -> str:
    """``chars`` characters that say they stand in for ``model``'s answer to ``qid`` (never fewer
    than the label: a shorter recorded answer gets the label alone)."""
    tag = STAND_IN_TAG.format(model=model, qid=qid, chars=chars)
    if chars <= len(tag):
        return tag
    words = synthetic_words(f"{model}\n{qid}", 8)
    filler = (" " + words) * (1 + (chars - len(tag)) // (len(words) + 1))
    return (tag + filler)[:chars]


class MmluProTable:
    """Costs, lengths and the recorded texts of the 31 models on MMLU-Pro's 10,032 graded questions."""

    label = "MMLU-Pro"

    def __init__(self, rows: dict[str, int], qids: list[str], basis_chars: np.ndarray, model_names: list[str],
                 prices: np.ndarray, cost: np.ndarray, chars: np.ndarray, texts: dict[tuple[int, int], str],
                 encoding: tiktoken.Encoding) -> None:
        self._rows = rows  # normalised prompt -> row
        self._qids = qids
        self._basis = basis_chars  # (N,) len(question + options): the data's prompt-token basis
        self._models = model_names
        self._cols = {m: j for j, m in enumerate(model_names)}
        self._prices = prices  # (M, 2) USD per 1M input / output tokens
        self._cost = cost  # (N, M) USD, costs.csv
        self._chars = chars  # (N, M) response_chars.csv, NaN where not recorded
        self._texts = texts  # (row, col) -> recorded answer (first 4,000 characters)
        self.encoding = encoding

    @classmethod
    def load(cls, data_dir: Path | None = None, encoding: tiktoken.Encoding | None = None) -> MmluProTable:
        import pandas as pd

        from router_core.data import mmlu_pro_prompt
        from router_core.pricing import price_table

        root = mmlu_pro_root(data_dir)
        q = pd.read_parquet(root / "questions.parquet")
        qids = q["question_id"].to_numpy()
        costs = pd.read_csv(root / "costs.csv").set_index("question_id")
        model_names = list(costs.columns)
        cost = costs.reindex(index=qids).to_numpy(dtype=np.float64)
        chars = pd.read_csv(root / "response_chars.csv").set_index("question_id").reindex(
            index=qids, columns=model_names).to_numpy(dtype=np.float64)
        if np.isnan(cost).any():
            raise ValueError(f"{root / 'costs.csv'}: {int(np.isnan(cost).sum())} missing costs")
        rows: dict[str, int] = {}
        for i, (text, opts, cat) in enumerate(zip(q["question"], q["options"], q["category"], strict=True)):
            rows.setdefault(normalise_prompt(mmlu_pro_prompt(str(text), json.loads(opts), str(cat))), i)
        row_of = {qid: i for i, qid in enumerate(qids.tolist())}
        rec = pd.read_parquet(root / "responses.parquet", columns=["question_id", "model", "response"])
        cols = {m: j for j, m in enumerate(model_names)}
        texts = {(row_of[qid], cols[m]): str(r) for qid, m, r in
                 zip(rec["question_id"], rec["model"], rec["response"], strict=True) if qid in row_of and m in cols}
        basis = (q["question"].astype(str) + q["options"].astype(str)).str.len().to_numpy(dtype=np.float64)
        logger.info("replay: %d MMLU-Pro prompts x %d models (%d recorded texts) from %s",
                    len(rows), len(model_names), len(texts), root)
        return cls(rows, [str(i) for i in qids], basis, model_names,
                   price_table(model_names, root.parent), cost, chars, texts, encoding or load_cl100k())

    def __len__(self) -> int:
        return len(self._rows)

    def models(self) -> list[str]:
        return list(self._models)

    def prompts(self) -> list[str]:
        """Every lookup key (normalised prompt text), in question order."""
        return list(self._rows)

    def resolve(self, model: str) -> str | None:
        return next((m for m in model_candidates(model) if m in self._cols), None)

    def lookup(self, prompt: str, model: str) -> Recorded | None:
        row = self._rows.get(normalise_prompt(prompt))
        j = self._cols.get(model)
        if row is None or j is None:
            return None
        in_price, out_price = (float(x) for x in self._prices[j])
        cost = float(self._cost[row, j])
        prompt_tokens = round(self._basis[row] / 4)
        recorded = self._chars[row, j]
        chars = int(recorded) if math.isfinite(recorded) else max(  # the length the cost implies
            0, round((cost * 1e6 - self._basis[row] / 4 * in_price) / out_price * 4))
        text = self._texts.get((row, j))
        return Recorded(
            sample_id=self._qids[row],
            model=model,
            content=text if text is not None else stand_in_content(model, self._qids[row], chars),
            cost_usd=cost,
            prompt_tokens=prompt_tokens,
            completion_tokens=recorded_completion_tokens(cost, prompt_tokens, (in_price, out_price), least=0),
            stand_in=text is None,
            chars=chars,
        )


def provider_name(model: str) -> str:
    """A gateway provider name for an MMLU-Pro column (``gpt-4o-2024-05-13(api)`` ->
    ``gpt-4o-2024-05-13-api``): names allow letters, digits and ``._:-``."""
    return _BAD_NAME_CHARS.sub("-", model).strip("-")


def gateway_config(api_base: str, artifact: str, models: Sequence[str], prices: np.ndarray) -> dict[str, Any]:
    """A gateway.yaml document: every model a provider on the replay upstream at ``api_base``, priced
    at ``prices`` ((M, 2), model_prices.csv), its column as ``expert``; ``artifact`` served; one
    local key (``EVAL_SECRET``) for every provider."""
    providers = [{"name": provider_name(m), "model": f"openai/{m}", "api_base": api_base,
                  "input_usd_per_mtok": float(p[0]), "output_usd_per_mtok": float(p[1]), "expert": m}
                 for m, p in zip(models, prices, strict=True)]
    names = [provider_name(m) for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"two models map to one provider name: {sorted(names)}")
    return {"store": "memory://",
            "router": {"artifact": artifact, "default_tradeoff": 0.5},
            "keys": [{"name": "eval-all", "secret_sha256": hashlib.sha256(EVAL_SECRET.encode()).hexdigest()}],
            "providers": providers}


def config_text(api_base: str, artifact: str, data_dir: Path | None = None) -> str:
    """``gateway_config`` for the models and prices of the data folder's MMLU-Pro, as YAML with a header."""
    import pandas as pd
    import yaml

    from router_core.pricing import price_table

    root = mmlu_pro_root(data_dir)
    models = list(pd.read_csv(root / "costs.csv", nrows=0).columns[1:])
    doc = gateway_config(api_base, artifact, models, price_table(models, root.parent))
    head = ("# generated by `python -m gateway.replay_mmlu` (do not edit): MMLU-Pro's 31 models as providers on\n"
            f"# the replay upstream (cscr upstream --replay mmlu_pro) at {api_base}, priced at model_prices.csv;\n"
            f"# local evaluation key secret {EVAL_SECRET}. Used by cscr eval-gateway --benchmark mmlu_pro.\n")
    return head + yaml.safe_dump(doc, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.replay_mmlu",
                                description="Write the gateway.yaml that serves MMLU-Pro's models from the "
                                            "replay upstream (cscr upstream --replay mmlu_pro).")
    p.add_argument("--api-base", default="http://127.0.0.1:18731/v1", help="the replay upstream's /v1 URL")
    p.add_argument("--artifact", required=True, help="the router artifact the gateway serves (a path, or bundled)")
    p.add_argument("--data", type=Path, default=None, help="data folder holding mmlu_pro/ (default: the project's)")
    p.add_argument("--out", type=Path, default=None, help="where to write it (default: stdout)")
    args = p.parse_args(argv)
    try:
        text = config_text(args.api_base, args.artifact, args.data)
    except FileNotFoundError as exc:
        print(f"python -m gateway.replay_mmlu: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
