"""The endpoints besides chat, over real sockets with the official clients: ``/v1/responses``
(plain, streamed, tools, JSON mode, refusals), ``/v1/messages`` with the ``anthropic`` client
(plain, streamed, tools), ``/v1/embeddings`` (replay upstream's synthetic vectors),
``/v1/completions`` (a small legacy upstream below), ``/v1/models/{id}``, and unsupported paths.
Spend is read back from the admin API after each call: every endpoint is budgeted."""

from __future__ import annotations

import hashlib
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway import anthropic as anthropic_map
from gateway.config import parse_config
from gateway.errors import ConfigError, InvalidRequest, PermissionDenied
from gateway.policy import resolve_target
from gateway.replay import REPLAY_PRICES
from gateway.upstream import start_upstream
from tests.gateway_fixture import provider, start_gateway

pytestmark = pytest.mark.integration

MASTER = "master-secret-for-endpoint-tests"
SECRET = "sk-endpoints-test-key-0001"
TINY = "sk-endpoints-test-key-tiny"  # a budget of $0.000001: an embedding fits, a chat does not
GPT4 = REPLAY_PRICES["gpt-4-1106-preview"]
MISTRAL = REPLAY_PRICES["mistralai/mistral-7b-chat"]
EMBED_PRICE = (0.02, 0.0)
LEGACY_PRICE = (1.5, 2.0)
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def _legacy_app() -> Starlette:
    """A legacy ``/v1/completions`` upstream (the replay upstream has none): echoes the prompt's
    length as its text, with usage, and remembers the last body."""
    seen: dict[str, Any] = {}

    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        seen["body"] = body
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        choices = [{"index": i, "text": f" legacy answer {i} to {len(p)} chars", "finish_reason": "stop",
                    "logprobs": None} for i, p in enumerate(prompts)]
        usage = {"prompt_tokens": 7 * len(prompts), "completion_tokens": 5 * len(prompts),
                 "total_tokens": 12 * len(prompts)}
        return JSONResponse({"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
                             "choices": choices, "usage": usage})

    async def last(request: Request) -> JSONResponse:
        return JSONResponse(seen)

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                             Route("/_last", last, methods=["GET"])])


def _serve(app: Starlette) -> tuple[str, Callable[[], None]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[str, str]]:
    up, stop_up = start_upstream(replay="none", faults={"broken": "status:503", "cutter": "cut:4"})
    legacy, stop_legacy = _serve(_legacy_app())
    yield up, legacy
    stop_legacy()
    stop_up()


def _config(up: str, legacy: str) -> dict[str, Any]:
    return {
        "router": {"artifact": "none"},
        "server": {"master_key_env": "CSCR_MASTER", "deadline_s": 20},
        "keys": [{"name": "alice", "secret_sha256": hashlib.sha256(SECRET.encode()).hexdigest(), "budget_usd": 5.0},
                 {"name": "tiny", "secret_sha256": hashlib.sha256(TINY.encode()).hexdigest(), "budget_usd": 1e-6}],
        "providers": [
            provider("gpt-4", "openai/gpt-4-1106-preview", up, GPT4),
            provider("mistral-7b", "openai/mistralai/mistral-7b-chat", up, MISTRAL),
            # The cheapest of all: `auto` must still never send a chat to it.
            provider("embedder", "openai/text-embedding-3-small", up, EMBED_PRICE, mode="embedding"),
            provider("legacy", "openai/gpt-3.5-turbo-instruct", legacy + "/v1", LEGACY_PRICE, mode="completion"),
            provider("legacy-cheap", "openai/babbage-002", legacy + "/v1", (0.4, 0.4), mode="completion"),
            provider("cutter", "openai/cutter", up, (1.0, 1.0)),  # its streams break after 4 events
            # 3 s per chunk: its ~8 chunks take over 20 s, far from a settlement made on hang-up
            provider("slow", "openai/gpt-4-1106-preview#fault=chunk_delay:3000", up, GPT4),
            provider("gpt35-litellm", "openai/gpt-3.5-turbo-1106", up, REPLAY_PRICES["gpt-3.5-turbo-1106"],
                     transport="litellm"),
        ],
    }


@pytest.fixture(scope="module")
def gateway(upstreams: tuple[str, str]) -> Iterator[str]:
    base, stop = start_gateway(_config(*upstreams), env={"CSCR_MASTER": MASTER})
    yield base
    stop()


