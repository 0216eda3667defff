"""The routing rule on small arrays, the FAISS index, artifacts, and CSCRRouter on the bundled artifact."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from router_core.encoder import encoder_spec
from router_core.index import ExpertIndex
from router_core.model import RouterArtifact, RouterConfig, numpy_head
from router_core.router import (
    CSCRRouter,
    bundled_artifact_path,
    calibrate_lam_max,
    choose,
    normalise_costs,
    rank,
)
from router_core.types import Candidate

SIMS = np.array([0.9, 0.7, 0.5, 0.2])
COSTS = np.array([1.0, 0.6, 0.3, 0.0])  # already normalised
ALL = np.ones(4, dtype=bool)


def test_lambda_zero_is_most_similar_first() -> None:
    assert rank(SIMS, COSTS, ALL, 0.0).tolist() == [0, 1, 2, 3]


def test_large_lambda_is_cheapest_first() -> None:
    assert rank(SIMS, COSTS, ALL, 100.0).tolist() == [3, 2, 1, 0]


def test_intermediate_lambda_trades_off() -> None:
    # scores at λ=0.6: 0.30, 0.34, 0.32, 0.20
    assert rank(SIMS, COSTS, ALL, 0.6).tolist() == [1, 2, 0, 3]


def test_ties_break_on_lower_cost() -> None:
    assert rank(np.array([0.5, 0.5]), np.array([1.0, 0.0]), np.ones(2, dtype=bool), 0.0).tolist() == [1, 0]


def test_ineligible_never_first_and_listed_last() -> None:
    eligible = np.array([False, True, True, False])
    order = rank(SIMS, COSTS, eligible, 0.0).tolist()
    assert order[:2] == [1, 2]
    assert sorted(order[2:]) == [0, 3]
    assert rank(SIMS, COSTS, eligible, 100.0).tolist()[:2] == [2, 1]


def test_top_k_restricts_the_rule_then_falls_back() -> None:
    # only the 2 most similar compete first, even when λ is huge; the rest follow by score
    assert rank(SIMS, COSTS, ALL, 100.0, top_k=2).tolist() == [1, 0, 3, 2]
    assert sorted(rank(SIMS, COSTS, ALL, 0.3, top_k=3).tolist()) == [0, 1, 2, 3]


def test_choose_matches_rank() -> None:
    rng = np.random.default_rng(0)
    sims = rng.uniform(-1, 1, (20, 5))
    cn = normalise_costs(rng.uniform(1e-4, 1e-2, (20, 5)))
    picks = choose(sims, cn, [0.0, 0.3, 5.0])
    for li, lam in enumerate([0.0, 0.3, 5.0]):
        for i in range(20):
            assert picks[li, i] == rank(sims[i], cn[i], np.ones(5, dtype=bool), lam)[0]


def test_normalise_costs_is_log_min_max() -> None:
    c = normalise_costs(np.array([1e-4, 1e-3, 1e-2]))
    assert c.tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert normalise_costs(np.array([2.0, 2.0])).tolist() == [0.0, 0.0]
    assert normalise_costs(np.array([0.0, 1e-3])).tolist() == pytest.approx([0.0, 1.0])


def test_lam_max_reaches_the_cheapest() -> None:
    rng = np.random.default_rng(1)
    sims = rng.uniform(-1, 1, (200, 6))
    cn = normalise_costs(rng.uniform(1e-4, 1e-2, (200, 6)))
    lam = calibrate_lam_max(sims, cn, quantile=1.0)
    assert (choose(sims, cn, [lam])[0] == cn.argmin(axis=1)).all()


def test_index_add_remove_rebuild() -> None:
    keys = np.eye(3, dtype=np.float32)
    idx = ExpertIndex(["a", "b", "c"], keys)
    sims, names = idx.search(np.array([0.0, 1.0, 0.0]))
    assert names[0] == "b" and sims[0] == pytest.approx(1.0)
    idx.remove("b")
    assert idx.names == ["a", "c"] and "b" not in idx
    idx.add("d", np.array([0.0, 0.6, 0.8]))
    assert idx.similarities(np.array([0.0, 0.0, 1.0])).tolist() == pytest.approx([0.0, 1.0, 0.8])
    idx.add("a", np.array([0.0, 0.0, 1.0]))  # replace
    assert len(idx) == 3 and sorted(idx.search(np.array([0.0, 0.0, 1.0]))[1][:2]) == ["a", "c"]


class _StubEncoder:
    def __init__(self, dim: int) -> None:
        self.dim = dim

    def encode(self, text: str) -> np.ndarray:
        rng = np.random.default_rng(len(text))
        v = rng.standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def bundled() -> RouterArtifact:
    return RouterArtifact.load(bundled_artifact_path())


def test_bundled_artifact_is_small_and_complete(bundled: RouterArtifact) -> None:
    sizes = {p.name: p.stat().st_size for p in bundled_artifact_path().iterdir()}
    assert sizes["weights.safetensors"] < 1_000_000
    # + probes.json: the 192 probe prompts (~0.4 MB), so a new model can be probed without the data
    assert sum(sizes.values()) < 1_500_000 and "probes.json" in sizes
    assert "gpt-4-1106-preview" in bundled.experts and "mistralai/mistral-7b-chat" in bundled.experts
    assert bundled.expert_keys.shape == (len(bundled.experts), bundled.config.out_dim)
    assert bundled.lam_max > 0
    assert bundled.meta["data_versions"] and bundled.meta["encoder"]["name"] == bundled.config.encoder


def test_save_load_round_trip(bundled: RouterArtifact, tmp_path: Path) -> None:
    bundled.save(tmp_path / "a")
    again = RouterArtifact.load(tmp_path / "a")
    assert again.config == bundled.config and again.experts == bundled.experts
    assert again.lam_max == bundled.lam_max
    assert set(again.weights) == set(bundled.weights)
    for k, v in bundled.weights.items():
        np.testing.assert_array_equal(again.weights[k], v)
    x = np.random.default_rng(0).standard_normal((3, bundled.config.in_dim)).astype(np.float32)
    np.testing.assert_allclose(numpy_head(again.weights, x), numpy_head(bundled.weights, x))


def test_config_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown fields"):
        RouterConfig.from_dict({"nope": 1})


def _router(art: RouterArtifact) -> CSCRRouter:
    return CSCRRouter(art, encoder=_StubEncoder(art.config.in_dim))


def test_only_slow_encoders_route_off_the_event_loop(bundled: RouterArtifact) -> None:
    """A sub-millisecond decision runs on the gateway's event loop (a thread hop costs ~35 us of CPU
    and a GIL handoff); a transformer encoder (25-100 ms a prompt) would stall every request there."""
    assert encoder_spec("static-minilm").inline and encoder_spec("hash").inline
    assert not any(encoder_spec(e).inline for e in ("minilm", "minilm-onnx", "minilm-onnx-int8"))
    assert _router(bundled).blocking is False
    slow = replace(bundled, config=replace(bundled.config, encoder="minilm"))
    assert _router(slow).blocking is True


def test_rank_returns_every_candidate_once(bundled: RouterArtifact) -> None:
    router = _router(bundled)
    cands = [Candidate(f"p-{e}", e, float(c)) for e, c in zip(bundled.experts, bundled.mean_cost, strict=True)]
    cands += [Candidate("mystery", None, 1e-6), Candidate("renamed", "not-an-expert", 1e-7)]
    for t in (0.0, 0.3, 0.7, 1.0):
        ranking = router.rank("What is 2 + 2?", cands, t)
        assert sorted(ranking.names) == sorted(c.name for c in cands)
        assert ranking.names[-2:] == ["renamed", "mystery"]  # unknown last, cheapest first
        assert ranking.order[-1].similarity is None and ranking.policy == "cscr"
        scores = [s.score for s in ranking.order]
        assert scores == sorted(scores, reverse=True)


def test_tradeoff_one_is_cheapest_and_zero_is_most_similar(bundled: RouterArtifact) -> None:
    router = _router(bundled)
    cands = [Candidate(e, e, float(c)) for e, c in zip(bundled.experts, bundled.mean_cost, strict=True)]
    cheapest = min(cands, key=lambda c: c.cost).name
    assert router.rank("hello", cands, 1.0).names[0] == cheapest
    best = router.rank("hello", cands, 0.0).order
    assert best[0].similarity == max(s.similarity for s in best if s.similarity is not None)


def test_add_expert_from_descriptor(bundled: RouterArtifact) -> None:
    if bundled.config.keys != "descriptor":
        pytest.skip("bundled artifact learned its keys")
    router = _router(bundled)
    desc = bundled.descriptors
    assert desc is not None
    router.add_vector("clone-of-gpt4", desc[bundled.experts.index("gpt-4-1106-preview")])
    np.testing.assert_allclose(
        router.index.keys[-1], bundled.expert_keys[bundled.experts.index("gpt-4-1106-preview")], atol=1e-5
    )
    ranking = router.rank("hi", [Candidate("x", "clone-of-gpt4", 0.01)], 0.5)
    assert ranking.order[0].similarity is not None


def test_empty_and_unknown_only_candidates(bundled: RouterArtifact) -> None:
    router = _router(bundled)
    assert router.rank("hi", [], 0.5).order == ()
    r = router.rank("hi", [Candidate("b", None, 2.0), Candidate("a", None, 1.0)], 0.5)
    assert r.names == ["a", "b"]


@pytest.mark.slow
def test_load_router_with_real_encoder() -> None:
    from router_core.router import load_router

    router = load_router()
    cands = [Candidate(e, e, float(c)) for e, c in zip(router.experts, router.artifact.mean_cost, strict=True)]
    ranking = router.rank("Write a python function to check whether a number is prime.", cands, 0.2)
    assert sorted(ranking.names) == sorted(router.experts)


def test_routing_text_reads_the_last_question() -> None:
    from router_core.encoder import HEAD_CHARS, TAIL_CHARS, routing_text

    shots = "\n\n".join(f"Example question {i}?\nA) x\nB) y\nAnswer: A" for i in range(60))
    prompt = f"{shots}\n\nWhich planet is known as the red planet?\nA) Mars\nB) Venus\nAnswer:"
    text = routing_text(prompt)
    assert text.endswith("Which planet is known as the red planet?\nA) Mars\nB) Venus\nAnswer:")
    assert text.startswith(prompt[:HEAD_CHARS]) and len(text) <= HEAD_CHARS + TAIL_CHARS + 8
    # two prompts sharing the few-shot prefix no longer read the same
    other = prompt.replace("red planet", "ringed planet")
    assert routing_text(other) != text
    short = "Write a python function to identify non-prime numbers."
    assert routing_text(short) == short


def test_load_routing_policy_dispatches_on_variant(tmp_path: Path) -> None:
    from router_core.router import load_routing_policy

    (tmp_path / "config.json").write_text('{"variant": "other", "loader": "os:system"}')
    with pytest.raises(ValueError, match="router_core"):
        load_routing_policy(tmp_path)
    (tmp_path / "config.json").write_text('{"variant": "other", "loader": "router_core.types:CostOnlyPolicy"}')
    with pytest.raises(TypeError):  # the loader was imported and called; this one takes no args
        load_routing_policy(tmp_path)
