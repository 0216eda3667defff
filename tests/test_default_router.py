"""The router ``auto`` serves by default (``router.artifact: bundled``): it must route chat sensibly
and its trade-off must have a middle. Real parts: the shipped artifact, the static encoder, the
default gateway.yaml's providers and prices, the gateway's own loader and token counter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gateway.app import load_policy
from gateway.config import GatewayConfig, load_config
from gateway.policy import expected_cost
from gateway.tokens import count_messages
from router_core.kernel_policy import KernelShrinkPolicy
from router_core.paths import default_data_dir
from router_core.types import Candidate

pytestmark = pytest.mark.slow  # loads the static encoder
ROOT = Path(__file__).resolve().parents[1]
EVERYDAY = ["What is the capital of France?", "Say hi", "Translate 'good morning' to Spanish",
            "How many days are in a week?", "Give me a synonym for happy."]


@pytest.fixture(scope="module")
def config() -> GatewayConfig:
    return load_config(ROOT / "gateway.yaml")


@pytest.fixture(scope="module")
def policy(config: GatewayConfig) -> KernelShrinkPolicy:
    loaded, problem = load_policy(config)  # what `cscr serve` does with `artifact: bundled`
    assert problem is None and isinstance(loaded, KernelShrinkPolicy)
    return loaded


def _candidates(config: GatewayConfig, prompt: str) -> list[Candidate]:
    """Every provider of the default gateway.yaml as the gateway hands it to the router: its
    conservative estimate, and the pricing callback the router ranks on (expected answer lengths)."""
    tokens = count_messages([{"role": "user", "content": prompt}])
    out = config.server.estimate_output_tokens
    return [Candidate(p.name, p.expert, p.cost(tokens, out), expected_cost(p, tokens, None, 1))
            for p in config.providers]


def _dearest(config: GatewayConfig, prompt: str) -> str:
    return max(_candidates(config, prompt), key=lambda c: c.cost).name


@pytest.mark.parametrize("prompt", EVERYDAY)
def test_everyday_questions_skip_the_dearest_model_at_the_default_tradeoff(
    config: GatewayConfig, policy: KernelShrinkPolicy, prompt: str
) -> None:
    assert config.router.default_tradeoff == 0.5
    ranking = policy.rank(prompt, _candidates(config, prompt), config.router.default_tradeoff)
    assert ranking.names[0] != _dearest(config, prompt), ranking.order[:3]
    assert policy.rank(prompt, _candidates(config, prompt), 0.0).names[0] == _dearest(config, prompt)


def _held_out_prompts(n: int) -> list[str]:
    """Test-split prompts (never trained on by the train-only twin; the shipped artifact saw them)."""
    rb = pd.read_parquet(default_data_dir() / "routerbench_subset" / "routerbench_subset.parquet")
    ae = pd.read_parquet(default_data_dir() / "alpacaeval" / "alpacaeval.parquet")
    rb_test = [str(p) for _, g in rb[rb.split == "test"].groupby("eval_name") for p in g.prompt_text.head(n)]
    return rb_test + [str(p) for p in ae[ae.split == "test"].prompt_text.head(n)]


@pytest.mark.usefixtures("benchmark_data_dir")  # held-out RouterBench and AlpacaEval prompts
def test_tradeoff_has_a_middle(config: GatewayConfig, policy: KernelShrinkPolicy) -> None:
    """t moves spend along a log scale: the dearest model's share falls step by step and t = 0.5
    spends near the geometric middle of t = 0 and t = 1, not t = 0's bill (the old default: ~97%)."""
    prompts = _held_out_prompts(15)
    cands = [_candidates(config, p) for p in prompts]
    dearest = [max(c, key=lambda x: x.cost).name for c in cands]
    share, spend = [], []
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        firsts = [policy.rank(p, c, t).order[0] for p, c in zip(prompts, cands, strict=True)]
        share.append(np.mean([f.name == d for f, d in zip(firsts, dearest, strict=True)]))
        spend.append(np.log(np.mean([f.cost for f in firsts])))
    assert share[0] > 0.9 and share[2] < 0.3 and share[4] == 0.0
    assert all(a >= b for a, b in zip(spend, spend[1:], strict=False))
    middle = (spend[0] - spend[2]) / (spend[0] - spend[4])
    assert 0.25 < middle < 0.75, spend


@pytest.mark.usefixtures("benchmark_data_dir")
def test_chat_data_models_without_a_label_are_missing_not_wrong() -> None:
    from router_core.data import load_benchmark

    bench = load_benchmark("routerbench+alpacaeval")
    assert bench.missing is not None
    chat = bench.extra["source"] == "alpacaeval"
    absent = [m for m in bench.models if bench.missing[chat, bench.models.index(m)].all()]
    assert sorted(absent) == ["WizardLM/WizardLM-13B-V1.2", "claude-instant-v1", "meta/code-llama-instruct-34b-chat",
                              "mistralai/mistral-7b-chat", "mistralai/mixtral-8x7b-chat"]
    assert np.isfinite(bench.cost).all() and (bench.cost > 0).all()  # imputed where never answered


def test_a_missing_label_never_counts_as_wrong() -> None:
    """The same prompts with a model's unobserved labels set to 0 or to 1: identical p̂."""
    from router_core.variants import KernelShrinkRouter

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 16)).astype(np.float32)
    quality = (rng.random((200, 3)) < 0.7).astype(np.float64)
    observed = np.ones_like(quality, dtype=bool)
    observed[100:, 2] = False  # model 2 never ran on the second half
    preds = []
    for fill in (0.0, 1.0):
        q = quality.copy()
        q[~observed] = fill
        r = KernelShrinkRouter(k=50, seed=0)
        r.fit(emb, q, observed)
        preds.append(r.predict(emb[:20]))
    np.testing.assert_allclose(preds[0], preds[1])


@pytest.mark.integration
def test_cscr_serve_auto_over_http_keeps_everyday_questions_off_the_dearest_model() -> None:
    """The same through the gateway: default gateway.yaml, replay upstream, the official client."""
    import openai
    import yaml

    from gateway.upstream import start_upstream
    from tests.gateway_fixture import start_gateway

    up, stop_up = start_upstream()
    raw = yaml.safe_load((ROOT / "gateway.yaml").read_text())
    for p in raw["providers"]:
        p["api_base"] = up
    base, stop = start_gateway(raw)
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        for prompt in EVERYDAY[:3]:
            served = {}
            for model in ("auto", "auto:best"):
                r = client.chat.completions.with_raw_response.create(
                    model=model, messages=[{"role": "user", "content": prompt}])
                assert r.parse().choices[0].message.content and r.headers["x-cscr-policy"] == "kernel-shrink"
                served[model] = r.headers["x-cscr-provider"]
            assert served["auto"] != "gpt-4-1106-preview" and served["auto:best"] == "gpt-4-1106-preview", served
    finally:
        stop()
        stop_up()