@pytest.fixture()
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway + "/v1", api_key=SECRET, max_retries=0)


def _spent(gateway: str) -> float:
    keys = httpx.get(gateway + "/admin/keys", headers={"authorization": f"Bearer {MASTER}"}).json()
    return float(next(k for k in keys["data"] if k["name"] == "alice")["spent_usd"])


def _last_upstream_body(up: str, model: str) -> dict[str, Any]:
    stats = httpx.get(up.removesuffix("/v1") + "/_stats").json()
    body: dict[str, Any] = stats["last_request"][model]
    return body


def _cost(price: tuple[float, float], prompt: int, completion: int) -> float:
    return (prompt * price[0] + completion * price[1]) / 1e6


# --- /v1/responses ------------------------------------------------------------------------------


def test_responses_plain_routed_and_budgeted(client: openai.OpenAI, gateway: str,
                                             upstreams: tuple[str, str]) -> None:
    before = _spent(gateway)
    raw = client.responses.with_raw_response.create(
        model="auto:cheap", input="Name a colour.", instructions="Answer in one word.", max_output_tokens=60,
        temperature=0.3, metadata={"run": "t1"})
    resp = raw.parse()
    assert raw.headers["x-cscr-provider"] == "mistral-7b"  # the cheapest chat provider, not the embedder
    assert resp.model == "mistral-7b"  # the gateway's name for who answered
    assert resp.object == "response" and resp.status == "completed" and resp.store is False
    assert "says:" in resp.output_text and resp.output[0].type == "message"
    assert resp.metadata == {"run": "t1"} and resp.instructions == "Answer in one word."
    assert resp.usage is not None and resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    sent = _last_upstream_body(upstreams[0], "mistralai/mistral-7b-chat")
    assert sent["messages"][0] == {"role": "system", "content": "Answer in one word."}
    assert sent["messages"][1] == {"role": "user", "content": "Name a colour."}
    assert sent["max_tokens"] == 60 and sent["temperature"] == 0.3 and "metadata" not in sent
    charged = _spent(gateway) - before
    expected = _cost(MISTRAL, resp.usage.input_tokens, resp.usage.output_tokens)
    assert charged == pytest.approx(expected, abs=1e-9) and charged > 0
    assert float(raw.headers["x-cscr-cost-usd"]) == pytest.approx(expected, abs=1e-8)


def test_responses_stream_events_and_spend(client: openai.OpenAI, gateway: str) -> None:
    before = _spent(gateway)
    events = list(client.responses.create(model="gpt-4", input="Tell me a story.", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for kind in ("response.output_item.added", "response.content_part.added", "response.output_text.done",
                 "response.output_item.done"):
        assert kind in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert kinds.count("response.output_text.delta") > 1 and "says:" in deltas
    final = events[-1].response
    assert final.output_text == deltas and final.status == "completed" and final.model == "gpt-4"
    assert events[0].response.model == "gpt-4"
    assert final.usage is not None and final.usage.output_tokens > 0
    charged = _spent(gateway) - before
    assert charged == pytest.approx(_cost(GPT4, final.usage.input_tokens, final.usage.output_tokens), abs=1e-9)


def test_responses_stream_helper(client: openai.OpenAI) -> None:
    """The SDK's own accumulator (``responses.stream``) rebuilds the same answer from the events."""
    with client.responses.stream(model="mistral-7b", input=[{"role": "user", "content": "Hi there"}]) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.output_text == text and "says:" in text


def test_responses_tools_round_trip(client: openai.OpenAI, upstreams: tuple[str, str]) -> None:
    tools: Any = [{"type": "function", "name": "get_weather", "description": "Weather", "parameters": WEATHER}]
    resp = client.responses.create(model="gpt-4", input="Weather in Paris?", tools=tools,
                                   tool_choice={"type": "function", "name": "get_weather"})
    call = resp.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    sent = _last_upstream_body(upstreams[0], "gpt-4-1106-preview")
    assert sent["tools"] == [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                                                "parameters": WEATHER}}]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    follow = client.responses.create(model="gpt-4", tools=tools, input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": "get_weather", "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "18C and sunny"},
    ])
    assert "says:" in follow.output_text
    sent = _last_upstream_body(upstreams[0], "gpt-4-1106-preview")
    assert sent["messages"][1]["tool_calls"][0]["id"] == call.call_id
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.call_id, "content": "18C and sunny"}
    # The SDK's documented pattern: the previous output items go back into the next input as they are.
    history: Any = [{"role": "user", "content": "Hi"}, *[item.model_dump() for item in follow.output],
                    {"role": "user", "content": "And tomorrow?"}]
    client.responses.create(model="gpt-4", input=history)
    sent = _last_upstream_body(upstreams[0], "gpt-4-1106-preview")
    assert sent["messages"][1] == {"role": "assistant", "content": follow.output_text}


