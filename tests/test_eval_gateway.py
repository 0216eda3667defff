"""``cscr eval-gateway``: the gateway's decisions over HTTP are the served artifact's offline
decisions, prompt by prompt, on a real ``start_gateway`` over the replay upstream; its errors; and
the docs block of its numbers is what the result files give."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from gateway.config import parse_config
from gateway.eval_gateway import (
    Conversation,
    EvalGatewayError,
    artifact_recipe,
    ask_gateway,
    offline_choices,
    served_pool,
    to_choices,
    with_follow_up,
)
from gateway.eval_gateway_report import render_dir, render_one, splice
from gateway.replay import BUNDLED_REPLAY
from gateway.upstream import start_upstream
from router_core.router import default_artifact_path
from tests.gateway_fixture import start_gateway

ROOT = Path(__file__).resolve().parents[1]
TRADEOFFS = [0.0, 0.2, 0.5, 0.8, 1.0]
CHAT_POOL = ("claude-v1", "claude-v2", "gpt-3.5-turbo-1106", "gpt-4-1106-preview", "llama-2-70b-chat",
             "yi-34b-chat")  # AlpacaEval's six labelled models


def _raw_config(api_base: str) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load((ROOT / "gateway.yaml").read_text())
    for p in raw["providers"]:
        p["api_base"] = api_base
    raw["keys"] = [{"name": "chat", "secret_sha256": hashlib.sha256(b"sk-chat").hexdigest(),
                    "allowed_providers": list(CHAT_POOL)},
                   {"name": "all", "secret_sha256": hashlib.sha256(b"sk-all").hexdigest()}]
    return raw


@pytest.fixture(scope="module")
def replay() -> pd.DataFrame:
    return pd.read_parquet(BUNDLED_REPLAY)


@pytest.fixture(scope="module")
def prompts(replay: pd.DataFrame) -> list[str]:
    """A few RouterBench test prompts of each task family (a seeded draw, not the head: the heads
    of some families are near-duplicates)."""
    test = replay[replay.split == "test"]
    return [str(p) for _, g in test.groupby("eval_name") for p in g.prompt_text.sample(8, random_state=0)]


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, dict[str, Any]]]:
    up, stop_up = start_upstream()
    raw = _raw_config(up)
    base, stop = start_gateway(raw)  # router.artifact: bundled, as shipped
    yield base, raw
    stop()
    stop_up()


def _models(replay: pd.DataFrame) -> list[str]:
    return sorted(c.split("|")[0] for c in replay.columns if c.endswith("|total_cost"))


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(("key", "max_tokens", "follow_up"), [("sk-all", 1, False), ("sk-chat", None, False),
                                                             ("sk-all", None, True)])
def test_http_decisions_equal_offline_decisions(gateway: tuple[str, dict[str, Any]], replay: pd.DataFrame,
                                                prompts: list[str], key: str, max_tokens: int | None,
                                                follow_up: bool) -> None:
    base, raw = gateway
    pool = served_pool(parse_config(raw, "test.yaml", {}), _models(replay), key, max_tokens)
    sent: list[Conversation] = [with_follow_up(p, i) for i, p in enumerate(prompts)] if follow_up else list(prompts)
    names = ask_gateway(base, sent, TRADEOFFS, key, concurrency=4, max_tokens=max_tokens)
    served = to_choices(names, pool)  # (L, N) model columns
    offline, _ = offline_choices("bundled", sent, pool, TRADEOFFS)
    assert served.shape == (len(TRADEOFFS), len(prompts))
    np.testing.assert_array_equal(served, offline)
    assert {n for row in names for n in row} <= {p.name for p in pool.providers}  # the key's pool only
    assert len(set(served[0])) > 1 and not np.array_equal(served[0], served[-1])  # a real decision per prompt


@pytest.mark.slow
def test_max_tokens_is_part_of_the_decision(replay: pd.DataFrame, prompts: list[str]) -> None:
    """The estimate is prompt x input price + max_tokens x output price: max_tokens: 1 is not
    decision-neutral, so the offline mirror must use the bound the requests carry."""
    config = parse_config(_raw_config("http://127.0.0.1:9/v1"), "test.yaml", {})
    one, _ = offline_choices("bundled", prompts, served_pool(config, _models(replay), "sk-all", 1), TRADEOFFS)
    default, _ = offline_choices("bundled", prompts, served_pool(config, _models(replay), "sk-all"), TRADEOFFS)
    assert (one != default).any()


def test_a_pool_of_other_models_is_refused() -> None:
    raw = _raw_config("http://127.0.0.1:9/v1")
    with pytest.raises(EvalGatewayError, match="serves none of the benchmark's models"):
        served_pool(parse_config(raw, "test.yaml", {}), ["Meta-Llama-3-70B", "gpt-4o-2024-05-13(api)"])
    with pytest.raises(EvalGatewayError, match="matches no key"):
        served_pool(parse_config(raw, "test.yaml", {}), ["claude-v1"], key="sk-nobody")


def test_an_answer_from_an_unlabelled_provider_stops_the_run(replay: pd.DataFrame) -> None:
    raw = _raw_config("http://127.0.0.1:9/v1")
    pool = served_pool(parse_config(raw, "test.yaml", {}), ["claude-v1", "claude-v2"])  # 2 of 11 labelled
    assert to_choices([["claude-v2", "claude-v1"]], pool).tolist() == [[1, 0]]
    with pytest.raises(EvalGatewayError, match="mistral-7b-chat"):
        to_choices([["claude-v1", "mistral-7b-chat"]], pool)


def test_docs_block_is_rendered_from_the_result_files() -> None:
    doc = (ROOT / "docs" / "EVALUATION.md").read_text()
    block = render_dir(ROOT / "docs" / "results" / "eval-gateway")
    assert "routerbench test" in block and "alpacaeval test" in block
    assert splice(doc, block) == doc, "run: python -m gateway.eval_gateway_report docs/results/eval-gateway " \
                                      "--docs docs/EVALUATION.md"


def test_a_result_names_the_recipe_it_scored() -> None:
    """A path such as /tmp/evalgw/ks-train may since hold another build: the result records what
    the artifact was (variant, split, hyperparameters) and the report prints it."""
    recipe = artifact_recipe("bundled")
    config = json.loads((default_artifact_path() / "config.json").read_text())
    assert recipe["hyperparameters"] == config["hyperparameters"] and recipe["fit_on"] == config["fit_on"]
    summary = json.loads((ROOT / "docs/results/eval-gateway/routerbench/results.json").read_text())
    assert summary["artifact_recipe"]["hyperparameters"]["k"] > 0
    assert "fitted on train: k=" in render_one(summary)
