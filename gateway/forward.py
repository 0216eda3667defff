"""Forwarding a chat request to one provider, behind one small interface.

Two transports:
- ``DirectTransport``: providers that already speak OpenAI's protocol get the body as sent, over
  one pooled ``aiohttp`` session. ``litellm.acompletion`` alone costs ~4.6 ms of CPU per call on
  these machines (ANCHORS.md); this path costs a fraction of it.
- ``LiteLLMTransport``: everything else (Anthropic, Bedrock, Vertex, ...), translated by litellm.

Both raise ``UpstreamError`` with ``retryable`` set, and stream chunks as plain dicts. Neither
trusts the provider: error text is scrubbed of provider keys (``Secrets``), a chunk not shaped as
OpenAI's is a protocol error (``check_chunk``), and a stream that ends without the provider saying
it finished (``[DONE]``, or litellm's record of a real finish_reason) is interrupted, not done.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import AsyncGenerator, Iterable
from types import SimpleNamespace
from typing import Any, Protocol

import aiohttp

from gateway.config import ProviderConfig
from gateway.errors import UpstreamError, is_retryable_status

log = logging.getLogger(__name__)


# A stream chunk: the parsed JSON, and its original bytes when the transport has them (relayed
# as they came, so the gateway does not re-encode chunks it does not change).
Chunk = tuple[dict[str, Any], bytes | None]


class Transport(Protocol):
    async def complete(self, provider: ProviderConfig, body: dict[str, Any]) -> dict[str, Any]: ...

    def stream(self, provider: ProviderConfig, body: dict[str, Any]) -> AsyncGenerator[Chunk, None]: ...

    async def aclose(self) -> None: ...


# What an upstream error may quote back that must not reach the caller or the log: the configured
# provider keys (exact values, below) and anything shaped like a bearer credential.
_KEYLIKE = re.compile(
    r"(?i)(?<![\w-])(?:bearer\s+[^\s\"',;]+"
    r"|(?:sk|pk|rk|key|api[-_]?key)[-_](?=[\w-]*\d)[\w-]{12,}"  # sk-..., key-... (with a digit: not a word)
    r"|AKIA[0-9A-Z]{16}|AIza[\w-]{30,})"
)
MIN_SECRET_CHARS = 8  # shorter "secrets" (``unused``, ``x``) would redact ordinary words


class Secrets:
    """The provider keys this gateway holds, to scrub from upstream text. Grows as providers are
    seen (a reload may add one); never shrinks while the process runs."""

    def __init__(self, values: Iterable[str | None] = ()) -> None:
        self._values: set[str] = set()
        self.add(*values)

    def add(self, *values: str | None) -> None:
        self._values.update(v for v in values if v and len(v) >= MIN_SECRET_CHARS)

    def redact(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):  # longest first: one may contain another
            if value in text:
                text = text.replace(value, "[redacted]")
        return _KEYLIKE.sub("[redacted]", text)

    def redact_json(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self.redact_json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact_json(v) for v in value]
        return value


def _error_message(provider: str, status: int, payload: Any, secrets: Secrets) -> str:
    detail = ""
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        detail = secrets.redact(str(payload["error"].get("message", "")))
    return f"provider {provider!r} answered {status}" + (f": {detail[:500]}" if detail else "")


_CONTEXT_WORDS = ("context length", "context_length", "maximum context", "context window")


def is_context_length(status: int, code: Any, message: str) -> bool:
    """A 400 saying the prompt is too long for this model (OpenAI: ``context_length_exceeded``):
    another provider with a larger window may take it, so it is no caller's error to return."""
    text = message.lower()
    return status == 400 and (code == "context_length_exceeded" or any(w in text for w in _CONTEXT_WORDS))


def _status_error(provider: str, status: int, raw: bytes, secrets: Secrets) -> UpstreamError:
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = None
    body = secrets.redact_json(payload) if isinstance(payload, dict) else None
    error = payload.get("error") if isinstance(payload, dict) else None
    error = error if isinstance(error, dict) else {}
    too_long = is_context_length(status, error.get("code"), str(error.get("message", "")))
    return UpstreamError(
        _error_message(provider, status, payload, secrets),
        status=status,
        retryable=too_long or is_retryable_status(status),
        provider=provider,
        body=body,
        kind="context_length" if too_long else "status",
    )


