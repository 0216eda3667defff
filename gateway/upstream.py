"""``cscr upstream``: a local OpenAI-compatible server that replays RouterBench answers (or, with
``--replay mmlu_pro``, MMLU-Pro's), for demos, tests and benchmarks, with fault injection (error
statuses, timeouts, cut streams, latency).

Faults are chosen per request, most specific first: the ``x-upstream-fault`` header, a
``#fault=SPEC`` suffix on the model name, a per-model rule (``--fault MODEL=SPEC``, ``POST
/_faults``), the ``*`` rule (``--fault '*=SPEC'``, ``--fail-rate``). See ``docs/UPSTREAM.md``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import math
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import tiktoken
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.errors import InvalidRequest
from gateway.replay import (
    BUNDLED_REPLAY,
    REPLAY_MODELS,
    REPLAY_PRICES,
    ReplaySource,
    ReplayTable,
    Reply,
    compose_reply,
    load_cl100k,
    model_candidates,
)
from gateway.wire import parse_body

__all__ = ["REPLAY_PRICES", "Fault", "UpstreamConfig", "create_app", "main", "parse_fault", "start_upstream"]

logger = logging.getLogger(__name__)

FAULT_HEADER = "x-upstream-fault"
FAULT_SUFFIX = "#fault="
ANY_MODEL = "*"
FINGERPRINT = "fp_replay_upstream"
_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", "model_not_found"),
    408: ("timeout_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


class FaultSpecError(ValueError):
    """A fault spec that does not parse; the message names the offending item."""


@dataclass(frozen=True)
class Fault:
    """What to do wrong with one request. ``rate`` is the chance it applies at all; ``times`` (rules
    only) how many more requests it applies to before the rule removes itself."""

    status: int | None = None
    timeout_s: float | None = None
    cut_after: int | None = None  # stream events (or half the body, non-stream) sent before the drop
    latency_ms: float | None = None
    chunk_delay_ms: float | None = None
    retry_after_s: float | None = None
    context_window: int | None = None  # prompt + max_tokens above this: OpenAI's context_length_exceeded 400
    rate: float = 1.0
    times: int | None = None


def parse_fault(spec: str) -> Fault | None:
    """Parse ``item[,item...]``; items: ``status:CODE`` (or a bare code), ``timeout[:SECONDS]``,
    ``cut[:EVENTS]``, ``latency:MS``, ``chunk_delay:MS``, ``retry_after:S``, ``rate:P``,
    ``times:N``, ``context:TOKENS``. ``:`` and ``=`` both separate key and value. ``""``, ``none``,
    ``ok`` mean no fault."""
    text = spec.strip()
    if text.lower() in ("", "none", "ok"):
        return None
    fields: dict[str, Any] = {}
    for item in (i.strip() for i in text.split(",")):
        key, sep, value = item.replace("=", ":").partition(":")
        key, value = key.strip().lower().replace("-", "_"), value.strip()
        try:
            if key.isdigit() and not sep:
                fields["status"] = _status(key)
            elif key == "status":
                fields["status"] = _status(value)
            elif key == "timeout":
                fields["timeout_s"] = float(value) if value else 600.0
            elif key == "cut":
                fields["cut_after"] = int(value) if value else 3
            elif key in ("latency", "chunk_delay"):
                fields[f"{key}_ms"] = float(value)
            elif key == "retry_after":
                fields["retry_after_s"] = float(value)
            elif key == "rate":
                fields["rate"] = float(value)
                if not 0.0 <= fields["rate"] <= 1.0:
                    raise ValueError("rate must be in [0, 1]")
            elif key == "times":
                fields["times"] = int(value)
            elif key == "context":
                fields["context_window"] = int(value)
            else:
                raise ValueError("unknown fault kind")
        except ValueError as exc:
            raise FaultSpecError(f"bad fault spec item {item!r} in {spec!r}: {exc}") from exc
    return Fault(**fields)


def _status(value: str) -> int:
    code = int(value)
    if not 400 <= code <= 599:
        raise ValueError("status must be 400..599")
    return code


def split_model(model: str) -> tuple[str, str | None]:
    """``gpt-4-1106-preview#fault=status:503`` -> (``gpt-4-1106-preview``, ``status:503``)."""
    base, sep, rest = model.partition("#")
    if not sep:
        return model, None
    if not ("#" + rest).startswith(FAULT_SUFFIX):
        raise FaultSpecError(f"model suffix must be '{FAULT_SUFFIX}SPEC', got {model!r}")
    return base, rest[len(FAULT_SUFFIX) - 1 :]


