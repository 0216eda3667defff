"""Fuzzed requests against a real gateway: hypothesis-generated bodies and headers over one
keep-alive connection. Whatever arrives, the gateway answers with an OpenAI-shaped error or a
completion: never a 500, never a traceback in its log, never a dropped connection."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.upstream import start_upstream
from tests.gateway_fixture import provider, start_gateway

pytestmark = [pytest.mark.faults, pytest.mark.integration]

SECRET = "sk-fuzz-key"
CASES = 1500  # the body test; the raw-bytes test runs half as many: 2,250 generated requests, plus the fixed cases


class _Tracebacks(logging.Handler):
    """Every log record of the gateway's that carries an exception."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # the gateway's and its server's loggers: other tests' servers may still be dying in this process
        if not record.name.startswith(("gateway", "uvicorn", "cscr", "router_core")):
            return
        if record.exc_info is not None or "Traceback" in record.getMessage():
            self.records.append(record)


@pytest.fixture(scope="module")
def tracebacks() -> Iterator[_Tracebacks]:
    handler = _Tracebacks()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


@pytest.fixture(scope="module")
def gateway(tracebacks: _Tracebacks) -> Iterator[str]:
    up, stop_up = start_upstream(replay="none")
    import hashlib

    config = {
        "router": {"artifact": "bundled"},
        "server": {"max_attempts": 2, "deadline_s": 10, "max_body_bytes": 65536},
        "keys": [{"name": "fuzz", "secret_sha256": hashlib.sha256(SECRET.encode()).hexdigest(),
                  "budget_usd": 1000.0}],
        "providers": [
            provider("gpt-4-1106-preview", "openai/gpt-4-1106-preview", up, (10.0, 30.0),
                     expert="gpt-4-1106-preview"),
            provider("mistral-7b-chat", "openai/mistralai/mistral-7b-chat", up, (0.2, 0.2),
                     expert="mistralai/mistral-7b-chat"),
        ],
    }
    base, stop = start_gateway(config)
    yield base
    stop()
    stop_up()


@pytest.fixture(scope="module")
def conn(gateway: str) -> Iterator[httpx.Client]:
    # One connection for every case: a 500 or an unhandled error would drop it.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with httpx.Client(base_url=gateway, limits=limits, timeout=20) as client:
        yield client


STATUSES: Counter[int] = Counter()


def _check(resp: httpx.Response, tracebacks: _Tracebacks) -> None:
    STATUSES[resp.status_code] += 1
    assert resp.status_code != 500, resp.text
    assert resp.status_code < 500 or resp.status_code in (502, 503, 504), resp.text
    if resp.status_code >= 400:
        err = resp.json()["error"]
        assert isinstance(err["message"], str) and err["message"]
        assert "type" in err and "code" in err
    assert resp.headers.get("connection", "").lower() != "close", resp.headers
    found, tracebacks.records = tracebacks.records, []  # the next case starts clean
    assert not found, [r.getMessage() for r in found[:3]]


# JSON values of every shape, strings with surrogates and control characters included.
_odd_chars = st.sampled_from(["\ud800", "\udfff", "\x00", "\u202e", "\ufeff", "\U0001f600"])
_text = st.text(st.characters() | _odd_chars, max_size=40) | st.just("<|endoftext|> \ud83d")
_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text
_json = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
                     max_leaves=12)
_roles = st.sampled_from(["user", "system", "assistant", "tool", "developer", "function", "bogus", ""]) | _json
_part = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_audio", "x"]) | _json},
                              optional={"text": _json, "image_url": _json})
_content = _text | st.none() | st.lists(_part | _json, max_size=3) | _json
_message = st.fixed_dictionaries({"role": _roles}, optional={"content": _content, "name": _json,
                                                             "tool_calls": _json, "tool_call_id": _json})
_numbers = st.integers(min_value=-(10**30), max_value=10**30) | st.floats() | _json
_models = st.sampled_from(["auto", "auto:cheap", "auto:best", "auto:balanced", "auto@0.3", "auto@2", "auto@nan",
                           "mistral-7b-chat", "gpt-4-1106-preview", "nope", ""]) | _json
_wild_body = st.fixed_dictionaries(
    {"model": _models, "messages": st.lists(_message, max_size=3) | _json},
    optional={"max_tokens": _numbers, "max_completion_tokens": _numbers, "n": _numbers,
              "temperature": _numbers, "stream": st.booleans() | _json, "stop": _json, "tools": _json,
              "tool_choice": _json, "stream_options": _json, "response_format": _json, "logit_bias": _json,
              "seed": _numbers, "user": _json},
)
# Valid requests (any text, surrogates included), so the router, the budget and both paths are reached.
_valid_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                        "content": _text | st.lists(st.fixed_dictionaries(
                                            {"type": st.just("text"), "text": _text}), min_size=1, max_size=2)})
