"""Inputs and answers that used to reach a 500, leak a key or bill nonsense: over a real uvicorn
gateway, raw sockets (to see the keep-alive connection survive), the real ``openai`` client, and the
scripted upstream of ``tests/rogue_upstream.py``."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import socket
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from gateway.tokens import count_messages, count_text
from router_core.types import Candidate, Ranking
from tests.gateway_fixture import fresh_rate_window, provider, start_gateway
from tests.rogue_upstream import PROVIDER_SECRET, RogueUpstream

pytestmark = [pytest.mark.integration, pytest.mark.faults]

MSG = [{"role": "user", "content": "hi"}]
GOOD = json.dumps({"model": "good", "messages": MSG}).encode()


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


KEYS = [
    {"name": "open", "secret_sha256": _sha("sk-open")},
    {"name": "poor", "secret_sha256": _sha("sk-poor"), "budget_usd": 0.0},
    {"name": "slow", "secret_sha256": _sha("sk-slow"), "rpm": 1},
    {"name": "cheap", "secret_sha256": _sha("sk-cheap"), "tradeoff": 1.0},
]


@pytest.fixture(scope="module")
def rogue() -> Iterator[RogueUpstream]:
    up = RogueUpstream().start()
    yield up
    up.stop()


def _usage(name: str, usage: Any) -> str:
    return f"openai/usage:{json.dumps(usage, separators=(',', ':'))}"


BAD_USAGE = {
    "negative": {"prompt_tokens": -100000, "completion_tokens": -500000, "total_tokens": -600000},
    "huge": {"prompt_tokens": 10**20, "completion_tokens": 10**20, "total_tokens": 2 * 10**20},
    "strings": {"prompt_tokens": "10", "completion_tokens": 2.5},
    "over-max-tokens": {"prompt_tokens": 10, "completion_tokens": 5000, "total_tokens": 5010},
}


def _config(base: str, **server: Any) -> dict[str, Any]:
    providers = [provider("good", "openai/good", base),
                 provider("good-litellm", "openai/good", base, transport="litellm"),
                 provider("leaky", "openai/status:400", base, api_key_env="ROGUE_KEY"),
                 provider("leaky-401", "openai/status:401", base, api_key_env="ROGUE_KEY"),
                 provider("leaky-litellm", "openai/status:400", base, api_key_env="ROGUE_KEY", transport="litellm"),
                 provider("leaky-401-litellm", "openai/status:401", base, api_key_env="ROGUE_KEY",
                          transport="litellm")]
    providers += [provider(f"usage-{n}", _usage(n, u), base) for n, u in BAD_USAGE.items()]
    providers += [provider(f"usage-{n}-litellm", _usage(n, u), base, transport="litellm")
                  for n, u in BAD_USAGE.items() if n != "strings"]  # litellm itself refuses those (a 502)
    return {"router": {"artifact": "none"}, "server": {"max_attempts": 2, "deadline_s": 20, **server},
            "providers": providers, "keys": KEYS}


@pytest.fixture(scope="module")
def gateway(rogue: RogueUpstream) -> Iterator[str]:
    base, stop = start_gateway(_config(rogue.base), env={"ROGUE_KEY": PROVIDER_SECRET})
    yield base
    stop()


def _keep_alive(base: str, first: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """POST ``first`` and then a valid request on the same connection: (first status, first body).
    Fails if the gateway closed the connection after the first answer."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    hdrs = {"content-type": "application/json", "authorization": "Bearer sk-open", **(headers or {})}
    try:
        conn.request("POST", "/v1/chat/completions", body=first, headers=hdrs)
        resp = conn.getresponse()
        status, body = resp.status, json.loads(resp.read())
        sock = conn.sock
        assert sock is not None and not resp.will_close, "the gateway closed the connection"
        conn.request("POST", "/v1/chat/completions", body=GOOD, headers=hdrs)
        again = conn.getresponse()
        assert again.status == 200 and conn.sock is sock, "the second request needed a new connection"
        again.read()
        return status, body
    finally:
        conn.close()


def _body(**extra: Any) -> bytes:
    return json.dumps({"model": "good", "messages": MSG, **extra}).encode()