def test_responses_streamed_tool_call(client: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    events = list(client.responses.create(model="gpt-4", input="Weather?", tools=tools, tool_choice="required",
                                          stream=True))
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and done[0].arguments == "{}"
    final = events[-1].response
    assert final.output[0].type == "function_call" and final.output[0].name == "get_weather"


def test_responses_json_mode_and_images(client: openai.OpenAI, upstreams: tuple[str, str]) -> None:
    client.responses.create(model="gpt-4", text={"format": {"type": "json_object"}}, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Describe as JSON"},
                                     {"type": "input_image", "image_url": "https://example.com/cat.png"}]}])
    sent = _last_upstream_body(upstreams[0], "gpt-4-1106-preview")
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["messages"][0]["content"][1] == {"type": "image_url",
                                                 "image_url": {"url": "https://example.com/cat.png"}}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    client.responses.create(model="gpt-4", input="x", text={"format": {"type": "json_schema", "name": "out",
                                                                        "schema": schema, "strict": True}})
    assert _last_upstream_body(upstreams[0], "gpt-4-1106-preview")["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}


def test_responses_refusals_name_the_parameter(client: openai.OpenAI, gateway: str) -> None:
    before = _spent(gateway)
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="auto", input="continue", previous_response_id="resp_123")
    assert err.value.status_code == 400 and err.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert "stores no responses" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="auto", input="hi", reasoning={"effort": "low"})
    assert err.value.body["param"] == "reasoning"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="auto", input="hi", tools=[{"type": "web_search"}])
    assert err.value.body["param"] == "tools[0].type" and "function" in err.value.message  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="auto", input=[])
    assert err.value.body["param"] == "input"  # type: ignore[index]
    assert _spent(gateway) == before  # nothing reserved, nothing charged


