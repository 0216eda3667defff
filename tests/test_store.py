"""One contract for every store backend, Redis for real (a redis-server of the tests' own)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from gateway.store import (
    MemoryStore,
    RedisStore,
    Reservation,
    SettlementQueue,
    Store,
    StoreBusy,
    StoreOptions,
    open_store,
    redact_text,
    redact_url,
)
from tests.gateway_fixture import fresh_rate_window
from tests.redis_fixture import RedisServer, redis_server


@pytest.fixture(scope="module")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_srv: RedisServer) -> AsyncIterator[Store]:
    if request.param == "memory":
        s: Store = MemoryStore()
    else:
        s = RedisStore(redis_srv.url, prefix=f"t{id(request)}:")
    yield s
    await s.aclose()


async def test_reserve_respects_limit_and_settles_once(store: Store) -> None:
    a, before = await store.reserve("k", 0.6, 1.0, ttl_s=60)
    assert a is not None and before == 0.0
    refused, live = await store.reserve("k", 0.6, 1.0, ttl_s=60)  # 0.6 held + 0.6 > 1.0
    assert refused is None and live == pytest.approx(0.6)
    assert await store.spent("k") == pytest.approx(0.6)
    assert await store.settle(a, 0.25) == pytest.approx(0.25)
    assert await store.settle(a, 0.25) == pytest.approx(0.25)  # idempotent
    assert await store.spent("k") == pytest.approx(0.25)
    assert (await store.reserve("k", 0.7, 1.0, ttl_s=60))[0] is not None
    assert (await store.reserve("other", 5.0, None, ttl_s=60))[0] is not None  # no limit


async def test_concurrent_reservations_never_exceed_the_limit(store: Store) -> None:
    results = await asyncio.gather(*(store.reserve("c", 0.1, 1.0, ttl_s=60) for _ in range(50)))
    assert sum(r is not None for r, _ in results) == 10
    assert await store.spent("c") == pytest.approx(1.0)


async def test_tiny_amounts_do_not_drift(store: Store) -> None:
    for _ in range(1000 if isinstance(store, MemoryStore) else 200):
        r, _ = await store.reserve("d", 0.0000001, None, ttl_s=60)
        assert r is not None
        await store.settle(r, 0.0000001)
    n = 1000 if isinstance(store, MemoryStore) else 200
    assert await store.spent("d") == pytest.approx(n * 0.0000001, rel=1e-9)


async def test_expired_holds_free_the_budget_but_settlement_still_counts(store: Store) -> None:
    r, _ = await store.reserve("e", 1.0, 1.0, ttl_s=0.05)
    assert r is not None
    await asyncio.sleep(0.15)
    assert await store.spent("e") == 0.0
    await store.settle(r, 0.4)  # the call finished late: its real cost is still recorded
    assert await store.spent("e") == pytest.approx(0.4)


async def test_rate_windows(store: Store) -> None:
    fresh_rate_window(needed_s=10)  # the three hits must share one fixed minute
    assert await store.hit("rpm:k", 1, 2, 60)
    assert await store.hit("rpm:k", 1, 2, 60)
    assert not await store.hit("rpm:k", 1, 2, 60)
    assert not await store.hit("tpm:k", 500, 100, 60)


async def test_documents(store: Store) -> None:
    await store.put_doc("keys", "a", {"budget": 1.5, "tags": ["x"]})
    assert await store.get_doc("keys", "a") == {"budget": 1.5, "tags": ["x"]}
    assert await store.list_docs("keys") == {"a": {"budget": 1.5, "tags": ["x"]}}
    assert await store.delete_doc("keys", "a") and not await store.delete_doc("keys", "a")
    assert await store.get_doc("keys", "a") is None


async def test_leases_elect_one_holder_and_lapse(store: Store) -> None:
    # a's lease outlives any stall of a loaded machine: only the explicit release may free it
    assert await store.acquire("job", "a", ttl_s=30)
    assert not await store.acquire("job", "b", ttl_s=30)
    assert await store.acquire("job", "a", ttl_s=30)  # the holder may renew
    await store.release("job", "b")  # not b's to release
    assert not await store.acquire("job", "b", ttl_s=30)
    await store.release("job", "a")
    assert await store.acquire("job", "b", ttl_s=0.2)
    await asyncio.sleep(0.35)  # a crashed holder's lease lapses
    assert await store.acquire("job", "c", ttl_s=1.0)


async def test_redis_outage_then_recovery_settles_exactly_once(tmp_path: Path) -> None:
    srv = RedisServer(tmp_path)
    srv.start()
    store = RedisStore(srv.url)
    try:
        r, _ = await store.reserve("o", 0.5, 10.0, ttl_s=60)
        assert r is not None
        srv.stop()
        with pytest.raises(Exception):  # noqa: B017 - redis raises its ConnectionError family
            await store.settle(r, 0.3)
        queue = SettlementQueue(store, retry_s=0.1)
        queue.add(r, 0.3)
        queue.add(r, 0.3)  # the same settlement twice must still count once
        srv.start()  # same port: Redis is back (empty: it kept nothing on disk)
        await queue.flush(timeout_s=10)
        assert queue.pending == 0
        assert await store.spent("o") == pytest.approx(0.3)
    finally:
        await store.aclose()
        srv.stop()


def test_open_store_by_url() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(open_store("redis://127.0.0.1:1/0"), RedisStore)
    with pytest.raises(ValueError):
        open_store("postgres://x")


async def test_a_reserve_that_runs_after_its_release_holds_nothing(store: Store) -> None:
    # A reserve that timed out against a stalled Redis runs when Redis resumes; the gateway has
    # already queued its release (settle to 0). Whichever lands first, nothing stays held.
    released = Reservation("late", "rid-1", 0.5)
    assert await store.settle(released, 0.0) == 0.0
    late, _ = await store.reserve("late", 0.5, 10.0, ttl_s=600, rid="rid-1")
    assert late is None and await store.spent("late") == 0.0
    held, _ = await store.reserve("late", 0.5, 10.0, ttl_s=600, rid="rid-2")  # the other order
    assert held is not None and await store.spent("late") == pytest.approx(0.5)
    assert await store.settle(Reservation("late", "rid-2", 0.5), 0.0) == 0.0


async def _cooldown_over(store: Store, provider: str, deadline_s: float = 30.0) -> None:
    """Wait until ``provider``'s cooldown has run out (half-open), failing after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while (await store.health_state())[provider] > 0.0:
        assert time.monotonic() < deadline, "the cooldown never ran out"
        await asyncio.sleep(0.05)


