"""Graded onboarding: a provider joins the default (kernel-shrink) router by answering its gradable
probes, graded by answer letter; against the real replay upstream (recorded RouterBench answers)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from descriptors.graded import graded_descriptor
from descriptors.live import LiveTarget, ProbeSettings
from gateway.config import parse_config
from gateway.experts import install_experts
from gateway.replay import BUNDLED_REPLAY, REPLAY_PRICES
from gateway.store import MemoryStore
from gateway.upstream import start_upstream
from router_core.data import load_benchmark
from router_core.graded import GRADED_PROBES_FILE, GradedProbes, extract_letter
from router_core.kernel_policy import KernelShrinkPolicy
from router_core.paths import DataNotFoundError
from router_core.router import default_artifact_path, load_routing_policy
from router_core.types import Descriptor, DescriptorError
from tests.gateway_fixture import start_gateway

ROOT = Path(__file__).resolve().parents[1]
GPT4 = "gpt-4-1106-preview"


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    base, stop = start_upstream(chunk_delay_ms=0.0)
    yield base
    stop()


@pytest.fixture(scope="module")
def graded() -> GradedProbes:
    return GradedProbes.load(default_artifact_path() / GRADED_PROBES_FILE)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSCR_CACHE_DIR", str(tmp_path / "cache"))


def _recorded(ids: list[str], model: str = GPT4) -> np.ndarray:
    bench = load_benchmark("routerbench")
    row = {pid: i for i, pid in enumerate(bench.prompt_ids)}
    return np.array([bench.quality[row[pid], bench.models.index(model)] for pid in ids])


def test_letter_extraction_follows_the_mmlu_pro_patterns() -> None:
    assert extract_letter("Let's think. The answer is (C).", "ABCD") == "C"
    assert extract_letter("the answer is B", "ABCD") == "B"
    assert extract_letter("Reasoning...\nAnswer: D", "ABCD") == "D"
    assert extract_letter("C\n", "ABCD") == "C"
    assert extract_letter("B) Logan", "AB") == "B"
    assert extract_letter("I do not know", "ABCD") is None  # "I" is no choice: ungradable
    assert extract_letter("E", "ABCD") is None and extract_letter("", "AB") is None


def test_default_artifact_ships_gradable_probes(graded: GradedProbes) -> None:
    size = sum(f.stat().st_size for f in default_artifact_path().iterdir())
    assert size < 3 * 2**20, size
    policy = load_routing_policy()
    assert isinstance(policy, KernelShrinkPolicy)
    spec = policy.descriptor_spec
    assert spec.kind == "graded" and spec.probe_set == graded.id and spec.probes_file
    assert graded.artifact_probes == len(json.loads((default_artifact_path() / "config.json").read_text())["probe_ids"])
    assert set(graded.tasks) == {"arc-challenge", "winogrande"} and len(graded) > 2500
    # seeded, stratified: the task shares of the draw are those of the set, and a seed fixes it
    picks = graded.select(200, 0)
    assert picks == graded.select(200, 0) != graded.select(200, 1) and len(set(picks)) == 200
    arc = sum(graded.tasks[i] == "arc-challenge" for i in picks)
    assert abs(arc - 200 * graded.tasks.count("arc-challenge") / len(graded)) <= 1


@pytest.mark.usefixtures("benchmark_data_dir")  # the recorded grades to compare with
def test_live_graded_descriptor_matches_recorded_correctness(upstream: str, graded: GradedProbes) -> None:
    """The replay upstream answers as gpt-4 did: grading its answers gives gpt-4's recorded grades."""
    prices = REPLAY_PRICES[GPT4]
    target = LiveTarget(f"openai/{GPT4}", upstream, "sk-test", prices[0], prices[1], timeout_s=10)
    d, run, report = graded_descriptor("newcomer", target, graded, 200, 0, ProbeSettings(concurrency=8,
                                                                                         max_cost_usd=5.0))
    picks = graded.select(200, 0)
    vec = np.array(d.vector)
    rows = [graded.rows[i] for i in picks]
    assert np.isfinite(vec).sum() == 200 and np.all(np.isfinite(vec[rows]))
    want = _recorded([graded.ids[i] for i in picks])
    agree = float((vec[rows] == want).mean())
    print(f"\ngraded gpt-4 on 200 probes: accuracy {report.correct / 200:.3f} (recorded {want.mean():.3f}), "
          f"agreement {agree:.3f}, ungradable {report.ungradable}, spent ${run.spent_usd:.4f}")
    assert agree >= 0.98 and report.answered == 200 and run.spent_usd > 0
    assert report.ungradable == sum(extract_letter(a, graded.formats[graded.tasks[i]]) is None
                                    for i, a in zip(picks, run.answers, strict=True))
    assert d.settings["run"]["ungradable"] == report.ungradable  # what /ready's job status shows