@dataclass(frozen=True)
class UpstreamConfig:
    """Server options; ``faults`` are (model or ``*``, spec) rules applied in order."""

    host: str = "127.0.0.1"
    port: int = 8100
    replay: str = "routerbench"  # or "mmlu_pro", or "none": synthetic answers only
    data_dir: Path | None = None  # None: $CSCR_DATA_DIR if set, else the bundled replay set (MMLU-Pro: shared/data)
    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    faults: tuple[tuple[str, str], ...] = ()
    words_per_chunk: int = 3
    seed: int = 0


def routerbench_parquet(data_dir: Path | None) -> Path:
    """What the upstream replays: the full RouterBench subset of a data folder chosen by the user
    (``data_dir``, else ``$CSCR_DATA_DIR``), else the replay set bundled in the package (the same
    answers and costs, so a fresh clone needs no data). A chosen folder without the file is an error."""
    from router_core.paths import explicit_data_dir

    root = data_dir or explicit_data_dir()
    if root is None:
        return BUNDLED_REPLAY
    path = root / "routerbench_subset" / "routerbench_subset.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"RouterBench subset not found: {path}")
    return path


REPLAYS = ("routerbench", "mmlu_pro", "none")


def load_replay(replay: str, data_dir: Path | None) -> ReplaySource | None:
    """The answers of ``replay`` (None for ``none``). RouterBench: ``routerbench_parquet``;
    MMLU-Pro: ``<data>/mmlu_pro`` of ``data_dir``, else the project's data folder (it is not bundled).
    FileNotFoundError when the chosen data is missing."""
    if replay == "routerbench":
        return ReplayTable.load(routerbench_parquet(data_dir))
    if replay == "mmlu_pro":
        from gateway.replay_mmlu import MmluProTable

        return MmluProTable.load(data_dir)
    if replay == "none":
        return None
    raise ValueError(f"unknown replay {replay!r}; expected one of {REPLAYS}")


@dataclass
class UpstreamState:
    """Everything the handlers share; built in the lifespan."""

    config: UpstreamConfig
    table: ReplaySource | None
    encoding: tiktoken.Encoding
    rules: dict[str, Fault] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    last_body: dict[str, Any] = field(default_factory=dict)
    last_headers: dict[str, dict[str, str]] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    def set_rule(self, model: str, spec: str | None) -> None:
        fault = parse_fault(spec or "")
        if fault is None:
            self.rules.pop(model, None)
        else:
            self.rules[model] = fault

    def choose_fault(self, request: Request, base: str, suffix: str | None) -> Fault | None:
        header = request.headers.get(FAULT_HEADER)
        if header is not None:
            return self._roll(parse_fault(header))
        if suffix is not None:
            return self._roll(parse_fault(suffix))
        key = next((m for m in model_candidates(base) if m in self.rules), ANY_MODEL)
        fault = self._roll(self.rules.get(key))
        if fault is not None and fault.times is not None:
            if fault.times <= 1:
                self.rules.pop(key, None)
            else:
                self.rules[key] = replace(fault, times=fault.times - 1)
        return fault

    def _roll(self, fault: Fault | None) -> Fault | None:
        if fault is None or (fault.rate < 1.0 and self.rng.random() >= fault.rate):
            return None
        return fault


# --- wire shapes ---------------------------------------------------------------------------


