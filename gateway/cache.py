"""Exact-match response cache: a chat request seen before is answered from the store, at no cost.

Opt-in (``keys[].cache`` or the top-level ``cache`` in gateway.yaml, docs/CONFIG.md) and per request
(``x-cscr-cache: on | off | refresh``). The key is the sha256 of the canonical JSON (sorted keys)
of the chat body as validated, less the fields that change only its delivery (``stream``,
``stream_options``) or bookkeeping (``user``, ``metadata``, ``store``), plus the providers the
request may reach and its trade-off; it lives in the key's namespace unless the policy is
``shared``. Only a request with ``temperature: 0`` is cacheable unless the policy sets
``allow_nondeterministic`` (an unset temperature is OpenAI's default of 1: not cacheable).

Only complete answers are stored (every choice finished with stop, length or tool_calls); an entry
that does not decode is dropped and the request served as a miss. Pure functions, the store's
``cache_*`` calls and the hit's response; metrics and logs are the caller's (``gateway.proxy``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.datastructures import Headers
from starlette.responses import Response, StreamingResponse

from gateway.config import CacheConfig, CachePolicy, KeyConfig, ProviderConfig
from gateway.errors import InvalidRequest
from gateway.store import Store

log = logging.getLogger(__name__)

CACHE_HEADER = "x-cscr-cache"
FORMAT = 1  # bumped when an entry's shape changes: old entries then simply miss
_UNKEYED = frozenset({"stream", "stream_options", "user", "metadata", "store"})
COMPLETE = frozenset({"stop", "length", "tool_calls"})


@dataclass(frozen=True, slots=True)
class Entry:
    payload: dict[str, Any]  # a chat.completion, as the provider sent it (or as assembled from its stream)
    provider: str  # the gateway's name of the provider that answered


@dataclass(slots=True)
class Ticket:
    """A cacheable request: where its answer lives, and the answer when it was found."""

    key: str
    ttl_s: float
    status: Literal["hit", "miss", "refresh"]
    limits: tuple[Any, Any]  # the caller's max_tokens, max_completion_tokens (a lowered cap is not stored)
    entry: Entry | None = None
    dropped: bool = field(default=False)  # an entry was there but did not decode


def policy_for(config: CacheConfig, key: KeyConfig | None) -> CachePolicy | None:
    policy = key.cache if key is not None and key.cache is not None else config.policy
    return policy if policy is not None and policy.enabled else None


def header_mode(headers: Mapping[str, str]) -> str | None:
    """The caller's ``x-cscr-cache`` (on, off, refresh), None when absent; anything else is a 400."""
    # A Mapping shows one value of a repeated header; starlette's Headers has them all.
    values = headers.getlist(CACHE_HEADER) if isinstance(headers, Headers) else (
        [headers[CACHE_HEADER]] if CACHE_HEADER in headers else [])
    if not values:
        return None
    value = values[0]
    mode = value.strip().lower()
    if len(values) > 1 or mode not in ("on", "off", "refresh"):
        raise InvalidRequest(f"header {CACHE_HEADER} must be sent once, as on, off or refresh, not {value[:40]!r}",
                             param=CACHE_HEADER)
    return mode


def deterministic(body: Mapping[str, Any]) -> bool:
    """``temperature: 0``. Unset is OpenAI's default of 1."""
    t = body.get("temperature")
    return t is not None and t == 0


