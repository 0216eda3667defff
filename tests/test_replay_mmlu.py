"""MMLU-Pro through the gateway: the replay upstream's ``mmlu_pro`` mode over the wire (recorded
answers, labelled stand-ins of the recorded length, usage that bills ``costs.csv``), the generated
gateway config, and ``cscr eval-gateway --benchmark mmlu_pro`` end to end on a small slice (a real
upstream and gateway, a small train-only artifact). Needs the full benchmark data (skipped without)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pandas as pd
import pytest
import yaml

from gateway.config import parse_config
from gateway.eval_gateway import build_parser, load_eval_set, run
from gateway.replay_mmlu import STAND_IN_TAG, MmluProTable, config_text, provider_name, stand_in_content
from gateway.upstream import main as upstream_main
from gateway.upstream import start_upstream
from router_core.data import mmlu_pro_prompt
from router_core.pricing import price_table
from tests.gateway_fixture import start_gateway

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("benchmark_data_dir")]
ROOT = Path(__file__).resolve().parents[1]
COMMITTED_CONFIG = ROOT / "docs" / "results" / "eval-gateway" / "gateway-eval-mmlu_pro.yaml"


@pytest.fixture(scope="module")
def table(benchmark_data_dir: Path) -> MmluProTable:
    return MmluProTable.load(benchmark_data_dir)


@pytest.fixture(scope="module")
def data(benchmark_data_dir: Path) -> dict[str, pd.DataFrame]:
    base = benchmark_data_dir / "mmlu_pro"
    return {"questions": pd.read_parquet(base / "questions.parquet").set_index("question_id"),
            "costs": pd.read_csv(base / "costs.csv").set_index("question_id"),
            "chars": pd.read_csv(base / "response_chars.csv").set_index("question_id"),
            "responses": pd.read_parquet(base / "responses.parquet")}


@pytest.fixture(scope="module")
def client(table: MmluProTable) -> Iterator[openai.OpenAI]:
    url, stop = start_upstream(table=table, replay="mmlu_pro")
    yield openai.OpenAI(base_url=url, api_key="test-key", max_retries=0, timeout=10)
    stop()


def prompt_of(data: dict[str, pd.DataFrame], qid: int) -> str:
    import json

    q = data["questions"].loc[qid]
    return mmlu_pro_prompt(str(q.question), json.loads(q.options), str(q.category))


def billed(prices: np.ndarray, prompt_tokens: int, completion_tokens: int) -> float:
    """USD of the usage at one model's (input, output) USD per 1M tokens, as the gateway bills it."""
    return (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1e6


def test_usage_bills_the_recorded_cost_of_every_cell(table: MmluProTable, data: dict[str, pd.DataFrame]) -> None:
    """Every 4th question x 31 models: usage at model_prices.csv is the costs.csv cost, up to float rounding
    (whole tokens hit the data's rounded costs; the method alone guarantees half an output token)."""
    prompts = [prompt_of(data, qid) for qid in data["questions"].index[::4]]
    models = table.models()
    prices = price_table(models)  # (M, 2)
    worst = 0.0  # relative error
    for prompt in prompts:
        for j, m in enumerate(models):
            rec = table.lookup(prompt, m)
            assert rec is not None and rec.completion_tokens >= 0  # a repeated question answers as its first copy
            gap = abs(billed(prices[j], rec.prompt_tokens, rec.completion_tokens) - rec.cost_usd)
            worst = max(worst, gap / rec.cost_usd)
    assert worst <= 1e-9, worst


def test_a_probe_question_replays_its_recorded_answer(client: openai.OpenAI, table: MmluProTable,
                                                      data: dict[str, pd.DataFrame]) -> None:
    rec = data["responses"].iloc[1000]
    qid, model = int(rec.question_id), str(rec.model)
    raw = client.chat.completions.with_raw_response.create(
        model=f"openai/{model}", messages=[{"role": "user", "content": prompt_of(data, qid)}])
    reply = raw.parse()
    assert raw.headers["x-replay"] == "recorded" and raw.headers["x-replay-sample-id"] == str(qid)
    assert raw.headers["x-replay-model"] == model
    assert reply.choices[0].message.content == rec.response
    assert int(raw.headers["x-replay-chars"]) == int(data["chars"].loc[qid, model])
    assert float(raw.headers["x-replay-cost-usd"]) == float(data["costs"].loc[qid, model])
    assert reply.usage is not None


def test_a_test_question_gets_a_labelled_stand_in_of_the_recorded_length(
        client: openai.OpenAI, table: MmluProTable, data: dict[str, pd.DataFrame]) -> None:
    probes = set(data["responses"].question_id)
    qid = next(int(q) for q in data["questions"].index if q not in probes)
    model = "gpt-4o-2024-05-13(api)"
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt_of(data, qid)}])
    reply = raw.parse()
    content = reply.choices[0].message.content or ""
    chars = int(data["chars"].loc[qid, model])
    assert raw.headers["x-replay"] == "stand-in" and int(raw.headers["x-replay-chars"]) == chars
    assert content == stand_in_content(model, str(qid), chars)
    assert content.startswith(STAND_IN_TAG.format(model=model, qid=qid, chars=chars))
    assert len(content) == max(chars, len(STAND_IN_TAG.format(model=model, qid=qid, chars=chars)))
    assert reply.usage is not None
    recorded = float(data["costs"].loc[qid, model])
    assert float(raw.headers["x-replay-cost-usd"]) == recorded
    prices = price_table([model])[0]
    assert abs(billed(prices, reply.usage.prompt_tokens, reply.usage.completion_tokens) - recorded) \
        <= 0.5 * prices[1] / 1e6