def test_a_capped_run_leaves_the_unsent_probes_unknown(upstream: str, graded: GradedProbes) -> None:
    prices = REPLAY_PRICES[GPT4]
    target = LiveTarget(f"openai/{GPT4}", upstream, "sk-test", prices[0], prices[1], timeout_s=10)
    with pytest.raises(DescriptorError, match="unanswered"):
        graded_descriptor("newcomer", target, graded, 40, 0, ProbeSettings(max_cost_usd=0.03, max_tokens=16))
    d, run, _ = graded_descriptor("newcomer", target, graded, 40, 0, ProbeSettings(max_cost_usd=0.03, max_tokens=16),
                                  max_missing=1.0)
    assert run.capped and run.spent_usd <= 0.03 and 0 < run.n_answered < 40
    assert int(np.isfinite(np.array(d.vector)).sum()) == run.n_answered  # unsent: NaN, never wrong


async def test_the_default_router_refuses_a_perplexity_descriptor_by_field(tmp_path: Path) -> None:
    policy = load_routing_policy()
    path = tmp_path / "old.perplexity.json"
    Descriptor([0.6, 0.8], "perplexity", "routerbench-n192-s0-c5d4cbe984da", "smollm2-135m@0.1.2", "m").save(path)
    old = {"name": "old", "model": "openai/x", "api_base": "http://x/v1", "input_usd_per_mtok": 1,
           "output_usd_per_mtok": 1, "descriptor": str(path)}
    config = parse_config({"providers": [old]}, env={})
    problems = await install_experts(config, MemoryStore(), policy, {})
    assert len(problems) == 1 and "rejected" in problems[0] and "field 'kind'" in problems[0], problems


def _commented_newcomer() -> dict[str, Any]:
    """gateway.yaml's commented ``newcomer`` example, uncommented as a user would."""
    lines = (ROOT / "gateway.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("# - {name: newcomer"))
    block = [lines[start]] + [line for line in lines[start + 1:start + 4] if line.strip().startswith("#    ")]
    item: dict[str, Any] = yaml.safe_load("\n".join(line.strip()[1:] for line in block))[0]
    return item


def _ready_jobs(base: str) -> dict[str, Any]:
    jobs: dict[str, Any] = httpx.get(base + "/ready").json()["checks"]["config"]["descriptor_jobs"]
    return jobs


@pytest.mark.integration
def test_newcomer_probed_on_arrival_routes_with_the_default_router(tmp_path: Path, upstream: str,
                                                                   graded: GradedProbes) -> None:
    """gateway.yaml's commented ``newcomer`` (gpt-4 on the replay upstream, ``descriptor: probe``)
    joins the default router: graded on 200 probes by a child job, installed, then picked by auto."""
    raw = yaml.safe_load((ROOT / "gateway.yaml").read_text())
    pool = [{**p, "api_base": upstream} for p in raw["providers"] if p["expert"] != GPT4]
    cfg = {"server": {"reload_interval_s": 0.1}, "router": {"artifact": "bundled", "default_tradeoff": 0.0},
           "providers": pool}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # test-split multiple-choice prompts from the replay set bundled in the package (no data needed)
    rows = pd.read_parquet(BUNDLED_REPLAY, columns=["prompt_text", "split", "eval_name"])
    prompts = [str(p) for p in rows[(rows.split == "test") & (rows.eval_name != "mbpp")].prompt_text.head(20)]
    base, stop = start_gateway(path)
    try:
        new = {**_commented_newcomer(), "api_base": upstream}
        assert new["model"] == f"openai/{GPT4}" and "probe" in new["descriptor"]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({**cfg, "providers": [*pool, new]}))
        os.replace(tmp, path)
        deadline = time.monotonic() + 300
        while _ready_jobs(base).get("newcomer", {}).get("state") != "ready":
            assert time.monotonic() < deadline, _ready_jobs(base)
            time.sleep(0.2)
        report = _ready_jobs(base)["newcomer"]["report"]
        print(f"\n/ready job report: {report}")
        assert report["answered"] == 200 and 0 < report["spent_usd"] <= 1.5 and "ungradable" in report
        try:  # gpt-4's recorded grades are in the full benchmark data only
            want = int(_recorded([graded.ids[i] for i in graded.select(200, 0)]).sum())
            assert abs(report["correct"] - want) <= 4, (report["correct"], want)
        except DataNotFoundError:  # a fresh clone: gpt-4's answers on these probes are ~95% right
            assert report["correct"] >= 170, report
        time.sleep(0.5)
        assert httpx.get(base + "/ready").json()["checks"]["config"]["expert_problems"] == []
        picked: dict[str, int] = {}
        for prompt in prompts:
            r = httpx.post(base + "/v1/chat/completions", json={"model": "auto", "messages": [
                {"role": "user", "content": prompt}]})
            assert r.status_code == 200, r.text
            picked[r.headers["x-cscr-provider"]] = picked.get(r.headers["x-cscr-provider"], 0) + 1
        print(f"auto:best picks after onboarding: {picked}")
        assert picked.get("newcomer", 0) > len(prompts) // 2, picked
    finally:
        stop()