def test_responses_unauthenticated_is_401_before_400(gateway: str) -> None:
    r = httpx.post(gateway + "/v1/responses", json={"model": "auto", "previous_response_id": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_responses_fall_back_like_chat(upstreams: tuple[str, str]) -> None:
    up = upstreams[0]
    cfg = {"router": {"artifact": "none"},
           "providers": [provider("broken", "openai/broken", up, (0.01, 0.01)),
                         provider("mistral-7b", "openai/mistralai/mistral-7b-chat", up, MISTRAL)]}
    base, stop = start_gateway(cfg)
    try:
        c = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        raw = c.responses.with_raw_response.create(model="auto:cheap", input="hello")
        assert raw.headers["x-cscr-tried"] == "broken,mistral-7b" and "says:" in raw.parse().output_text
        events = list(c.responses.create(model="auto:cheap", input="hello", stream=True))
        assert events[-1].type == "response.completed"
    finally:
        stop()


def test_responses_stream_broken_midway_fails_and_charges(client: openai.OpenAI, gateway: str) -> None:
    before = _spent(gateway)
    events = list(client.responses.create(model="cutter", input="Tell me a story.", stream=True))
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert "failed after it started" in events[-2].message and events[-1].response.status == "failed"
    assert _spent(gateway) > before  # what was generated before the cut is paid for


def test_responses_stream_abandoned_is_settled(gateway: str) -> None:
    """A client that reads one event and hangs up: the relay under the translation is closed and
    settles (the hold is released into actual spend, not left to expire)."""
    before = _spent(gateway)
    body = {"model": "slow", "input": "Tell me a long story.", "stream": True}
    with httpx.stream("POST", gateway + "/v1/responses", json=body,
                      headers={"authorization": f"Bearer {SECRET}"}) as r:
        next(r.iter_lines())
    hung_up = time.monotonic()
    deadline = time.monotonic() + 30
    while _spent(gateway) - before > 0.01 and time.monotonic() < deadline:  # the hold is ~$0.015
        time.sleep(0.05)
    assert 0 < _spent(gateway) - before < 0.01
    assert time.monotonic() - hung_up < 10  # settled on hang-up, not when the slow stream would have ended


def test_translated_endpoints_over_the_litellm_transport(client: openai.OpenAI, gateway: str) -> None:
    resp = client.responses.create(model="gpt35-litellm", input="Hello")
    assert "says:" in resp.output_text and resp.usage is not None and resp.usage.output_tokens > 0
    events = list(client.responses.create(model="gpt35-litellm", input="Hello", stream=True))
    assert events[-1].type == "response.completed" and "says:" in events[-1].response.output_text
    claude = anthropic.Anthropic(base_url=gateway, api_key=SECRET, max_retries=0)
    with claude.messages.stream(model="gpt35-litellm", max_tokens=100,
                                messages=[{"role": "user", "content": "Hello"}]) as stream:
        assert "says:" in stream.get_final_text()


# --- /v1/messages (Anthropic) -------------------------------------------------------------------


@pytest.fixture()
def claude(gateway: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway, api_key=SECRET, max_retries=0)  # sends x-api-key


def test_messages_plain_and_budgeted(claude: anthropic.Anthropic, gateway: str, upstreams: tuple[str, str]) -> None:
    before = _spent(gateway)
    raw = claude.messages.with_raw_response.create(
        model="auto:cheap", max_tokens=80, system="Be terse.", stop_sequences=["\n\n"],
        messages=[{"role": "user", "content": "Name a planet."}])
    msg = raw.parse()
    assert raw.headers["x-cscr-provider"] == "mistral-7b"
    assert msg.type == "message" and msg.role == "assistant" and msg.stop_reason == "end_turn"
    assert msg.content[0].type == "text" and "says:" in msg.content[0].text
    sent = _last_upstream_body(upstreams[0], "mistralai/mistral-7b-chat")
    assert sent["messages"][0] == {"role": "system", "content": "Be terse."}
    assert sent["max_tokens"] == 80 and sent["stop"] == ["\n\n"]
    charged = _spent(gateway) - before
    assert charged == pytest.approx(_cost(MISTRAL, msg.usage.input_tokens, msg.usage.output_tokens), abs=1e-9)
    assert charged > 0


def test_messages_stream_events(claude: anthropic.Anthropic, gateway: str) -> None:
    before = _spent(gateway)
    with claude.messages.stream(model="gpt-4", max_tokens=200,
                                messages=[{"role": "user", "content": "Tell me a story."}]) as stream:
        kinds = []
        text = ""
        for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"} <= set(kinds)
    assert final.content[0].text == text and "says:" in text and final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0
    charged = _spent(gateway) - before
    assert charged == pytest.approx(_cost(GPT4, final.usage.input_tokens, final.usage.output_tokens), abs=1e-9)


def test_messages_tools(claude: anthropic.Anthropic, upstreams: tuple[str, str]) -> None:
    tools: Any = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER}]
    msg = claude.messages.create(model="gpt-4", max_tokens=50, tools=tools,
                                 tool_choice={"type": "tool", "name": "get_weather"},
                                 messages=[{"role": "user", "content": "Weather in Oslo?"}])
    use = msg.content[0]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {} and msg.stop_reason == "tool_use"
    follow = claude.messages.create(model="gpt-4", max_tokens=50, tools=tools, messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": "get_weather",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "3C"}]},
    ])
    assert follow.content[0].type == "text"
    sent = _last_upstream_body(upstreams[0], "gpt-4-1106-preview")
    assert sent["messages"][1]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                                "arguments": json.dumps({"city": "Oslo"})}
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": use.id, "content": "3C"}
    with claude.messages.stream(model="gpt-4", max_tokens=50, tools=tools, tool_choice={"type": "any"},
                                messages=[{"role": "user", "content": "Weather?"}]) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "tool_use" and final.content[0].name == "get_weather"


