"""The gateway against an upstream that breaks the protocol (``tests/rogue_upstream.py``): malformed
stream chunks, streams cut without ``[DONE]``, stale pooled connections, tool calls through litellm.
A real uvicorn gateway, the real ``openai`` client, raw sockets underneath."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.gateway_fixture import provider, start_gateway
from tests.rogue_upstream import RogueUpstream

pytestmark = [pytest.mark.integration, pytest.mark.faults]

MALFORMED = ("list", "choices", "delta", "nonjson", "choice")


@pytest.fixture(scope="module")
def rogue() -> Iterator[RogueUpstream]:
    up = RogueUpstream().start()
    yield up
    up.stop()


def _providers(base: str) -> list[dict[str, Any]]:
    out = [provider("good", "openai/good", base, (5.0, 5.0)),
           provider("good-litellm", "openai/good", base, (5.0, 5.0), transport="litellm"),
           provider("stale", "openai/stale", base, (1.0, 1.0)),
           provider("stale-reset", "openai/stale:reset", base, (1.0, 1.0)),
           provider("tools-litellm", "hosted_vllm/tools", base, (1.0, 1.0)),
           provider("tools-openai-litellm", "openai/tools", base, (1.0, 1.0), transport="litellm")]
    for what in MALFORMED:
        out.append(provider(f"late-{what}", f"openai/malformed:{what}@late", base, (0.1, 0.1)))
        out.append(provider(f"late-{what}-litellm", f"openai/malformed:{what}@late", base, (0.1, 0.1),
                            transport="litellm"))
    for how in ("close", "reset"):
        out.append(provider(f"cut-{how}", f"openai/cut:{how}", base, (0.1, 0.1)))
        out.append(provider(f"cut-{how}-litellm", f"openai/cut:{how}", base, (0.1, 0.1), transport="litellm"))
    return out


@pytest.fixture(scope="module")
def gateway(rogue: RogueUpstream) -> Iterator[str]:
    cfg = {"router": {"artifact": "none"}, "server": {"max_attempts": 2, "deadline_s": 20},
           "providers": _providers(rogue.base)}
    base, stop = start_gateway(cfg)
    yield base
    stop()


@pytest.fixture()
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=30)


MSG = [{"role": "user", "content": "hi"}]


def _sse_events(gateway: str, model: str, **headers: str) -> list[str]:
    with httpx.stream("POST", gateway + "/v1/chat/completions", timeout=30, headers=headers,
                      json={"model": model, "messages": MSG, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        return [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.parametrize("transport", ["openai", "litellm"])
@pytest.mark.parametrize("what", MALFORMED)
def test_malformed_chunk_first_falls_back_to_the_next_provider(rogue: RogueUpstream, what: str, transport: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    # only the malformed provider and a good one, the malformed one far cheaper: cost-only routing tries it first
    cfg = {"router": {"artifact": "none"}, "server": {"max_attempts": 2, "deadline_s": 20},
           "providers": [provider("bad", f"openai/malformed:{what}", rogue.base, (0.1, 0.1), transport=transport),
                         provider("good", "openai/good", rogue.base, (5.0, 5.0))]}
    base, stop = start_gateway(cfg)
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=30)
        raw = client.chat.completions.with_raw_response.create(model="auto:cheap", messages=MSG, stream=True)  # type: ignore[call-overload]
        assert raw.headers["x-cscr-tried"] == "bad,good"
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        assert text == "the answer"
    finally:
        stop()
    _no_tracebacks(caplog)


@pytest.mark.parametrize("transport", ["", "-litellm"])
@pytest.mark.parametrize("what", MALFORMED)
def test_malformed_chunk_after_start_is_an_sse_error(gateway: str, client: openai.OpenAI, what: str, transport: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    model = f"late-{what}{transport}"
    events = _sse_events(gateway, model)
    assert events[-1] != "[DONE]"
    assert '"error"' in events[-1] and "stream_interrupted" in events[-1]
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model=model, messages=MSG, stream=True):  # type: ignore[arg-type]
            pass
    _no_tracebacks(caplog)


@pytest.mark.parametrize("model", ["cut-close", "cut-reset", "cut-close-litellm", "cut-reset-litellm"])
def test_stream_without_done_is_interrupted_not_finished(gateway: str, client: openai.OpenAI, model: str) -> None:
    """An upstream that delivered "the" and then closed (or reset) the stream without a
    finish_reason or [DONE] must not look like a finished answer."""
    events = _sse_events(gateway, model)
    assert "[DONE]" not in events, events
    assert "stream_interrupted" in events[-1]
    seen: list[str] = []
    with pytest.raises(openai.APIError):
        for c in client.chat.completions.create(model=model, messages=MSG, stream=True):  # type: ignore[arg-type]
            seen += [c.choices[0].delta.content or ""] if c.choices else []
    assert "".join(seen) == "the"


@pytest.mark.parametrize("transport", ["", "-litellm"])
def test_good_stream_still_ends_with_done(gateway: str, transport: str) -> None:
    events = _sse_events(gateway, "good" + transport)
    assert events[-1] == "[DONE]" and "error" not in "".join(events)


@pytest.mark.parametrize("model", ["stale", "stale-reset"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_stale_pooled_connection_is_retried_on_a_fresh_one(gateway: str, client: openai.OpenAI,
                                                             rogue: RogueUpstream, model: str, stream: bool) -> None:
    """The upstream closes each keep-alive connection under the second request sent on it: every
    request still succeeds, on a fresh connection, and the upstream saw it once per connection."""
    before = len(rogue.requests)
    for _ in range(6):
        if stream:
            chunks = client.chat.completions.create(model=model, messages=MSG, stream=True)  # type: ignore[arg-type]
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "the answer"
        else:
            r = client.chat.completions.create(model=model, messages=MSG)  # type: ignore[arg-type]
            assert r.choices[0].message.content == "the answer"
    assert len(rogue.requests) - before <= 12  # each attempt at most once more, never a retry storm


@pytest.mark.parametrize("model", ["tools-litellm", "tools-openai-litellm"])
def test_tool_calls_through_litellm(client: openai.OpenAI, rogue: RogueUpstream, model: str) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather in a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}},
                                                              "required": ["city"]}}}]
    r = client.chat.completions.create(model=model, messages=MSG, tools=tools)  # type: ignore[arg-type]
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather" and call.function.arguments == '{"city": "Oslo"}'  # type: ignore[union-attr]
    assert rogue.requests[-1]["tools"][0]["function"]["name"] == "get_weather"