@pytest.mark.parametrize(("raw", "param"), [
    (b'{"model": "good", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),  # past Python's limit
    (b'{"model": "good", "messages": [{"role": "user", "content": "hi", "x": ' + b"[" * 500 + b"]" * 500
     + b"}]}", None),  # within Python's limit, past ours
    # UTF-16 (json.loads takes it): the quote byte of U+2200 opened a string for a byte-level reader,
    # which hid the nesting after it from the check; json.loads recursed past Python's limit
    (('{"model": "good", "messages": [{"role": "user", "content": "hi"}], "metadata": {"x": ["\u2200", '
      + "[" * 5_000 + "]" * 5_000 + ', "y"]}}').encode("utf-16-le"), None),
    (_body(messages=[{"role": "user", "content": [{"type": "text", "text": None}]}]), "messages[0].content[0].text"),
    (_body(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]), "messages[0].content[0].text"),
    (b'{"model": "good", "max_tokens": 1' + b"0" * 400 + b', "messages": [{"role": "user", "content": "hi"}]}',
     "max_tokens"),
    (_body(max_tokens=2**40), "max_tokens"),
    (_body(n=10**30), "n"),
    (b'{"model": "good", "messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages[0].content"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
     "messages[0].content[0].text"),
    (b'{"model": "good", "user": "\xed\xa0\x80", "messages": [{"role": "user", "content": "hi"}]}', "user"),  # UTF-8d
    (b'{"model": "good", "temperature": NaN, "messages": [{"role": "user", "content": "hi"}]}', None),
])
def test_bad_input_is_a_400_naming_the_field_on_a_live_connection(gateway: str, raw: bytes, param: str | None,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    status, body = _keep_alive(gateway, raw)
    assert status == 400, body
    assert body["error"]["type"] == "invalid_request_error"
    if param is not None:
        assert body["error"]["param"] == param
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_a_surrogate_pair_is_text(gateway: str) -> None:
    raw = b'{"model": "auto", "messages": [{"role": "user", "content": "smile \\ud83d\\ude00"}]}'
    assert _keep_alive(gateway, raw)[0] == 200


def _part(part: Any, role: str = "user", model: str = "good") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": role, "content": [part]}]}).encode()


@pytest.mark.parametrize(("raw", "param"), [
    (_part({"type": "image_url", "image_url": 5}), "messages[0].content[0].image_url"),
    (_part({"type": "image_url", "image_url": "https://x/cat.png"}), "messages[0].content[0].image_url"),
    (_part({"type": "image_url", "image_url": {"detail": "low"}}), "messages[0].content[0].image_url.url"),
    (_part({"type": "image_url", "image_url": {"url": 5}}), "messages[0].content[0].image_url.url"),
    (_part({"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": 1}}),
     "messages[0].content[0].image_url.detail"),
    (_part({"type": "input_audio", "input_audio": "UklGRg=="}), "messages[0].content[0].input_audio"),
    (_part({"type": "input_audio", "input_audio": {"data": "UklGRg=="}}), "messages[0].content[0].input_audio.format"),
    (_part({"type": "input_audio", "input_audio": {"data": None, "format": "wav"}}),
     "messages[0].content[0].input_audio.data"),
    (_part({"type": "file", "file": {}}), "messages[0].content[0].file"),
    (_part({"type": "file", "file": {"file_id": 7}}), "messages[0].content[0].file.file_id"),
    (_part({"type": "refusal", "refusal": None}, role="assistant"), "messages[0].content[0].refusal"),
    (_part({"type": "video_url", "video_url": {"url": "https://x/v.mp4"}}, model="auto"),
     "messages[0].content[0].type"),  # routed: the router may pick a provider that does not know the type
])
def test_malformed_content_parts_are_a_400_naming_the_field(gateway: str, rogue: RogueUpstream, raw: bytes,
                                                           param: str) -> None:
    """They used to go upstream as sent: a provider's own 400 (or a 502 after every fallback), or an
    answer that ignored the image."""
    served = len(rogue.authorizations)
    status, body = _keep_alive(gateway, raw)
    assert status == 400, body
    assert body["error"]["param"] == param and body["error"]["type"] == "invalid_request_error", body
    assert len(rogue.authorizations) == served + 1  # only the valid request that _keep_alive sends next


