"""Keys and budgets over real sockets: admin API, periods, rate limits, streaming spend, Redis
outages, and two gateway processes sharing one Redis under 200 concurrent requests."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pandas as pd
import pytest
import yaml

from gateway.config import parse_config
from gateway.keys import budget_account
from gateway.replay import BUNDLED_REPLAY, REPLAY_PRICES
from gateway.store import RedisStore
from gateway.upstream import start_upstream
from tests.gateway_fixture import fresh_rate_window, provider, start_gateway, stop_processes
from tests.redis_fixture import RedisServer, free_port, redis_server

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
MASTER = "master-secret-for-tests"


@pytest.fixture(scope="module")
def prompt() -> str:
    df = pd.read_parquet(BUNDLED_REPLAY)
    return str(df[df.split == "test"].iloc[3].prompt_text)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    base, stop = start_upstream(chunk_delay_ms=0.0)
    yield base
    stop()


def _cfg(up: str, **extra: Any) -> dict[str, Any]:
    return {
        "router": {"artifact": "none"},
        "server": {"master_key_env": "CSCR_MASTER"},
        "providers": [provider("gpt-4", "openai/gpt-4-1106-preview", up, REPLAY_PRICES["gpt-4-1106-preview"]),
                      provider("mistral-7b", "openai/mistralai/mistral-7b-chat", up,
                               REPLAY_PRICES["mistralai/mistral-7b-chat"])],
        **extra,
    }


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def test_budget_account_periods() -> None:
    cfg = parse_config({"keys": [
        {"name": "d", "secret_sha256": "a" * 64, "budget_usd": 1, "budget_period": "daily"},
        {"name": "m", "secret_sha256": "b" * 64, "budget_usd": 1, "budget_period": "monthly"},
        {"name": "n", "secret_sha256": "c" * 64, "budget_usd": 1},
    ]}, env={})
    d, m, n = cfg.keys
    t = datetime(2026, 11, 24, 23, 59, tzinfo=UTC)
    assert budget_account(d, t) == "d:d2026-11-24"
    assert budget_account(d, datetime(2026, 11, 25, 0, 0, tzinfo=UTC)) == "d:d2026-11-25"  # resets at midnight UTC
    assert budget_account(m, t) == "m:m2026-11" and budget_account(n, t) == "n:all"


def test_admin_api_create_use_update_revoke(upstream: str, prompt: str) -> None:
    base, stop = start_gateway(_cfg(upstream), env={"CSCR_MASTER": MASTER})
    admin = httpx.Client(base_url=base, headers={"authorization": f"Bearer {MASTER}"})
    try:
        assert httpx.get(base + "/admin/keys").status_code == 401
        assert httpx.get(base + "/admin/keys", headers={"authorization": "Bearer nope"}).status_code == 401
        r = admin.post("/admin/keys", json={"name": "team", "budget_usd": 1.0, "budget_period": "daily",
                                            "allowed_providers": ["mistral-7b"], "rpm": 100})
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]
        assert secret.startswith("sk-cscr-") and "secret_sha256" not in r.json()
        assert admin.post("/admin/keys", json={"name": "team"}).status_code == 409
        bad = admin.post("/admin/keys", json={"name": "x", "budget_usd": "lots"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "budget_usd"
        # the body checks of every endpoint: a lone surrogate in a name was saved, then every read was a 500
        lone = admin.post("/admin/keys", content=b'{"name": "a\\ud800b"}')
        assert lone.status_code == 400 and lone.json()["error"]["param"] == "name", lone.text
        deep = admin.post("/admin/keys", content=b'{"name": "d", "budget_usd": ' + b"[" * 5000 + b"]" * 5000 + b"}")
        assert deep.status_code == 400 and deep.json()["error"]["code"] == "invalid_json"
        listed = admin.get("/admin/keys").json()["data"]
        assert [k["name"] for k in listed] == ["team"] and secret not in str(listed)

        client = openai.OpenAI(base_url=base + "/v1", api_key=secret, max_retries=0)
        # a daily budget is one account per UTC day: the spend and its read-back must share one
        fresh_rate_window(needed_s=120, window_s=86_400)
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user",
                                                                                        "content": prompt}])
        assert raw.headers["x-cscr-provider"] == "mistral-7b"
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": prompt}])
        spent = admin.get("/admin/keys").json()["data"][0]["spent_usd"]
        assert spent == pytest.approx(float(raw.headers["x-cscr-cost-usd"]))

        assert admin.patch("/admin/keys/team", json={"budget_usd": 0.0}).status_code == 200
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": prompt}])
        assert info.value.body["code"] == "budget_exceeded"  # type: ignore[index]

        assert admin.delete("/admin/keys/team").json() == {"name": "team", "revoked": True}
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": prompt}])
        assert admin.delete("/admin/keys/team").status_code == 404
    finally:
        stop()


def test_rpm_limit(upstream: str) -> None:
    keys = [{"name": "slow", "secret_sha256": _sha("sk-slow"), "rpm": 2}]
    base, stop = start_gateway(_cfg(upstream, keys=keys), env={"CSCR_MASTER": MASTER})
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-slow", max_retries=0)
        fresh_rate_window()  # the three requests must share one minute
        for _ in range(2):
            client.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": "hi"}])
        assert info.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    finally:
        stop()


def test_streamed_spend_is_real_and_a_disconnect_pays_for_what_was_generated(prompt: str) -> None:
    up, stop_up = start_upstream(chunk_delay_ms=50.0)
    keys = [{"name": "s", "secret_sha256": _sha("sk-s"), "budget_usd": 10.0}]
    base, stop = start_gateway(_cfg(up, keys=keys), env={"CSCR_MASTER": MASTER})
    admin = httpx.Client(base_url=base, headers={"authorization": f"Bearer {MASTER}"})
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-s", max_retries=0)
        chunks = list(client.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": prompt}], stream=True,
            stream_options={"include_usage": True}))
        usage = chunks[-1].usage
        assert usage is not None
        expected = (usage.prompt_tokens * 10 + usage.completion_tokens * 30) / 1e6
        spent = _settled_spend(admin, lambda s: s == pytest.approx(expected))
        assert spent == pytest.approx(expected)
        assert expected > 0.0

        # a long synthetic answer, abandoned after two chunks: charged for what was generated only
        stream = client.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "write a long essay " * 5}], stream=True,
            max_tokens=400)
        for i, _ in enumerate(stream):
            if i == 2:
                break
        stream.close()
        full_estimate = (400 * 30) / 1e6
        # while the hold stands the spend counts the whole reservation (more than full_estimate):
        # wait for the settlement the hang-up makes
        after = _settled_spend(admin, lambda s: s - spent < full_estimate)
        assert after > spent  # something was charged
    finally:
        stop()
        stop_up()


def _settled_spend(admin: httpx.Client, settled: Callable[[float], bool], timeout_s: float = 30.0) -> float:
    """The (only) key's spend once ``settled`` accepts it; the last value read after ``timeout_s``.
    A stream is settled when the gateway sees its end or the client's hang-up, which a loaded
    machine may take a while to get to."""
    deadline = time.monotonic() + timeout_s
    while True:
        spent = float(admin.get("/admin/keys").json()["data"][0]["spent_usd"])
        if settled(spent) or time.monotonic() > deadline:
            return spent
        time.sleep(0.05)


def test_redis_down_fails_closed_then_recovers(tmp_path: Path, upstream: str, prompt: str) -> None:
    srv = RedisServer(tmp_path)
    srv.start()
    keys = [{"name": "k", "secret_sha256": _sha("sk-k"), "budget_usd": 5.0}]
    base, stop = start_gateway(_cfg(upstream, keys=keys, store=srv.url), env={"CSCR_MASTER": MASTER})
    body = {"model": "mistral-7b", "messages": [{"role": "user", "content": prompt}]}
    auth = {"authorization": "Bearer sk-k"}
    try:
        assert httpx.post(base + "/v1/chat/completions", json=body, headers=auth).status_code == 200
        srv.stop()
        r = httpx.post(base + "/v1/chat/completions", json=body, headers=auth, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
        ready = httpx.get(base + "/ready", timeout=30)
        assert ready.status_code == 503 and not ready.json()["checks"]["store"]["ok"]
        srv.start()
        deadline = time.monotonic() + 20
        while httpx.get(base + "/ready", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "gateway did not recover when redis came back"
            time.sleep(0.2)
        assert httpx.post(base + "/v1/chat/completions", json=body, headers=auth).status_code == 200
    finally:
        stop()
        srv.stop()


def test_redis_down_fail_open_serves_unmetered_and_settles_later(tmp_path: Path, upstream: str, prompt: str) -> None:
    srv = RedisServer(tmp_path)
    srv.start()
    keys = [{"name": "k", "secret_sha256": _sha("sk-k"), "budget_usd": 5.0}]
    cfg = _cfg(upstream, keys=keys, store=srv.url)
    cfg["server"]["store_failure"] = "open"
    base, stop = start_gateway(cfg, env={"CSCR_MASTER": MASTER})
    body = {"model": "mistral-7b", "messages": [{"role": "user", "content": prompt}]}
    try:
        srv.stop()
        r = httpx.post(base + "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-k"}, timeout=30)
        assert r.status_code == 200 and r.headers["x-cscr-unmetered"] == "store unreachable"
        cost = float(r.headers["x-cscr-cost-usd"])
        srv.start()

        async def spent() -> float:
            store = RedisStore(srv.url)
            try:
                return await store.spent("k:all")
            finally:
                await store.aclose()

        deadline = time.monotonic() + 20
        while asyncio.run(spent()) == 0.0:  # the queued settlement lands once redis is back
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert asyncio.run(spent()) == pytest.approx(cost)
    finally:
        stop()
        srv.stop()


def _serve(config_path: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_path), "--port", str(port),
         "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def test_two_replicas_share_one_budget_under_concurrency(tmp_path: Path, upstream: str, prompt: str) -> None:
    from gateway.tokens import count_messages

    messages = [{"role": "user", "content": prompt}]
    estimate = (count_messages(messages) * 10 + 5 * 30) / 1e6  # gpt-4 prices, max_tokens=5
    budget = round(50 * estimate, 8)
    with redis_server(tmp_path) as srv:
        cfg = _cfg(upstream, store=srv.url, keys=[{"name": "shared", "secret_sha256": _sha("sk-shared"),
                                                   "budget_usd": budget}])
        cfg["providers"] = cfg["providers"][:1]
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(cfg))
        ports = [free_port(), free_port()]
        procs = [_serve(path, p, {"CSCR_MASTER": MASTER}) for p in ports]
        try:
            for port, proc in zip(ports, procs, strict=True):
                deadline = time.monotonic() + 60
                while True:
                    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "exited"
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline
                    time.sleep(0.1)

            async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
                return await client.post(
                    f"http://127.0.0.1:{ports[i % 2]}/v1/chat/completions",
                    json={"model": "gpt-4", "messages": messages, "max_tokens": 5},
                    headers={"authorization": "Bearer sk-shared"},
                )

            async def burst() -> list[httpx.Response]:
                limits = httpx.Limits(max_connections=200)
                async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                    return await asyncio.gather(*(one(client, i) for i in range(200)))

            responses = asyncio.run(burst())
            ok = [r for r in responses if r.status_code == 200]
            refused = [r for r in responses if r.status_code != 200]
            assert all(r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded" for r in refused)
            charged = sum(float(r.headers["x-cscr-cost-usd"]) for r in ok)

            async def settled() -> float:
                store = RedisStore(srv.url)
                try:
                    return await store.spent("shared:all")
                finally:
                    await store.aclose()

            recorded = asyncio.run(settled())
            print(f"\nbudget ${budget:.6f}: {len(ok)} served, {len(refused)} refused; "
                  f"charged ${charged:.6f}, recorded ${recorded:.6f}")
            assert recorded <= budget + 1e-9  # never over budget
            assert recorded == pytest.approx(charged, abs=1e-9)  # nothing lost, nothing twice
            assert 40 <= len(ok) <= 60 and len(ok) + len(refused) == 200
            served_by = {r.headers["x-cscr-provider"] for r in ok}
            assert served_by == {"gpt-4"}
        finally:
            stop_processes(procs)