def test_messages_errors_are_anthropic_shaped(claude: anthropic.Anthropic, gateway: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(model="auto", max_tokens=10, extra_body={"top_k": 5},
                               messages=[{"role": "user", "content": "x"}])
    assert err.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "'top_k' is not supported" in err.value.body["error"]["message"]  # type: ignore[index]
    bad = anthropic.Anthropic(base_url=gateway, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="auto", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError) as err:  # a tool_result's text block with a number: was a 500
        claude.messages.create(model="auto", max_tokens=10, messages=[{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "x", "content": [{"type": "text", "text": 5}]}]}])  # type: ignore
    assert "tool_result" in err.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.APIStatusError) as broke:  # the stream breaks after it started
        with claude.messages.stream(model="cutter", max_tokens=100,
                                    messages=[{"role": "user", "content": "Tell me a story."}]) as stream:
            for _ in stream:
                pass
    assert "failed after it started" in str(broke.value)


# --- /v1/embeddings ------------------------------------------------------------------------------


def test_embeddings_named_passthrough_and_budgeted(client: openai.OpenAI, gateway: str,
                                                    upstreams: tuple[str, str]) -> None:
    before = _spent(gateway)
    raw = client.embeddings.with_raw_response.create(model="embedder", input=["hello world", "goodbye"])
    out = raw.parse()
    assert len(out.data) == 2 and all(len(d.embedding) == 8 for d in out.data)
    assert all(math.isclose(sum(v * v for v in d.embedding), 1.0, rel_tol=1e-5) for d in out.data)
    again = client.embeddings.create(model="embedder", input="hello world", encoding_format="float")
    assert again.data[0].embedding == pytest.approx(out.data[0].embedding, abs=1e-6)  # deterministic
    assert _last_upstream_body(upstreams[0], "text-embedding-3-small")["model"] == "text-embedding-3-small"
    charged = _spent(gateway) - before
    tokens = out.usage.prompt_tokens + again.usage.prompt_tokens
    assert tokens > 0 and charged == pytest.approx(_cost(EMBED_PRICE, tokens, 0), abs=1e-12)
    assert float(raw.headers["x-cscr-cost-usd"]) == pytest.approx(_cost(EMBED_PRICE, out.usage.prompt_tokens, 0))


def test_embeddings_and_chat_keep_to_their_providers(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="auto", input="x")
    assert "name a provider" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="gpt-4", input="x")
    assert "mode: chat" in err.value.message and err.value.code == "model_not_supported"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="embedder", messages=[{"role": "user", "content": "x"}])
    assert "/v1/embeddings" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="embedder", input=[])
    assert err.value.body["param"] == "input"  # type: ignore[index]


def test_every_endpoint_is_held_to_the_key_budget(gateway: str) -> None:
    c = openai.OpenAI(base_url=gateway + "/v1", api_key=TINY, max_retries=0)
    assert c.embeddings.create(model="embedder", input="hi").data  # ~1e-8 USD: fits
    with pytest.raises(openai.RateLimitError) as err:
        c.responses.create(model="auto", input="hi")
    assert err.value.code == "budget_exceeded" and err.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.RateLimitError):
        c.completions.create(model="legacy", prompt="hi")
    with pytest.raises(anthropic.RateLimitError) as refused:
        anthropic.Anthropic(base_url=gateway, api_key=TINY, max_retries=0).messages.create(
            model="auto", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    assert "budget" in refused.value.body["error"]["message"]  # type: ignore[index]


# --- /v1/completions (legacy) --------------------------------------------------------------------


def test_legacy_completions_named_and_auto(client: openai.OpenAI, gateway: str, upstreams: tuple[str, str]) -> None:
    before = _spent(gateway)
    raw = client.completions.with_raw_response.create(model="legacy", prompt="Say hi", max_tokens=8)
    out = raw.parse()
    assert out.choices[0].text.startswith(" legacy answer") and raw.headers["x-cscr-provider"] == "legacy"
    sent = httpx.get(upstreams[1] + "/_last").json()["body"]
    assert sent == {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "max_tokens": 8}
    assert _spent(gateway) - before == pytest.approx(_cost(LEGACY_PRICE, 7, 5), abs=1e-12)
    routed = client.completions.with_raw_response.create(model="auto:cheap", prompt=["a", "b"], max_tokens=8)
    assert routed.headers["x-cscr-provider"] == "legacy-cheap" and routed.headers["x-cscr-policy"] == "cost-only"
    assert len(routed.parse().choices) == 2
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="legacy", prompt="x", stream=True)
    assert err.value.body["param"] == "stream"  # type: ignore[index]


