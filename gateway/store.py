"""Shared state behind one small async interface; the backend is picked by URL.

``memory://`` keeps everything in this process (one replica). Spend is tracked as settled spend
plus open reservations: a request reserves its estimated cost before the provider call (so
concurrent requests cannot overspend) and settles to the actual cost after it. Reservations carry
a TTL so a crashed request cannot hold money forever; until they expire they count in full.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Reservation:
    key: str
    id: str
    amount: float


class Store(Protocol):
    url: str

    async def reserve(self, key: str, amount: float, limit: float | None, ttl_s: float) -> Reservation | None:
        """Hold ``amount`` against ``key``; None when spent + held + amount would exceed ``limit``."""

    async def settle(self, reservation: Reservation, actual: float) -> None:
        """Drop the hold and record ``actual`` as spent (idempotent per reservation)."""

    async def spent(self, key: str) -> float:
        """Settled spend plus live reservations."""

    async def ping(self) -> None:
        """Raise if the backend cannot be reached."""

    async def aclose(self) -> None: ...


@dataclass
class _KeyState:
    settled: float = 0.0
    held: dict[str, tuple[float, float]] = field(default_factory=dict)  # id -> (amount, expires_at)
    done: set[str] = field(default_factory=set)  # settled reservation ids (settle is idempotent)

    def live(self, now: float) -> float:
        for rid in [r for r, (_, exp) in self.held.items() if exp <= now]:
            del self.held[rid]
        return self.settled + sum(a for a, _ in self.held.values())


class MemoryStore:
    """One process; every method runs without awaiting, so each is atomic on the event loop."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._keys: dict[str, _KeyState] = {}
        self._ids = itertools.count(1)

    async def reserve(self, key: str, amount: float, limit: float | None, ttl_s: float) -> Reservation | None:
        now = time.monotonic()
        state = self._keys.setdefault(key, _KeyState())
        if limit is not None and state.live(now) + amount > limit + 1e-12:
            return None
        rid = str(next(self._ids))
        state.held[rid] = (amount, now + ttl_s)
        return Reservation(key, rid, amount)

    async def settle(self, reservation: Reservation, actual: float) -> None:
        state = self._keys.setdefault(reservation.key, _KeyState())
        if reservation.id in state.done:
            return
        state.done.add(reservation.id)
        # An expired hold is gone already; the money was still spent, so it is recorded all the same.
        state.held.pop(reservation.id, None)
        state.settled += actual

    async def spent(self, key: str) -> float:
        state = self._keys.get(key)
        return 0.0 if state is None else state.live(time.monotonic())

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def open_store(url: str) -> Store:
    """The backend for ``url``. Only ``memory://`` exists so far; ``redis://`` is refused loudly."""
    if url.startswith("memory://"):
        return MemoryStore(url)
    raise NotImplementedError(f"store {url!r}: only memory:// is implemented in this version")