VALID_PARTS: list[Any] = [
    {"type": "text", "text": "describe these"},
    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    {"type": "file", "file": {"file_id": "file-abc"}},
    {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
]


@pytest.mark.parametrize("model", ["good", "auto"])
def test_every_openai_part_shape_is_served(gateway: str, model: str) -> None:
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="sk-open", max_retries=0)
    messages: list[Any] = [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": VALID_PARTS},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot"}]},
        {"role": "user", "content": "then just say hi"},
    ]
    assert client.chat.completions.create(model=model, messages=messages).choices


def test_a_part_type_unknown_here_passes_through_to_a_named_provider(gateway: str) -> None:
    """A provider may take parts OpenAI does not (vLLM's video_url): named, the provider judges it."""
    raw = _part({"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}})
    assert _keep_alive(gateway, raw)[0] == 200


SURROGATE = "\ud800"  # a lone high surrogate: json.dumps writes it as the escape \\ud800, as a client would


@pytest.mark.parametrize(("extra", "param"), [
    ({"user": SURROGATE}, "user"),
    ({"stop": ["ok", SURROGATE]}, "stop[1]"),
    ({"messages": [{"role": "user", "content": "hi", "name": SURROGATE}]}, "messages[0].name"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": "' + SURROGATE + '"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"}]}, "messages[1].tool_calls[0].function.arguments"),
    ({"tools": [{"type": "function", "function": {"name": "f" + SURROGATE, "parameters": {}}}]},
     "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "description": SURROGATE}}]},
     "tools[0].function.description"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {
        "type": "object", "properties": {"x": {"type": "string", "description": SURROGATE}}}}}},
     "response_format.json_schema.schema.properties.x.description"),
    ({"metadata": {SURROGATE: "v"}}, "metadata"),  # a key: the object that holds it is named
])
def test_a_lone_surrogate_anywhere_is_a_400_naming_it(gateway: str, extra: dict[str, Any], param: str) -> None:
    """Only message content was checked: elsewhere it went upstream, to a provider's 400 (or, through
    litellm, an encoding error)."""
    raw = json.dumps({"model": "good", "messages": MSG, **extra}).encode()
    status, body = _keep_alive(gateway, raw)
    assert status == 400, body
    assert body["error"]["param"] == param and "surrogate" in body["error"]["message"], body


@pytest.mark.parametrize(("path", "raw", "param"), [
    ("/v1/messages", b'{"model": "good", "max_tokens": 9, "system": "\\udc00", "messages": [{"role": "user", '
     b'"content": "hi"}]}', "system"),
    ("/v1/responses", b'{"model": "good", "input": "hi", "instructions": "a\\ud800"}', "instructions"),
    ("/v1/completions", b'{"model": "good", "prompt": ["hi", "\\ud800"]}', "prompt[1]"),
])
def test_other_endpoints_refuse_a_lone_surrogate_too(gateway: str, path: str, raw: bytes, param: str) -> None:
    r = httpx.post(gateway + path, content=raw, timeout=30,
                   headers={"authorization": "Bearer sk-open", "x-api-key": "sk-open"})
    assert r.status_code == 400, r.text
    assert param in r.text and "surrogate" in r.text


class BrokenRouter:
    name = "broken"

    def rank(self, prompt: str, candidates: Sequence[Candidate], tradeoff: float) -> Ranking:
        raise RuntimeError("internal detail that must not reach the caller")


def test_an_unexpected_error_is_one_log_line_and_the_connection_lives(
        rogue: RogueUpstream, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="uvicorn.error")
    caplog.set_level(logging.INFO, logger="gateway")
    base, stop = start_gateway(_config(rogue.base), router=BrokenRouter(), env={"ROGUE_KEY": PROVIDER_SECRET})
    try:
        status, body = _keep_alive(base, _body(model="auto"))
    finally:
        stop()
    assert status == 500
    message = body["error"]["message"]
    assert "internal detail" not in json.dumps(body) and "RuntimeError" not in json.dumps(body)
    rid = message.split("request ")[1].rstrip(")")
    # this app's and uvicorn's lines only: other tests' gateways may still be logging in this process
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name in ("gateway.app", "uvicorn.error")]
    assert len(lines) == 1 and rid in lines[0].getMessage() and not lines[0].exc_info


