"""Per-prompt cost: the kernel-shrink router ranks on expected cost, each model's answer length
predicted from the recorded lengths of its nearest training prompts (``NeighbourLengths``) and priced
by the gateway (``Candidate.cost_at``); budgets stay on the gateway's conservative bound."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.upstream import start_upstream
from router_core.kernel_policy import KernelShrinkPolicy, load_policy
from router_core.paths import artifacts_dir
from router_core.pricing import answer_tokens
from router_core.types import Candidate
from router_core.variants import NeighbourLengths
from tests.gateway_fixture import provider, start_gateway

pytestmark = pytest.mark.slow  # loads the static encoder
GPT4, MISTRAL = "gpt-4-1106-preview", "mistralai/mistral-7b-chat"
PROMPT = "Write a short poem about the sea."


def test_neighbour_lengths_follow_similar_prompts_and_skip_unrecorded() -> None:
    emb = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5)
    tokens = np.array([[400.0, 10.0]] * 5 + [[5.0, np.nan]] * 5)  # model 1 never answered the second kind
    model = NeighbourLengths(k=5, bandwidth=0.1, prior_strength=0.01).fit(emb, tokens)
    pred = model.predict(np.array([[0.9, 0.1], [0.1, 0.9]]))
    assert pred[0, 0] == pytest.approx(400.0, rel=0.01) and pred[1, 0] == pytest.approx(5.0, rel=0.1)
    assert pred[1, 1] == pytest.approx(10.0, rel=0.01)  # no neighbour recorded: its own mean, not 0
    # answer lengths from recorded USD: (cost - len/4 x in price) / out price, at least 1; NaN unrecorded
    got = answer_tokens(["abcd" * 10], np.array([[10 * 1e-6 + 300 * 2e-6, 0.0]]), np.array([1e-6, 1e-6]),
                        np.array([2e-6, 1e-6]), np.array([[True, False]]))
    assert got[0, 0] == pytest.approx(300.0) and np.isnan(got[0, 1])


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The RouterBench kernel-shrink artifact with answer lengths added: GPT-4 answers every probe in
    10 tokens, Mistral-7B in 5,000, the rest in 200."""
    out = tmp_path_factory.mktemp("art") / "kernel-shrink-lengths"
    shutil.copytree(artifacts_dir() / "routerbench-kernel-shrink", out)
    config = json.loads((out / "config.json").read_text())
    arrays = dict(np.load(out / "arrays.npz"))
    tokens = np.full(arrays["labels"].shape, 200.0)
    tokens[:, config["experts"].index(GPT4)] = 10.0
    tokens[:, config["experts"].index(MISTRAL)] = 5000.0
    np.savez_compressed(out / "arrays.npz", **arrays, answer_tokens=tokens.astype(np.float16))
    config["answer_lengths"] = {"k": 10, "bandwidth": 0.1, "prior_strength": 0.01}
    (out / "config.json").write_text(json.dumps(config))
    return out


def _candidates(prompt_tokens: int, with_lengths: bool) -> list[Candidate]:
    prices = {GPT4: (10.0, 30.0), MISTRAL: (0.2, 0.2)}  # USD per million tokens

    def at(p: tuple[float, float]) -> object:
        return lambda t: (prompt_tokens * p[0] + t * p[1]) / 1e6

    return [Candidate(e, e, (prompt_tokens * p[0] + 512 * p[1]) / 1e6, at(p) if with_lengths else None)  # type: ignore[arg-type]
            for e, p in prices.items()]


def test_rank_uses_expected_cost_from_answer_lengths(artifact: Path) -> None:
    policy = load_policy(artifact)
    assert isinstance(policy, KernelShrinkPolicy) and policy.lengths is not None
    # the 512-token bound makes GPT-4 look 60x dearer; at its 10-token answers it is the cheaper one
    assert policy.rank(PROMPT, _candidates(20, with_lengths=False), 1.0).names[0] == MISTRAL
    ranked = policy.rank(PROMPT, _candidates(20, with_lengths=True), 1.0)
    assert ranked.names[0] == GPT4
    assert ranked.order[0].cost == pytest.approx((20 * 10.0 + 10 * 30.0) / 1e6, rel=0.01)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    base, stop = start_upstream()
    yield base
    stop()


def test_gateway_ranks_on_expected_cost_and_caps_at_max_tokens(artifact: Path, upstream: str) -> None:
    cfg = {"server": {"deadline_s": 20}, "providers": [
        provider("gpt-4", "openai/gpt-4-1106-preview", upstream, (10.0, 30.0), expert=GPT4),
        provider("mistral-7b", "openai/mistralai/mistral-7b-chat", upstream, (0.2, 0.2), expert=MISTRAL)]}
    base, stop = start_gateway(cfg, router=load_policy(artifact))
    try:
        def ask(**extra: object) -> httpx.Response:
            r = httpx.post(base + "/v1/chat/completions", timeout=30,
                           json={"model": "auto:cheap", "messages": [{"role": "user", "content": PROMPT}], **extra})
            assert r.status_code == 200, r.text
            return r

        r = ask()
        assert r.headers["x-cscr-provider"] == "gpt-4"
        # the budget estimate stays on the conservative bound: 512 output tokens at GPT-4's price
        assert float(r.headers["x-cscr-cost-estimate-usd"]) > 512 * 30.0 / 1e6
        # with max_tokens=5 neither answer can be long: Mistral is the cheaper again
        assert ask(max_tokens=5).headers["x-cscr-provider"] == "mistral-7b"
    finally:
        stop()