def test_peer_fill_completes_a_newcomer_from_the_models_it_resembles() -> None:
    """A copy of a known model, graded on 200 prompts, is completed close to that model's labels."""
    from router_core.kernel_policy import peer_fill

    rng = np.random.default_rng(0)
    difficulty = rng.random(2000)
    labels = (rng.random((2000, 4)) < np.clip(difficulty[:, None] + [-0.3, -0.1, 0.1, 0.3], 0, 1)).astype(float)
    answers = np.full(2000, np.nan)
    asked = rng.choice(2000, 200, replace=False)
    answers[asked] = labels[asked, 2]  # the newcomer answers as model 2 does
    filled = peer_fill(labels, np.ones(labels.shape, dtype=bool), answers)
    assert np.array_equal(filled[asked], answers[asked]) and np.all((filled >= 0) & (filled <= 1))
    rest = np.setdiff1d(np.arange(2000), asked)
    assert np.corrcoef(filled[rest], labels[rest, 2])[0, 1] > 0.9
    few = np.full(2000, np.nan)
    few[:5] = 1.0
    assert np.isnan(peer_fill(labels, np.ones(labels.shape, dtype=bool), few)[5:]).all()  # too few: nothing fitted


@pytest.mark.usefixtures("benchmark_data_dir")  # MMLU-Pro's recorded answers
def test_onboarding_eval_draws_and_grades_as_the_gateway_does() -> None:
    """``onboarding_eval`` measures the gateway's onboarding: its probes are ``GradedProbes.select``'s
    draw (exactly N, the serving stratification), graded by ``GradedProbes.grade``."""
    from router_core.evaluate import prepare
    from router_core.onboarding_eval import graded_answers, recorded_answers

    s = prepare("mmlu_pro", "unseen-models", encoder="random", seed=0)
    recorded = recorded_answers(s)
    probes = recorded.probes
    assert probes.artifact_probes == len(s.train) and len(probes) == int(s.train.extra["probe"].sum())
    picks = probes.select(100, seed=1)
    grades, observed, report = graded_answers(s, recorded, 100, seed=1)
    assert report["probes"] == 100  # a per-subject rounding drew 102
    asked = {probes.rows[i] for i in picks}
    for j, m in enumerate(s.bench.models):
        rows = set(np.flatnonzero(observed[:, j]))
        if m not in s.unseen:
            assert not rows
            continue
        assert rows <= asked and len(rows) >= 95  # a recorded answer for (nearly) every pick
        vector, _ = probes.grade(picks, [recorded.text.get((probes.ids[i], m)) for i in picks])
        assert np.array_equal(np.where(observed[:, j], grades[:, j], np.nan), np.asarray(vector), equal_nan=True)