@pytest.mark.parametrize("name", ["leaky", "leaky-401", "leaky-litellm", "leaky-401-litellm"])
def test_provider_secrets_never_reach_the_caller_or_the_log(gateway: str, rogue: RogueUpstream, name: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    r = httpx.post(gateway + "/v1/chat/completions", json={"model": name, "messages": MSG},
                   headers={"authorization": "Bearer sk-open"}, timeout=30)
    assert r.status_code in (400, 502), r.text
    assert PROVIDER_SECRET in rogue.authorizations[-1]  # the upstream did get the key, and quoted it
    assert "Incorrect API key provided" in r.text  # the message itself still comes through
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    for secret in (PROVIDER_SECRET, "sk-live-abcdefghijklmnop1234"):
        assert secret not in r.text and secret not in logged
    assert "[redacted]" in r.text


@pytest.mark.parametrize("kind", list(BAD_USAGE))
@pytest.mark.parametrize("transport", ["", "-litellm"])
def test_implausible_usage_is_billed_by_our_count(gateway: str, kind: str, transport: str) -> None:
    if (kind, transport) == ("strings", "-litellm"):
        pytest.skip("litellm refuses a usage of strings itself: the provider fails over, nothing is billed")
    name = f"usage-{kind}{transport}"
    r = httpx.post(gateway + "/v1/chat/completions", json={"model": name, "messages": MSG, "max_tokens": 100},
                   headers={"authorization": "Bearer sk-open"}, timeout=30)
    assert r.status_code == 200, r.text
    expected = (count_messages(MSG) + count_text("the answer")) / 1e6  # price 1 $/Mtok in and out
    assert float(r.headers["x-cscr-cost-usd"]) == pytest.approx(expected)
    with httpx.stream("POST", gateway + "/v1/chat/completions", timeout=30, headers={"authorization": "Bearer sk-open"},
                      json={"model": name, "messages": MSG, "stream": True, "max_tokens": 100}) as s:
        assert s.status_code == 200 and list(s.iter_lines())[-2] == "data: [DONE]"
    metrics = httpx.get(gateway + "/metrics").text
    spend = [ln for ln in metrics.splitlines() if ln.startswith(f'cscr_spend_usd_total{{provider="{name}"}}')]
    assert float(spend[0].split()[-1]) == pytest.approx(2 * expected)
    assert 'cscr_errors_total{kind="upstream_usage_invalid"}' in metrics


SLOW = {"authorization": "Bearer sk-slow"}


def test_unmetered_streams_say_so(rogue: RogueUpstream) -> None:
    with socket.socket() as s:  # a port nothing listens on: the store is down
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    cfg = _config(rogue.base, store_failure="open")
    cfg["store"] = f"redis://127.0.0.1:{dead}/0"
    base, stop = start_gateway(cfg, env={"ROGUE_KEY": PROVIDER_SECRET})
    try:
        for stream in (False, True):
            with httpx.stream("POST", base + "/v1/chat/completions", timeout=30, headers=SLOW,
                              json={"model": "good", "messages": MSG, "stream": stream}) as r:
                r.read()
                assert r.status_code == 200 and r.headers["x-cscr-unmetered"] == "store unreachable"
    finally:
        stop()


@pytest.mark.parametrize("name", ["x-cscr-max-cost-usd", "x-cscr-tradeoff"])
def test_a_repeated_budget_header_is_refused(gateway: str, name: str) -> None:
    r = httpx.post(gateway + "/v1/chat/completions", json={"model": "auto", "messages": MSG}, timeout=30,
                   headers=[("authorization", "Bearer sk-open"), (name, "0.9"), (name, "0.1")])
    assert r.status_code == 400 and r.json()["error"]["param"] == name


def test_litellm_refusing_a_request_is_the_callers_400(gateway: str) -> None:
    body = {"model": "good-litellm", "messages": [{"role": "user", "content": [{"type": "no-such-part"}]}]}
    r = httpx.post(gateway + "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-open"}, timeout=30)
    assert r.status_code == 400, r.text
    assert "Traceback" not in r.text and r.json()["error"]["type"] == "invalid_request_error"