# --- models, unsupported ---------------------------------------------------------------------------


def test_models_retrieve(client: openai.OpenAI) -> None:
    assert client.models.retrieve("gpt-4").id == "gpt-4"
    assert client.models.retrieve("auto:cheap").owned_by == "cscr-gateway"
    assert client.models.retrieve("auto@0.3").id == "auto@0.3"
    for bad in ("auto@1.5", "auto@x"):
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(bad)
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-5-turbo")
    assert err.value.code == "model_not_found" and "gpt-5-turbo" in err.value.message


def test_unsupported_endpoints_say_so(client: openai.OpenAI, gateway: str) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.images.generate(prompt="a cat")
    assert "not supported by this gateway" in err.value.message and "/v1/responses" in err.value.message
    r = httpx.post(gateway + "/v1/audio/speech", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# --- config: mode ----------------------------------------------------------------------------------


def test_mode_is_validated_and_needs_the_openai_protocol() -> None:
    base = {"name": "e", "model": "openai/text-embedding-3-small", "api_base": "http://x/v1",
            "input_usd_per_mtok": 0.02, "output_usd_per_mtok": 0.0}
    assert parse_config({"providers": [{**base, "mode": "embedding"}]}, env={}).providers[0].mode == "embedding"
    assert parse_config({"providers": [base]}, env={}).providers[0].mode == "chat"
    with pytest.raises(ConfigError, match=r"providers\[0\]\.mode: must be chat, completion or embedding"):
        parse_config({"providers": [{**base, "mode": "image"}]}, env={})
    with pytest.raises(ConfigError, match=r"providers\[0\]\.mode: mode embedding needs an OpenAI-protocol"):
        parse_config({"providers": [{**base, "mode": "embedding", "transport": "litellm"}]}, env={})
    with pytest.raises(ConfigError, match=r"providers\[0\]\.mode: a mode completion provider is not routed"):
        parse_config({"providers": [{**base, "mode": "completion", "descriptor": "probe"}]}, env={})


def test_a_key_with_a_tradeoff_floor_may_name_an_embedding_provider() -> None:
    cfg = parse_config({
        "keys": [{"name": "cheap", "secret_sha256": "a" * 64, "tradeoff": 0.8}],
        "providers": [provider("gpt-4", "openai/gpt-4", "http://x/v1"),
                      provider("embedder", "openai/text-embedding-3-small", "http://x/v1", mode="embedding")]},
        env={})
    key = cfg.keys[0]
    assert resolve_target(cfg, "embedder", key, {}, "embedding").providers[0].name == "embedder"
    with pytest.raises(PermissionDenied):  # naming a chat provider still steps around the floor
        resolve_target(cfg, "gpt-4", key, {})
    with pytest.raises(InvalidRequest, match="serves /v1/embeddings"):
        resolve_target(cfg, "embedder", None, {})
    assert [p.name for p in resolve_target(cfg, "auto", None, {}).providers] == ["gpt-4"]


def test_anthropic_mapping_of_blocks() -> None:
    """The pure mapping, for the block kinds the replay upstream cannot tell apart."""
    chat = anthropic_map.to_chat({
        "model": "auto", "max_tokens": 5, "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "metadata": {"user_id": "u1"},
        "messages": [
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
                {"type": "text", "text": "what is it?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me check."},
                                              {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                                          "content": [{"type": "text", "text": "boom"}]},
                                         {"type": "text", "text": "try again"}]},
        ]})
    assert chat["messages"][0] == {"role": "system", "content": "A\nB"}
    image = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}
    assert chat["messages"][1]["content"][0] == image
    assert chat["messages"][2]["content"] == "Let me check." and chat["messages"][2]["tool_calls"][0]["id"] == "t1"
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"}
    assert chat["messages"][4] == {"role": "user", "content": [{"type": "text", "text": "try again"}]}
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False and chat["user"] == "u1"
    with pytest.raises(InvalidRequest, match="max_tokens"):
        anthropic_map.to_chat({"model": "auto", "messages": [{"role": "user", "content": "x"}]})
    with pytest.raises(InvalidRequest, match=r"messages\[0\]\.content\[0\]"):
        anthropic_map.to_chat({"model": "auto", "max_tokens": 5,
                               "messages": [{"role": "user", "content": [{"type": "document"}]}]})
