"""OpenAI's Responses API (``POST /v1/responses``) served as one chat completion.

The gateway speaks chat completions to every provider, so a Responses body is mapped to a chat
body (``to_chat``), planned, routed, budgeted and forwarded by ``gateway.proxy`` like any chat
request, and the answer is mapped back (``from_chat``, ``ResponsesStream``). Pure functions and
one small state machine; no I/O. Nothing is stored: ``previous_response_id`` and the other
server-side-state parameters are refused with a 400 that says so.

Mapped: ``input`` (a string, or a list of messages and ``function_call`` /
``function_call_output`` items; text, image and output_text parts), ``instructions`` (a system
message first), ``max_output_tokens``, ``temperature``, ``top_p``, ``tools`` of type
``function``, ``tool_choice``, ``parallel_tool_calls``, ``text.format`` (text, json_object,
json_schema), ``user``, ``stream``. Echoed, not forwarded: ``metadata``, ``store`` (always
reported false), ``truncation: disabled``. Anything else is a 400 naming the parameter.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any, Protocol

from gateway.errors import InvalidRequest

MAPPED = frozenset({"model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "tools",
                    "tool_choice", "parallel_tool_calls", "text", "user", "stream"})
ECHOED = frozenset({"metadata", "store", "truncation", "stream_options"})
STATEFUL = ("previous_response_id", "conversation", "background", "prompt")


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name in STATEFUL:
        if body.get(name) is not None:
            raise InvalidRequest(f"'{name}' is not supported by this gateway: it stores no responses or "
                                 f"conversations; send the whole conversation in 'input'", param=name,
                                 code="unsupported_parameter")
    for name in sorted(set(body) - MAPPED - ECHOED):
        if body[name] is not None:
            raise InvalidRequest(f"'{name}' is not supported by this gateway's /v1/responses", param=name,
                                 code="unsupported_parameter")
    if body.get("truncation") not in (None, "disabled"):
        raise InvalidRequest("'truncation' may only be 'disabled' here", param="truncation",
                             code="unsupported_parameter")


def _content(where: str, content: Any) -> str | list[dict[str, Any]]:
    """A Responses message content (string or parts) as chat content."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or a list of parts", param=where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):  # an earlier output, sent back
            parts.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image = {"url": part["image_url"], **({"detail": part["detail"]} if part.get("detail") else {})}
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise InvalidRequest(f"{where}[{j}]: part type {kind!r} is not supported here (input_text, "
                                 "output_text and input_image with an image_url are)", param=f"{where}[{j}]")
    return parts


