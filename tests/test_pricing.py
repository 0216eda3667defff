"""``router_core.pricing``: the one request-cost formula, its inverse, and the expected cost the
kernel-shrink rule ranks on (the serving path and the batch evaluations call the same function)."""

from __future__ import annotations

import numpy as np
import pytest

from router_core.pricing import (
    LIST_PRICES,
    answer_tokens,
    expected_costs,
    expected_tokens,
    list_prices,
    prompt_tokens,
    request_costs,
)
from router_core.variants import NeighbourLengths

GPT4, MISTRAL = "gpt-4-1106-preview", "mistralai/mistral-7b-chat"


def test_request_costs_and_answer_tokens_invert_each_other() -> None:
    prompts = ["abcd" * 10, "x" * 400]  # 10 and 100 prompt tokens
    assert prompt_tokens(prompts).tolist() == [10.0, 100.0]
    out = np.array([[300.0, 7.0], [2.0, 50.0]])
    usd = request_costs(prompt_tokens(prompts), out, [GPT4, MISTRAL])
    assert usd[0, 0] == pytest.approx((10 * 10.0 + 300 * 30.0) / 1e6)
    assert usd[1, 1] == pytest.approx((100 * 0.2 + 50 * 0.2) / 1e6)
    assert np.allclose(answer_tokens(prompts, usd, *list_prices([GPT4, MISTRAL])), out)
    bound = request_costs(prompt_tokens(prompts), 512, [GPT4])  # a number: every answer that long
    assert bound[:, 0] == pytest.approx([(10 * 10 + 512 * 30) / 1e6, (100 * 10 + 512 * 30) / 1e6])
    with pytest.raises(KeyError, match="no list price"):
        list_prices(["some/model"])
    assert set(LIST_PRICES) >= {GPT4, MISTRAL}


def _lengths() -> NeighbourLengths:
    """Model 0 answers the first kind of prompt in 400 tokens, model 1 in 10, model 2 in 100; the
    second kind: 4, 2 and never recorded."""
    emb = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5)
    tokens = np.array([[400.0, 10.0, 100.0]] * 5 + [[4.0, 2.0, np.nan]] * 5)
    return NeighbourLengths(k=5, bandwidth=0.1, prior_strength=1e-6).fit(emb, tokens)


def test_expected_tokens_fill_a_model_without_lengths_with_the_median_of_the_others() -> None:
    lengths = _lengths()
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    got = expected_tokens(lengths, q, [0, None, 1])  # the middle one was added by descriptor
    assert got[:, 0] == pytest.approx([400.0, 4.0], rel=0.01) and got[:, 2] == pytest.approx([10.0, 2.0], rel=0.01)
    assert got[:, 1] == pytest.approx([205.0, 3.0], rel=0.01)  # median of 400 and 10; of 4 and 2
    # batched rows equal one prompt at a time (serving asks for one)
    assert np.array_equal(np.concatenate([expected_tokens(lengths, q[i:i + 1], [0, None, 1]) for i in range(2)]),
                          got)
    alone = expected_tokens(lengths, q, [None])  # no candidate with lengths: the median over all models
    assert alone[0, 0] == pytest.approx(100.0, rel=0.01)


def test_expected_costs_price_expected_lengths_at_list_prices() -> None:
    lengths = _lengths()
    prompts = ["abcd" * 10]
    got = expected_costs(lengths, np.array([[1.0, 0.0]]), prompts, [GPT4, MISTRAL])
    want = request_costs(prompt_tokens(prompts), np.array([[400.0, 10.0]]), [GPT4, MISTRAL])
    assert got == pytest.approx(want, rel=0.01)


def test_the_served_policy_prices_like_the_batch_path() -> None:
    """``KernelShrinkPolicy.expected_costs`` (the per-request scalar path) equals
    ``pricing.expected_costs`` (evaluations, calibrate) on the bundled artifact, including a
    candidate added by descriptor (no recorded lengths: median of the others)."""
    from router_core.encoder import routing_text
    from router_core.kernel_policy import load_policy
    from router_core.paths import artifacts_dir
    from router_core.types import Candidate

    policy = load_policy(artifacts_dir() / "default-kernel-shrink")
    assert policy.lengths is not None
    experts = [GPT4, MISTRAL, "claude-v2", "somebody/new-model"]
    prices = {GPT4: (10.0, 30.0), MISTRAL: (0.2, 0.2), "claude-v2": (8.0, 24.0), "somebody/new-model": (1.0, 3.0)}
    for prompt in ["What is the capital of France?", "Write a Python function that merges two sorted lists. " * 8]:
        tok = len(prompt) / 4.0

        def at(e: str, tok: float = tok) -> Candidate:
            pin, pout = prices[e]
            return Candidate(e, e, (tok * pin + 512 * pout) / 1e6, lambda t: (tok * pin + t * pout) / 1e6)

        q = policy.encoder.encode(routing_text(prompt))[None, :]
        served = policy.expected_costs(q, [at(e) for e in experts])
        cols = [policy.experts.index(e) if e in policy.experts else None for e in experts]
        batch_tokens = expected_tokens(policy.lengths, q, cols)[0]
        batch = np.array([at(e).cost_at(n) for e, n in zip(experts, batch_tokens, strict=True)])  # type: ignore[misc]
        assert served == pytest.approx(batch, rel=1e-9)