def test_short_and_unrecorded_lengths(table: MmluProTable, data: dict[str, pd.DataFrame]) -> None:
    assert stand_in_content("m", "1", 3) == STAND_IN_TAG.format(model="m", qid="1", chars=3)  # the label, whole
    assert len(stand_in_content("m", "1", 5000)) == 5000
    i, j = np.argwhere(data["chars"].isna().to_numpy())[0]
    qid, model = int(data["chars"].index[i]), str(data["chars"].columns[j])
    rec = table.lookup(prompt_of(data, qid), model)
    assert rec is not None and rec.stand_in and rec.chars is not None and rec.chars > 0  # the length the cost implies


def test_unknown_prompts_and_models_are_synthetic_and_models_listed(client: openai.OpenAI, table: MmluProTable,
                                                                     data: dict[str, pd.DataFrame]) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="Yi-6B", messages=[{"role": "user", "content": "What is the capital of Atlantis?"}])
    assert raw.headers["x-replay"] == "synthetic" and raw.headers["x-replay-reason"] == "prompt not in MMLU-Pro"
    assert (raw.parse().choices[0].message.content or "").startswith(
        "[synthetic reply from replay upstream: prompt not in MMLU-Pro]")
    other = client.chat.completions.with_raw_response.create(
        model="gpt-4-1106-preview", messages=[{"role": "user", "content": prompt_of(data, 70)}])
    assert other.headers["x-replay-reason"] == "model 'gpt-4-1106-preview' not in MMLU-Pro"
    listed = {m.id for m in client.models.list()}
    assert listed == set(table.models()) and len(listed) == 31


def test_missing_mmlu_data_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert upstream_main(["--replay", "mmlu_pro", "--data", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MMLU-Pro data not found" in err[0]


def test_generated_config_serves_every_model_at_its_price(benchmark_data_dir: Path) -> None:
    raw = yaml.safe_load(config_text("http://127.0.0.1:18731/v1", "/tmp/evalgw/ks-mmlu_pro-train"))
    config = parse_config(raw, "mmlu.yaml", {})
    prices = pd.read_csv(benchmark_data_dir / "mmlu_pro" / "model_prices.csv").set_index("model")
    assert len(config.providers) == 31 and {p.expert for p in config.providers} == set(prices.index)
    for p in config.providers:
        assert p.name == provider_name(p.expert or "") and p.upstream_model == p.expert
        assert (p.input_usd_per_mtok, p.output_usd_per_mtok) == tuple(prices.loc[p.expert, ["input_usd_per_mtok",
                                                                                         "output_usd_per_mtok"]])
    # the committed copy the docs' recipe serves is what the command writes
    assert COMMITTED_CONFIG.read_text() == config_text("http://127.0.0.1:18731/v1", "/tmp/evalgw/ks-mmlu_pro-train")


@pytest.fixture(scope="module")
def served(table: MmluProTable, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """A small train-only artifact (400 training prompts), the MMLU-Pro upstream and a gateway serving
    the generated config."""
    from router_core.kernel_policy import build

    tmp = tmp_path_factory.mktemp("mmlu-gateway")
    artifact = build("mmlu_pro", tmp / "ks", fit_on="train", max_prompts=400)
    up, stop_up = start_upstream(table=table, replay="mmlu_pro")
    config = tmp / "gateway.yaml"
    config.write_text(config_text(up, str(artifact)))
    base, stop = start_gateway(yaml.safe_load(config.read_text()))
    yield base, config, artifact
    stop()
    stop_up()


@pytest.mark.slow
def test_eval_gateway_scores_mmlu_pro_end_to_end(served: tuple[str, Path, Path]) -> None:
    base, config, artifact = served
    args: argparse.Namespace = build_parser().parse_args([
        "--url", base, "--benchmark", "mmlu_pro", "--config", str(config), "--key", "sk-eval-all",
        "--artifact", str(artifact), "--tradeoffs", "0,0.5,1", "--max-prompts", "16", "--bootstrap", "20"])
    summary: dict[str, Any] = run(args, "test")
    assert summary["prompts"] == 16 and len(summary["models"]) == 31 and len(summary["pool"]) == 31
    assert summary["agreement_gateway_vs_offline"]["overall"] == 1.0  # HTTP decisions = the offline rule's
    assert {"gateway", "offline", "kmeans", "oracle"} <= set(summary["results"])
    mixes = [m["mix"] for m in summary["mix"]]
    assert mixes[0] != mixes[-1]  # T moves the decisions
    es = load_eval_set("mmlu_pro", "test", max_prompts=16)
    assert np.isfinite(summary["results"]["gateway"]["audc"]["value"]) and len(es.prompts) == 16


@pytest.mark.slow
def test_the_gateway_bills_the_recorded_cost(served: tuple[str, Path, Path], data: dict[str, pd.DataFrame]) -> None:
    """Through the generated config's pricing, a replayed answer costs what costs.csv says."""
    import httpx

    base, _, _ = served
    probes = set(data["responses"].question_id)
    qid = next(int(q) for q in data["questions"].index[::-1] if q not in probes)
    for model in ("gpt-4o-2024-05-13(api)", "gemini-1.5-flash-002", "Llama-2-7b-hf"):
        r = httpx.post(f"{base}/v1/chat/completions", headers={"authorization": "Bearer sk-eval-all"}, timeout=30,
                       json={"model": provider_name(model), "messages": [{"role": "user",
                                                                          "content": prompt_of(data, qid)}]})
        assert r.status_code == 200 and r.headers["x-cscr-provider"] == provider_name(model)
        assert r.json()["usage"]["cost"] == pytest.approx(float(data["costs"].loc[qid, model]), rel=1e-9)