def request_key(namespace: str, body: Mapping[str, Any], providers: tuple[ProviderConfig, ...],
                tradeoff: float) -> str:
    canonical = {
        "v": FORMAT,
        "body": {k: v for k, v in body.items() if k not in _UNKEYED},
        "providers": [[p.name, p.model] for p in providers],
        "tradeoff": tradeoff,
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"{namespace}:{hashlib.sha256(text.encode()).hexdigest()}"


def namespace(key: KeyConfig | None, policy: CachePolicy) -> str:
    if policy.shared:
        return "shared"
    return "anonymous" if key is None else f"key={key.name}"


def ticket_for(config: CacheConfig, key: KeyConfig | None, body: Mapping[str, Any],
               headers: Mapping[str, str], providers: tuple[ProviderConfig, ...], tradeoff: float) -> Ticket | None:
    """The request's ticket, None when it does not use the cache (no policy, ``off``, the policy's
    default is off and the caller did not ask, or the answer would not be deterministic)."""
    mode = header_mode(headers)
    policy = policy_for(config, key)
    if policy is None or mode == "off" or (mode is None and not policy.default):
        return None
    if not policy.allow_nondeterministic and not deterministic(body):
        return None
    limits = (body.get("max_tokens"), body.get("max_completion_tokens"))
    return Ticket(request_key(namespace(key, policy), body, providers, tradeoff), policy.ttl_s,
                  "refresh" if mode == "refresh" else "miss", limits)


async def look_up(store: Store, ticket: Ticket) -> None:
    """Fill ``ticket.entry`` from the store (a ``refresh`` does not look). An entry that does not
    decode is dropped. Store errors propagate (the caller serves the request as a miss)."""
    if ticket.status == "refresh":
        return
    try:
        raw = await store.cache_get(ticket.key)
    except UnicodeDecodeError:  # redis:// decodes values as UTF-8: bytes that are not are garbage
        raw = "\ufffd"
    if raw is None:
        return
    try:
        ticket.entry = decode(raw)
        ticket.status = "hit"
    except ValueError as exc:
        ticket.dropped = True
        log.warning("cache entry %s does not decode (%s); dropped", ticket.key[:80], exc)
        await store.cache_drop(ticket.key)


def encode(payload: dict[str, Any], provider: str) -> str:
    return json.dumps({"v": FORMAT, "provider": provider, "payload": payload}, separators=(",", ":"))


def decode(raw: str) -> Entry:
    """The entry in ``raw``; ValueError when it is not one this version wrote."""
    doc = json.loads(raw)  # JSONDecodeError is a ValueError
    if not isinstance(doc, dict) or doc.get("v") != FORMAT or not isinstance(doc.get("provider"), str):
        raise ValueError(f"not a cache entry of format {FORMAT}")
    payload = doc.get("payload")
    if not isinstance(payload, dict) or not complete(payload):
        raise ValueError("the cached answer is not a complete chat completion")
    return Entry(payload, doc["provider"])


def complete(payload: Mapping[str, Any]) -> bool:
    """A whole answer: every choice has a message and finished with stop, length or tool_calls."""
    choices = payload.get("choices")
    return isinstance(choices, list) and bool(choices) and all(
        isinstance(c, dict) and isinstance(c.get("message"), dict) and c.get("finish_reason") in COMPLETE
        for c in choices
    )


async def remember(store: Store, config: CacheConfig, ticket: Ticket, payload: dict[str, Any] | None,
                   provider: str, sent: Mapping[str, Any]) -> bool:
    """Store ``payload`` (the answer to the body ``sent`` upstream) if it is complete, fits
    ``max_entry_bytes`` and was not cut short by an output cap lower than the caller's."""
    if payload is None or not complete(payload):
        return False
    cut = any(c.get("finish_reason") == "length" for c in payload["choices"])
    if cut and (sent.get("max_tokens"), sent.get("max_completion_tokens")) != ticket.limits:
        return False  # the budget lowered max_tokens: another caller would get a longer answer
    value = encode(payload, provider)
    if len(value.encode()) > config.max_entry_bytes:
        log.info("answer of %d bytes not cached (max_entry_bytes %d)", len(value.encode()), config.max_entry_bytes)
        return False
    await store.cache_put(ticket.key, value, ticket.ttl_s, config.max_entries)
    return True


# --- streams: a miss assembled from its chunks, a hit replayed as chunks --------------------------


def _is_token(t: Any) -> bool:
    """A logprobs entry the openai SDK reads: a token string and its log probability."""
    return (isinstance(t, dict) and isinstance(t.get("token"), str) and isinstance(t.get("logprob"), int | float)
            and not isinstance(t.get("logprob"), bool))


class Assembler:
    """Builds the chat.completion a stream amounts to, chunk by chunk: text, tool calls and logprobs
    (each chunk carries those of its own tokens, so their lists are concatenated). A chunk it cannot
    read spoils the result: nothing is stored, nothing fails."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.calls: dict[int, dict[int, dict[str, Any]]] = {}  # choice -> call index -> tool call
        self.usage: Any = None
        self.spoilt = False

    def add(self, chunk: Mapping[str, Any]) -> None:
        if self.spoilt:
            return
        try:
            self._add(chunk)
        except Exception as exc:  # any chunk it cannot read spoils the entry, never the stream
            log.info("streamed answer not cached: unreadable chunk (%s)", type(exc).__name__)
            self.spoilt = True

    def _add(self, chunk: Mapping[str, Any]) -> None:
        if not self.head:
            self.head = {k: chunk[k] for k in ("id", "created", "model", "system_fingerprint") if k in chunk}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for c in chunk.get("choices") or ():
            i = int(c.get("index", 0))
            choice = self.choices.setdefault(i, {"index": i, "message": {"role": "assistant", "content": None},
                                                 "logprobs": None, "finish_reason": None})
            message, delta = choice["message"], c.get("delta") or {}
            for name in ("content", "refusal"):
                if isinstance(delta.get(name), str):
                    message[name] = (message.get(name) or "") + delta[name]
            for call in delta.get("tool_calls") or ():
                blank = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                slot = self.calls.setdefault(i, {}).setdefault(int(call.get("index", 0)), blank)
                slot["id"] = call.get("id") or slot["id"]
                fn = call.get("function") or {}
                for name in ("name", "arguments"):
                    if isinstance(fn.get(name), str):
                        slot["function"][name] += fn[name]
            if c.get("logprobs"):
                self._add_logprobs(choice, c["logprobs"])
            if c.get("finish_reason"):
                choice["finish_reason"] = c["finish_reason"]

    @staticmethod
    def _add_logprobs(choice: dict[str, Any], logprobs: Mapping[str, Any]) -> None:
        merged = choice["logprobs"] or {"content": None, "refusal": None}
        for name, tokens in logprobs.items():
            if tokens is None:
                continue
            if name not in ("content", "refusal") or not isinstance(tokens, list) or not all(map(_is_token, tokens)):
                raise TypeError(f"logprobs.{name} is not a list of tokens")  # a shape not worth guessing at
            merged[name] = (merged.get(name) or []) + tokens
        choice["logprobs"] = merged

    def result(self) -> dict[str, Any] | None:
        """The assembled chat.completion; None when a chunk spoilt it."""
        if self.spoilt or not self.choices:
            return None
        choices = []
        for i in sorted(self.choices):
            choice = self.choices[i]
            if i in self.calls:
                choice["message"]["tool_calls"] = [self.calls[i][j] for j in sorted(self.calls[i])]
            choices.append(choice)
        payload = {**self.head, "object": "chat.completion", "choices": choices}
        if self.usage is not None:
            payload["usage"] = self.usage
        return payload


def _free(usage: Any) -> Any:
    """The recorded usage as a hit reports it: the tokens of the original answer, ``cost`` 0 (the
    gateway's ``usage.cost`` is what this request cost, as ``x-cscr-cost-usd`` says)."""
    return {**usage, "cost": 0.0} if isinstance(usage, dict) else usage


def _sse(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def replay(payload: Mapping[str, Any], include_usage: bool) -> list[bytes]:
    """A cached chat.completion as the SSE events of a stream: per choice one chunk with the whole
    message (and its logprobs: a stream's chunks carry those of their own tokens, so one chunk
    carries them all) and one with its finish_reason, then the usage chunk if the caller asked,
    then [DONE]. A streamed and a non-streamed request share an entry (``stream`` is not keyed):
    what a non-streamed answer holds must reach a streaming caller too."""
    base = {k: payload[k] for k in ("id", "created", "model", "system_fingerprint") if k in payload}
    base["object"] = "chat.completion.chunk"
    events: list[bytes] = []
    for choice in payload["choices"]:
        message = choice["message"]
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
        if message.get("refusal"):
            delta["refusal"] = message["refusal"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": j, **call} for j, call in enumerate(message["tool_calls"])]
        events.append(_sse({**base, "choices": [{"index": choice.get("index", 0), "delta": delta,
                                                 "logprobs": choice.get("logprobs"), "finish_reason": None}]}))
    for choice in payload["choices"]:
        events.append(_sse({**base, "choices": [{"index": choice.get("index", 0), "delta": {},
                                                 "logprobs": None, "finish_reason": choice["finish_reason"]}]}))
    if include_usage and payload.get("usage") is not None:
        events.append(_sse({**base, "choices": [], "usage": payload["usage"]}))
    events.append(b"data: [DONE]\n\n")
    return events


def hit_response(entry: Entry, stream: bool, include_usage: bool, gateway_s: float) -> Response:
    """A hit as the client sees it: the cached JSON, or its replay as a stream, marked in headers."""
    headers = {"x-cscr-cache": "hit", "x-cscr-provider": entry.provider, "x-cscr-policy": "cache",
               "x-cscr-cost-usd": f"{0.0:.8f}", "x-cscr-cost-reserved-usd": f"{0.0:.8f}",
               "x-cscr-gateway-ms": f"{gateway_s * 1000:.3f}"}
    payload = entry.payload
    if isinstance(payload.get("usage"), dict):
        payload = {**payload, "usage": _free(payload["usage"])}
    if not stream:
        return Response(json.dumps(payload).encode(), 200, headers, media_type="application/json")
    return StreamingResponse(_replayed(replay(payload, include_usage)), 200, headers,
                             media_type="text/event-stream")


async def _replayed(events: list[bytes]) -> AsyncIterator[bytes]:  # an async iterator, like proxy's relay
    for event in events:
        yield event
