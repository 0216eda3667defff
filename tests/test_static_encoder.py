"""``StaticEncoder`` (one prompt per call, the gateway's case) gives model2vec's own vectors, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from router_core.encoder import Encoder, routing_text, static_model_dir
from router_core.static_encoder import StaticEncoder

TEXTS = [
    "",
    " ",
    "\t\n\r",
    "\x00",
    "a\x0bb\x1cc\x7fd\x1fe\x0cf",  # control characters: dropped by the normaliser, not word breaks
    "Which of these routes is cheapest while still answering the question correctly?",
    "Lasers are used in surgery for\nA) making fine incisions.\nB) disinfecting instruments.\nAnswer:",
    "def f(x):\n    return x**2 + 1  # squares_and_one; see https://example.com/a?b=c&d=e~f",
    "foo_bar-baz/qux~`{}|^ [] <> @#$%",
    "MiXeD CaSe WoRdS AND UPPER CASE, 1234567890 3.14159 1e-9",
    "x" * 100,  # WordPiece's longest word
    "x" * 101,  # one char over: the unknown token, which model2vec drops
    "[UNK] and [PAD] spelled out, [unk] in lower case",
    "héllo wörld: “curly quotes”, an em dash — and café",
    "日本語のテキストと中文字符 mixed with English",
    "emoji 🙂🚀 and math ∑ ∫ √ ≤ ≥",
    "word " * 3000,  # past the 512-token window and model2vec's 3,072-character cut
    "supercalifragilisticexpialidocious antidisestablishmentarianism " * 40,
    "ab" * 2000,  # one very long word: the character cut decides
]


@pytest.fixture(scope="module")
def model() -> object:
    from model2vec import StaticModel

    return StaticModel.from_pretrained(str(static_model_dir()))


def reference(model: object, texts: list[str]) -> np.ndarray:
    return np.asarray(model.encode(texts, show_progress_bar=False, use_multiprocessing=False))  # type: ignore[attr-defined]


def test_same_vectors_as_model2vec(model: object) -> None:
    enc = StaticEncoder(model)
    texts = TEXTS + [routing_text(t) for t in TEXTS]
    ref = reference(model, texts)
    for text, want in zip(texts, ref, strict=True):
        got = enc.encode(text)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want, err_msg=repr(text[:60]))
    for text in TEXTS:  # the ASCII fast path and the Rust tokenizer give the same ids
        assert enc.ids(text[: enc.max_chars]) == model.tokenize([text[: enc.max_chars]])[0]  # type: ignore[attr-defined]


def test_word_cache_starts_over_when_full(model: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import router_core.static_encoder as se

    monkeypatch.setattr(se, "_CACHE_WORDS", 8)
    enc = StaticEncoder(model)
    texts = [f"prompt number {i}: alpha beta gamma delta epsilon zeta eta theta iota kappa" for i in range(5)]
    ref = reference(model, texts)
    for text, want in zip(texts, ref, strict=True):
        np.testing.assert_array_equal(enc.encode(text), want)
        assert len(enc._cache) <= 16


def test_benchmark_prompts_and_answers(model: object, benchmark_data_dir: Path) -> None:
    """Every RouterBench prompt (and its routing text) and a slice of recorded answers: real text,
    ASCII and not, short and long."""
    import pandas as pd

    df = pd.read_parquet(benchmark_data_dir / "routerbench_subset" / "routerbench_subset.parquet")
    answers = df["gpt-4-1106-preview|model_response"].dropna().astype(str).tolist()[:500]
    texts = [*df["prompt_text"], *(routing_text(p) for p in df["prompt_text"]), *answers]
    enc = StaticEncoder(model)
    ref = reference(model, texts)
    got = np.stack([enc.encode(t) for t in texts])
    np.testing.assert_array_equal(got, ref)


def test_encoder_gives_model2vec_vectors(model: object) -> None:
    """``Encoder("static-minilm")``, one text or a batch, is model2vec's vector L2-normalised."""
    enc = Encoder("static-minilm")
    ref = reference(model, TEXTS).astype(np.float32)
    ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    np.testing.assert_array_equal(enc.encode_batch(TEXTS), ref)
    np.testing.assert_array_equal(np.stack([enc.encode(t) for t in TEXTS]), ref)
