"""Logit footprints: what an open-weight model tends to say next, on a shared basis of strings.

For a transformers causal LM: each probe text (its last ``max_prompt_tokens`` tokens, after the
model's BOS when it uses one) is LEFT-padded into a batch and the model greedily generates
``new_tokens`` (T=10) tokens. At every step the softmax of the RAW next-token logits (before any
logits processor) is taken; these distributions are averaged over steps and probes: p̄ (V,).
EOS is suppressed during the greedy choice (``min_new_tokens=T``) so every probe contributes T
steps; the raw distributions still carry the EOS mass.

One space for every tokenizer: the coordinates are not token ids but the K most frequent strings
of the probe texts (``ProbeSet.string_basis``: lower-cased words and punctuation marks). Every
vocabulary id is decoded on its own, stripped of surrounding whitespace and lower-cased; its
probability goes to the basis string it equals (" The", "the", "The" -> "the"), and ids that equal
no basis string are dropped. The K-vector is L2-normalised. A model with another tokenizer
decodes to the same strings, so footprints of SmolLM2 (49k BPE ids) and Gemma-3 (262k SentencePiece
ids) are directly comparable. K defaults to the number of probes N, so logit footprints and
perplexity fingerprints have one dimension and share an index.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from descriptors.probes import ProbeSet
from descriptors.types import Descriptor, DescriptorError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FootprintSettings:
    new_tokens: int = 10
    max_prompt_tokens: int = 128
    batch_size: int = 8
    k: int | None = None  # None: the number of probes (one space with perplexity fingerprints)


def basis_index(token_strings: Sequence[str], basis: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(vocabulary ids, basis columns) of the ids whose stripped, lower-cased string is in ``basis``."""
    col = {w: j for j, w in enumerate(basis)}
    pairs = [(i, col[key]) for i, s in enumerate(token_strings) if (key := s.strip().lower()) in col]
    if not pairs:
        raise DescriptorError("no vocabulary entry matches any basis string")
    ids, cols = zip(*pairs, strict=True)
    return np.asarray(ids, dtype=np.int64), np.asarray(cols, dtype=np.int64)


def project(mean_probs: np.ndarray, ids: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """Mean next-token distribution (V,) -> unit vector on the K basis strings."""
    q = np.bincount(cols, weights=np.asarray(mean_probs, dtype=np.float64)[ids], minlength=k)  # (K,)
    norm = float(np.linalg.norm(q))
    if not np.isfinite(norm) or norm == 0.0:
        raise DescriptorError("the model puts no probability on any basis string")
    return q / norm


def mean_next_token_probs(lm: Any, texts: Sequence[str], settings: FootprintSettings) -> np.ndarray:
    """p̄ (V,): softmax of the raw logits, averaged over T greedy steps and all probes."""
    import torch

    seqs = []
    for t in texts:
        ids = lm.encode(t.rstrip())[-settings.max_prompt_tokens :]
        seqs.append(([lm.bos_id] if lm.bos_id is not None else []) + ids)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    total: torch.Tensor | None = None
    for start in range(0, len(order), settings.batch_size):
        batch = [seqs[i] for i in order[start : start + settings.batch_size]]
        width = max(len(s) for s in batch)
        ids = torch.full((len(batch), width), lm.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, s in enumerate(batch):
            ids[r, width - len(s) :] = torch.tensor(s)  # LEFT padding: every row continues at the end
            mask[r, width - len(s) :] = 1
        with torch.inference_mode():
            out = lm.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=settings.new_tokens,
                min_new_tokens=settings.new_tokens,
                do_sample=False,
                pad_token_id=lm.pad_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
        probs = torch.stack([torch.softmax(lg.float(), dim=-1) for lg in out.logits])  # (T, B, V)
        step_sum = probs.sum(dim=(0, 1))  # (V,)
        total = step_sum if total is None else total + step_sum
    assert total is not None, "no probe texts"
    return (total / (len(texts) * settings.new_tokens)).double().numpy()


def logit_descriptor(
    lm: Any, probes: ProbeSet, settings: FootprintSettings | None = None, model: str | None = None
) -> Descriptor:
    """The logit footprint of ``lm`` (``descriptors.lm.load_lm``) on ``probes``."""
    settings = settings or FootprintSettings()
    k = settings.k if settings.k is not None else len(probes)
    basis = probes.string_basis(k)
    t0 = time.perf_counter()
    ids, cols = basis_index(lm.token_strings(), basis)
    mean_probs = mean_next_token_probs(lm, probes.texts, settings)
    vec = project(mean_probs, ids, cols, k)
    seconds = time.perf_counter() - t0
    log.info("logit footprint of %s: %d probes in %.1f s", lm.name, len(probes), seconds)
    return Descriptor(
        vector=[float(v) for v in vec],
        kind="logit",
        probe_set=probes.id,
        scorer=lm.scorer_id,
        model=model or lm.name,
        settings={
            **asdict(settings),
            "k": k,
            "basis": "string-words-v1",
            "basis_sha256": hashlib.sha256("\n".join(basis).encode()).hexdigest()[:12],
            "basis_mass": float(mean_probs[ids].sum()),  # share of p̄ that landed on the basis
            "vocab_ids_mapped": len(ids),
            "seconds": round(seconds, 2),
        },
    )
