"""Anthropic's Messages API (``POST /v1/messages``) served as one chat completion, like
``gateway.responses``: the body is mapped to chat (``to_chat``), routed and budgeted by
``gateway.proxy``, and the answer mapped back (``from_chat``, ``MessagesStream``). Pure; no I/O.

Mapped: ``model``, ``max_tokens`` (required, as Anthropic requires it), ``messages`` (text, image
(base64 or url), ``tool_use`` and ``tool_result`` blocks), ``system`` (string or text blocks),
``temperature``, ``top_p``, ``stop_sequences``, ``stream``, ``tools`` (custom tools with an
``input_schema``), ``tool_choice`` (auto, any, tool, none), ``metadata.user_id``. Anything else
(``top_k``, ``thinking``, server tools, ...) is a 400 naming it. Errors are Anthropic-shaped:
``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from gateway.errors import GatewayError, InvalidRequest
from gateway.responses import chat_deltas, translate_events

MAPPED = frozenset({"model", "max_tokens", "messages", "system", "temperature", "top_p", "stop_sequences",
                    "stream", "tools", "tool_choice", "metadata"})
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
# Anthropic's error types by status (its SDK maps the status; the type is for the reader).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 504: "timeout_error"}


def error_body(err: GatewayError) -> dict[str, Any]:
    kind = ERROR_TYPES.get(err.status, "api_error")
    message = err.message
    if err.code == "budget_exceeded":
        kind = "rate_limit_error"
    return {"type": "error", "error": {"type": kind, "message": message}}


def _text(where: str, block: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(block.get("text"), str):
        raise InvalidRequest(f"{where}.text must be a string", param=f"{where}.text")
    return {"type": "text", "text": block["text"]}


def _image(where: str, block: dict[str, Any]) -> dict[str, Any]:
    src: dict[str, Any] = block["source"] if isinstance(block.get("source"), dict) else {}
    if src.get("type") == "base64" and isinstance(src.get("data"), str):
        url = f"data:{src.get('media_type', 'image/png')};base64,{src['data']}"
    elif src.get("type") == "url" and isinstance(src.get("url"), str):
        url = src["url"]
    else:
        raise InvalidRequest(f"{where}.source must be base64 data or a url", param=f"{where}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(where: str, block: dict[str, Any]) -> dict[str, Any]:
    content = block.get("content", "")
    if isinstance(content, list):
        texts = [b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        strings = [t for t in texts if isinstance(t, str)]
        content = "".join(strings) if len(strings) == len(texts) else None  # a text block's text: a string
    if not isinstance(content, str) or not isinstance(block.get("tool_use_id"), str):
        raise InvalidRequest(f"{where}: a tool_result needs a tool_use_id and text content", param=where)
    if block.get("is_error"):
        content = f"Error: {content}"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": content}


def _message(i: int, m: Any) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages (tool results are messages of their own in chat)."""
    where = f"messages[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
        raise InvalidRequest(f"{where} must be an object with role user or assistant", param=f"{where}.role")
    content = m.get("content")
    if isinstance(content, str):
        return [{"role": m["role"], "content": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or a list of blocks", param=f"{where}.content")
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(_text(at, block))
        elif kind == "image":
            parts.append(_image(at, block))
        elif kind == "tool_use" and m["role"] == "assistant":
            calls.append({"id": block.get("id"), "type": "function", "function": {
                "name": block.get("name"), "arguments": json.dumps(block.get("input") or {})}})
        elif kind == "tool_result" and m["role"] == "user":
            results.append(_tool_result(at, block))
        else:
            raise InvalidRequest(f"{at}: block type {kind!r} is not supported here", param=f"{at}.type")
    out: list[dict[str, Any]] = list(results)  # tool results answer the previous assistant turn: first
    if m["role"] == "assistant":
        text = "".join(p["text"] for p in parts if p["type"] == "text")
        out.append({"role": "assistant", "content": text or None, **({"tool_calls": calls} if calls else {})})
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _tools(tools: Any, choice: Any) -> dict[str, Any]:
    chat: dict[str, Any] = {}
    if tools is not None:
        if not isinstance(tools, list):
            raise InvalidRequest("'tools' must be an array", param="tools")
        chat["tools"] = []
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or t.get("type", "custom") != "custom" or not isinstance(t.get("name"), str):
                raise InvalidRequest(f"tools[{i}]: only custom tools (name, input_schema) are supported by this "
                                     "gateway", param=f"tools[{i}]")
            fn = {"name": t["name"], "parameters": t.get("input_schema") or {"type": "object"}}
            if t.get("description"):
                fn["description"] = t["description"]
            chat["tools"].append({"type": "function", "function": fn})
    if choice is not None:
        kind = choice.get("type") if isinstance(choice, dict) else None
        mapped = {"auto": "auto", "any": "required", "none": "none"}
        if kind in mapped:
            chat["tool_choice"] = mapped[kind]
        elif kind == "tool" and isinstance(choice.get("name"), str):
            chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        else:
            raise InvalidRequest("'tool_choice' must be of type auto, any, tool or none", param="tool_choice")
        if choice.get("disable_parallel_tool_use") and "tools" in chat:
            chat["parallel_tool_calls"] = False
    return chat


def _system(system: Any) -> str | None:
    if system is None or isinstance(system, str):
        return system
    if isinstance(system, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in system):
        return "\n".join(str(b.get("text", "")) for b in system)
    raise InvalidRequest("'system' must be a string or a list of text blocks", param="system")


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages body as a chat-completions body; InvalidRequest names the field."""
    unknown = sorted(set(body) - MAPPED)
    if unknown:
        raise InvalidRequest(f"'{unknown[0]}' is not supported by this gateway's /v1/messages", param=unknown[0],
                             code="unsupported_parameter")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequest("'max_tokens' is required and must be a positive integer", param="max_tokens")
    given = body.get("messages")
    if not isinstance(given, list) or not given:
        raise InvalidRequest("'messages' is required and must be a non-empty array", param="messages")
    messages: list[dict[str, Any]] = []
    system = _system(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for i, m in enumerate(given):
        messages += _message(i, m)
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages, "max_tokens": max_tokens}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("stop_sequences", "stop"),
                         ("stream", "stream")):
        if body.get(ours) is not None:
            chat[theirs] = body[ours]
    user = (body.get("metadata") or {}).get("user_id") if isinstance(body.get("metadata"), dict) else None
    if isinstance(user, str):
        chat["user"] = user
    chat.update(_tools(body.get("tools"), body.get("tool_choice")))
    if chat.get("stream"):
        chat["stream_options"] = {"include_usage": True}
    return chat


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _arguments(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {"_raw": text}  # a provider's malformed arguments, kept rather than dropped


def _usage(chat_usage: Any, prompt_estimate: int) -> dict[str, int]:
    u = chat_usage if isinstance(chat_usage, dict) else {}
    return {"input_tokens": int(u.get("prompt_tokens") or prompt_estimate),
            "output_tokens": int(u.get("completion_tokens") or 0)}


def from_chat(payload: dict[str, Any], request: dict[str, Any], prompt_estimate: int) -> dict[str, Any]:
    """A chat completion as an Anthropic Message (its first choice)."""
    choice = (payload.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or _new_id("toolu"), "name": fn.get("name", ""),
                        "input": _arguments(fn.get("arguments", ""))})
    return {"id": _new_id("msg"), "type": "message", "role": "assistant",
            "model": str(request.get("model") or payload.get("model")), "content": content,
            "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
            "stop_sequence": None, "usage": _usage(payload.get("usage"), prompt_estimate)}


class MessagesStream:
    """Chat chunks in, Anthropic stream events out: message_start, content_block_start /
    _delta / _stop per block (text_delta, input_json_delta), message_delta (stop_reason, usage),
    message_stop. A gateway error event mid-stream becomes Anthropic's ``error`` event."""

    def __init__(self, request: dict[str, Any], prompt_estimate: int) -> None:
        self.request, self.prompt_estimate = request, prompt_estimate
        self.block: int = -1  # index of the open content block
        self.kind: str | None = None  # "text" or a chat tool-call index as "tool:N"
        self.finish: str | None = None
        self.usage: Any = None

    @staticmethod
    def event(kind: str, **fields: Any) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields}, separators=(',', ':'))}\n\n".encode()

    def start(self) -> list[bytes]:
        message: dict[str, Any] = {"id": _new_id("msg"), "type": "message", "role": "assistant",
                   "model": str(self.request.get("model")), "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": {"input_tokens": self.prompt_estimate, "output_tokens": 0}}
        return [self.event("message_start", message=message), self.event("ping")]

    def _switch(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self.block += 1
        self.kind = kind
        return out + [self.event("content_block_start", index=self.block, content_block=block)]

    def _close(self) -> list[bytes]:
        if self.kind is None:
            return []
        self.kind = None
        return [self.event("content_block_stop", index=self.block)]

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        usage, deltas, finish = chat_deltas(chunk)
        self.usage = usage or self.usage
        for delta in deltas:
            if isinstance(delta.get("content"), str) and delta["content"]:
                if self.kind != "text":
                    out += self._switch("text", {"type": "text", "text": ""})
                out.append(self.event("content_block_delta", index=self.block,
                                      delta={"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or ():
                fn = call.get("function") or {}
                kind = f"tool:{call.get('index', 0)}"
                if self.kind != kind:
                    out += self._switch(kind, {"type": "tool_use", "id": call.get("id") or _new_id("toolu"),
                                               "name": fn.get("name") or "", "input": {}})
                if fn.get("arguments"):
                    out.append(self.event("content_block_delta", index=self.block,
                                          delta={"type": "input_json_delta", "partial_json": fn["arguments"]}))
        self.finish = finish or self.finish
        return out

    def finish_events(self) -> list[bytes]:
        reason = STOP_REASONS.get(self.finish or "stop", "end_turn")
        return self._close() + [
            self.event("message_delta", delta={"stop_reason": reason, "stop_sequence": None},
                       usage=_usage(self.usage, self.prompt_estimate)),
            self.event("message_stop"),
        ]

    def failed(self, error: dict[str, Any]) -> list[bytes]:
        return [self.event("error", error={"type": "api_error", "message": str(error.get("message"))})]


def translate_stream(relay: AsyncGenerator[bytes, None], request: dict[str, Any],
                     prompt_estimate: int) -> AsyncGenerator[bytes, None]:
    """The relay's chat SSE as Anthropic events."""
    return translate_events(relay, MessagesStream(request, prompt_estimate))
