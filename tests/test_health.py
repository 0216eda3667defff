"""Provider health (issue 13, item 11): the pure decision, the tracker on a real store, and two
gateways on one real redis-server in front of the replay upstream with a timeout fault, showing
that requests stop paying the timeout, on every replica, and that the provider is probed back in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.config import ProviderConfig, ServerConfig
from gateway.health import ProviderCoolingDown, ProviderHealth, counts_as_failure, triage
from gateway.metrics import Metrics
from gateway.store import MemoryStore
from gateway.upstream import start_upstream
from tests.gateway_fixture import provider, start_gateway
from tests.redis_fixture import RedisServer, redis_server

# a cooldown of 1 s: still running when checked right after it opens, even on a loaded machine
RULES = ServerConfig(provider_failure_threshold=2, provider_cooldown_s=1.0, provider_failure_window_s=60)


def test_triage_splits_a_ranking_by_the_cooldown_table() -> None:
    split = triage(["a", "b", "c", "d"], {"b": 12.0, "c": -0.5})
    assert split.healthy == ["a", "d"] and split.half_open == ["c"] and split.cooling == {"b": 12.0}
    assert triage(["a"], {}).healthy == ["a"]


def test_only_the_providers_own_failures_count() -> None:
    assert counts_as_failure("timeout", 504) and counts_as_failure("connection", 502)
    assert counts_as_failure("status", 503) and counts_as_failure("protocol", 502)
    assert not counts_as_failure("status", 400) and not counts_as_failure("status", 429)


async def test_failures_in_a_row_cool_a_provider_down_then_one_request_probes_it() -> None:
    health = ProviderHealth(MemoryStore(), Metrics())
    a, b = ProviderConfig("a", "openai/a", timeout_s=5.0), ProviderConfig("b", "openai/b")
    await health.failure(RULES, "a", "timeout", 504)
    assert await health.usable([a, b], named=False) == [a, b]  # one failure is not a pattern
    await health.failure(RULES, "a", "status", 400)  # the caller's error: not counted
    await health.failure(RULES, "a", "timeout", 504)
    assert await health.usable([a, b], named=False) == [b]
    with pytest.raises(ProviderCoolingDown) as err:
        await health.usable([a], named=True)
    assert err.value.status == 503 and err.value.headers() == {"retry-after": "1"}
    await asyncio.sleep(1.05)
    first, second = await asyncio.gather(health.usable([a, b], named=False), health.usable([a, b], named=False))
    assert sorted([first, second], key=len) == [[b], [a, b]]  # half-open: exactly one request probes
    await health.success("a")
    assert await health.usable([a, b], named=False) == [a, b]
    assert health.snapshot() == {}


async def test_a_failed_probe_reopens_the_cooldown_at_once() -> None:
    health = ProviderHealth(MemoryStore(), Metrics())
    a = ProviderConfig("a", "openai/a")
    for _ in range(2):
        await health.failure(RULES, "a", "timeout", 504)
    await asyncio.sleep(1.05)
    assert await health.usable([a], named=True) == [a]  # the probe
    await health.failure(RULES, "a", "timeout", 504)
    with pytest.raises(ProviderCoolingDown):
        await health.usable([a], named=True)


async def test_threshold_zero_turns_health_off() -> None:
    health = ProviderHealth(MemoryStore(), Metrics())
    a = ProviderConfig("a", "openai/a")
    for _ in range(5):
        await health.failure(ServerConfig(provider_failure_threshold=0), "a", "timeout", 504)
    assert await health.usable([a], named=True) == [a]


# --- integration ----------------------------------------------------------------------------------

@pytest.fixture()
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as srv:
        yield srv


TIMEOUT_S = 2.0  # the slow provider's timeout: what a request pays when it is tried
COOLDOWN_S = 10.0  # outlasts the checks made while it runs, even on a loaded machine


def _cooldown(base: str) -> dict[str, float]:
    left: dict[str, float] = httpx.get(f"{base}/ready", timeout=30).json()["checks"]["providers"]["cooldown_s"]
    return left


def _chat(base: str, model: str) -> tuple[httpx.Response, float]:
    t = time.perf_counter()
    r = httpx.post(f"{base}/v1/chat/completions", timeout=30,
                   json={"model": model, "messages": [{"role": "user", "content": "hello"}]})
    return r, time.perf_counter() - t


@pytest.mark.integration
@pytest.mark.faults
def test_a_timing_out_provider_stops_costing_requests_on_every_replica(redis_srv: RedisServer) -> None:
    up, stop_up = start_upstream(replay="none", faults={"slow-model": "timeout"})
    cfg = {
        "store": redis_srv.url,
        "router": {"artifact": "none"},  # cost-only: the cheaper, timing-out provider ranks first
        "server": {"provider_failure_threshold": 2, "provider_cooldown_s": COOLDOWN_S},
        "providers": [provider("slow", "openai/slow-model", up, (0.1, 0.1), timeout_s=TIMEOUT_S),
                      provider("fast", "openai/fast-model", up, (1.0, 1.0))],
    }
    a, stop_a = start_gateway(cfg)
    b, stop_b = start_gateway(cfg)
    try:
        paid = []
        for _ in range(6):
            r, took = _chat(a, "auto")
            assert r.status_code == 200 and r.headers["x-cscr-provider"] == "fast"
            paid.append(took)
        # a request that tried the slow provider paid its whole timeout; one that skipped it
        # took a fraction of it (half: a clear line even when the machine is slow)
        assert all(t >= TIMEOUT_S for t in paid[:2])  # two timeouts open the cooldown...
        assert all(t < TIMEOUT_S / 2 for t in paid[2:]), paid  # ...after which nobody waits for it
        r, took = _chat(b, "auto")  # the other replica skips it too (the cooldown is in Redis)
        assert r.headers["x-cscr-tried"] == "fast" and took < TIMEOUT_S / 2
        r, took = _chat(b, "slow")  # named: fail fast, and say when to come back
        assert r.status_code == 503 and took < TIMEOUT_S / 2
        assert r.json()["error"]["code"] == "provider_cooling_down"
        assert 1 <= int(r.headers["retry-after"]) <= COOLDOWN_S
        ready = httpx.get(f"{a}/ready", timeout=10).json()
        assert ready["ready"] and 0 < ready["checks"]["providers"]["cooldown_s"]["slow"] <= COOLDOWN_S
        metrics = httpx.get(f"{b}/metrics", timeout=10).text
        assert 'cscr_provider_cooldown_seconds{provider="slow"}' in metrics

        httpx.delete(up.removesuffix("/v1") + "/_faults", timeout=10)  # the provider recovers
        deadline = time.monotonic() + COOLDOWN_S + 30
        while _cooldown(b)["slow"] > 0:  # the cooldown runs out (no request claims the probe meanwhile)
            assert time.monotonic() < deadline, _cooldown(b)
            time.sleep(0.1)
        r, took = _chat(b, "auto")  # one request probes it back in
        assert r.status_code == 200 and r.headers["x-cscr-provider"] == "slow" and took < TIMEOUT_S
        time.sleep(0.6)  # the other replica reads the table again (every 0.5 s) before its next request
        r, _ = _chat(a, "slow")
        assert r.status_code == 200
        assert "slow" not in httpx.get(f"{a}/ready", timeout=10).json()["checks"]["providers"]["cooldown_s"]
    finally:
        stop_a()
        stop_b()
        stop_up()
