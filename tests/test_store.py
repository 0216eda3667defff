"""The store contract: reservations are atomic, counted until settled or expired, settled once."""

from __future__ import annotations

import asyncio

import pytest

from gateway.store import MemoryStore, open_store


async def test_reserve_respects_limit_and_settles_once() -> None:
    store = MemoryStore()
    a = await store.reserve("k", 0.6, 1.0, ttl_s=60)
    assert a is not None
    assert await store.reserve("k", 0.6, 1.0, ttl_s=60) is None  # 0.6 held + 0.6 > 1.0
    assert await store.spent("k") == pytest.approx(0.6)
    await store.settle(a, 0.25)
    await store.settle(a, 0.25)  # idempotent
    assert await store.spent("k") == pytest.approx(0.25)
    assert await store.reserve("k", 0.7, 1.0, ttl_s=60) is not None


async def test_concurrent_reservations_never_exceed_the_limit() -> None:
    store = MemoryStore()
    results = await asyncio.gather(*(store.reserve("k", 0.1, 1.0, ttl_s=60) for _ in range(50)))
    assert sum(r is not None for r in results) == 10


async def test_expired_holds_free_the_budget_but_settlement_still_counts() -> None:
    store = MemoryStore()
    r = await store.reserve("k", 1.0, 1.0, ttl_s=0.01)
    assert r is not None
    await asyncio.sleep(0.03)
    assert await store.spent("k") == 0.0
    await store.settle(r, 0.4)  # the call finished late: its real cost is still recorded
    assert await store.spent("k") == pytest.approx(0.4)


def test_unknown_backend_is_refused() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    with pytest.raises(NotImplementedError):
        open_store("redis://127.0.0.1:6379/0")