def _protocol_error(provider: str, what: str) -> UpstreamError:
    return UpstreamError(f"provider {provider!r} {what}", status=502, retryable=True, provider=provider,
                         kind="protocol")


def check_chunk(provider: str, chunk: Any) -> dict[str, Any]:
    """A stream chunk must be shaped as OpenAI's: an object whose ``choices`` is a list of objects,
    each ``delta`` an object. Anything else is the provider's protocol error (the next provider is
    tried if nothing reached the caller yet; else the stream ends with an SSE error event)."""
    if not isinstance(chunk, dict):
        raise _protocol_error(provider, f"sent a stream chunk that is a JSON {type(chunk).__name__}, not an object")
    choices = chunk.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise _protocol_error(provider, "sent a stream chunk whose 'choices' is not an array")
    for choice in choices or ():
        if not isinstance(choice, dict):
            raise _protocol_error(provider, "sent a stream chunk with a choice that is not an object")
        delta = choice.get("delta")
        if delta is not None and not isinstance(delta, dict):
            raise _protocol_error(provider, "sent a stream chunk whose 'delta' is not an object")
    return chunk


async def _mark_reused(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any) -> None:
    ctx.trace_request_ctx["reused"] = True


class DirectTransport:
    """OpenAI wire protocol over one pooled aiohttp session; the body goes out as the caller sent
    it, model renamed. aiohttp rather than httpx: on these machines httpx's pool costs 2-4 ms of CPU
    per call and more under concurrency, aiohttp ~0.7 ms (docs/BENCHMARKS.md)."""

    def __init__(self, max_connections: int = 1024, secrets: Secrets | None = None) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None
        self.secrets = secrets if secrets is not None else Secrets()

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop the app serves on.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0, ttl_dns_cache=300)
            trace = aiohttp.TraceConfig()
            trace.on_connection_reuseconn.append(_mark_reused)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                                  skip_auto_headers=("User-Agent",), trace_configs=[trace])
        return self._session

    def _fresh_client(self) -> aiohttp.ClientSession:
        """No pool: every request on a new connection (the one retry after a stale pooled one)."""
        if self._fresh is None or self._fresh.closed:
            self._fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                                auto_decompress=True, skip_auto_headers=("User-Agent",))
        return self._fresh

    async def aclose(self) -> None:
        for session in (self._session, self._fresh):
            if session is not None:
                await session.close()

    def _request(self, provider: ProviderConfig, body: dict[str, Any],
                 path: str) -> tuple[str, dict[str, str], bytes]:
        assert provider.api_base is not None
        url = provider.api_base.rstrip("/") + path
        headers = {"content-type": "application/json"}
        if provider.api_key:
            headers["authorization"] = f"Bearer {provider.api_key}"
        return url, headers, json.dumps({**body, "model": provider.upstream_model}).encode()

    async def _post(self, provider: ProviderConfig, body: dict[str, Any],
                    timeout: aiohttp.ClientTimeout, path: str = "/chat/completions") -> aiohttp.ClientResponse:
        """POST and wait for the response head. A keep-alive connection the server closed while it
        sat in the pool fails with a disconnect before any response byte; nothing reached the model,
        so that one failure is retried once on a new connection. A disconnect on a new connection
        is the provider's failure, as is anything after the response started."""
        url, headers, data = self._request(provider, body, path)
        ctx = {"reused": False}
        try:
            return await self._client().post(url, data=data, headers=headers, timeout=timeout, trace_request_ctx=ctx)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            if not ctx["reused"]:
                raise
        log.info("provider %s closed a pooled connection under a request; re-sent on a new one", provider.name)
        return await self._fresh_client().post(url, data=data, headers=headers, timeout=timeout)

    @staticmethod
    def _timeout_error(provider: ProviderConfig) -> UpstreamError:
        return UpstreamError(f"provider {provider.name!r} timed out after {provider.timeout_s}s",
                             status=504, retryable=True, provider=provider.name, kind="timeout")

    @staticmethod
    def _connection_error(provider: ProviderConfig, exc: BaseException, what: str) -> UpstreamError:
        return UpstreamError(f"provider {provider.name!r} {what}: {type(exc).__name__}",
                             status=502, retryable=True, provider=provider.name, kind="connection")

    async def complete(self, provider: ProviderConfig, body: dict[str, Any]) -> dict[str, Any]:
        payload = await self.call(provider, "/chat/completions", body)
        if not isinstance(payload.get("choices"), list):
            raise _protocol_error(provider.name, "sent no choices")
        return payload

    async def call(self, provider: ProviderConfig, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` (model renamed) to ``path`` under the provider's api_base: the JSON object
        it answers. Chat completions, and the endpoints passed through as sent (embeddings, legacy
        completions), share the pool, the stale-connection retry and the error mapping."""
        timeout = aiohttp.ClientTimeout(total=provider.timeout_s)
        try:
            async with await self._post(provider, body, timeout, path) as resp:
                status, raw = resp.status, await resp.read()
        except TimeoutError as exc:
            raise self._timeout_error(provider) from exc
        except aiohttp.ClientError as exc:
            raise self._connection_error(provider, exc, "unreachable") from exc
        if status >= 400:
            raise _status_error(provider.name, status, raw, self.secrets)
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise _protocol_error(provider.name, "sent a body that is not JSON") from exc
        if not isinstance(payload, dict):
            raise _protocol_error(provider.name, "sent a body that is not a JSON object")
        return payload

    def _event(self, provider: ProviderConfig, payload: bytes) -> dict[str, Any]:
        try:
            chunk = json.loads(payload)
        except ValueError as exc:
            raise _protocol_error(provider.name, "sent a stream line that is not JSON") from exc
        if isinstance(chunk, dict) and chunk.get("error"):
            raise UpstreamError(_error_message(provider.name, 502, chunk, self.secrets), status=502,
                                retryable=True, provider=provider.name, kind="protocol")
        return check_chunk(provider.name, chunk)

    async def stream(self, provider: ProviderConfig, body: dict[str, Any]) -> AsyncGenerator[Chunk, None]:
        # No total limit on a stream; the timeout applies to connecting and to each read.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=provider.timeout_s, sock_read=provider.timeout_s)
        try:
            async with await self._post(provider, body, timeout) as resp:
                if resp.status >= 400:
                    raise _status_error(provider.name, resp.status, await resp.read(), self.secrets)
                buffer = b""
                done = False
                async for piece in resp.content.iter_any():
                    if done:
                        continue  # read to the end, so the connection goes back to the pool
                    buffer += piece
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            done = True
                            break
                        yield self._event(provider, payload), payload
                if done:
                    return
        except TimeoutError as exc:
            raise self._timeout_error(provider) from exc
        except aiohttp.ClientError as exc:
            raise self._connection_error(provider, exc, "stream broke") from exc
        # A complete HTTP body without [DONE]: the stream was interrupted, not finished.
        raise _protocol_error(provider.name, "closed the stream before [DONE]")


_NETWORK_MODULES = frozenset({"httpx", "httpcore", "aiohttp", "openai", "anyio", "ssl", "websockets"})


def _reached_network(exc: BaseException) -> bool:
    """Whether a litellm error came from talking to the provider (a socket, an HTTP client), as
    opposed to litellm refusing the request before sending it (a ValueError, a KeyError, ...)."""
    seen: BaseException | None = exc.__cause__ or exc.__context__
    for _ in range(16):
        if seen is None:
            return False
        if isinstance(seen, OSError | TimeoutError) or type(seen).__module__.split(".")[0] in _NETWORK_MODULES:
            return True
        seen = seen.__cause__ or seen.__context__
    return True


def _litellm_error(provider: str, exc: Exception, secrets: Secrets) -> UpstreamError:
    """litellm's exception tree mapped once: timeouts and connection failures go to the next
    provider; a 4xx, or a request litellm itself refused to translate (its client-side validation,
    raised as ``APIConnectionError`` with nothing from the network behind it), is the caller's 400."""
    status = getattr(exc, "status_code", None)
    kind = "status"
    name = type(exc).__name__
    if name == "Timeout" or "timeout" in name.lower():
        status, kind = 504, "timeout"
    elif name == "APIConnectionError" and not _reached_network(exc):
        status = 400  # refused before anything was sent: the request, not the provider
    elif name == "APIConnectionError" or not isinstance(status, int):
        status, kind = 502, "connection"
    text = secrets.redact(str(exc).split("Traceback (most recent call last)")[0].strip())
    message = f"provider {provider!r} failed ({name}, {status}): {text[:300]}"
    if name == "ContextWindowExceededError" or is_context_length(status, None, text):
        status, kind = 400, "context_length"
    retryable = kind != "status" or is_retryable_status(status)
    body = None if retryable else {"error": {"message": message, "type": "invalid_request_error",
                                             "param": None, "code": None}}
    return UpstreamError(message, status=status, retryable=retryable, provider=provider, body=body, kind=kind)


class LiteLLMTransport:
    """Any provider litellm knows, via ``litellm.acompletion`` (imported on first use)."""

    def __init__(self, secrets: Secrets | None = None) -> None:
        self._litellm: Any = None
        self.secrets = secrets if secrets is not None else Secrets()

    def _lib(self) -> Any:
        if self._litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            import litellm

            litellm.suppress_debug_info = True
            litellm.drop_params = True
            self._litellm = litellm
        return self._litellm

    async def aclose(self) -> None:
        return None

    def _kwargs(self, provider: ProviderConfig, body: dict[str, Any]) -> dict[str, Any]:
        kwargs = {k: v for k, v in body.items() if k != "model"}
        kwargs.update(model=provider.model, timeout=provider.timeout_s, num_retries=0)
        if provider.api_base:
            kwargs["api_base"] = provider.api_base
        kwargs["api_key"] = provider.api_key or ("unused" if provider.api_base else None)
        return kwargs

    async def complete(self, provider: ProviderConfig, body: dict[str, Any]) -> dict[str, Any]:
        lib = self._lib()
        try:
            resp = await lib.acompletion(**self._kwargs(provider, body))
        except Exception as exc:  # litellm raises its own tree; map it once, here
            raise _litellm_error(provider.name, exc, self.secrets) from exc
        payload: dict[str, Any] = resp.model_dump(exclude_none=False)
        payload.pop("_hidden_params", None)
        return payload

    async def stream(self, provider: ProviderConfig, body: dict[str, Any]) -> AsyncGenerator[Chunk, None]:
        lib = self._lib()
        finished = False
        try:
            it = await lib.acompletion(**self._kwargs(provider, body))
            async for chunk in it:
                data: dict[str, Any] = chunk.model_dump(exclude_none=True)
                data.pop("_hidden_params", None)
                if not data.get("choices") and not data.get("usage"):
                    continue
                if any(c.get("finish_reason") for c in data.get("choices") or ()):
                    if not _upstream_finished(it):
                        break
                    finished = True
                yield data, None
        except UpstreamError:
            raise
        except Exception as exc:
            raise _litellm_error(provider.name, exc, self.secrets) from exc
        if not finished:
            raise _protocol_error(provider.name, "ended the stream without a finish_reason")


def _upstream_finished(stream: Any) -> bool:
    """Whether a finish_reason litellm hands out came from the provider. When the provider's stream
    ends early (closed without [DONE], or reset where litellm swallows the error) litellm makes up
    a final chunk with finish_reason "stop" and its own usage; its stream wrapper records what the
    provider really sent. Unknown wrapper (another litellm version): trusted."""
    if not hasattr(stream, "received_finish_reason"):
        return True
    return bool(stream.received_finish_reason or getattr(stream, "intermittent_finish_reason", None))


class Forwarder:
    """Picks the transport for a provider: direct for OpenAI-compatible ones, litellm otherwise.
    Every configured provider key (those it starts with, and any a reload adds: ``ConfigReloader``
    adds them) is scrubbed from the upstream error text both transports pass on."""

    def __init__(self, providers: Iterable[ProviderConfig] = ()) -> None:
        self.secrets = Secrets(p.api_key for p in providers)
        self.direct = DirectTransport(secrets=self.secrets)
        self.litellm = LiteLLMTransport(secrets=self.secrets)

    def for_provider(self, provider: ProviderConfig) -> Transport:
        return self.direct if provider.direct else self.litellm

    async def aclose(self) -> None:
        await self.direct.aclose()
        await self.litellm.aclose()
