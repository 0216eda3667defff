"""Experiment, not product code: swap the gateway's httpx ``DirectTransport`` for an aiohttp one with
the same contract, to measure what the change would save (docs/BENCHMARKS.md).

Python imports ``sitecustomize`` at start-up from any folder on ``sys.path``; the benchmark puts
this folder there for the gateway process only:

    .venv/bin/python bench/gateway_bench.py --quick --targets direct,gateway-named,gateway-auto \\
        --gateway-env PYTHONPATH=bench/experiments/aiohttp_direct --gateway-env CSCR_EXPERIMENT_AIOHTTP=1

Without ``CSCR_EXPERIMENT_AIOHTTP=1`` it does nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator
from typing import Any


def _install() -> None:
    import aiohttp

    from gateway import forward
    from gateway.config import ProviderConfig
    from gateway.errors import UpstreamError

    class AioDirectTransport:
        def __init__(self, max_connections: int = 512) -> None:
            self._session: aiohttp.ClientSession | None = None
            self._limit = max_connections

        def _s(self) -> aiohttp.ClientSession:
            if self._session is None:  # created on first use, inside the running loop
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=self._limit),
                    timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False,
                    skip_auto_headers=("User-Agent",))
            return self._session

        async def aclose(self) -> None:
            if self._session is not None:
                await self._session.close()

        _request: Any = forward.DirectTransport._request  # same URL, headers and body as the httpx path

        @staticmethod
        def _err(provider: ProviderConfig, exc: Exception) -> UpstreamError:
            if isinstance(exc, TimeoutError):
                return UpstreamError(f"provider {provider.name!r} timed out after {provider.timeout_s}s", status=504,
                                     retryable=True, provider=provider.name, kind="timeout")
            return UpstreamError(f"provider {provider.name!r} unreachable: {type(exc).__name__}", status=502,
                                 retryable=True, provider=provider.name, kind="connection")

        async def complete(self, provider: ProviderConfig, body: dict[str, Any]) -> dict[str, Any]:
            url, headers, data = self._request(provider, body)
            try:
                async with self._s().post(url, data=data, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=provider.timeout_s)) as resp:
                    raw, status = await resp.read(), resp.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise self._err(provider, exc) from exc
            if status >= 400:
                raise forward._status_error(provider.name, status, raw)
            payload = json.loads(raw)
            if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
                raise UpstreamError(f"provider {provider.name!r} sent no choices", status=502, retryable=True,
                                    provider=provider.name, kind="protocol")
            return payload

        async def stream(self, provider: ProviderConfig, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
            url, headers, data = self._request(provider, body)
            try:
                async with self._s().post(url, data=data, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=provider.timeout_s)) as resp:
                    if resp.status >= 400:
                        raise forward._status_error(provider.name, resp.status, await resp.read())
                    done = False
                    async for raw_line in resp.content:  # read to the end: the connection goes back to the pool
                        if done or not raw_line.startswith(b"data:"):
                            continue
                        payload = raw_line[5:].strip()
                        if payload == b"[DONE]":
                            done = True
                            continue
                        yield json.loads(payload)
                    if done:
                        return
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                raise self._err(provider, exc) from exc
            raise UpstreamError(f"provider {provider.name!r} closed the stream before [DONE]", status=502,
                                retryable=True, provider=provider.name, kind="protocol")

    forward.DirectTransport = AioDirectTransport  # type: ignore[misc,assignment]


if os.environ.get("CSCR_EXPERIMENT_AIOHTTP") == "1":
    _install()
