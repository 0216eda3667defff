"""Perplexity fingerprints: how one shared scorer LM finds a model's answers to the probes.

For API models (no logits): per probe i, the scorer (SmolLM2-135M by default) reads the probe text
and then the model's recorded answer; ``nll_i`` is the mean negative log-likelihood per token of the
answer tokens only, CONDITIONED on the prompt:

    ids = [BOS if the scorer adds one] + enc(prompt.rstrip())[-max_prompt_tokens:]
          + enc(" " + answer.strip())[:max_answer_tokens]

(prompt and answer tokenised separately, so the boundary is exact; the answer's leading space is
scored as part of its first token). Sequences are LEFT-padded in a batch, so every answer ends at
the last position and only the last ``max answer length + 1`` positions' logits are computed.

Guards (no NaN/inf ever leaves this module): an answer that is missing or empty after stripping has
no token to score; its ``nll`` is NaN in the cache and is imputed with the median of the model's
scored probes in the vector (the count is recorded as ``settings.n_imputed``). A one-token answer is
scored on that one token. Every per-probe value is clipped to [0, ``NLL_CAP``].

Normalisation: the vector is ``nll / ||nll||`` (unit L2, like the logit footprint), so both kinds
are unit vectors of the same dimension (N = number of probes = K). The level the unit norm removes,
the mean NLL, is kept in ``settings.mean_nll``.

Per-probe NLLs are cached as JSON per (probe set, scorer, settings, model[, given answers]) under
``cache_dir()/descriptors/perplexity/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from descriptors.probes import ProbeSet
from descriptors.types import Descriptor, DescriptorError
from router_core.data import unwrap_recorded
from router_core.paths import cache_dir, write_atomic

log = logging.getLogger(__name__)

DEFAULT_SCORER = "smollm2-135m"
NLL_CAP = 30.0


@dataclass(frozen=True)
class ScoreSettings:
    max_prompt_tokens: int = 128
    max_answer_tokens: int = 64
    batch_size: int = 16

    def key(self) -> str:
        # batch size does not change the numbers (beyond float noise): not part of the cache key
        return f"p{self.max_prompt_tokens}-a{self.max_answer_tokens}"


# ---------------------------------------------------------------------------------------------
# recorded answers


def unwrap_answer(raw: Any) -> str | None:
    """A recorded answer as text (RouterBench's ``"['A']"`` unwrapped, items joined by newlines);
    None / NaN -> None."""
    return unwrap_recorded(raw, "\n")


def recorded_models(benchmark: str, data_dir: Path | None = None) -> list[str]:
    """Models with recorded answers in the shared data."""
    import pandas as pd

    from router_core.paths import default_data_dir

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if benchmark == "routerbench":
        cols = pd.read_parquet(root / "routerbench_subset" / "routerbench_subset.parquet").columns
        return sorted(c[: -len("|model_response")] for c in cols if c.endswith("|model_response"))
    df = pd.read_parquet(root / "mmlu_pro" / "responses.parquet", columns=["model"])
    return sorted(df["model"].unique().tolist())


def recorded_answers(probes: ProbeSet, model: str, data_dir: Path | None = None) -> list[str | None]:
    """The model's recorded answer to each probe (None where it has none)."""
    import pandas as pd

    from router_core.data import load_benchmark
    from router_core.paths import default_data_dir

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if probes.benchmark == "routerbench":
        col = f"{model}|model_response"
        df = pd.read_parquet(root / "routerbench_subset" / "routerbench_subset.parquet")
        if col not in df.columns:
            raise DescriptorError(f"routerbench has no recorded answers of {model!r}")
        row = {pid: i for i, pid in enumerate(load_benchmark("routerbench", root).prompt_ids)}
        return [unwrap_answer(df[col].iloc[row[pid]]) for pid in probes.prompt_ids]
    df = pd.read_parquet(root / "mmlu_pro" / "responses.parquet", columns=["question_id", "model", "response"])
    df = df[df["model"] == model]
    if df.empty:
        raise DescriptorError(f"mmlu_pro has no recorded answers of {model!r}")
    by_id = {str(q): r for q, r in zip(df["question_id"], df["response"], strict=True)}
    return [unwrap_answer(by_id.get(pid)) for pid in probes.prompt_ids]


# ---------------------------------------------------------------------------------------------
# scoring


def answer_nll(lm: Any, prompts: Sequence[str], answers: Sequence[str | None], settings: ScoreSettings) -> np.ndarray:
    """Mean NLL per answer token, conditioned on the prompt: (P,) float64, NaN where nothing to score."""
    import torch

    seqs: list[tuple[int, list[int], int]] = []  # (probe index, ids, number of answer tokens)
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        a = lm.encode(" " + answer.strip())[: settings.max_answer_tokens] if answer and answer.strip() else []
        if not a:
            continue
        p = lm.encode(prompt.rstrip())[-settings.max_prompt_tokens :]
        bos = [lm.bos_id] if lm.bos_id is not None else []
        seqs.append((i, bos + p + a, len(a)))
    out = np.full(len(prompts), np.nan)
    seqs.sort(key=lambda s: len(s[1]))  # similar lengths per batch: less padding
    for start in range(0, len(seqs), settings.batch_size):
        batch = seqs[start : start + settings.batch_size]
        width = max(len(ids) for _, ids, _ in batch)
        keep = max(n for _, _, n in batch) + 1  # logits for the answers (+ the last prompt position)
        ids = torch.full((len(batch), width), lm.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (_, seq, _) in enumerate(batch):
            ids[r, width - len(seq) :] = torch.tensor(seq)
            mask[r, width - len(seq) :] = 1
        pos = (mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding: positions start at each row's first token
        with torch.inference_mode():
            logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, keep-1, V): predicts ids[:, -(keep-1):]
        target = ids[:, width - keep + 1 :]  # (B, keep-1)
        tok_nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, keep-1)
        for r, (i, _, n) in enumerate(batch):
            out[i] = float(tok_nll[r, -n:].mean())
    return np.where(np.isnan(out), np.nan, np.clip(np.nan_to_num(out, nan=0.0, posinf=NLL_CAP), 0.0, NLL_CAP))


def fingerprint_vector(nll: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-probe NLLs (NaN = unscored) -> (unit vector (P,), number imputed). See the module doc."""
    nll = np.asarray(nll, dtype=np.float64)
    scored = np.isfinite(nll)
    if not scored.any():
        raise DescriptorError("no probe answer could be scored (all missing or empty)")
    filled = np.where(scored, nll, float(np.median(nll[scored])))
    norm = float(np.linalg.norm(filled))
    if norm == 0.0:  # every answer predicted perfectly: a valid, if odd, fingerprint
        return np.full(len(filled), 1.0 / math.sqrt(len(filled))), int((~scored).sum())
    return filled / norm, int((~scored).sum())


def _cache_path(
    probes: ProbeSet, scorer_id: str, settings: ScoreSettings, model: str, answers: Sequence[str | None] | None
) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model)[:80]
    # distinct even when sanitising collides; given answers get their own entry (never the recorded one's)
    key = model if answers is None else json.dumps([model, list(answers)])
    tag = hashlib.sha256(key.encode()).hexdigest()[:8]
    return (
        cache_dir() / "descriptors" / "perplexity" / probes.id / re.sub(r"[^A-Za-z0-9._@-]+", "_", scorer_id)
        / settings.key() / f"{safe}-{tag}.json"
    )


def perplexity_descriptor(
    model: str,
    probes: ProbeSet,
    lm: Any,
    answers: Sequence[str | None] | None = None,
    settings: ScoreSettings | None = None,
    data_dir: Path | None = None,
    use_cache: bool = True,
) -> Descriptor:
    """The perplexity fingerprint of ``model``: from ``answers`` (one per probe) or, when None, from
    its recorded answers in the shared data. ``lm`` is the scorer (``descriptors.lm.load_lm``)."""
    settings = settings or ScoreSettings()
    path = _cache_path(probes, lm.scorer_id, settings, model, answers)
    if use_cache and path.exists():
        nll = np.array([np.nan if v is None else v for v in json.loads(path.read_text())["nll"]], dtype=np.float64)
    else:
        if answers is None:
            answers = recorded_answers(probes, model, data_dir)
        if len(answers) != len(probes):
            raise DescriptorError(f"{model}: {len(answers)} answers for {len(probes)} probes")
        nll = answer_nll(lm, probes.texts, answers, settings)
        if use_cache:
            write_atomic(path, json.dumps({"model": model, "nll": [None if np.isnan(v) else float(v) for v in nll]}))
    vec, n_imputed = fingerprint_vector(nll)
    return Descriptor(
        vector=[float(v) for v in vec],
        kind="perplexity",
        probe_set=probes.id,
        scorer=lm.scorer_id,
        model=model,
        settings={
            **asdict(settings),
            "conditioning": "prompt",
            "normalisation": "l2(nll), missing -> median",
            "n_imputed": n_imputed,
            "mean_nll": float(np.nanmean(nll)),
        },
    )
