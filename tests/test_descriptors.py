"""Descriptors: probe set, perplexity fingerprints, logit footprints, one space for both.

Fast tests use hand-made numbers; ``slow`` ones load the real packaged LMs (SmolLM2-135M, Gemma-3-270M)
with tiny settings. The first slow run on a machine converts each GGUF into the cache (~1-2 min each);
later loads take ~1 s. A missing model package skips, with the reason, instead of failing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from descriptors.logit import FootprintSettings, basis_index, logit_descriptor, project
from descriptors.perplexity import ScoreSettings, answer_nll, fingerprint_vector, perplexity_descriptor, unwrap_answer
from descriptors.probes import ProbeSet, build_probe_set
from descriptors.types import Descriptor, DescriptorError
from router_core.paths import write_atomic

ROOT = Path(__file__).resolve().parents[1]


def _data_or_skip() -> None:
    from router_core.paths import default_data_dir

    try:
        default_data_dir()
    except FileNotFoundError as exc:
        pytest.skip(f"shared data not available: {exc}")


def _toy_probes(texts: list[str]) -> ProbeSet:
    return ProbeSet("toy", 0, tuple(str(i) for i in range(len(texts))), tuple(texts), (("toy", "0"),))


# ---------------------------------------------------------------------------------------------
# fast: pure logic


def test_unwrap_answer() -> None:
    assert unwrap_answer("['A']") == "A"
    assert unwrap_answer("['x', 'y']") == "x\ny"
    assert unwrap_answer("[not a literal") == "[not a literal"
    assert unwrap_answer(None) is None and unwrap_answer(float("nan")) is None
    assert unwrap_answer("plain") == "plain"


def test_fingerprint_vector_guards() -> None:
    vec, n_imp = fingerprint_vector(np.array([1.0, np.nan, 3.0, 2.0]))
    assert n_imp == 1 and np.all(np.isfinite(vec)) and abs(np.linalg.norm(vec) - 1) < 1e-9
    assert vec[1] == pytest.approx(vec[3])  # imputed with the median (2.0)
    zero, _ = fingerprint_vector(np.zeros(4))
    assert np.all(np.isfinite(zero)) and abs(np.linalg.norm(zero) - 1) < 1e-9
    with pytest.raises(DescriptorError):
        fingerprint_vector(np.full(3, np.nan))


def test_string_basis_maps_different_tokenizers_onto_one_space() -> None:
    basis = ["the", "a", "."]
    bpe = ["Ġthe", " the", "The", "x", ".", " a"]  # GPT-2 style ids; "Ġthe" is not decoded: no match
    sp = ["the", "▁x", " A", " .", "zz"]
    ids1, cols1 = basis_index(bpe, basis)
    ids2, cols2 = basis_index(sp, basis)
    assert list(zip(ids1, cols1, strict=True)) == [(1, 0), (2, 0), (4, 2), (5, 1)]
    assert list(zip(ids2, cols2, strict=True)) == [(0, 0), (2, 1), (3, 2)]
    v = project(np.array([0.0, 0.3, 0.3, 0.1, 0.2, 0.1]), ids1, cols1, 3)
    assert v.shape == (3,) and abs(np.linalg.norm(v) - 1) < 1e-9 and v[0] > v[2] > v[1]
    with pytest.raises(DescriptorError):
        project(np.zeros(6), ids1, cols1, 3)


def test_descriptor_file_round_trip_and_rejects_non_finite(tmp_path: Path) -> None:
    d = Descriptor([0.6, 0.8], "logit", "p", "s@1", "m", {"k": 2})
    d.save(tmp_path / "d.json")
    assert Descriptor.load(tmp_path / "d.json") == d
    assert json.loads((tmp_path / "d.json").read_text())["vector"] == [0.6, 0.8]  # what gateway reads
    with pytest.raises(DescriptorError):
        Descriptor([float("nan")], "logit", "p", "s", "m")
    with pytest.raises(DescriptorError):
        Descriptor([1.0], "other", "p", "s", "m")


def test_atomic_write_leaves_other_writers_and_failures_alone(tmp_path: Path) -> None:
    """``Descriptor.save``, the descriptor caches and the probe file write through one helper."""
    path = tmp_path / "d.json"
    other = path.with_name(path.name + ".tmp")  # another writer's temporary file, half written
    other.write_text("half of another writer's file")
    d = Descriptor([0.6, 0.8], "logit", "p", "s@1", "m")
    d.save(path)
    assert Descriptor.load(path) == d
    assert other.read_text() == "half of another writer's file"  # not written into, not renamed away
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, "\ud800")  # fails mid-write: the old file stays, no temporary file is left
    assert Descriptor.load(path) == d and sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "d.json.tmp"]
    write_atomic(tmp_path / "new" / "x.bin", b"\x00\xff")
    assert (tmp_path / "new" / "x.bin").read_bytes() == b"\x00\xff"


def test_probe_set_is_seeded_and_versioned() -> None:
    _data_or_skip()
    a, b = build_probe_set(n=16, seed=0), build_probe_set(n=16, seed=0)
    c = build_probe_set(n=16, seed=1)
    assert a.id == b.id and a.id.startswith("routerbench-n16-s0-") and a.id != c.id
    from router_core.data import load_benchmark

    bench = load_benchmark("routerbench")
    train = {pid for pid, s in zip(bench.prompt_ids, bench.split, strict=True) if s == "train"}
    assert set(a.prompt_ids) <= train
    assert a.string_basis(16) == b.string_basis(16) and len(set(a.string_basis(16))) == 16


def test_recorded_answers_from_both_benchmarks() -> None:
    _data_or_skip()
    from descriptors.perplexity import recorded_answers, recorded_models

    rb = build_probe_set(n=4)
    assert len(recorded_models("routerbench")) == 11
    letters = recorded_answers(rb, "gpt-4-1106-preview")
    assert all(a is not None and not a.startswith("[") for a in letters)  # list literal unwrapped
    mmlu = build_probe_set("mmlu_pro", n=4)
    models = recorded_models("mmlu_pro")
    assert len(models) == 31
    answers = recorded_answers(mmlu, models[0])
    assert len(answers) == 4 and any(a for a in answers)
    with pytest.raises(DescriptorError):
        recorded_answers(rb, "no-such-model")


def test_descriptors_import_no_heavy_module() -> None:
    code = (
        "import sys, descriptors.types, descriptors.probes, descriptors.lm, descriptors.perplexity,"
        " descriptors.logit, descriptors.cli;"
        "print(','.join(m for m in ('torch', 'transformers', 'gateway') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""


# ---------------------------------------------------------------------------------------------
# slow: real LMs


def _load_or_skip(name: str) -> Any:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gguf", reason="GGUF loading needs `gguf` (pip install gguf)")
    pytest.importorskip("accelerate", reason="GGUF loading needs `accelerate`")
    from descriptors.lm import PACKAGED, load_lm

    dists = [PACKAGED[name]] + ([f"{PACKAGED[name]}-part{i}" for i in range(1, 5)] if name == "gemma3-270m" else [])
    for dist in dists:
        try:
            version(dist)
        except PackageNotFoundError:
            pytest.skip(f"model package {dist} not installed (see docs/DESCRIPTORS.md)")
    return load_lm(name, threads=2)


@pytest.fixture(scope="module")
def smol() -> Any:
    return _load_or_skip("smollm2-135m")


@pytest.fixture(scope="module")
def gemma() -> Any:
    return _load_or_skip("gemma3-270m")


@pytest.fixture(scope="module")
def probes() -> ProbeSet:
    _data_or_skip()
    return build_probe_set(n=6, seed=0)


TINY_FP = FootprintSettings(new_tokens=3, max_prompt_tokens=32, batch_size=3)
TINY_PPL = ScoreSettings(max_prompt_tokens=32, max_answer_tokens=16, batch_size=4)


@pytest.mark.slow
def test_answer_nll_guards_and_batching(smol: Any) -> None:
    prompts = ["Question: 2+2=?\nAnswer:"] * 4 + ["Name a colour.\nAnswer:"]
    answers: list[str | None] = ["", None, "4", "4", "Blue is a colour of the sky."]
    one = answer_nll(smol, prompts, answers, ScoreSettings(batch_size=1))
    many = answer_nll(smol, prompts, answers, ScoreSettings(batch_size=8))
    assert np.isnan(one[:2]).all() and np.isfinite(one[2:]).all()  # empty / missing: nothing scored
    assert one[2] == pytest.approx(one[3]) and np.allclose(one[2:], many[2:], atol=1e-3)  # padding-invariant
    conditioned_off = answer_nll(smol, ["Name a colour.\nAnswer:"], ["4"], ScoreSettings())
    assert conditioned_off[0] != pytest.approx(one[2], abs=1e-3)  # the prompt conditions the answer


@pytest.mark.slow
def test_perplexity_fingerprint_of_recorded_answers(smol: Any, probes: ProbeSet) -> None:
    a = perplexity_descriptor("gpt-4-1106-preview", probes, smol, settings=TINY_PPL, use_cache=False)
    b = perplexity_descriptor("meta/llama-2-70b-chat", probes, smol, settings=TINY_PPL, use_cache=False)
    for d in (a, b):
        assert d.dim == len(probes) and np.all(np.isfinite(d.vector))
        assert abs(np.linalg.norm(d.vector) - 1) < 1e-6
        assert d.probe_set == probes.id and d.scorer.startswith("smollm2-135m@") and d.settings["conditioning"]
    assert not np.allclose(a.vector, b.vector, atol=1e-3)
    empty = perplexity_descriptor("m", probes, smol, answers=[""] * (len(probes) - 1) + ["B"], settings=TINY_PPL,
                                  use_cache=False)
    assert empty.settings["n_imputed"] == len(probes) - 1 and np.all(np.isfinite(empty.vector))


@pytest.mark.slow
def test_logit_footprints_stable_and_distinguishable_across_tokenizers(
    smol: Any, gemma: Any, probes: ProbeSet
) -> None:
    s1 = logit_descriptor(smol, probes, TINY_FP)
    s2 = logit_descriptor(smol, probes, FootprintSettings(new_tokens=3, max_prompt_tokens=32, batch_size=6))
    g1 = logit_descriptor(gemma, probes, TINY_FP)
    g2 = logit_descriptor(gemma, probes, TINY_FP)
    assert np.allclose(s1.vector, s2.vector, atol=1e-4)  # same inputs (any batching) -> same vector
    assert np.allclose(g1.vector, g2.vector, atol=1e-4)
    assert s1.dim == g1.dim == len(probes)  # one space although the vocabularies differ (49k vs 262k ids)
    assert s1.settings["basis_sha256"] == g1.settings["basis_sha256"]
    between = float(np.dot(s1.vector, g1.vector))
    assert between < 0.99 and np.linalg.norm(np.subtract(s1.vector, g1.vector)) > 10 * np.linalg.norm(
        np.subtract(s1.vector, s2.vector)
    ) + 1e-3


@pytest.mark.slow
def test_mixed_pool_logit_and_text_footprints_share_one_index(smol: Any, gemma: Any) -> None:
    """Open-weight models by their logit footprints, API-style models by the text footprint of their
    answers, in one index: each model's logit footprint finds its OWN answers' footprint first
    (measured on 32 probes: SmolLM2 0.962 own vs 0.865 Gemma's; Gemma 0.945 own vs 0.867)."""
    pytest.importorskip("faiss")
    from descriptors.logit import mean_next_token_probs, text_footprint
    from router_core.index import ExpertIndex

    _data_or_skip()
    probes = build_probe_set(n=32, seed=1)
    fs = FootprintSettings(new_tokens=10, max_prompt_tokens=64, batch_size=8)
    basis = probes.string_basis(len(probes))
    logit, text = {}, {}
    for name, lm in (("smollm2", smol), ("gemma", gemma)):
        generated: list[list[int]] = []
        probs = mean_next_token_probs(lm, probes.texts, fs, generated)
        ids, cols = basis_index(lm.token_strings(), basis)
        logit[name] = project(probs, ids, cols, len(basis))
        answers = [lm.tokenizer.decode(g, skip_special_tokens=True) for g in generated]
        d = text_footprint(f"{name} answers", probes, answers, smol, fs)  # one reference tokenizer for all text
        assert d.kind == "logit" and d.dim == len(probes) and d.settings["source"] == "text"
        text[name] = np.asarray(d.vector)
    index = ExpertIndex([f"{n} (text)" for n in text], np.array(list(text.values()), dtype=np.float32))
    for name in logit:
        sims, names = index.search(logit[name].astype(np.float32))
        assert names[0] == f"{name} (text)", (name, names, sims)
        assert sims[0] - sims[1] > 0.03 and np.all(np.isfinite(sims))


@pytest.mark.slow
def test_perplexity_cache_keeps_given_answers_apart(
    smol: Any, probes: ProbeSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CSCR_CACHE_DIR", str(tmp_path))
    short = ["A"] * len(probes)
    long = ["The answer is B, because the question says so."] * len(probes)
    first = perplexity_descriptor("same-name", probes, smol, answers=short, settings=TINY_PPL)
    other = perplexity_descriptor("same-name", probes, smol, answers=long, settings=TINY_PPL)
    again = perplexity_descriptor("same-name", probes, smol, answers=short, settings=TINY_PPL)
    assert first.vector == again.vector and first.settings["mean_nll"] != other.settings["mean_nll"]
    assert len(list((tmp_path / "descriptors" / "perplexity").rglob("*.json"))) == 2
