"""Issue 13: spend and the store under stress, with real parts (a redis-server of the tests' own,
real gateways, the replay upstream, the official ``openai`` client where a client is needed).

- item 2: 300 concurrent keyed requests on one gateway process: no 503, spend within the budget;
- item 3: long answers without max_tokens against a budgeted key: spend within the budget;
- item 6a: a Redis password never appears in logs or on /ready;
- item 7: a reserve that times out while Redis is stopped (SIGSTOP) holds nothing once it resumes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import yaml

from gateway.config import KeyConfig
from gateway.keys import budget_account
from gateway.metrics import Metrics
from gateway.replay import REPLAY_PRICES, ReplayTable
from gateway.store import NANO, MemoryStore, Reservation, SettlementQueue
from gateway.tokens import IMAGE_TOKENS, count_messages
from gateway.upstream import routerbench_parquet, start_upstream
from tests.gateway_fixture import provider, start_gateway, stop_processes
from tests.redis_fixture import RedisServer, free_port, redis_server

pytestmark = [pytest.mark.integration, pytest.mark.faults]
ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-hardening"
GPT4 = "gpt-4-1106-preview"


def _key(budget: float, **extra: Any) -> dict[str, Any]:
    return {"name": "metered", "secret_sha256": hashlib.sha256(SECRET.encode()).hexdigest(),
            "budget_usd": budget, **extra}


def _account() -> str:
    return budget_account(KeyConfig("metered", "0" * 64))


def _live_spend(url: str) -> tuple[float, int]:
    """(settled USD, unexpired holds) for the test key, read from Redis directly."""
    r = redis.Redis.from_url(url)
    base = f"cscr:acct:{{{_account()}}}"
    settled = int(r.get(f"{base}:settled") or 0) / NANO
    holds = r.zcount(f"{base}:holds", time.time(), "+inf")
    return settled, int(holds)


@pytest.fixture()
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as srv:
        yield srv


# --- item 2: the connection pool ------------------------------------------------------------------

def _serve(path: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), "--port", str(port),
         "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _wait_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the gateway exited"
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("the gateway did not become ready")


async def _burst(base: str, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        return list(await asyncio.gather(*(
            client.post("/v1/chat/completions", headers={"authorization": f"Bearer {SECRET}"},
                        json={"model": "cheap", "max_tokens": 64,
                              "messages": [{"role": "user", "content": f"burst request {i}"}]})
            for i in range(n))))


def test_300_concurrent_keyed_requests_get_no_503_and_stay_within_budget(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    up, stop_up = start_upstream(replay="none", latency_ms=50)
    budget = 0.01  # 100 of the 300 requests fit (each holds its max_tokens bound)
    cfg = {"store": redis_srv.url, "router": {"artifact": "none"}, "server": {"store_failure": "open"},
           "providers": [provider("cheap", "openai/cheap-model", up, (0.0, 1.5625))],  # $0.0001 per 64 tokens
           "keys": [_key(budget)]}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = _serve(path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc)
        responses = asyncio.run(_burst(base, 300))
        statuses = [r.status_code for r in responses]
        assert statuses.count(503) == 0, [r.text for r in responses if r.status_code == 503][:3]
        assert not any("x-cscr-unmetered" in r.headers for r in responses)
        assert set(statuses) <= {200, 429} and statuses.count(200) >= 90, responses[0].text
        deadline = time.monotonic() + 30
        while (live := _live_spend(redis_srv.url))[1] and time.monotonic() < deadline:
            time.sleep(0.1)  # a settlement that timed out is retried every second
        settled, holds = live
        assert holds == 0
        assert settled <= budget + 1e-12
    finally:
        stop_processes([proc])
        stop_up()


# --- item 3: spend bounded by construction --------------------------------------------------------

@pytest.fixture(scope="module")
def long_prompts() -> tuple[ReplayTable, list[str]]:
    table = ReplayTable.load(routerbench_parquet(None))
    prompts = [p for p in table.prompts() if (r := table.lookup(p, GPT4)) is not None and r.completion_tokens > 600]
    assert len(prompts) >= 5
    return table, prompts


def test_long_answers_without_max_tokens_never_overspend_the_budget(
    redis_srv: RedisServer, long_prompts: tuple[ReplayTable, list[str]]
) -> None:
    table, prompts = long_prompts
    up, stop_up = start_upstream(table=table)
    budget = 1.0  # about 45 of these answers (~650 tokens at $30/M)
    cfg = {"store": redis_srv.url, "router": {"artifact": "none"},
           "providers": [provider("gpt-4", f"openai/{GPT4}", up, REPLAY_PRICES[GPT4])], "keys": [_key(budget)]}
    base, stop = start_gateway(cfg)
    client = openai.OpenAI(base_url=base + "/v1", api_key=SECRET, max_retries=0)
    outcomes: list[str] = []
    over_reservation = []

    def one(i: int) -> None:
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4", messages=[{"role": "user", "content": prompts[i % len(prompts)]}])
            reply = raw.parse()
            if float(raw.headers["x-cscr-cost-usd"]) > float(raw.headers["x-cscr-cost-reserved-usd"]) + 1e-12:
                over_reservation.append(i)
            outcomes.append(reply.choices[0].finish_reason or "?")
        except openai.RateLimitError:
            outcomes.append("budget")

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(100)))
        settled, holds = _live_spend(redis_srv.url)
        assert holds == 0
        assert settled <= budget + 1e-12, f"spent ${settled:.6f} of ${budget}"
        assert over_reservation == []
        assert len(outcomes) == 100 and outcomes.count("stop") >= 35, outcomes  # most answers in full
    finally:
        stop()
        stop_up()


def test_tools_and_images_count_in_the_prompt() -> None:
    text = [{"role": "user", "content": "describe"}]
    image = [{"role": "user", "content": [{"type": "text", "text": "describe"},
                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    tools = [{"type": "function", "function": {"name": "lookup_weather", "description": "Weather for a city " * 20,
                                               "parameters": {"type": "object", "properties": {"city": {}}}}}]
    base = count_messages(text)
    assert count_messages(image) == base + IMAGE_TOKENS
    assert count_messages(text, tools) > base + 100


async def test_settlement_never_records_more_than_a_capped_reservation() -> None:
    from gateway.proxy import GatewayState, _settle

    store = MemoryStore()
    metrics = Metrics()
    state = GatewayState(None, None, None, store, metrics, SettlementQueue(store))  # type: ignore[arg-type]
    res, _ = await store.reserve("acct", 0.10, 1.0, ttl_s=60, rid="r1")
    assert res is not None
    capped = Reservation("acct", "r1", 0.10, "gpt-4", capped=True)
    assert await _settle(state, capped, 0.30) == pytest.approx(0.10)
    assert metrics.over_reserved.labels("gpt-4")._value.get() == 1
    assert metrics.over_reserved_usd.labels("gpt-4")._value.get() == pytest.approx(0.20)


# --- item 6a: no credentials in logs or on /ready -------------------------------------------------

def test_the_redis_password_is_never_logged_or_shown(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    password = "s3cret-pw-4711"
    redis.Redis.from_url(redis_srv.url).config_set("requirepass", password)
    caplog.set_level(logging.INFO)
    up, stop_up = start_upstream(replay="none")
    cfg = {"store": f"redis://:${{REDIS_PASSWORD}}@127.0.0.1:{redis_srv.port}/0", "router": {"artifact": "none"},
           "providers": [provider("cheap", "openai/cheap-model", up)], "keys": [_key(1.0)]}
    base, stop = start_gateway(cfg, env={"REDIS_PASSWORD": password})
    try:
        ready = httpx.get(f"{base}/ready", timeout=10)
        assert ready.status_code == 200 and password not in ready.text
        assert f"127.0.0.1:{redis_srv.port}" in ready.json()["checks"]["store"]["url"]
        redis_srv.stop()  # errors about the store must not carry it either
        assert password not in httpx.get(f"{base}/ready", timeout=10).text
        r = httpx.post(f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {SECRET}"}, timeout=10,
                       json={"model": "cheap", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503 and password not in r.text
    finally:
        stop()
        stop_up()
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "gateway ready" in logged and password not in logged


# --- item 7: orphan reservations ------------------------------------------------------------------

def test_reserves_that_time_out_on_a_stalled_redis_are_released_when_it_resumes(redis_srv: RedisServer) -> None:
    assert redis_srv.proc is not None
    up, stop_up = start_upstream(replay="none", latency_ms=20)
    cfg = {"store": redis_srv.url, "router": {"artifact": "none"},
           "providers": [provider("cheap", "openai/cheap-model", up)], "keys": [_key(100.0)]}
    base, stop = start_gateway(cfg)
    statuses: list[int] = []
    running = threading.Event()
    running.set()

    def traffic() -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            while running.is_set():
                r = client.post("/v1/chat/completions", headers={"authorization": f"Bearer {SECRET}"},
                                json={"model": "cheap", "messages": [{"role": "user", "content": "hi"}]})
                statuses.append(r.status_code)

    def stalled_request(_: int) -> int:
        r = httpx.post(f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {SECRET}"}, timeout=30,
                       json={"model": "cheap", "messages": [{"role": "user", "content": "during the stall"}]})
        return r.status_code

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    try:
        with ThreadPoolExecutor(16) as pool:  # open pooled connections: Redis has accepted them when it stops
            assert set(pool.map(stalled_request, range(32))) == {200}
        for t in threads:
            t.start()
        time.sleep(0.5)
        os.kill(redis_srv.proc.pid, signal.SIGSTOP)  # stalled, not gone: commands wait in its socket buffers
        with ThreadPoolExecutor(6) as pool:  # reserves sent during the stall time out after 2 s...
            during = list(pool.map(stalled_request, range(6)))
        time.sleep(5.0 - 2.0)  # ...and stay queued in Redis until it resumes
        os.kill(redis_srv.proc.pid, signal.SIGCONT)
        time.sleep(1.0)
        deadline = time.monotonic() + 30
        while statuses.count(200) <= 10 and time.monotonic() < deadline:
            time.sleep(0.1)  # traffic is served again (a loaded machine serves it slowly)
        running.clear()
        for t in threads:
            t.join(timeout=30)
        assert during == [503] * 6 and statuses.count(200) > 10, (during, statuses)
        deadline = time.monotonic() + 30
        while _live_spend(redis_srv.url)[1] and time.monotonic() < deadline:
            time.sleep(0.2)  # queued releases and settlements land (retried every second)
        assert _live_spend(redis_srv.url)[1] == 0, "a reservation is still held with nothing in flight"
    finally:
        running.clear()
        os.kill(redis_srv.proc.pid, signal.SIGCONT)
        stop()
        stop_up()
