"""model2vec's ``StaticModel.encode`` for one text, without its per-call overhead: the same vector.

``StaticModel.encode([text])`` spends ~0.45 ms on a 1,000-character prompt, and less than a tenth of
that is the arithmetic: the rest is its batching and progress-bar machinery, re-setting the
tokenizer's truncation twice per call, a float16 gather (numpy casts float16 slowly), and the Rust
tokenizer's alignment bookkeeping (~0.25 ms of its own). ``StaticEncoder`` does exactly what
``StaticModel._encode_batch`` does for one text, in the same order and dtypes, in ~0.1 ms:

1. cut the text to ``max_length × median_token_length`` characters (model2vec's pre-cut);
2. token ids without special tokens, truncated to ``max_length`` tokens, unknown-token ids dropped;
3. mean of the embedding rows (float32 sums of the float16 table, rounded back to its dtype);
4. when the model normalises: divide by the L2 norm (+1e-32) in float32, rounded to the table's dtype.

Step 2 has a fast path for the BERT tokenizer (``BertNormalizer`` + ``BertPreTokenizer`` +
``WordPiece``, what a model distilled from MiniLM has) on ASCII text, where the normaliser only drops
control characters and lower-cases, and the pre-tokeniser splits into runs of letters and digits and
single punctuation marks: a regex, then each word's word pieces from a bounded cache (the Rust
WordPiece model fills misses). Anything else (non-ASCII text, a special token spelled out in the
text, another tokenizer) goes through the Rust tokenizer. ``tests/test_static_encoder.py`` checks
the vectors are bit-identical to model2vec's over the benchmark prompts and answers.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

# BertNormalizer(clean_text) drops NUL and control characters (Unicode "other"; in ASCII these) but
# keeps \t \n \r, which it maps to spaces like every other whitespace: the pre-tokeniser splits on it.
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# BertPreTokenizer on lower-cased ASCII: whitespace separates, every punctuation mark is its own word
# (all printable ASCII that is neither a letter, a digit nor a space is punctuation to it).
_ASCII_WORD = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")
_CACHE_WORDS = 1 << 16  # word -> word pieces; cleared when full (distinct words of user text are unbounded)


class StaticEncoder:
    """``encode(text)`` = ``StaticModel.encode([text])[0]`` for a loaded model2vec ``StaticModel``."""

    def __init__(self, model: Any) -> None:
        from tokenizers import Tokenizer

        self.max_length: int | None = model.max_length
        self.max_chars = None if self.max_length is None else self.max_length * model.median_token_length
        self.unk = model.unk_token_id
        self.normalize = bool(model.normalize)
        self.dtype = model.embedding.dtype
        self.direct = (model.token_mapping is None and model.weights is None
                       and self.dtype in (np.dtype(np.float16), np.dtype(np.float32)))
        # the table in the dtype model2vec sums in (float16 -> float32 is exact; numpy's cast is slow
        # enough to cost 0.08 ms a request). The model, with its float16 copy, is not kept: +15 MB, not +30.
        self.table = np.ascontiguousarray(model.embedding, dtype=np.float32) if self.direct else None
        self.model = None if self.direct else model  # weighted, remapped or quantised tables: model2vec's code
        # a copy when the model stays (model2vec re-sets truncation on its own during every encode)
        self.tokenizer = model.tokenizer if self.model is None else Tokenizer.from_str(model.tokenizer.to_str())
        if self.max_length is None:
            self.tokenizer.no_truncation()
        else:
            self.tokenizer.enable_truncation(self.max_length)
        self._pieces: Tokenizer | None = None
        self._added: list[str] = []
        self._cache: dict[str, list[int]] = {}
        spec = json.loads(self.tokenizer.to_str())
        norm, pre, wp = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}, spec.get("model") or {}
        # accents and CJK handling do not touch ASCII; cleaning and lower-casing do, so they must be on
        if (norm.get("type") == "BertNormalizer" and norm.get("clean_text") and norm.get("lowercase")
                and pre.get("type") == "BertPreTokenizer" and wp.get("type") == "WordPiece"):
            pieces = Tokenizer.from_str(self.tokenizer.to_str())  # the WordPiece model alone, on one word
            pieces.normalizer = None
            pieces.pre_tokenizer = None
            pieces.no_truncation()
            pieces.no_padding()
            self._pieces = pieces
            self._added = [t.content.lower() for t in self.tokenizer.get_added_tokens_decoder().values()]

    def ids(self, text: str) -> list[int]:
        """Token ids as ``StaticModel.tokenize`` gives them for ``text`` (already cut to ``max_chars``)."""
        ids = self._ascii_ids(text) if self._pieces is not None and text.isascii() else None
        if ids is None:
            ids = self.tokenizer.encode_batch_fast([text], add_special_tokens=False)[0].ids
        if self.unk is not None:
            ids = [i for i in ids if i != self.unk]
        return ids

    def _ascii_ids(self, text: str) -> list[int] | None:
        low = _ASCII_CONTROL.sub("", text).lower()
        if any(tok in low for tok in self._added):  # e.g. "[UNK]" in the text: the Rust path matches it
            return None
        words = _ASCII_WORD.findall(low)
        cache = self._cache  # this call's view: another thread may start a new cache meanwhile
        missing = [w for w in dict.fromkeys(words) if w not in cache]
        new: dict[str, list[int]] = {}
        if missing:
            assert self._pieces is not None
            encodings = self._pieces.encode_batch_fast(missing, add_special_tokens=False)
            new = {w: enc.ids for w, enc in zip(missing, encodings, strict=True)}
            if len(cache) + len(new) > _CACHE_WORDS:
                self._cache = new  # start over rather than evict: misses cost ~2 µs a word
            else:
                cache.update(new)
        limit = self.max_length
        out: list[int] = []
        for w in words:
            pieces = cache.get(w)
            out += new[w] if pieces is None else pieces
            if limit is not None and len(out) >= limit:
                return out[:limit]
        return out

    def encode(self, text: str) -> np.ndarray:
        """(D,) in the model's dtype, exactly as model2vec returns it."""
        if self.model is not None:
            return np.asarray(self.model.encode([text], show_progress_bar=False, use_multiprocessing=False))[0]
        assert self.table is not None
        if self.max_chars is not None:
            text = text[: self.max_chars]
        ids = self.ids(text)
        if not ids:
            return np.zeros(self.table.shape[1], dtype=self.dtype)
        # (1, D) throughout: model2vec's mean and norm run on a 2-D batch, and np.linalg.norm sums a row
        # differently from a 1-D vector (pairwise vs BLAS dot); the same calls give the same bits
        mean = (self.table[ids].sum(axis=0, keepdims=True) / np.float32(len(ids))).astype(self.dtype)
        if not self.normalize:
            return mean[0]
        out32 = mean.astype(np.float32)
        return (out32 / (np.linalg.norm(out32, axis=1, keepdims=True) + 1e-32)).astype(self.dtype)[0]