async def test_provider_health_opens_a_cooldown_after_failures_in_a_row(store: Store) -> None:
    # a cooldown of 1 s: still running when read back even on a loaded machine
    assert await store.health_state() == {}
    assert await store.health_failure("p", 3, 1.0, 60) == 0.0
    assert await store.health_failure("p", 3, 1.0, 60) == 0.0
    await store.health_success("p")  # a success breaks the run
    assert [await store.health_failure("p", 3, 1.0, 60) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    left = (await store.health_state())["p"]
    assert 0.0 < left <= 1.0
    await _cooldown_over(store, "p")  # over: half-open, waiting for a probe
    assert await store.health_failure("p", 3, 1.0, 60) == pytest.approx(1.0)  # a failed probe reopens at once
    await store.health_success("p")
    assert await store.health_state() == {}


async def test_provider_failures_far_apart_do_not_add_up(store: Store) -> None:
    # a window of 1 s: the two failures in a row land inside it even on a loaded machine
    assert await store.health_failure("q", 2, 5.0, 1.0) == 0.0
    await asyncio.sleep(1.1)
    assert await store.health_failure("q", 2, 5.0, 1.0) == 0.0
    assert await store.health_failure("q", 2, 5.0, 1.0) == pytest.approx(5.0)


async def test_an_exhausted_pool_waits_then_says_busy_not_unreachable(redis_srv: RedisServer) -> None:
    store = RedisStore(redis_srv.url, prefix="pool:", options=StoreOptions(max_connections=2, pool_timeout_s=0.2))
    try:
        # 50 concurrent commands share 2 connections: they wait their turn, none fails.
        await asyncio.gather(*(store.reserve("pool", 0.01, None, ttl_s=60) for _ in range(50)))
        assert await store.spent("pool") == pytest.approx(0.5)
        # both connections held until this test wakes them (not until a timeout it might outlast)
        blockers = [asyncio.create_task(store._redis.blpop(["pool:nothing"], timeout=60)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(StoreBusy):
            await store.spent("pool")
        waker = redis.Redis.from_url(redis_srv.url)
        try:
            await waker.rpush("pool:nothing", "a", "b")
        finally:
            await waker.aclose()
        await asyncio.gather(*blockers)
    finally:
        await store.aclose()


def test_store_urls_are_redacted() -> None:
    assert redact_url("redis://:s3cret@redis:6379/0") == "redis://***@redis:6379/0"
    assert redact_url("rediss://user:s3cret@h:6380/1") == "rediss://***@h:6380/1"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_text("Error: auth s3cret failed", "redis://:s3cret@h/0") == "Error: auth *** failed"
