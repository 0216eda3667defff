"""The gateway over real sockets: a real uvicorn gateway, the real replay upstream, the real
``openai`` client (sync, async, streaming), error paths and fallbacks."""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pandas as pd
import pytest

from gateway.replay import BUNDLED_REPLAY, REPLAY_PRICES
from gateway.upstream import start_upstream
from tests.gateway_fixture import provider, start_gateway

pytestmark = pytest.mark.integration

FAULTS = {
    "broken": "status:503",
    "limited": "status:429",
    "badreq": "status:400",
    "hang": "timeout:30",
    "cutter": "cut:3",
}


@pytest.fixture(scope="module")
def rb_row() -> pd.Series:
    df = pd.read_parquet(BUNDLED_REPLAY)
    return df[df.split == "test"].iloc[0]


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    base, stop = start_upstream(faults=FAULTS)
    yield base
    stop()


def _config(up: str, **overrides: Any) -> dict[str, Any]:
    gpt4 = REPLAY_PRICES["gpt-4-1106-preview"]
    cfg: dict[str, Any] = {
        "router": {"artifact": "none"},
        "server": {"max_attempts": 3, "deadline_s": 20},
        "providers": [
            provider("gpt-4", "openai/gpt-4-1106-preview", up, gpt4, expert="gpt-4-1106-preview"),
            provider("mistral-7b", "openai/mistralai/mistral-7b-chat", up,
                     REPLAY_PRICES["mistralai/mistral-7b-chat"]),
            provider("gpt-35-litellm", "openai/gpt-3.5-turbo-1106", up, REPLAY_PRICES["gpt-3.5-turbo-1106"],
                     transport="litellm"),
            provider("broken", "openai/broken", up, (0.01, 0.01)),
            provider("limited", "openai/limited", up, (0.02, 0.02)),
            provider("badreq", "openai/badreq", up, (0.03, 0.03)),
            provider("hang", "openai/hang", up, (0.04, 0.04), timeout_s=1.0),
            provider("cutter", "openai/cutter", up, (0.05, 0.05)),
        ],
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def gateway(upstream: str) -> Iterator[str]:
    base, stop = start_gateway(_config(upstream))
    yield base
    stop()


@pytest.fixture()
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=30)


def recorded(row: pd.Series, model: str) -> str:
    """The recorded answer as the replay upstream sends it (stored as a list literal)."""
    raw = row[f"{model}|model_response"]
    value = ast.literal_eval(raw) if isinstance(raw, str) and raw.startswith("[") else raw
    return str(value[0]) if isinstance(value, list) else str(value)


def _msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --- happy paths -------------------------------------------------------------------------------

def test_named_provider_returns_recorded_answer_with_cost_headers(client: openai.OpenAI, rb_row: pd.Series) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4", messages=_msgs(rb_row.prompt_text))
    resp = raw.parse()
    assert resp.choices[0].message.content == recorded(rb_row, "gpt-4-1106-preview")
    assert raw.headers["x-cscr-provider"] == "gpt-4"
    assert raw.headers["x-cscr-policy"] == "named"
    actual = float(raw.headers["x-cscr-cost-usd"])
    assert actual == pytest.approx(rb_row["gpt-4-1106-preview|total_cost"], rel=0.05)
    assert float(raw.headers["x-cscr-cost-estimate-usd"]) >= actual  # the estimate bounds the bill
    assert float(raw.headers["x-cscr-gateway-ms"]) >= 0


def test_auto_without_router_picks_cheapest(upstream: str, rb_row: pd.Series) -> None:
    cfg = _config(upstream)
    cfg["providers"] = [p for p in cfg["providers"] if p["name"] in ("gpt-4", "mistral-7b", "gpt-35-litellm")]
    base, stop = start_gateway(cfg)
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        for model in ("auto", "auto:best", "auto@0.2"):
            raw = client.chat.completions.with_raw_response.create(model=model, messages=_msgs(rb_row.prompt_text))
            assert raw.headers["x-cscr-provider"] == "mistral-7b"
            assert raw.headers["x-cscr-policy"] == "cost-only"
            assert raw.parse().choices[0].message.content == recorded(rb_row, "mistralai/mistral-7b-chat")
    finally:
        stop()


def test_async_streaming_reassembles_and_usage_only_when_asked(gateway: str, rb_row: pd.Series) -> None:
    import asyncio

    async def run() -> tuple[str, list[Any], list[Any]]:
        aclient = openai.AsyncOpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)
        chunks = [c async for c in await aclient.chat.completions.create(
            model="gpt-4", messages=_msgs(rb_row.prompt_text), stream=True)]
        with_usage = [c async for c in await aclient.chat.completions.create(
            model="gpt-4", messages=_msgs(rb_row.prompt_text), stream=True,
            stream_options={"include_usage": True})]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks, with_usage

    text, chunks, with_usage = asyncio.run(run())
    assert text == recorded(rb_row, "gpt-4-1106-preview")
    assert all(c.usage is None for c in chunks)
    assert with_usage[-1].usage is not None and with_usage[-1].choices == []
    assert with_usage[-1].usage.prompt_tokens > 0


