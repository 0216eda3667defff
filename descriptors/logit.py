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

Models without logits (API models) get a footprint in the SAME space from their answers: the
**text footprint** (``text_footprint``) counts the first T tokens of each probe answer, as strings
on the same basis (tokenised by one reference tokenizer, the scorer's). Under greedy decoding the
tokens a model emits are draws from (the mode of) the distributions the logit footprint averages,
so the two estimate one quantity; ``tests/test_descriptors.py`` checks that a model's logit
footprint is nearer its own text footprint than another model's. (Two things differ and are
documented, not hidden: the logit footprint is made on the raw probe text, recorded answers
answer the benchmark's chat prompt; and counts of argmax tokens are sharper than mean
probabilities.) Logit-footprinted open-weight models and text-footprinted API models can so share
one index.
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


def mean_next_token_probs(
    lm: Any, texts: Sequence[str], settings: FootprintSettings, generated: list[list[int]] | None = None
) -> np.ndarray:
    """p̄ (V,): softmax of the raw logits, averaged over T greedy steps and all probes. When
    ``generated`` is a list, the greedy tokens of every probe are put in it (probe order)."""
    import torch

    seqs = []
    for t in texts:
        ids = lm.encode(t.rstrip())[-settings.max_prompt_tokens :]
        seqs.append(([lm.bos_id] if lm.bos_id is not None else []) + ids)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    total: torch.Tensor | None = None
    greedy: dict[int, list[int]] = {}
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
        for r, i in enumerate(order[start : start + settings.batch_size]):
            greedy[i] = out.sequences[r, width:].tolist()
        step_sum = probs.sum(dim=(0, 1))  # (V,)
        total = step_sum if total is None else total + step_sum
    assert total is not None, "no probe texts"
    if generated is not None:
        generated[:] = [greedy[i] for i in range(len(seqs))]
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


def text_counts(tokenizer_lm: Any, answers: Sequence[str | None], basis: Sequence[str], new_tokens: int) -> np.ndarray:
    """Counts (K,) of the first ``new_tokens`` tokens of every answer (``tokenizer_lm``'s tokenizer,
    each token decoded alone, stripped, lower-cased) on the string basis. Missing answers add nothing."""
    ids, cols = basis_index(tokenizer_lm.token_strings(), basis)
    col_of = dict(zip(ids.tolist(), cols.tolist(), strict=True))
    counts = np.zeros(len(basis), dtype=np.float64)
    for answer in answers:
        if not answer or not answer.strip():
            continue
        for tok in tokenizer_lm.encode(" " + answer.strip())[:new_tokens]:
            j = col_of.get(tok)
            if j is not None:
                counts[j] += 1.0
    return counts


def text_footprint(
    model: str,
    probes: ProbeSet,
    answers: Sequence[str | None],
    tokenizer_lm: Any,
    settings: FootprintSettings | None = None,
) -> Descriptor:
    """The footprint of a model known only by its answers (one per probe): same basis, same K, same
    kind as ``logit_descriptor`` (see the module doc). ``tokenizer_lm`` is the reference tokenizer."""
    settings = settings or FootprintSettings()
    if len(answers) != len(probes):
        raise DescriptorError(f"{model}: {len(answers)} answers for {len(probes)} probes")
    k = settings.k if settings.k is not None else len(probes)
    basis = probes.string_basis(k)
    counts = text_counts(tokenizer_lm, answers, basis, settings.new_tokens)
    norm = float(np.linalg.norm(counts))
    if norm == 0.0:
        raise DescriptorError(f"{model}: no answer token falls on the basis (answers missing?)")
    n_answered = sum(bool(a and a.strip()) for a in answers)
    return Descriptor(
        vector=[float(v) for v in counts / norm],
        kind="logit",
        probe_set=probes.id,
        scorer=f"text@{tokenizer_lm.scorer_id}",
        model=model,
        settings={
            **asdict(settings),
            "k": k,
            "source": "text",
            "basis": "string-words-v1",
            "basis_sha256": hashlib.sha256("\n".join(basis).encode()).hexdigest()[:12],
            "answered": n_answered,
            "basis_tokens": int(counts.sum()),
        },
    )
