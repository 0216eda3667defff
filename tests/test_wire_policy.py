"""Pure request logic: body validation, model names, header caps, cost estimates."""

from __future__ import annotations

import json
import json.scanner
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.errors import BodyTooLarge, BudgetExceeded, InvalidRequest, ModelNotFound, PermissionDenied
from gateway.policy import cost_cap, eligible, estimate_cost, resolve_target
from gateway.wire import _depth_exceeds, parse_body, validate_chat
from router_core.conversation import routing_prompt

CFG = parse_config(
    {
        "router": {"default_tradeoff": 0.4},
        "providers": [
            {"name": "big", "model": "openai/big", "api_base": "http://x/v1", "input_usd_per_mtok": 10,
             "output_usd_per_mtok": 30},
            {"name": "small", "model": "openai/small", "api_base": "http://x/v1", "input_usd_per_mtok": 0.1,
             "output_usd_per_mtok": 0.2},
        ],
        "keys": [
            {"name": "open", "secret_sha256": "a" * 64},
            {"name": "pinned", "secret_sha256": "b" * 64, "tradeoff": 0.7, "allowed_providers": ["small"],
             "max_cost_per_request_usd": 0.01, "budget_usd": 1.0},
        ],
    },
    env={},
)
OPEN, PINNED = CFG.keys


def test_parse_body_limits_and_json() -> None:
    with pytest.raises(BodyTooLarge):
        parse_body(b"x" * 11, 10)
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        parse_body(b"{", 100)
    with pytest.raises(InvalidRequest, match="JSON object"):
        parse_body(b"[1]", 100)


def _json_depth(raw: bytes) -> int:
    """How deep Python's json nests parsing ``raw`` before it finishes or fails: its pure-Python
    scanner (the C one follows the same grammar), each object and array counted as it is entered."""
    try:
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
    except UnicodeDecodeError:
        return 0
    depth = deepest = 0
    decoder: Any = json.JSONDecoder()

    def nest(parse: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            nonlocal depth, deepest
            depth += 1
            deepest = max(deepest, depth)
            try:
                return parse(*args)
            finally:
                depth -= 1
        return counted

    decoder.parse_object, decoder.parse_array = nest(decoder.parse_object), nest(decoder.parse_array)
    try:
        json.scanner.py_make_scanner(decoder)(text, len(text) - len(text.lstrip(" \t\n\r")))  # type: ignore[attr-defined]
    except (StopIteration, ValueError):
        pass
    return deepest


# strings full of what could fool a bracket count: brackets, quotes, backslashes, and characters whose
# UTF-16 form holds a quote (U+2200), backslash (U+5C22) or bracket byte (U+5B7B)
_TRICKY = st.text(alphabet='[]{}"\\ ab\n\u2200\u5c22\u5b7b\u00e9', max_size=8)
_VALUES = st.recursive(st.none() | st.integers() | _TRICKY,
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY, inner, max_size=3),
                       max_leaves=30)
_ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])


@settings(max_examples=400, deadline=None, database=None, derandomize=True)
@given(value=_VALUES, ascii_only=st.booleans(), encoding=_ENCODINGS, cut=st.integers(0, 400),
       insert=st.sampled_from(["", "[", "{", '"', "\\", "]", "\\\""]), limit=st.integers(0, 6))
