"""The ONNX Runtime encoders: exported from the packaged MiniLM, they must give MiniLM's vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from router_core.encoder import Encoder, onnx_model_path

TEXTS = [
    "Which of these routes is cheapest while still answering the question correctly?",
    "Write a python function to count the number of non-empty substrings of a given string.",
    "Lasers are used in surgery for\nA) making fine incisions.\nB) disinfecting instruments.\nAnswer:",
    "word " * 400,  # past the 256-token window: truncated the same way as sentence-transformers
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize(("name", "min_cos"), [("minilm-onnx", 0.9999), ("minilm-onnx-int8", 0.97)])
def test_onnx_encoders_reproduce_minilm(
    name: str, min_cos: float, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CSCR_CACHE_DIR", str(cache))
    ref = Encoder("minilm").encode_batch(TEXTS)
    got = Encoder(name).encode_batch(TEXTS)
    assert got.shape == ref.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert (got * ref).sum(axis=1).min() > min_cos
    # built once into the cache, then reused: a second load does not export again
    path = onnx_model_path(name)
    assert path.is_relative_to(cache) and path.exists()
    mtime = path.stat().st_mtime_ns
    Encoder(name).encode(TEXTS[0])
    assert onnx_model_path(name).stat().st_mtime_ns == mtime
    # one prompt at a time (the gateway's case) gives the batch's vectors: padding does not leak in
    np.testing.assert_allclose(Encoder(name).encode(TEXTS[1]), got[1], atol=1e-5)