_valid_body = st.fixed_dictionaries(
    {"model": st.sampled_from(["auto", "auto:cheap", "auto@0.7", "mistral-7b-chat", "gpt-4-1106-preview"]),
     "messages": st.lists(_valid_message, min_size=1, max_size=3).map(
         lambda ms: [*ms, {"role": "user", "content": "hi"}])},
    optional={"max_tokens": st.integers(1, 4096), "n": st.integers(1, 3), "temperature": st.floats(0, 2),
              "stream": st.booleans(), "stop": _text, "seed": st.integers(-(2**63), 2**63 - 1),
              "stream_options": st.just({"include_usage": True})},
)


@st.composite
def _mutated_body(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body with one field replaced by anything at all."""
    body = draw(_valid_body)
    field = draw(st.sampled_from(["model", "messages", "max_tokens", "n", "temperature", "stream", "stop", "tools",
                                  "tool_choice", "stream_options", "response_format", "seed", "max_completion_tokens"]))
    body[field] = draw(_numbers if field in ("max_tokens", "n", "seed", "temperature") else _json)
    return body


_body = _valid_body | _mutated_body() | _wild_body
_header_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20).map(str.strip)
_headers = st.dictionaries(
    st.sampled_from(["x-cscr-max-cost-usd", "x-cscr-tradeoff", "authorization", "content-type", "x-request-id"]),
    _header_value | st.sampled_from(["nan", "inf", "-1", "1e309", "0.5", "Bearer " + SECRET]),
    max_size=3,
)


@settings(max_examples=CASES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=_body, headers=_headers)
def test_fuzzed_chat_bodies(conn: httpx.Client, tracebacks: _Tracebacks, body: dict[str, Any],
                            headers: dict[str, str]) -> None:
    headers.setdefault("authorization", "Bearer " + SECRET)
    try:
        raw = json.dumps(body).encode()
    except (ValueError, OverflowError):
        return
    with conn.stream("POST", "/v1/chat/completions", content=raw, headers=headers) as resp:
        resp.read()
    _check(resp, tracebacks)


@settings(max_examples=CASES // 2, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=st.binary(max_size=200) | _json.map(lambda v: json.dumps(v).encode()))
def test_fuzzed_raw_bytes(conn: httpx.Client, tracebacks: _Tracebacks, raw: bytes) -> None:
    resp = conn.post("/v1/chat/completions", content=raw,
                     headers={"authorization": "Bearer " + SECRET, "content-type": "application/json"})
    _check(resp, tracebacks)


def _nested(depth: int) -> bytes:
    return b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"metadata":' + b"[" * depth + \
        b"]" * depth + b"}"


FIXED: list[tuple[str, bytes, int | tuple[int, ...]]] = [
    ("nested past the recursion limit", _nested(20_000), 400),
    ("text part null", json.dumps({"model": "auto", "messages": [
        {"role": "user", "content": [{"type": "text", "text": None}]}]}).encode(), 400),
    ("max_tokens 10**400", b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"max_tokens":1'
     + b"0" * 400 + b"}", 400),
    ("lone surrogate", b'{"model":"auto","messages":[{"role":"user","content":"\\ud800 hi"}]}', 400),
    ("lone surrogate, named", b'{"model":"mistral-7b-chat","messages":[{"role":"user","content":"\\udfff"}]}', 400),
    ("lone surrogate in a name", b'{"model":"auto","messages":[{"role":"user","name":"\\udfff","content":"hi"}]}',
     400),
    ("n huge", b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"n":100000000000000000000}', 400),
    ("float max_tokens", b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"max_tokens":1e400}', 400),
]


@pytest.mark.parametrize(("name", "raw", "status"), FIXED, ids=[c[0] for c in FIXED])
def test_known_bad_inputs(conn: httpx.Client, tracebacks: _Tracebacks, name: str, raw: bytes,
                          status: int | tuple[int, ...]) -> None:
    """Each of these was a 500 that dropped the connection; a lone surrogate anywhere is a 400 now."""
    resp = conn.post("/v1/chat/completions", content=raw, headers={"authorization": "Bearer " + SECRET})
    _check(resp, tracebacks)
    assert resp.status_code in (status if isinstance(status, tuple) else (status,)), (name, resp.text)
    if resp.status_code == 400:
        err = resp.json()["error"]
        assert err["param"] or err["code"] == "invalid_json", resp.text  # the field, or the body itself


@pytest.mark.parametrize("values", [["0.01", "1"], ["0.2", "0.9"]])
def test_repeated_budget_headers_refused(conn: httpx.Client, tracebacks: _Tracebacks, values: list[str]) -> None:
    name = "x-cscr-max-cost-usd" if values[0] == "0.01" else "x-cscr-tradeoff"
    headers = [("authorization", "Bearer " + SECRET), (name, values[0]), (name, values[1])]
    resp = conn.post("/v1/chat/completions", headers=headers,
                     json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
    _check(resp, tracebacks)
    assert resp.status_code == 400 and name in resp.text, resp.text


def test_fuzzing_reached_the_router() -> None:
    """The generated cases are not all refused at the door: some were routed and answered."""
    if not STATUSES:
        pytest.skip("run with the fuzz tests")
    print(dict(STATUSES))
    assert STATUSES[200] >= 50 and STATUSES[400] >= 200, dict(STATUSES)