def test_a_key_with_a_tradeoff_floor_cannot_name_a_provider(gateway: str) -> None:
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="sk-cheap", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError, match="trade-off"):
        client.chat.completions.create(model="good", messages=MSG)  # type: ignore[arg-type]
    assert client.chat.completions.create(model="auto:best", messages=MSG).choices  # type: ignore[arg-type]


def _count(metrics: str, status: str) -> float:
    prefix = f'cscr_requests_total{{status="{status}",stream="false"}}'
    return sum(float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith(prefix))


def test_budget_429_is_not_retried_and_rate_limit_429_says_when(gateway: str) -> None:
    before = _count(httpx.get(gateway + "/metrics").text, "429")
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="sk-poor", max_retries=3)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="good", messages=MSG)  # type: ignore[arg-type]
    assert info.value.response.headers["x-should-retry"] == "false"
    assert _count(httpx.get(gateway + "/metrics").text, "429") == before + 1  # one request, no retries
    auth = {"authorization": "Bearer sk-slow"}
    fresh_rate_window()  # the two requests must share one minute
    statuses = [httpx.post(gateway + "/v1/chat/completions", json={"model": "good", "messages": MSG}, headers=auth,
                           timeout=30) for _ in range(2)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and 1 <= int(limited[0].headers["retry-after"]) <= 60
    assert "x-should-retry" not in limited[0].headers


PDF_PART = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}}


def test_a_file_request_is_billed_what_the_provider_counts_up_to_its_window(rogue: RogueUpstream) -> None:
    """A PDF's prompt is counted by the provider alone. Usage of 900,000 prompt tokens was taken for
    implausible (over 16x the gateway's 4,000-token guess) and billed as the guess: 1/225 of the real
    cost, on a $0.50 key. It is now billed as reported up to the provider's window; a provider whose
    window is unknown cannot bound a budgeted file request and is refused, saying what to declare;
    and a budget too small for the window says that the window is what it must hold."""
    usage = {"prompt_tokens": 900_000, "completion_tokens": 20, "total_tokens": 900_020}
    keys = [{"name": "small", "secret_sha256": _sha("sk-small"), "budget_usd": 0.5},
            {"name": "tiny", "secret_sha256": _sha("sk-tiny"), "budget_usd": 0.01}]
    base, stop = start_gateway({"router": {"artifact": "none"}, "keys": keys,
                                "server": {"master_key_env": "MASTER"}, "providers": [
        provider("huge", _usage("huge", usage), rogue.base, (0.1, 0.4), context_window=1_000_000,
                 supports_pdf_input=True),
        provider("nowin", _usage("nowin", usage), rogue.base, (0.1, 0.4), supports_pdf_input=True)]},
        env={"MASTER": "sk-master-files"})
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Summarise this."}, PDF_PART]}]
    billed = 900_000 * 0.1 / 1e6 + 20 * 0.4 / 1e6
    try:
        for stream in (False, True):
            with httpx.stream("POST", base + "/v1/chat/completions", timeout=30,
                              headers={"authorization": "Bearer sk-small"},
                              json={"model": "huge", "messages": msgs, "max_tokens": 50, "stream": stream}) as r:
                r.read()
                assert r.status_code == 200, r.text
        listed = httpx.get(base + "/admin/keys", headers={"authorization": "Bearer sk-master-files"}, timeout=30)
        spent = {k["name"]: k["spent_usd"] for k in listed.json()["data"]}
        assert spent["small"] == pytest.approx(2 * billed, rel=1e-6), spent
        r = httpx.post(base + "/v1/chat/completions", headers={"authorization": "Bearer sk-small"}, timeout=30,
                       json={"model": "nowin", "messages": msgs, "max_tokens": 50})
        assert r.status_code == 400 and "context_window" in r.json()["error"]["message"], r.text
        r = httpx.post(base + "/v1/chat/completions", headers={"authorization": "Bearer sk-tiny"}, timeout=30,
                       json={"model": "huge", "messages": msgs, "max_tokens": 50})
        assert r.status_code == 429 and "whole context window" in r.json()["error"]["message"], r.text
    finally:
        stop()
