"""OpenAI chat-completions request validation. Pure functions; imports only ``gateway.errors``.

The body is forwarded as the caller sent it (parameters we do not know pass through untouched, so
a new OpenAI parameter does not need a gateway release); the parameters we know are type-checked
so a mistake is a 400 that names the field rather than an opaque upstream error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.errors import BodyTooLarge, InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

_NUMBER = (int, float)
MAX_JSON_DEPTH = 64  # OpenAI's own bodies nest ~10 deep (a tool's JSON schema a little more)
INT32_MAX = 2**31 - 1  # the output bound: no model comes near it, and every estimate stays finite
INT64 = 2**63
_SURROGATE = re.compile("[\ud800-\udfff]")  # half of a UTF-16 pair: not text, no encoder takes it
# How a surrogate reaches json.loads in a UTF-8 body (a pair too): escaped, or encoded (json decodes
# with surrogatepass). Two patterns: one with an alternation has no literal prefix to scan for, 20x slower.
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_ENCODED_SURROGATE = re.compile(rb"\xed[\xa0-\xbf]")
# name -> (accepted types, lower bound, upper bound); bounds as OpenAI documents them
_PARAMS: dict[str, tuple[tuple[type, ...], float | None, float | None]] = {
    "temperature": (_NUMBER, 0, 2),
    "top_p": (_NUMBER, 0, 1),
    "presence_penalty": (_NUMBER, -2, 2),
    "frequency_penalty": (_NUMBER, -2, 2),
    "max_tokens": ((int,), 1, INT32_MAX),
    "max_completion_tokens": ((int,), 1, INT32_MAX),
    "n": ((int,), 1, 128),
    "seed": ((int,), -INT64, INT64 - 1),
    "top_logprobs": ((int,), 0, 20),
    "stream": ((bool,), None, None),
    "logprobs": ((bool,), None, None),
    "parallel_tool_calls": ((bool,), None, None),
    "store": ((bool,), None, None),
    "user": ((str,), None, None),
    "stop": ((str, list), None, None),
    "tools": ((list,), None, None),
    "tool_choice": ((str, dict), None, None),
    "response_format": ((dict,), None, None),
    "stream_options": ((dict,), None, None),
    "logit_bias": ((dict,), None, None),
    "metadata": ((dict,), None, None),
}


@dataclass(frozen=True, slots=True)
class ChatRequest:
    body: dict[str, Any]  # the validated body, as sent
    model: str
    stream: bool
    include_usage: bool  # the caller asked for the final usage chunk
    max_output_tokens: int | None
    n: int
    foreign_part: tuple[str, str] | None = None  # (path, type) of the first part of a type not known here


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN and Infinity; JSON does not


_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')  # translate() drops these
_STEP = np.zeros(256, dtype=np.int8)
_STEP[list(b"[{")], _STEP[list(b"]}")] = 1, -1
_QUOTE = ord('"')


def _depth_exceeds(raw: bytes, limit: int) -> bool:
    """Whether the JSON text nests deeper than ``limit``, read from the bytes before parsing: Python's
    json recurses per level, and a RecursionError leaves CPython 3.11's compiler unusable in the
    process (later imports fail with "AST constructor recursion depth mismatch").

    Brackets inside strings do not nest. The string bounds are read as json reads them: escapes
    first (``\\\\`` then ``\\"``, left to right as the parser pairs them), then every quote opens or
    closes one; past a syntax error the count may be wrong, but json stops there too. Byte ops and
    numpy over the structural bytes: 10-20x cheaper on a 100 KB body than matching each string with a
    regex (bench/json_depth_bench.py)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:  # cannot nest deeper than it has brackets (any encoding)
        return False
    encoding = json.detect_encoding(raw)
    if encoding not in ("utf-8", "utf-8-sig"):
        try:  # UTF-16/32 (json takes them): a quote or bracket byte may be half of another character
            raw = raw.decode(encoding, "surrogatepass").encode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return False  # json.loads fails decoding it, before it parses anything
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = np.frombuffer(raw.translate(None, _NOT_STRUCTURE), dtype=np.uint8)  # UTF-8: all ASCII bytes
    steps = _STEP[structure]
    steps[(np.cumsum(structure == _QUOTE, dtype=np.int32) & 1).astype(bool)] = 0  # inside a string
    return bool(steps.size) and int(np.cumsum(steps, dtype=np.int32).max()) > limit


def parse_body(raw: bytes, limit: int) -> dict[str, Any]:
    if len(raw) > limit:
        raise BodyTooLarge(f"request body is {len(raw)} bytes; the limit is {limit}")
    if _depth_exceeds(raw, MAX_JSON_DEPTH):
        raise InvalidRequest(f"request body nests more than {MAX_JSON_DEPTH} levels deep", code="invalid_json")
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    if _may_hold_surrogate(raw):
        _refuse_surrogates(body, "")
    return body


def _may_hold_surrogate(raw: bytes) -> bool:
    """False when no string of the parsed body can hold a surrogate, read from the bytes (microseconds;
    the walk takes milliseconds on a body of many strings). A UTF-16 or UTF-32 body (json takes those
    too) is walked. Each pattern runs only when its first byte occurs at all (a memchr)."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in raw[:4]:
        return True
    return (b"\\" in raw and _ESCAPED_SURROGATE.search(raw) is not None) or \
        (b"\xed" in raw and _ENCODED_SURROGATE.search(raw) is not None)


def _refuse_surrogates(value: Any, path: str) -> None:
    """Every string and key of the body, once: a provider refuses a lone surrogate (or the encoding
    to send it fails), and the gateway's own token counts and router cannot read it either."""
    if type(value) is str:
        if not value.isascii() and _SURROGATE.search(value):  # isascii: a flag CPython keeps, O(1)
            raise InvalidRequest(f"{path} contains a lone UTF-16 surrogate (\\ud800-\\udfff); it is not valid "
                                 "text", param=path)
    elif type(value) is dict:
        for k, v in value.items():
            if not k.isascii() and _SURROGATE.search(k):
                where = path or "the request body"
                raise InvalidRequest(f"a key of {where} contains a lone UTF-16 surrogate (\\ud800-\\udfff); it is "
                                     "not valid text", param=path or None)
            _refuse_surrogates(v, f"{path}.{k}" if path else k)
    elif type(value) is list:
        for i, v in enumerate(value):
            _refuse_surrogates(v, f"{path}[{i}]")


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _check_message(i: int, m: Any) -> tuple[str, str] | None:
    """(path, type) of the first part of a type the gateway does not know, if any."""
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise InvalidRequest(f"{where} must be an object, got {_type_name(m)}", param=where)
    role = m.get("role")
    if not isinstance(role, str):
        raise InvalidRequest(f"{where}.role is required and must be a string", param=f"{where}.role")
    if role not in ROLES:
        raise InvalidRequest(
            f"{where}.role {role!r} is not one of {', '.join(sorted(ROLES))}", param=f"{where}.role"
        )
    content = m.get("content")
    foreign = None
    if content is None:
        if role != "assistant" or not (m.get("tool_calls") or m.get("function_call")):
            raise InvalidRequest(f"{where}.content is required", param=f"{where}.content")
    elif isinstance(content, list):
        for j, part in enumerate(content):
            if not _check_part(f"{where}.content[{j}]", part) and foreign is None:
                foreign = f"{where}.content[{j}]", part["type"]
    elif not isinstance(content, str):
        raise InvalidRequest(
            f"{where}.content must be a string or a list of parts, got {_type_name(content)}",
            param=f"{where}.content",
        )
    return foreign


# part type -> (the field holding it, whether that is a string or an object, that object's fields:
# name -> required); as OpenAI's API reference gives them (values such as an audio format or an image
# detail are the provider's to judge: they differ between providers and grow)
_PARTS: dict[str, tuple[str, type, dict[str, bool]]] = {
    "text": ("text", str, {}),
    "refusal": ("refusal", str, {}),
    "image_url": ("image_url", dict, {"url": True, "detail": False}),
    "input_audio": ("input_audio", dict, {"data": True, "format": True}),
    "file": ("file", dict, {"file_data": False, "file_id": False, "filename": False}),
}


def _check_part(where: str, part: Any) -> bool:
    """Check a content part of a known type; False for a type the gateway does not know (it passes
    through to a named provider: vLLM's video_url, say)."""
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise InvalidRequest(f"{where} must be an object with a string 'type'", param=where)
    shape = _PARTS.get(part["type"])
    if shape is None:
        return False
    name, kind, fields = shape
    value, at = part.get(name), f"{where}.{name}"
    if not isinstance(value, kind):
        expected = "a string" if kind is str else "an object"
        raise InvalidRequest(f"{at} must be {expected}, got {_type_name(value)}", param=at)
    if isinstance(value, dict):
        for field, required in fields.items():
            v = value.get(field)
            if (required or v is not None) and not isinstance(v, str):
                raise InvalidRequest(f"{at}.{field} {'is required and ' if required else ''}must be a string, "
                                     f"got {_type_name(v)}", param=f"{at}.{field}")
        if name == "file" and value.get("file_data") is None and value.get("file_id") is None:
            raise InvalidRequest(f"{at} needs file_data or file_id", param=at)
    return True


def validate_chat(body: dict[str, Any]) -> ChatRequest:
    """Check a chat-completions body; raise InvalidRequest naming the first bad field."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest(
            f"'messages' is required and must be an array, got {_type_name(messages)}", param="messages"
        )
    if not messages:
        raise InvalidRequest("'messages' must not be empty", param="messages")
    foreign = None
    for i, m in enumerate(messages):
        found = _check_message(i, m)
        foreign = foreign or found
    for name, (kinds, lo, hi) in _PARAMS.items():
        if name not in body or body[name] is None:
            continue
        v = body[name]
        if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
            expected = " or ".join("number" if k in (int, float) and len(kinds) == 2 else k.__name__ for k in kinds)
            raise InvalidRequest(f"'{name}' must be {expected}, got {_type_name(v)}", param=name)
        if isinstance(v, int | float) and ((lo is not None and v < lo) or (hi is not None and v > hi)):
            shown = str(v) if len(str(v)) <= 24 else str(v)[:12] + f"... ({len(str(v))} digits)"
            raise InvalidRequest(f"'{name}' is {shown}; it must be within [{lo}, {hi}]", param=name)
    stop = body.get("stop")
    if isinstance(stop, list) and not all(isinstance(s, str) for s in stop):
        raise InvalidRequest("'stop' must be a string or an array of strings", param="stop")
    stream = bool(body.get("stream"))
    options = body.get("stream_options") or {}
    if options and not stream:
        raise InvalidRequest("'stream_options' is only allowed when 'stream' is true", param="stream_options")
    if options.get("include_usage") is not None and not isinstance(options["include_usage"], bool):
        raise InvalidRequest("'stream_options.include_usage' must be a boolean", param="stream_options.include_usage")
    max_out = body.get("max_completion_tokens") or body.get("max_tokens")
    return ChatRequest(
        body=body,
        model=model,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        max_output_tokens=max_out,
        n=body.get("n") or 1,
        foreign_part=foreign,
    )


def refuse_foreign_part(chat: ChatRequest) -> None:
    """A routed request may only hold parts of known types: the router may pick any provider, and one
    that does not know the type fails the request, or drops the part and answers without it."""
    if chat.foreign_part is not None:
        path, kind = chat.foreign_part
        raise InvalidRequest(f"{path}.type {kind!r} is not one the gateway routes ({', '.join(_PARTS)}); name a "
                             "provider to send it", param=f"{path}.type")