def completion_json(reply: Reply, model: str, n: int, cid: str, created: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
    if reply.tool_call is not None:
        message["tool_calls"] = [reply.tool_call]
    choices = [
        {"index": i, "message": message, "logprobs": None, "finish_reason": reply.finish_reason} for i in range(n)
    ]
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_json(reply, n),
        "system_fingerprint": FINGERPRINT,
    }


def usage_json(reply: Reply, n: int) -> dict[str, int]:
    completion = reply.completion_tokens * n
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": reply.prompt_tokens + completion,
    }


def stream_events(
    reply: Reply, model: str, n: int, cid: str, created: int, include_usage: bool, words_per_chunk: int
) -> list[bytes]:
    """The SSE ``data:`` events of a streamed reply, ``[DONE]`` last."""
    base = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
    }
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            **base,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        }

    chunks: list[dict[str, Any]] = []
    for i in range(n):
        chunks += [chunk(i, delta) for delta in reply_deltas(reply, words_per_chunk)]
        chunks.append(chunk(i, {}, reply.finish_reason))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": usage_json(reply, n)})
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


def reply_deltas(reply: Reply, words_per_chunk: int) -> list[dict[str, Any]]:
    """The ``delta`` objects of one streamed choice, before its finish chunk."""
    if reply.tool_call is None:
        pieces = split_words(reply.content or "", words_per_chunk)
        return [{"role": "assistant", "content": ""}] + [{"content": piece} for piece in pieces]
    call = reply.tool_call
    opening = {"index": 0, "id": call["id"], "type": "function", "function": {**call["function"], "arguments": ""}}
    return [
        {"role": "assistant", "content": None, "tool_calls": [opening]},
        {"tool_calls": [{"index": 0, "function": {"arguments": call["function"]["arguments"]}}]},
    ]


def split_words(text: str, per_chunk: int) -> list[str]:
    """Pieces of ``per_chunk`` words each (whitespace kept) that concatenate back to ``text``."""
    words = [w for w in re.split(r"(?<=\S)(?=\s)", text) if w]
    return ["".join(words[i : i + per_chunk]) for i in range(0, len(words), per_chunk)]


class RawStream(Response):
    """Sends pre-rendered body parts; with ``cut_after`` it stops after that many and returns
    without finishing the response, so uvicorn drops the connection (no terminating chunk)."""

    def __init__(
        self,
        parts: list[bytes],
        headers: Mapping[str, str],
        media_type: str,
        chunk_delay_s: float = 0.0,
        cut_after: int | None = None,
        status_code: int = 200,
    ) -> None:
        super().__init__(None, status_code=status_code, headers=headers, media_type=media_type)
        self.parts, self.chunk_delay_s, self.cut_after = parts, chunk_delay_s, cut_after
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        for i, part in enumerate(self.parts):
            if self.cut_after is not None and i >= self.cut_after:
                logger.info("cut fault: dropping the connection after %d parts", i)
                return
            if i and self.chunk_delay_s:
                await anyio.sleep(self.chunk_delay_s)
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# --- HTTP ------------------------------------------------------------------------------------


def error_response(
    status: int, message: str, param: str | None = None, headers: Mapping[str, str] | None = None,
    error_code: str | None = None,
) -> JSONResponse:
    """OpenAI's error JSON."""
    kind, code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    code = error_code or code
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def validate(body: Any) -> tuple[str, str | None] | None:
    """(message, param) describing what is wrong with a chat request body, or None."""
    if not isinstance(body, dict):
        return "request body must be a JSON object", None
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "'model' is required and must be a non-empty string", "model"
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return "'messages' is required and must be a non-empty list", "messages"
    n = body.get("n", 1)
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128):
        return "'n' must be an integer in 1..128", "n"
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            return f"'{key}' must be a positive integer", key
    # as OpenAI does: "stream": "yes" is not true (a client that sends it would see a stream here only)
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        return "'stream' must be a boolean", "stream"
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return "'stream_options' must be an object", "stream_options"
    if options and options.get("include_usage") is not None and not isinstance(options["include_usage"], bool):
        return "'stream_options.include_usage' must be a boolean", "stream_options.include_usage"
    return None


