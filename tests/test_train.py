"""A tiny real training run (seconds), the embedding cache, and the ``cscr train`` CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from router_core import encoder as enc_mod
from router_core.data import Benchmark, load_benchmark
from router_core.encoder import ROUTING_TEXT_VERSION, embed_prompts, embed_texts
from router_core.model import RouterArtifact, RouterConfig
from router_core.paths import default_data_dir
from router_core.router import CSCRRouter
from router_core.train import accuracy_fingerprints, descriptor_from_probe_answers, main, train_artifact
from router_core.types import Candidate


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSCR_CACHE_DIR", str(tmp_path / "cache"))


def _data_dir() -> Path:
    try:
        path = default_data_dir()
    except FileNotFoundError as exc:
        pytest.skip(f"needs the full benchmark data: {exc}")
    if not (path / "routerbench_subset" / "routerbench_subset.parquet").exists():
        pytest.skip("RouterBench subset not found")
    return path


@pytest.fixture(scope="module")
def small_bench() -> Benchmark:
    bench = load_benchmark("routerbench", _data_dir())
    rng = np.random.default_rng(0)
    tr = rng.choice(np.flatnonzero(bench.split == "train"), 300, replace=False)
    te = rng.choice(np.flatnonzero(bench.split == "test"), 150, replace=False)
    return bench.subset(np.sort(np.concatenate([tr, te])))


def test_embedding_cache_never_re_embeds(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["alpha beta", "gamma delta", "alpha beta"]
    first = embed_texts(texts, "hash")
    assert first.shape == (3, 256) and np.allclose(np.linalg.norm(first, axis=1), 1.0)
    np.testing.assert_array_equal(first[0], first[2])

    def boom(name: str) -> None:
        raise AssertionError("re-embedded a cached text")

    monkeypatch.setattr(enc_mod, "get_encoder", boom)
    np.testing.assert_array_equal(embed_texts(texts, "hash"), first)


def test_fingerprints_shape_and_range() -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((50, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    quality = (rng.random((50, 4)) < 0.6).astype(float)
    desc, cent, probe = accuracy_fingerprints(emb, quality, probe_size=40, n_clusters=5, seed=0)
    assert desc.shape == (4, 6) and cent.shape == (5, 16) and len(probe) == 40
    assert (desc >= 0).all() and (desc <= 1).all()
    np.testing.assert_allclose(desc[:, -1], quality[probe].mean(axis=0), rtol=1e-6)


@pytest.mark.parametrize(("loss", "keys"), [("cscr", "descriptor"), ("infonce", "learned")])
def test_tiny_train_and_eval(small_bench: Benchmark, loss: str, keys: str, tmp_path: Path) -> None:
    emb = embed_prompts(small_bench.prompts, "hash", cache=False)
    cfg = RouterConfig(
        encoder="hash",
        routing_text=ROUTING_TEXT_VERSION,
        in_dim=256,
        hidden=64,
        out_dim=32,
        loss=loss,
        keys=keys,
        epochs=3,
        batch_size=128,
    )
    art = train_artifact(small_bench, emb, cfg, progress=False)
    m = art.meta["metrics_test"]
    assert 0.0 < m["audc"] <= 1.0 and 0.0 < m["peak"] <= 1.0
    assert art.meta["n_train"] == 300 and art.meta["data_versions"]
    assert len(art.meta["loss_per_epoch"]) == 3
    # seeds fix the result
    again = train_artifact(small_bench, emb, cfg, progress=False)
    np.testing.assert_allclose(again.expert_keys, art.expert_keys, atol=1e-6)
    if keys == "descriptor":  # a training model's probe answers reproduce its descriptor
        tr_ids = [pid for pid, sp in zip(small_bench.prompt_ids, small_bench.split, strict=True) if sp == "train"]
        row = {pid: i for i, pid in enumerate(small_bench.prompt_ids)}
        answers = {pid: float(small_bench.quality[row[pid], 2]) for pid in tr_ids}
        desc = art.descriptors
        assert desc is not None
        np.testing.assert_allclose(descriptor_from_probe_answers(art, answers), desc[2], atol=1e-6)
    # and the artifact serves
    art.save(tmp_path / "art")
    router = CSCRRouter(RouterArtifact.load(tmp_path / "art"))
    cands = [Candidate(n, n, float(c)) for n, c in zip(art.experts, art.mean_cost, strict=True)]
    assert sorted(router.rank(small_bench.prompts[0], cands, 0.5).names) == sorted(art.experts)


def test_cli_writes_an_artifact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-art"
    rc = main(
        [
            "--benchmark",
            "routerbench",
            "--data",
            str(_data_dir()),
            "--out",
            str(out),
            "--encoder",
            "hash",
            "--epochs",
            "2",
            "--max-train",
            "200",
            "--hidden",
            "32",
            "--out-dim",
            "16",
            "--no-progress",
        ]
    )
    assert rc == 0 and "audc=" in capsys.readouterr().out
    art = RouterArtifact.load(out)
    assert art.config.encoder == "hash" and art.config.epochs == 2
    assert art.meta["command"].startswith("cscr train") and art.meta["n_train"] == 200


def test_unseen_model_joins_through_its_descriptor(small_bench: Benchmark) -> None:
    emb = embed_prompts(small_bench.prompts, "hash", cache=False)
    seen = small_bench.models[:8]
    cfg = RouterConfig(encoder="hash", in_dim=256, hidden=64, out_dim=32, loss="infonce", epochs=3, batch_size=128)
    art = train_artifact(small_bench.models_subset(seen), emb, cfg, progress=False)
    router = CSCRRouter(art)
    row = {pid: i for i, pid in enumerate(small_bench.prompt_ids)}
    for j, name in enumerate(small_bench.models[8:], start=8):
        answers = {pid: float(small_bench.quality[row[pid], j]) for pid in art.meta["probe_ids"]}
        router.add_vector(name, descriptor_from_probe_answers(art, answers))
    assert router.experts == small_bench.models
    cands = [Candidate(n, n, float(c)) for n, c in zip(small_bench.models, small_bench.cost.mean(axis=0), strict=True)]
    ranking = router.rank(small_bench.prompts[-1], cands, 0.0)
    assert all(s.similarity is not None for s in ranking.order)  # the unseen ones are routed, not appended


@pytest.mark.slow
def test_bundled_recipe_reaches_its_recorded_quality() -> None:
    """Regression guard: the bundled recipe on real data (static encoder, cached embeddings)."""
    from router_core.router import bundled_artifact_path

    monkey_cache = pytest.MonkeyPatch()
    monkey_cache.delenv("CSCR_CACHE_DIR", raising=False)  # use the real cache: the static model is costly
    try:
        bundled = RouterArtifact.load(bundled_artifact_path())
        bench = load_benchmark("routerbench", _data_dir())
        emb = embed_prompts(bench.prompts, bundled.config.encoder)
        assert bundled.descriptors is not None and bundled.config.descriptor == "perplexity"
        art = train_artifact(bench, emb, bundled.config, progress=False,
                             descriptor_set=(bundled.descriptors, bundled.meta["descriptor_spec"]))
    finally:
        monkey_cache.undo()
    assert art.meta["metrics_test"]["audc"] == pytest.approx(bundled.meta["metrics_test"]["audc"], abs=0.01)
    assert art.meta["metrics_test"]["audc"] > 0.8
    assert art.meta["descriptor_spec"] == bundled.meta["descriptor_spec"]


def test_descriptor_files_must_share_one_space(tmp_path: Path) -> None:
    import json

    from router_core.train import load_descriptor_dir

    def write(name: str, model: str, kind: str, scorer: str, basis: str = "b1") -> None:
        doc = {"vector": [0.6, 0.8], "kind": kind, "probe_set": "ps", "scorer": scorer, "model": model,
               "settings": {"basis_sha256": basis, "max_answer_tokens": 64}}
        (tmp_path / name).write_text(json.dumps(doc))

    write("a.json", "m1", "perplexity", "smol@1")
    write("b.json", "m2", "perplexity", "smol@1")
    vecs, spec = load_descriptor_dir(tmp_path, ["m2", "m1"])
    assert vecs.shape == (2, 2) and spec["scorer"] == "smol@1" and spec["settings"]["max_answer_tokens"] == 64
    with pytest.raises(ValueError, match="no descriptor file"):
        load_descriptor_dir(tmp_path, ["m1", "m3"])
    write("b.json", "m2", "perplexity", "other@2")
    with pytest.raises(ValueError, match="different kinds"):
        load_descriptor_dir(tmp_path, ["m1", "m2"])
    # logit footprints are each made by their own model: one space when the string basis agrees
    write("a.json", "m1", "logit", "smollm2@1")
    write("b.json", "m2", "logit", "text@smollm2@1")
    assert load_descriptor_dir(tmp_path, ["m1", "m2"])[1]["kind"] == "logit"
    write("b.json", "m2", "logit", "text@smollm2@1", basis="b2")
    with pytest.raises(ValueError, match="different kinds"):
        load_descriptor_dir(tmp_path, ["m1", "m2"])