def test_sync_streaming(client: openai.OpenAI, rb_row: pd.Series) -> None:
    stream = client.chat.completions.create(model="mistral-7b", messages=_msgs(rb_row.prompt_text), stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == recorded(rb_row, "mistralai/mistral-7b-chat")


def test_litellm_transport_non_stream_and_stream(client: openai.OpenAI, rb_row: pd.Series) -> None:
    resp = client.chat.completions.create(model="gpt-35-litellm", messages=_msgs(rb_row.prompt_text))
    assert resp.choices[0].message.content == recorded(rb_row, "gpt-3.5-turbo-1106")
    assert resp.usage is not None and resp.usage.prompt_tokens > 0
    stream = client.chat.completions.create(model="gpt-35-litellm", messages=_msgs(rb_row.prompt_text),
                                            stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == recorded(rb_row, "gpt-3.5-turbo-1106")


def test_parameters_pass_through(client: openai.OpenAI, upstream: str) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    client.chat.completions.create(
        model="gpt-4", messages=_msgs("What is 2+2?"), temperature=0.3, top_p=0.9, max_tokens=77, seed=7,
        stop=["\n\n"], user="u-1", tools=tools, tool_choice="auto", response_format={"type": "text"},
    )
    stats = httpx.get(upstream.removesuffix("/v1") + "/_stats").json()
    body = stats["last_request"]["gpt-4-1106-preview"]
    assert body["temperature"] == 0.3 and body["top_p"] == 0.9 and body["max_tokens"] == 77
    assert body["seed"] == 7 and body["stop"] == ["\n\n"] and body["user"] == "u-1"
    assert body["tools"] == tools and body["tool_choice"] == "auto"
    assert body["response_format"] == {"type": "text"}


def test_synthetic_answer_for_unknown_prompt(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="gpt-4", messages=_msgs("a prompt nobody recorded"))
    assert "synthetic" in (resp.choices[0].message.content or "")


# --- fallback and upstream failures -------------------------------------------------------------

def test_fallback_after_retryable_failures(upstream: str, rb_row: pd.Series) -> None:
    # broken (503) and limited (429) are cheapest; cost-only tries them first, then gpt-4 answers.
    cfg = _config(upstream)
    cfg["providers"] = [p for p in cfg["providers"] if p["name"] in ("broken", "limited", "gpt-4")]
    base, stop = start_gateway(cfg)
    try:
        r = httpx.post(base + "/v1/chat/completions", json={"model": "auto", "messages": _msgs(rb_row.prompt_text)})
        assert r.status_code == 200, r.text
        assert r.headers["x-cscr-provider"] == "gpt-4"
        assert r.headers["x-cscr-tried"] == "broken,limited,gpt-4"
        metrics = httpx.get(base + "/metrics").text
        assert 'cscr_fallbacks_total{provider="broken"} 1.0' in metrics
    finally:
        stop()


def test_all_providers_failed_is_502_naming_them(upstream: str) -> None:
    cfg = _config(upstream)
    cfg["providers"] = [p for p in cfg["providers"] if p["name"] in ("broken", "limited")]
    base, stop = start_gateway(cfg)
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="auto", messages=_msgs("hi"))
        assert info.value.status_code == 502
        message = info.value.body["message"]  # type: ignore[index]
        assert "broken" in message and "limited" in message
        # streams that never start fall back the same way
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="auto", messages=_msgs("hi"), stream=True)
        assert info.value.status_code == 502
    finally:
        stop()


def test_caller_fault_4xx_is_returned_as_is(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="badreq", messages=_msgs("hi"))
    assert info.value.status_code == 400


def test_timeout_falls_back_then_deadline_is_504(upstream: str, rb_row: pd.Series) -> None:
    cfg = _config(upstream)
    cfg["providers"] = [p for p in cfg["providers"] if p["name"] in ("hang", "gpt-4")]
    base, stop = start_gateway(cfg)
    try:
        r = httpx.post(base + "/v1/chat/completions", json={"model": "auto", "messages": _msgs(rb_row.prompt_text)},
                       timeout=30)
        assert r.status_code == 200 and r.headers["x-cscr-tried"] == "hang,gpt-4"
    finally:
        stop()
    cfg["server"] = {"deadline_s": 0.5}
    cfg["providers"] = [p for p in cfg["providers"] if p["name"] == "hang"]
    cfg["providers"][0]["timeout_s"] = 10.0
    base, stop = start_gateway(cfg)
    try:
        r = httpx.post(base + "/v1/chat/completions", json={"model": "hang", "messages": _msgs("x")}, timeout=30)
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "deadline_exceeded"
    finally:
        stop()


