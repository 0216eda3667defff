"""Live probing through litellm against the real replay upstream (recorded RouterBench answers).

The replay upstream answers each probe with the model's recorded answer and bills usage that
reproduces the recorded cost, so the live run can be checked exactly: same answers, same spend.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from descriptors.live import LiveTarget, ProbeSettings, live_descriptor, probe_answers, probe_prompts
from descriptors.perplexity import recorded_answers
from descriptors.probes import build_probe_set
from gateway.replay import REPLAY_PRICES
from gateway.upstream import start_upstream
from router_core.data import load_benchmark

MODEL = "gpt-4-1106-preview"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    base, stop = start_upstream(chunk_delay_ms=0.0)
    yield base
    stop()


@pytest.fixture(scope="module")
def probes(benchmark_data_dir: Path):  # type: ignore[no-untyped-def]
    return build_probe_set("routerbench", n=12, seed=3)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSCR_CACHE_DIR", str(tmp_path / "cache"))


def target(base: str, model: str = MODEL) -> LiveTarget:
    prices = REPLAY_PRICES[MODEL]
    return LiveTarget(f"openai/{model}", base, "sk-test", prices[0], prices[1], timeout_s=10)


def recorded_cost(probes, model: str = MODEL) -> float:  # type: ignore[no-untyped-def]
    bench = load_benchmark("routerbench")
    row = {pid: i for i, pid in enumerate(bench.prompt_ids)}
    j = bench.models.index(model)
    return float(sum(bench.cost[row[pid], j] for pid in probes.prompt_ids))


def test_live_answers_and_spend_match_the_recording(upstream: str, probes) -> None:  # type: ignore[no-untyped-def]
    # max_tokens above every recorded answer's length: nothing is cut
    run = asyncio.run(probe_answers(target(upstream), probes, probe_prompts(probes),
                                    ProbeSettings(concurrency=3, max_tokens=4096)))
    assert run.missing == [] and run.errors == {} and run.aborted is None and not run.capped
    assert run.calls == len(probes)
    want = recorded_answers(probes, MODEL)
    # the replay joins list items with "" (the recorded cost's tokens), descriptors with "\n"
    assert [a.replace("\n", "") for a in run.answers] == [w.replace("\n", "") for w in want]  # type: ignore[union-attr]
    assert run.spent_usd == pytest.approx(recorded_cost(probes), rel=1e-9)
    # the default max_tokens (256) cuts the long code answers: they cost less, and are prefixes
    short = asyncio.run(probe_answers(target(upstream), probes, probe_prompts(probes), use_cache=False))
    assert short.spent_usd < run.spent_usd
    assert all(a.startswith(s) for a, s in zip(run.answers, short.answers, strict=True))  # type: ignore[union-attr,arg-type]


def test_cost_cap_is_never_passed_and_unsent_probes_are_listed(upstream: str, probes) -> None:  # type: ignore[no-untyped-def]
    cap = recorded_cost(probes) / 3
    run = asyncio.run(probe_answers(target(upstream), probes, probe_prompts(probes),
                                    ProbeSettings(concurrency=4, max_cost_usd=cap)))
    assert run.capped and 0 < run.n_answered < len(probes)
    assert run.spent_usd <= cap
    assert all(e.startswith("CostCap") for e in run.errors.values())
    assert sorted(run.errors) == run.missing
    # resumed with a higher cap: the answers it has are not paid again
    again = asyncio.run(probe_answers(target(upstream), probes, probe_prompts(probes),
                                      ProbeSettings(concurrency=4, max_cost_usd=1.0)))
    assert again.missing == [] and again.cached == run.n_answered
    assert again.calls == len(probes) - run.n_answered


def test_transient_failures_are_retried(upstream: str, probes) -> None:  # type: ignore[no-untyped-def]
    flaky = target(upstream, f"{MODEL}#fault=status:503,rate:0.5")
    run = asyncio.run(probe_answers(flaky, probes, probe_prompts(probes),
                                    ProbeSettings(retries=8, backoff_s=0.001), use_cache=False))
    assert run.missing == []
    assert run.calls > len(probes)  # some were retried (p = 0.5^12 that none failed)


def test_bad_key_or_unknown_model_aborts_the_run(upstream: str, probes) -> None:  # type: ignore[no-untyped-def]
    denied = target(upstream, f"{MODEL}#fault=status:401")
    run = asyncio.run(probe_answers(denied, probes, probe_prompts(probes),
                                    ProbeSettings(concurrency=2, retries=3), use_cache=False))
    assert run.aborted is not None and "401" in run.aborted
    assert run.n_answered == 0 and run.calls <= 2  # stopped after the calls already in flight
    assert len(run.errors) == len(probes)


def test_persistent_failure_is_reported_not_averaged(upstream: str, probes) -> None:  # type: ignore[no-untyped-def]
    from descriptors.types import DescriptorError

    broken = target(upstream, f"{MODEL}#fault=status:500")
    with pytest.raises(DescriptorError, match=r"12/12 probes unanswered"):
        live_descriptor("broken", broken, probes, lambda: pytest.fail("no scorer load for a failed run"),
                        settings=ProbeSettings(retries=1, backoff_s=0.001))


@pytest.mark.slow
def test_live_fingerprint_equals_the_recorded_one(upstream: str, probes) -> None:  # type: ignore[no-untyped-def]
    from descriptors.lm import load_lm
    from descriptors.perplexity import perplexity_descriptor

    scorer = load_lm("smollm2-135m", threads=2)
    live, run = live_descriptor("new-gpt4", target(upstream), probes, lambda: scorer)
    ref = perplexity_descriptor(MODEL, probes, scorer)
    assert live.probe_set == ref.probe_set and live.scorer == ref.scorer
    assert live.settings["source"] == "live" and live.settings["run"]["answered"] == len(probes)
    assert float(np.dot(live.vector, ref.vector)) > 0.999


@pytest.mark.slow
@pytest.mark.usefixtures("benchmark_data_dir")  # the CLI builds its probe set from the benchmark data
def test_cli_writes_the_descriptor_and_a_json_report(upstream: str, tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    prices = REPLAY_PRICES[MODEL]
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "describe", "live", "--n", "8", "--seed", "3", "--model",
         f"openai/{MODEL}", "--api-base", upstream, "--input-usd-per-mtok", str(prices[0]),
         "--output-usd-per-mtok", str(prices[1]), "--max-cost-usd", "0.5", "--no-progress", "--out-file", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["answered"] == 8 and 0 < report["spent_usd"] <= 0.5
    saved = json.loads(out.read_text())
    assert saved["kind"] == "perplexity" and len(saved["vector"]) == 8 and saved["settings"]["source"] == "live"


def test_probe_set_file_carries_the_prompts(probes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from descriptors.probes import ProbeSet

    path = tmp_path / "probes.json"
    probes.save(path)
    again = ProbeSet.load(path)
    assert again == probes and again.id == probes.id
    assert probe_prompts(again, data_dir=tmp_path / "no-data-here") == list(probes.prompts)  # no data read
    raw = json.loads(path.read_text())
    raw["texts"][0] = "tampered"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="does not match its id"):
        ProbeSet.load(path)


def test_bundled_router_ships_its_probe_set() -> None:
    from descriptors.probes import ProbeSet
    from router_core.router import load_router

    spec = load_router().descriptor_spec
    assert spec is not None and spec.kind == "perplexity" and spec.probes_file is not None
    shipped = ProbeSet.load(spec.probes_file)
    assert shipped.id == spec.probe_set and len(shipped.prompts) == 192