def _item(i: int, item: Any, messages: list[dict[str, Any]]) -> None:
    where = f"input[{i}]"
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where} must be an object", param=where)
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise InvalidRequest(f"{where}.role must be user, assistant, system or developer", param=f"{where}.role")
        content = _content(f"{where}.content", item.get("content"))
        if role == "assistant" and isinstance(content, list) and all(p["type"] == "text" for p in content):
            content = "".join(p["text"] for p in content)  # chat's assistant turns are text (parts: not everywhere)
        messages.append({"role": role, "content": content})
    elif kind == "function_call":
        call = {"id": item.get("call_id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments")}}
        if not all(isinstance(v, str) for v in (call["id"], item.get("name"), item.get("arguments"))):
            raise InvalidRequest(f"{where}: a function_call needs string call_id, name and arguments", param=where)
        if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
            messages[-1]["tool_calls"].append(call)  # parallel calls: one assistant turn
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        if not isinstance(item.get("call_id"), str) or not isinstance(output, str):
            raise InvalidRequest(f"{where}: a function_call_output needs string call_id and output", param=where)
        messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
    else:
        raise InvalidRequest(f"{where}: input item type {kind!r} is not supported by this gateway",
                             param=f"{where}.type", code="unsupported_parameter")


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise InvalidRequest(f"tools[{i}]: only tools of type 'function' (with a name) are supported by this "
                                 f"gateway, got {kind!r}", param=f"tools[{i}].type", code="unsupported_parameter")
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest("'tool_choice' must be auto, none, required or {type: function, name}", param="tool_choice")


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt.get("schema"), dict):
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest("'text.format' must be of type text, json_object or json_schema (with a schema)",
                         param="text.format")


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses body as a chat-completions body; InvalidRequest names the Responses field."""
    _refuse_unsupported(body)
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InvalidRequest("'instructions' must be a string", param="instructions")
        messages.append({"role": "system", "content": instructions})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list) and given:
        for i, item in enumerate(given):
            _item(i, item, messages)
    else:
        raise InvalidRequest("'input' is required: a string or a non-empty array of items", param="input")
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    for ours, theirs in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
                         ("parallel_tool_calls", "parallel_tool_calls"), ("user", "user"), ("stream", "stream")):
        if body.get(ours) is not None:
            chat[theirs] = body[ours]
    bound = body.get("max_output_tokens")
    if bound is not None and (not isinstance(bound, int) or isinstance(bound, bool) or bound < 1):
        raise InvalidRequest("'max_output_tokens' must be a positive integer", param="max_output_tokens")
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    fmt = _response_format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    if chat.get("stream"):
        chat["stream_options"] = {"include_usage": True}  # the final event carries usage
    return chat


def usage(chat_usage: Any) -> dict[str, Any] | None:
    if not isinstance(chat_usage, dict):
        return None
    p, c = chat_usage.get("prompt_tokens") or 0, chat_usage.get("completion_tokens") or 0
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": p, "input_tokens_details": {"cached_tokens": cached}, "output_tokens": c,
            "output_tokens_details": {"reasoning_tokens": reasoning}, "total_tokens": p + c}


def response_object(rid: str, request: dict[str, Any], model: str, output: list[dict[str, Any]],
                    finish: str | None, chat_usage: Any, status: str | None = None) -> dict[str, Any]:
    """The Response object; ``status`` from the chat finish_reason unless given."""
    incomplete = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(finish or "")
    return {
        "id": rid, "object": "response", "created_at": int(time.time()), "model": model,
        "status": status or ("incomplete" if incomplete else "completed"),
        "incomplete_details": {"reason": incomplete} if incomplete and not status else None,
        "error": None, "output": output, "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"), "temperature": request.get("temperature"),
        "top_p": request.get("top_p"), "tools": request.get("tools") or [],
        "tool_choice": request.get("tool_choice") or "auto",
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "text": request.get("text") or {"format": {"type": "text"}}, "truncation": "disabled",
        "previous_response_id": None, "reasoning": None, "store": False, "user": request.get("user"),
        "metadata": request.get("metadata") or {}, "usage": usage(chat_usage),
    }


def _message_item(text: str, refusal: str | None = None, status: str = "completed") -> dict[str, Any]:
    part: dict[str, Any] = ({"type": "refusal", "refusal": refusal} if refusal is not None
                            else {"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    return {"type": "message", "id": _new_id("msg"), "status": status, "role": "assistant", "content": [part]}


def _call_item(call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": _new_id("fc"), "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def from_chat(payload: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """A chat completion as a Response (its first choice: Responses has no ``n``)."""
    choice = (payload.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if message.get("refusal"):
        output.append(_message_item("", refusal=message["refusal"]))
    elif isinstance(message.get("content"), str) and (message["content"] or not message.get("tool_calls")):
        output.append(_message_item(message["content"]))
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        output.append(_call_item(call.get("id") or _new_id("call"), fn.get("name", ""), fn.get("arguments", "")))
    return response_object(_new_id("resp"), request, str(request.get("model") or payload.get("model")), output,
                           choice.get("finish_reason"), payload.get("usage"))


class ResponsesStream:
    """Chat-completion chunks (the relay's SSE bytes) in, Responses stream events out: created,
    in_progress, output_item.added, content_part.added, output_text.delta, ... done, completed
    (with usage). A gateway error event mid-stream becomes ``error`` and ``response.failed``."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request
        self.rid = _new_id("resp")
        self.model = str(request.get("model"))
        self.seq = 0
        self.text: dict[str, Any] | None = None  # the open message item and its text so far
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> open function_call item
        self.output: list[dict[str, Any]] = []
        self.finish: str | None = None
        self.usage: Any = None

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

    def _snapshot(self, status: str | None = None) -> dict[str, Any]:
        return response_object(self.rid, self.request, self.model, self.output, self.finish, self.usage, status)

    def start(self) -> list[bytes]:
        return [self.event("response.created", response=self._snapshot("in_progress")),
                self.event("response.in_progress", response=self._snapshot("in_progress"))]

    def _open_text(self) -> list[bytes]:
        item = _message_item("", status="in_progress")
        item["content"] = []
        self.text = {"item": item, "index": len(self.output), "text": ""}
        self.output.append(item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [self.event("response.output_item.added", output_index=self.text["index"], item=item),
                self.event("response.content_part.added", item_id=item["id"], output_index=self.text["index"],
                           content_index=0, part=part)]

    def _close_text(self) -> list[bytes]:
        if self.text is None:
            return []
        t, self.text = self.text, None
        part = {"type": "output_text", "text": t["text"], "annotations": [], "logprobs": []}
        t["item"].update(status="completed", content=[part])
        where = {"item_id": t["item"]["id"], "output_index": t["index"]}
        return [self.event("response.output_text.done", **where, content_index=0, text=t["text"], logprobs=[]),
                self.event("response.content_part.done", **where, content_index=0, part=part),
                self.event("response.output_item.done", output_index=t["index"], item=t["item"])]

    def _tool_delta(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        index = call.get("index", 0)
        fn = call.get("function") or {}
        if index not in self.calls:
            out += self._close_text()
            item = _call_item(call.get("id") or _new_id("call"), fn.get("name") or "", "", status="in_progress")
            self.calls[index] = {"item": item, "index": len(self.output)}
            self.output.append(item)
            out.append(self.event("response.output_item.added", output_index=len(self.output) - 1, item=item))
        open_call = self.calls[index]
        if fn.get("arguments"):
            open_call["item"]["arguments"] += fn["arguments"]
            out.append(self.event("response.function_call_arguments.delta", item_id=open_call["item"]["id"],
                                  output_index=open_call["index"], delta=fn["arguments"]))
        return out

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        usage, deltas, finish = chat_deltas(chunk)
        self.usage = usage or self.usage
        for delta in deltas:
            if isinstance(delta.get("content"), str) and delta["content"]:
                if self.text is None:
                    out += self._open_text()
                assert self.text is not None
                self.text["text"] += delta["content"]
                out.append(self.event("response.output_text.delta", item_id=self.text["item"]["id"],
                                      output_index=self.text["index"], content_index=0, delta=delta["content"],
                                      logprobs=[]))
            for call in delta.get("tool_calls") or ():
                out += self._tool_delta(call)
        self.finish = finish or self.finish
        return out

    def finish_events(self) -> list[bytes]:
        out = self._close_text()
        for open_call in self.calls.values():
            item = open_call["item"]
            item["status"] = "completed"
            out += [self.event("response.function_call_arguments.done", item_id=item["id"],
                               output_index=open_call["index"], arguments=item["arguments"]),
                    self.event("response.output_item.done", output_index=open_call["index"], item=item)]
        self.calls = {}
        final = self._snapshot()
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        return out + [self.event(kind, response=final)]

    def failed(self, error: dict[str, Any]) -> list[bytes]:
        message = str(error.get("message") or "the stream failed")
        snapshot = self._snapshot("failed")
        snapshot["error"] = {"code": "server_error", "message": message}
        return [self.event("error", code=error.get("code"), message=message, param=None),
                self.event("response.failed", response=snapshot)]


def chat_deltas(chunk: dict[str, Any]) -> tuple[Any, list[dict[str, Any]], str | None]:
    """What a chat chunk says to a translated stream: its usage (None: none), the deltas of choice 0
    (the Responses and Messages APIs have no ``n``: one choice), and its finish reason (None: none)."""
    deltas: list[dict[str, Any]] = []
    finish = None
    for choice in chunk.get("choices") or ():
        if choice.get("index", 0) != 0:
            continue
        deltas.append(choice.get("delta") or {})
        finish = choice.get("finish_reason") or finish
    return chunk.get("usage") or None, deltas, finish


class StreamEvents(Protocol):
    """One API's stream events made from the relay's chat chunks (``ResponsesStream``,
    ``anthropic.MessagesStream``)."""

    def start(self) -> list[bytes]: ...
    def chunk(self, chunk: dict[str, Any]) -> list[bytes]: ...
    def finish_events(self) -> list[bytes]: ...
    def failed(self, error: dict[str, Any]) -> list[bytes]: ...


async def translate_events(relay: AsyncGenerator[bytes, None], events: StreamEvents) -> AsyncGenerator[bytes, None]:
    """The relay's chat SSE as ``events`` says: its start, a translation per chunk, its finish at
    ``[DONE]``, its failure at the relay's error event (the last one it sends). Closing this closes
    the relay (it settles spend)."""
    try:
        for b in events.start():
            yield b
        async for raw in relay:
            for data in sse_data(raw):
                if data == b"[DONE]":
                    for b in events.finish_events():
                        yield b
                    return
                chunk = json.loads(data)
                if isinstance(chunk.get("error"), dict):
                    for b in events.failed(chunk["error"]):
                        yield b
                    return
                for b in events.chunk(chunk):
                    yield b
    finally:
        await relay.aclose()


def translate_stream(relay: AsyncGenerator[bytes, None], request: dict[str, Any]) -> AsyncGenerator[bytes, None]:
    """The relay's chat SSE as Responses events."""
    return translate_events(relay, ResponsesStream(request))


def sse_data(raw: bytes) -> list[bytes]:
    """The ``data:`` payloads in one piece of the relay's output (it yields whole events)."""
    return [line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:")]