async def wait_or_disconnect(request: Request, seconds: float) -> None:
    """Sleep ``seconds``, returning early when the client goes away (so a timed-out client does not
    leave a request open for the whole fault duration)."""
    with anyio.move_on_after(seconds):
        while (await request.receive())["type"] != "http.disconnect":
            await anyio.sleep(0.05)


MAX_BODY_BYTES = 64 * 2**20


async def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, read as the gateway reads bodies (``wire.parse_body``): not JSON,
    nested too deep, or holding a lone UTF-16 surrogate (text that cannot be hashed, tokenised or
    answered) is an ``InvalidRequest`` naming why."""
    return parse_body(await request.body(), MAX_BODY_BYTES)


async def chat_completions(request: Request) -> Response:
    state: UpstreamState = request.app.state.upstream
    try:
        body = await _json_body(request)
    except InvalidRequest as exc:
        return error_response(exc.status, exc.message, exc.param)
    problem = validate(body)
    if problem is not None:
        return error_response(400, problem[0], problem[1])
    try:
        model, suffix = split_model(body["model"])
        state.requests[model] += 1
        state.last_body[model] = body
        state.last_headers[model] = dict(request.headers)
        fault = state.choose_fault(request, model, suffix)
    except FaultSpecError as exc:
        return error_response(400, str(exc), "model")

    fault = fault or Fault()
    latency = fault.latency_ms if fault.latency_ms is not None else state.config.latency_ms
    if latency > 0:
        await anyio.sleep(latency / 1000)
    if fault.timeout_s is not None:
        await wait_or_disconnect(request, fault.timeout_s)
    if fault.status is not None:
        retry = {"retry-after": f"{fault.retry_after_s:g}"} if fault.retry_after_s is not None else {}
        return error_response(fault.status, f"injected fault: status {fault.status} for model {model!r}", headers=retry)
    if fault.context_window is not None:
        text = json.dumps(body["messages"])  # a close-enough count: the test sizes its prompts well apart
        need = len(state.encoding.encode(text, disallowed_special=())) + int(body.get("max_tokens") or 0)
        if need > fault.context_window:
            return error_response(400, f"This model's maximum context length is {fault.context_window} tokens. "
                                  f"However, you requested {need} tokens. Please reduce the length of the messages.",
                                  "messages", error_code="context_length_exceeded")

    reply = compose_reply(state.table, state.encoding, body, body["model"])
    n = int(body.get("n") or 1)
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = stream_events(reply, body["model"], n, cid, created, include_usage, state.config.words_per_chunk)
        delay = fault.chunk_delay_ms if fault.chunk_delay_ms is not None else state.config.chunk_delay_ms
        headers = {**reply.headers, "cache-control": "no-cache"}
        return RawStream(events, headers, "text/event-stream", delay / 1000, fault.cut_after)
    payload = json.dumps(completion_json(reply, body["model"], n, cid, created)).encode()
    if fault.cut_after is not None:
        return RawStream(
            [payload[: len(payload) // 2], payload[len(payload) // 2 :]], reply.headers, "application/json", cut_after=1
        )
    return Response(payload, headers=reply.headers, media_type="application/json")


async def embeddings(request: Request) -> Response:
    """Synthetic embeddings for tests: each input's vector is a deterministic hash of (model,
    input), unit length, ``dimensions`` long (default 8). Not a model: similar texts are not close.
    ``encoding_format: base64`` (the openai client's default) answers little-endian float32."""
    state: UpstreamState = request.app.state.upstream
    try:
        body = await _json_body(request)
    except InvalidRequest as exc:
        return error_response(exc.status, exc.message, exc.param)
    try:
        model, suffix = split_model(str(body["model"]))
        inputs = body["input"] if isinstance(body["input"], list) and body["input"] and not isinstance(
            body["input"][0], int) else [body["input"]]
        dims = int(body.get("dimensions") or 8)
        fault = state.choose_fault(request, model, suffix)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        return error_response(400, f"bad embeddings request: {exc}")
    state.requests[model] += 1
    state.last_body[model] = body
    if fault is not None and fault.status is not None:
        return error_response(fault.status, f"injected fault: status {fault.status} for model {model!r}")
    data, tokens = [], 0
    for i, item in enumerate(inputs):
        text = item if isinstance(item, str) else " ".join(map(str, item))
        tokens += len(state.encoding.encode(text, disallowed_special=())) if isinstance(item, str) else len(item)
        seed = hashlib.sha256(f"{model}\0{text}".encode()).digest()
        raw = [int.from_bytes(hashlib.sha256(seed + bytes([d % 256, d // 256])).digest()[:4], "little") / 2**32 - 0.5
               for d in range(dims)]
        norm = math.sqrt(sum(v * v for v in raw)) or 1.0
        vector = [v / norm for v in raw]
        encoded: Any = (base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
                        if body.get("encoding_format") == "base64" else vector)
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    return JSONResponse({"object": "list", "data": data, "model": body["model"],
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def list_models(request: Request) -> JSONResponse:
    state: UpstreamState = request.app.state.upstream
    served = state.table.models() if state.table is not None else list(REPLAY_MODELS)
    names = served + [m for m in state.rules if m != ANY_MODEL and m not in served]
    return JSONResponse(
        {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": 0, "owned_by": "replay-upstream"} for m in names],
        }
    )


async def health(request: Request) -> JSONResponse:
    state: UpstreamState = request.app.state.upstream
    return JSONResponse(
        {"status": "ok", "replay": state.config.replay, "prompts": len(state.table) if state.table is not None else 0}
    )


async def stats(request: Request) -> JSONResponse:
    state: UpstreamState = request.app.state.upstream
    if request.method == "DELETE":
        state.requests.clear()
        state.last_body.clear()
        state.last_headers.clear()
    return JSONResponse(
        {
            "total": sum(state.requests.values()),
            "requests": dict(state.requests),
            "last_request": state.last_body,
            "last_headers": state.last_headers,
        }
    )


async def faults(request: Request) -> JSONResponse:
    state: UpstreamState = request.app.state.upstream
    if request.method == "POST":
        try:
            body = json.loads(await request.body())
            items = body if isinstance(body, list) else [body]
            for item in items:
                state.set_rule(str(item["model"]), item.get("spec"))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, FaultSpecError) as exc:
            return error_response(400, f'expected {{"model": ..., "spec": ...}}: {exc}')
    elif request.method == "DELETE":
        state.rules.clear()
    return JSONResponse({m: _fault_dict(f) for m, f in state.rules.items()})


def _fault_dict(fault: Fault) -> dict[str, Any]:
    return {k: v for k, v in fault.__dict__.items() if v is not None}


def create_app(config: UpstreamConfig, table: ReplaySource | None = None) -> Starlette:
    """The upstream app. The replay table (unless given) and the tokenizer load in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loaded = table if table is not None else load_replay(config.replay, config.data_dir)
        encoding = loaded.encoding if loaded is not None else load_cl100k()
        state = UpstreamState(config=config, table=loaded, encoding=encoding, rng=random.Random(config.seed))
        for model, spec in config.faults:
            state.set_rule(model, spec)
        app.state.upstream = state
        yield

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/_stats", stats, methods=["GET", "DELETE"]),
        Route("/_faults", faults, methods=["GET", "POST", "DELETE"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


# --- running it ------------------------------------------------------------------------------


def fault_rules(
    faults: Mapping[str, str] | Iterable[tuple[str, str]] | Iterable[str],
    fail_rate: float = 0.0,
    fail_status: int = 503,
) -> tuple[tuple[str, str], ...]:
    """Normalise rules given as a mapping, (model, spec) pairs or ``MODEL=SPEC`` strings; validate
    each spec; add the ``*`` rule for ``fail_rate``."""
    items = faults.items() if isinstance(faults, Mapping) else faults
    rules: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, str):
            model, sep, spec = item.partition("=")
            if not sep or not model:
                raise FaultSpecError(f"--fault expects MODEL=SPEC, got {item!r}")
        else:
            model, spec = item
        parse_fault(spec)
        rules.append((model.strip(), spec))
    if fail_rate > 0 and not any(m == ANY_MODEL for m, _ in rules):
        rules.append((ANY_MODEL, f"status:{fail_status},rate:{fail_rate}"))
    return tuple(rules)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket with TCP_NODELAY. uvicorn given a pre-bound socket leaves Nagle on, and
    Nagle plus delayed ACKs add ~40 ms to every keep-alive request on loopback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


def start_upstream(
    *,
    table: ReplaySource | None = None,
    faults: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    fail_rate: float = 0.0,
    fail_status: int = 503,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    **options: Any,
) -> tuple[str, Callable[[], None]]:
    """Run an upstream in a background thread on a free port (``port=0``); returns
    (``http://HOST:PORT/v1``, ``stop``). ``options`` are ``UpstreamConfig`` fields
    (``replay``, ``data_dir``, ``latency_ms``, ``chunk_delay_ms``, ``seed``, ...); pass a loaded
    ``table`` to skip reading the parquet again."""
    import uvicorn

    config = UpstreamConfig(host=host, port=port, faults=fault_rules(faults, fail_rate, fail_status), **options)
    sock = bind(host, port)
    server = uvicorn.Server(
        uvicorn.Config(create_app(config, table), log_level=log_level, lifespan="on", timeout_graceful_shutdown=1)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="replay-upstream", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("replay upstream failed to start (see log)")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return f"http://{host}:{sock.getsockname()[1]}/v1", stop


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cscr upstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument(
        "--replay",
        choices=list(REPLAYS),
        default="routerbench",
        help="answer RouterBench prompts with recorded answers (default), MMLU-Pro prompts with recorded "
        "answers or labelled stand-ins of the recorded length, or synthetic answers only",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="replay the full routerbench_subset/ (or mmlu_pro/) of this data folder (default: $CSCR_DATA_DIR "
        "if set, else the replay set bundled in the package; MMLU-Pro: else shared/data above the repository)",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before a response or first chunk")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between stream chunks")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="MODEL=SPEC",
        help="per-model fault rule (repeatable; MODEL '*' = every model), "
        "e.g. 'broken=status:503', 'slow=timeout', 'cutter=cut'",
    )
    parser.add_argument("--fail-rate", type=float, default=0.0, help="fraction of all requests that fail")
    parser.add_argument("--fail-status", type=int, default=503, help="status of --fail-rate failures")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --fail-rate / rate: coin")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """``cscr upstream [options]``."""
    import uvicorn

    args = parse_args(argv)
    try:
        rules = fault_rules(args.fault, args.fail_rate, args.fail_status)
    except FaultSpecError as exc:
        print(f"cscr upstream: {exc}", file=sys.stderr)
        return 2
    config = UpstreamConfig(
        host=args.host,
        port=args.port,
        replay=args.replay,
        data_dir=args.data,
        latency_ms=args.latency_ms,
        chunk_delay_ms=args.chunk_delay_ms,
        faults=rules,
        seed=args.seed,
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        table = load_replay(config.replay, config.data_dir)
    except FileNotFoundError as exc:
        hint = ("fix --data / CSCR_DATA_DIR, or unset them to replay the bundled set" if config.replay == "routerbench"
                else "it is not bundled: point --data or CSCR_DATA_DIR at the project's data folder")
        print(f"cscr upstream: {exc} ({hint})", file=sys.stderr)
        return 2
    logger.info(
        "replay upstream on http://%s:%d/v1 (%s)",
        config.host,
        config.port,
        f"{len(table)} {table.label} prompts" if table is not None else "synthetic answers only",
    )
    try:
        sock = bind(config.host, config.port)
    except OSError as exc:
        print(f"cscr upstream: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    server_config = uvicorn.Config(
        create_app(config, table), log_level=args.log_level, lifespan="on", timeout_graceful_shutdown=3
    )
    with sock:
        uvicorn.Server(server_config).run(sockets=[sock])
    return 0
