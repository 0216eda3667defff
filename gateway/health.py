"""Provider health, shared by the fleet: failures and timeouts in a row put a provider in cooldown.

A provider that times out would otherwise cost every request its full ``timeout_s``. After
``server.provider_failure_threshold`` failures in a row (timeouts, connection errors, broken
answers, 5xx; failures further apart than ``provider_failure_window_s`` do not add up) it is in
cooldown for ``provider_cooldown_s`` on every replica (the record lives in the store, memory:// or
redis://, with a TTL). ``auto`` skips it; a request naming it gets 503 ``provider_cooling_down``
with ``Retry-After`` at once. When the cooldown is over the provider is half-open: one request (the
one that takes the store lease ``probe:<provider>``) tries it; success closes the circuit for
everyone, failure reopens the cooldown at once.

The count is "in a row" as the fleet sees it: a success resets it when the replica that sees the
success knows of a failure or a cooldown (it does not write to the store on every success).

The decision (``triage``) is a pure function of the cooldown table; the I/O is in ``ProviderHealth``,
which reads the table at most every ``REFRESH_S`` and never fails a request because the store is down.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.config import ProviderConfig, ServerConfig
from gateway.errors import AllProvidersFailed
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

REFRESH_S = 0.5  # how stale this replica's copy of the fleet's cooldown table may be


class HealthStore(Protocol):
    """What health needs from the store (``gateway.store`` implements it for both backends)."""

    async def health_failure(self, provider: str, threshold: int, cooldown_s: float, window_s: float) -> float: ...

    async def health_success(self, provider: str) -> None: ...

    async def health_state(self) -> dict[str, float]: ...

    async def acquire(self, name: str, owner: str, ttl_s: float) -> bool: ...


class ProviderCoolingDown(AllProvidersFailed):
    """Every provider the request may use is in cooldown: fail fast rather than wait for a timeout."""

    status = 503
    code = "provider_cooling_down"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, math.ceil(retry_after_s))

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after_s)}


@dataclass(frozen=True, slots=True)
class Triage:
    healthy: list[str]  # serve as ranked
    half_open: list[str]  # cooldown over: one request may probe each
    cooling: dict[str, float]  # skipped: seconds of cooldown left


def counts_as_failure(kind: str, status: int) -> bool:
    """Failures of the provider itself; a 4xx is the request's (or the key's) problem, not its health."""
    return kind in ("timeout", "connection", "protocol") or status >= 500


def triage(names: Sequence[str], cooldowns: dict[str, float]) -> Triage:
    """Split a ranking by the cooldown table (name -> seconds left; <= 0: over, not yet probed)."""
    healthy, half_open, cooling = [], [], {}
    for name in names:
        left = cooldowns.get(name)
        if left is None:
            healthy.append(name)
        elif left > 0:
            cooling[name] = left
        else:
            half_open.append(name)
    return Triage(healthy, half_open, cooling)


class ProviderHealth:
    """This replica's view of the fleet's provider health, and its reports to the store."""

    def __init__(self, store: HealthStore, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics
        self._until: dict[str, float] = {}  # name -> time.monotonic() its cooldown ends (past: half-open)
        self._read_at = -math.inf  # time.monotonic() of the last read
        self._failed: set[str] = set()  # providers this replica saw fail since their last success
        self._owner = uuid.uuid4().hex

    def snapshot(self) -> dict[str, float]:
        """Providers with a cooldown record -> seconds left (<= 0: waiting for a probe)."""
        now = time.monotonic()
        return {n: round(until - now, 3) for n, until in self._until.items()}

    async def refresh(self, providers: Sequence[str], force: bool = False) -> dict[str, float]:
        if force or time.monotonic() - self._read_at >= REFRESH_S:
            # Marked read before the await: concurrent requests use the table they have rather
            # than all reading it, and a store outage costs one read per REFRESH_S, not per request.
            self._read_at = time.monotonic()
            try:
                table = await self._store.health_state()
                now = time.monotonic()
                self._until = {n: now + left for n, left in table.items()}
            except Exception as exc:  # advisory: a store outage must not fail requests
                log.warning("provider health not read from the store: %s: %s", type(exc).__name__, exc)
            left = self.snapshot()
            for name in providers:
                self._metrics.cooldown.labels(name).set(max(left.get(name, 0.0), 0.0))
        return self.snapshot()

    async def usable(self, ranked: list[ProviderConfig], named: bool) -> list[ProviderConfig]:
        """``ranked`` without the providers in cooldown; a half-open one stays if this request wins its
        probe. Raises ProviderCoolingDown when nothing is left."""
        split = triage([p.name for p in ranked], await self.refresh([p.name for p in ranked]))
        if not split.cooling and not split.half_open:
            return ranked
        keep = set(split.healthy)
        for p in ranked:
            if p.name in split.half_open and await self._claim_probe(p):
                keep.add(p.name)
                log.info("provider %s: cooldown over, this request probes it", p.name)
        usable = [p for p in ranked if p.name in keep]
        if usable:
            return usable
        waits = [left for left in split.cooling.values()] or [1.0]
        what = f"provider {ranked[0].name!r} is" if named else "every allowed provider is"
        raise ProviderCoolingDown(
            f"{what} in cooldown after repeated failures or timeouts "
            f"({', '.join(f'{n}: {left:.0f}s left' for n, left in split.cooling.items()) or 'being probed'})",
            min(waits),
        )

    async def _claim_probe(self, provider: ProviderConfig) -> bool:
        try:
            return await self._store.acquire(f"probe:{provider.name}", f"{self._owner}:{uuid.uuid4().hex}",
                                             provider.timeout_s + 1.0)
        except Exception:  # store down: let it through (the caller's request is at stake, not money)
            return True

    async def failure(self, server: ServerConfig, provider: str, kind: str, status: int) -> None:
        if server.provider_failure_threshold == 0 or not counts_as_failure(kind, status):
            return
        self._failed.add(provider)
        try:
            left = await self._store.health_failure(provider, server.provider_failure_threshold,
                                                    server.provider_cooldown_s, server.provider_failure_window_s)
        except Exception as exc:
            log.warning("provider health not recorded: %s: %s", type(exc).__name__, exc)
            return
        if left > 0:
            self._until[provider] = time.monotonic() + left  # skipped here at once, before the next read
            self._metrics.cooldowns.labels(provider).inc()
            self._metrics.cooldown.labels(provider).set(left)
            log.warning("provider %s in cooldown for %.0fs on every replica (last failure: %s)", provider, left, kind)

    async def success(self, provider: str) -> None:
        if provider not in self._failed and provider not in self._until:
            return
        self._failed.discard(provider)
        try:
            await self._store.health_success(provider)
        except Exception as exc:
            log.warning("provider health not recorded: %s: %s", type(exc).__name__, exc)
            return
        if self._until.pop(provider, None) is not None:
            self._metrics.cooldown.labels(provider).set(0)
            log.info("provider %s answered: back in service", provider)
