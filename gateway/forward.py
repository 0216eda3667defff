"""Forwarding a chat request to one provider, behind one small interface.

Two transports:
- ``DirectTransport``: providers that already speak OpenAI's protocol get the body as sent, over
  one pooled ``aiohttp`` session. ``litellm.acompletion`` alone costs ~4.6 ms of CPU per call on
  these machines (ANCHORS.md); this path costs a fraction of it.
- ``LiteLLMTransport``: everything else (Anthropic, Bedrock, Vertex, ...), translated by litellm.

Both raise ``UpstreamError`` with ``retryable`` set, and stream chunks as plain dicts.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncGenerator
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


def _error_message(provider: str, status: int, payload: Any) -> str:
    detail = ""
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        detail = str(payload["error"].get("message", ""))
    return f"provider {provider!r} answered {status}" + (f": {detail}" if detail else "")


def _status_error(provider: str, status: int, raw: bytes) -> UpstreamError:
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = None
    body = payload if isinstance(payload, dict) else None
    return UpstreamError(
        _error_message(provider, status, payload),
        status=status,
        retryable=is_retryable_status(status),
        provider=provider,
        body=body,
    )


class DirectTransport:
    """OpenAI wire protocol over one pooled aiohttp session; the body goes out as the caller sent
    it, model renamed. aiohttp rather than httpx: on these machines httpx's pool costs 2-4 ms of CPU
    per call and more under concurrency, aiohttp ~0.7 ms (docs/BENCHMARKS.md)."""

    def __init__(self, max_connections: int = 1024) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop the app serves on.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                                  skip_auto_headers=("User-Agent",))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _request(self, provider: ProviderConfig, body: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
        assert provider.api_base is not None
        url = provider.api_base.rstrip("/") + "/chat/completions"
        headers = {"content-type": "application/json"}
        if provider.api_key:
            headers["authorization"] = f"Bearer {provider.api_key}"
        return url, headers, json.dumps({**body, "model": provider.upstream_model}).encode()

    @staticmethod
    def _timeout_error(provider: ProviderConfig) -> UpstreamError:
        return UpstreamError(f"provider {provider.name!r} timed out after {provider.timeout_s}s",
                             status=504, retryable=True, provider=provider.name, kind="timeout")

    @staticmethod
    def _connection_error(provider: ProviderConfig, exc: BaseException, what: str) -> UpstreamError:
        return UpstreamError(f"provider {provider.name!r} {what}: {type(exc).__name__}",
                             status=502, retryable=True, provider=provider.name, kind="connection")

    async def complete(self, provider: ProviderConfig, body: dict[str, Any]) -> dict[str, Any]:
        url, headers, data = self._request(provider, body)
        timeout = aiohttp.ClientTimeout(total=provider.timeout_s)
        try:
            async with self._client().post(url, data=data, headers=headers, timeout=timeout) as resp:
                status, raw = resp.status, await resp.read()
        except TimeoutError as exc:
            raise self._timeout_error(provider) from exc
        except aiohttp.ClientError as exc:
            raise self._connection_error(provider, exc, "unreachable") from exc
        if status >= 400:
            raise _status_error(provider.name, status, raw)
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise UpstreamError(
                f"provider {provider.name!r} sent a body that is not JSON",
                status=502, retryable=True, provider=provider.name, kind="protocol",
            ) from exc
        if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
            raise UpstreamError(
                f"provider {provider.name!r} sent no choices", status=502, retryable=True,
                provider=provider.name, kind="protocol",
            )
        return payload

    async def stream(self, provider: ProviderConfig, body: dict[str, Any]) -> AsyncGenerator[Chunk, None]:
        url, headers, data = self._request(provider, body)
        # No total limit on a stream; the timeout applies to connecting and to each read.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=provider.timeout_s, sock_read=provider.timeout_s)
        try:
            async with self._client().post(url, data=data, headers=headers, timeout=timeout) as resp:
                if resp.status >= 400:
                    raise _status_error(provider.name, resp.status, await resp.read())
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
                        chunk = json.loads(payload)
                        if isinstance(chunk, dict) and chunk.get("error"):
                            raise UpstreamError(
                                _error_message(provider.name, 502, chunk), status=502, retryable=True,
                                provider=provider.name, kind="protocol",
                            )
                        yield chunk, payload
                if done:
                    return
        except TimeoutError as exc:
            raise self._timeout_error(provider) from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise self._connection_error(provider, exc, "stream broke") from exc
        raise UpstreamError(
            f"provider {provider.name!r} closed the stream before [DONE]",
            status=502, retryable=True, provider=provider.name, kind="protocol",
        )


def _litellm_error(provider: str, exc: Exception) -> UpstreamError:
    status = getattr(exc, "status_code", None)
    kind = "status"
    name = type(exc).__name__
    if name == "Timeout" or "timeout" in name.lower():
        status, kind = 504, "timeout"
    elif name == "APIConnectionError" or not isinstance(status, int):
        status, kind = 502, "connection"
    message = f"provider {provider!r} failed ({name}, {status}): {str(exc)[:300]}"
    retryable = kind != "status" or is_retryable_status(status)
    body = None if retryable else {"error": {"message": message, "type": "invalid_request_error",
                                             "param": None, "code": None}}
    return UpstreamError(message, status=status, retryable=retryable, provider=provider, body=body, kind=kind)


class LiteLLMTransport:
    """Any provider litellm knows, via ``litellm.acompletion`` (imported on first use)."""

    def __init__(self) -> None:
        self._litellm: Any = None

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
            raise _litellm_error(provider.name, exc) from exc
        payload: dict[str, Any] = resp.model_dump(exclude_none=False)
        payload.pop("_hidden_params", None)
        return payload

    async def stream(self, provider: ProviderConfig, body: dict[str, Any]) -> AsyncGenerator[Chunk, None]:
        lib = self._lib()
        try:
            it = await lib.acompletion(**self._kwargs(provider, body))
            async for chunk in it:
                data: dict[str, Any] = chunk.model_dump(exclude_none=True)
                data.pop("_hidden_params", None)
                if not data.get("choices") and not data.get("usage"):
                    continue
                yield data, None
        except UpstreamError:
            raise
        except Exception as exc:
            raise _litellm_error(provider.name, exc) from exc


class Forwarder:
    """Picks the transport for a provider: direct for OpenAI-compatible ones, litellm otherwise."""

    def __init__(self) -> None:
        self.direct = DirectTransport()
        self.litellm = LiteLLMTransport()

    def for_provider(self, provider: ProviderConfig) -> Transport:
        return self.direct if provider.direct else self.litellm

    async def aclose(self) -> None:
        await self.direct.aclose()
        await self.litellm.aclose()
