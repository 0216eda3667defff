"""The logit path end to end: a router trained in the logit-footprint space (text footprints of the
RouterBench models' recorded answers) takes a local open-weight model (SmolLM2) that joins through
``descriptor: {logit: smollm2-135m}``: the gateway computes its logit footprint in the background
and installs it, with the same string basis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.replay import REPLAY_PRICES
from gateway.upstream import start_upstream
from tests.gateway_fixture import provider, start_gateway

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.usefixtures("benchmark_data_dir")]
N_PROBES = 16


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    base, stop = start_upstream()
    yield base
    stop()


def _logit_space_artifact(tmp: Path) -> Path:
    from descriptors.lm import load_lm
    from descriptors.logit import FootprintSettings, text_footprint
    from descriptors.perplexity import recorded_answers
    from descriptors.probes import build_probe_set
    from router_core.data import load_benchmark
    from router_core.encoder import ROUTING_TEXT_VERSION, embed_prompts
    from router_core.model import RouterConfig
    from router_core.train import train_artifact

    probes = build_probe_set(n=N_PROBES, seed=0)
    ref = load_lm("smollm2-135m", threads=2)
    bench = load_benchmark("routerbench")
    out = tmp / "footprints"
    for m in bench.models:
        d = text_footprint(m, probes, recorded_answers(probes, m), ref, FootprintSettings())
        d.save(out / f"{m.replace('/', '__')}.json")
    emb = embed_prompts(bench.prompts, "static-minilm")
    cfg = RouterConfig(encoder="static-minilm", routing_text=ROUTING_TEXT_VERSION, in_dim=int(emb.shape[1]),
                       loss="infonce", epochs=3)
    artifact = train_artifact(bench, emb, cfg, progress=False, descriptor_dir=out)
    assert artifact.config.descriptor == "logit" and artifact.config.descriptor_dim == N_PROBES
    path = tmp / "artifact"
    artifact.save(path)
    return path


def _jobs(base: str) -> dict[str, Any]:
    config: dict[str, Any] = httpx.get(base + "/ready").json()["checks"]["config"]
    return config


def test_local_model_joins_a_logit_space_router_by_its_footprint(tmp_path: Path, upstream: str) -> None:
    artifact = _logit_space_artifact(tmp_path)
    models = {"gpt-4": "gpt-4-1106-preview", "mistral-7b": "mistralai/mistral-7b-chat", "claude-v2": "claude-v2"}
    providers = [provider(n, f"openai/{m}", upstream, REPLAY_PRICES[m], expert=m) for n, m in models.items()]
    local = provider("smol", "openai/smollm2-135m", upstream, (0.01, 0.01),
                     descriptor={"logit": {"lm": "smollm2-135m", "timeout_s": 600}})
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"router": {"artifact": str(artifact)}, "server": {"reload_interval_s": 0.1},
                                    "providers": [*providers, local]}))
    base, stop = start_gateway(path)

    def cheapest() -> str:
        r = httpx.post(base + "/v1/chat/completions", json={"model": "auto:cheap", "messages": [
            {"role": "user", "content": "What is 2 + 2?"}]})
        assert r.status_code == 200, r.text
        return str(r.headers["x-cscr-provider"])

    try:
        # while its footprint is being made, "smol" is not in the index: ranked after the known experts
        first = cheapest()
        if _jobs(base)["descriptor_jobs"].get("smol", {}).get("state") != "ready":
            assert first == "mistral-7b"
        deadline = time.monotonic() + 600
        while _jobs(base)["descriptor_jobs"].get("smol", {}).get("state") != "ready":
            state = _jobs(base)["descriptor_jobs"].get("smol", {})
            assert state.get("state") != "failed", state
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        config = _jobs(base)
        assert config["expert_problems"] == [], config
        assert config["descriptor_jobs"]["smol"]["seconds"] > 0
        # in the index now: at trade-off 1 the cheapest known expert wins, and that is the local model
        assert cheapest() == "smol"
    finally:
        stop()