def test_depth_check_reads_nesting_as_json_does(value: Any, ascii_only: bool, encoding: str, cut: int, insert: str,
                                                limit: int) -> None:
    """Exact on valid JSON in every encoding json.loads takes (a UTF-16 body's quote byte could be half
    of a character and hide brackets from a byte-level reader); on broken JSON it never says less than
    json would nest before failing."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    raw = text.encode(encoding, "surrogatepass")
    assert _depth_exceeds(raw, limit) == (_json_depth(raw) > limit), text
    broken = (text[:cut] + insert + text[cut + 1:]).encode(encoding, "surrogatepass")
    assert _depth_exceeds(broken, limit) or _json_depth(broken) <= limit, broken


def test_validate_accepts_openai_shapes() -> None:
    body = {
        "model": "auto", "stream": True, "stream_options": {"include_usage": True}, "n": 2, "max_tokens": 9,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                                         {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
            {"role": "tool", "content": "42", "tool_call_id": "1"},
        ],
        "some_future_param": {"x": 1},  # unknown parameters pass through
    }
    req = validate_chat(body)
    assert req.stream and req.include_usage and req.n == 2 and req.max_output_tokens == 9
    assert req.body["some_future_param"] == {"x": 1}


def test_max_completion_tokens_wins_and_stream_options_need_stream() -> None:
    req = validate_chat({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 3,
                         "max_tokens": 100})
    assert req.max_output_tokens == 3
    with pytest.raises(InvalidRequest) as info:
        validate_chat({"model": "m", "messages": [{"role": "user", "content": "x"}],
                       "stream_options": {"include_usage": True}})
    assert info.value.param == "stream_options"


def test_routing_prompt_reads_the_users_words_back_to_a_question() -> None:
    question = "Write a Python function that parses RFC 3339 timestamps, time zones included. " * 3
    msgs = [{"role": "system", "content": "long shared system prompt " * 20}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": question},
            {"role": "assistant", "content": "def parse(s): ..."}]
    # a question that says what it asks is read alone: no system prompt, no answers, no earlier turns
    assert routing_prompt(msgs[:4]) == question.strip()  # stripped, as routing_text strips it anyway
    # a follow-up is read with the question before it (single newline: one paragraph for routing_text)
    follow = [*msgs, {"role": "user", "content": [{"type": "text", "text": "Now add tests."}]}]
    assert routing_prompt(follow) == question.strip() + "\nNow add tests."
    assert routing_prompt([*follow, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "Why?"}]) \
        == question.strip() + "\nNow add tests.\nWhy?"
    # a question ending in a newline, or an image-only turn between, does not cut the follow-up off
    # (routing_text keeps the last paragraph: a blank line would leave the follow-up alone in it)
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}
    late = "Can you explain that again more simply, and give me one concrete example please?"
    for before in ([{"role": "user", "content": question + "\n"}], [{"role": "user", "content": question}, image]):
        assert routing_prompt([*before, {"role": "user", "content": late}]) == question.strip() + "\n" + late
    # a short conversation reads every user turn; one without a user turn reads its last message
    assert routing_prompt(msgs[:2] + [{"role": "user", "content": "bye"}]) == "hi\nbye"
    assert routing_prompt([{"role": "system", "content": "only"}]) == "only"


def test_model_names_and_tradeoffs() -> None:
    assert resolve_target(CFG, "auto", None, {}).tradeoff == 0.4
    assert resolve_target(CFG, "auto:cheap", None, {}).tradeoff == 1.0
    assert resolve_target(CFG, "auto:best", None, {}).tradeoff == 0.0
    assert resolve_target(CFG, "auto@0.25", None, {}).tradeoff == 0.25
    assert resolve_target(CFG, "auto", None, {"x-cscr-tradeoff": "0.9"}).tradeoff == 0.9
    named = resolve_target(CFG, "big", None, {})
    assert not named.routed and [p.name for p in named.providers] == ["big"]
    with pytest.raises(ModelNotFound):
        resolve_target(CFG, "gpt-9", None, {})
    for bad in ("auto@x", "auto@-1", "auto@nan"):
        with pytest.raises(InvalidRequest):
            resolve_target(CFG, bad, None, {})
    with pytest.raises(InvalidRequest) as info:
        resolve_target(CFG, "auto", None, {"x-cscr-tradeoff": "2"})
    assert info.value.param == "x-cscr-tradeoff"


def test_headers_only_tighten_the_key() -> None:
    # a key pinned to trade-off 0.7 cannot be pushed towards expensive routing by a header
    assert resolve_target(CFG, "auto", PINNED, {"x-cscr-tradeoff": "0.0"}).tradeoff == 0.7
    assert resolve_target(CFG, "auto", PINNED, {"x-cscr-tradeoff": "0.9"}).tradeoff == 0.9
    assert [p.name for p in resolve_target(CFG, "auto", PINNED, {}).providers] == ["small"]
    with pytest.raises(PermissionDenied):
        resolve_target(CFG, "big", PINNED, {})
    # caps: min of header, per-request cap and what is left of the budget
    assert cost_cap(None, {}) is None
    assert cost_cap(PINNED, {}) == 0.01
    assert cost_cap(PINNED, {"x-cscr-max-cost-usd": "0.5"}) == 0.01  # header cannot loosen
    assert cost_cap(PINNED, {"x-cscr-max-cost-usd": "0.001"}) == 0.001
    assert cost_cap(OPEN, {"x-cscr-max-cost-usd": "0.2"}) == 0.2
    for bad in ("-1", "abc", "inf", "nan"):
        with pytest.raises(InvalidRequest):
            cost_cap(OPEN, {"x-cscr-max-cost-usd": bad})


def test_estimates_and_eligibility() -> None:
    big, small = CFG.providers
    assert estimate_cost(big, 1000, 100, 1) == pytest.approx((1000 * 10 + 100 * 30) / 1e6)
    assert estimate_cost(big, 1000, 100, 3) == pytest.approx((1000 * 10 + 300 * 30) / 1e6)
    est = {"big": 0.013, "small": 0.00012}
    assert [p.name for p in eligible(CFG.providers, est, None)] == ["big", "small"]
    assert [p.name for p in eligible(CFG.providers, est, 0.001)] == ["small"]
    with pytest.raises(BudgetExceeded) as info:
        eligible(CFG.providers, est, 0.0001)
    assert "small" in info.value.message and info.value.code == "budget_exceeded"
    assert not math.isnan(info.value.status)