def test_stream_cut_after_start_ends_with_error_event(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="cutter", messages=_msgs("tell me a story"), stream=True)
    with pytest.raises(openai.APIError) as info:
        for _ in stream:
            pass
    assert "failed after it started" in info.value.message


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-4"}, "messages"),
        ({"model": "gpt-4", "messages": []}, "messages"),
        ({"model": "gpt-4", "messages": "hi"}, "messages"),
        ({"model": "gpt-4", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "gpt-4", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": "gpt-4", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "gpt-4", "messages": _msgs("x"), "temperature": "hot"}, "temperature"),
        ({"model": "gpt-4", "messages": _msgs("x"), "temperature": 3}, "temperature"),
        ({"model": "gpt-4", "messages": _msgs("x"), "max_tokens": 0}, "max_tokens"),
        ({"model": "gpt-4", "messages": _msgs("x"), "stream": "yes"}, "stream"),
        ({"model": "gpt-4", "messages": _msgs("x"), "stream": 1}, "stream"),
        ({"model": "gpt-4", "messages": _msgs("x"), "stream": True, "stream_options": "usage"}, "stream_options"),
        ({"model": "gpt-4", "messages": _msgs("x"), "stream": True, "stream_options": {"include_usage": 1}},
         "stream_options.include_usage"),
        ({"model": "gpt-4", "messages": _msgs("x"), "n": "2"}, "n"),
        ({"model": "gpt-4", "messages": _msgs("x"), "n": True}, "n"),
        ({"model": "gpt-4", "messages": _msgs("x"), "temperature": True}, "temperature"),
        ({"model": "gpt-4", "messages": _msgs("x"), "max_tokens": 1.5}, "max_tokens"),
        ({"model": "gpt-4", "messages": _msgs("x"), "stop": ["a", 1]}, "stop"),
        ({"messages": _msgs("x")}, "model"),
        ({"model": "auto@1.5", "messages": _msgs("x")}, "model"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(gateway: str, body: dict[str, Any], param: str) -> None:
    r = httpx.post(gateway + "/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_malformed_json_unknown_model_and_oversized_body(gateway: str, upstream: str) -> None:
    r = httpx.post(gateway + "/v1/chat/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(gateway + "/v1/chat/completions", json={"model": "gpt-9", "messages": _msgs("x")})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    base, stop = start_gateway(_config(upstream, server={"max_body_bytes": 1000}))
    try:
        r = httpx.post(base + "/v1/chat/completions", json={"model": "gpt-4", "messages": _msgs("x" * 5000)})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    finally:
        stop()


def test_bad_headers_and_unknown_route(gateway: str) -> None:
    r = httpx.post(gateway + "/v1/chat/completions", json={"model": "auto", "messages": _msgs("x")},
                   headers={"x-cscr-max-cost-usd": "lots"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-cscr-max-cost-usd"
    r = httpx.get(gateway + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_request_cost_cap_header(gateway: str, rb_row: pd.Series) -> None:
    r = httpx.post(gateway + "/v1/chat/completions", json={"model": "gpt-4", "messages": _msgs(rb_row.prompt_text)},
                   headers={"x-cscr-max-cost-usd": "0.000001"})
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["code"] == "budget_exceeded" and "gpt-4" in err["message"]


# --- keys ---------------------------------------------------------------------------------------

def test_keys_required_when_configured(upstream: str, rb_row: pd.Series) -> None:
    secret = "sk-test-secret-123"
    keys = [{"name": "team-a", "secret_sha256": hashlib.sha256(secret.encode()).hexdigest(), "budget_usd": 0.05}]
    base, stop = start_gateway(_config(upstream, keys=keys))
    try:
        for auth in (None, "Bearer sk-wrong"):
            headers = {"authorization": auth} if auth else {}
            r = httpx.post(base + "/v1/chat/completions", json={"model": "gpt-4", "messages": _msgs("x")},
                           headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert "sk-wrong" not in r.text
        client = openai.OpenAI(base_url=base + "/v1", api_key=secret, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="gpt-4", messages=_msgs(rb_row.prompt_text))
        remaining = float(raw.headers["x-cscr-budget-remaining-usd"])
        assert remaining == pytest.approx(0.05 - float(raw.headers["x-cscr-cost-usd"]))
        # spend until the budget is gone: every request is either served or refused with budget_exceeded
        outcomes = set()
        for _ in range(12):
            try:
                client.chat.completions.create(model="gpt-4", messages=_msgs(rb_row.prompt_text), max_tokens=5)
                outcomes.add("ok")
            except openai.APIStatusError as exc:
                assert exc.status_code == 429 and exc.body["code"] == "budget_exceeded"  # type: ignore[index]
                outcomes.add("refused")
        assert outcomes == {"ok", "refused"}
    finally:
        stop()


# --- service endpoints --------------------------------------------------------------------------

def test_models_health_ready_metrics(gateway: str, client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"auto", "auto:cheap", "auto:best", "gpt-4", "mistral-7b"} <= set(ids)
    assert httpx.get(gateway + "/health").json() == {"status": "ok"}
    ready = httpx.get(gateway + "/ready")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["store"]["ok"] and checks["router"]["policy"] == "cost-only"
    client.chat.completions.create(model="gpt-4", messages=_msgs("metrics please"))
    text = httpx.get(gateway + "/metrics").text
    for name in ("cscr_requests_total", "cscr_request_seconds", "cscr_upstream_seconds", "cscr_tokens_total",
                 "cscr_spend_usd_total", "cscr_gateway_seconds"):
        assert name in text
