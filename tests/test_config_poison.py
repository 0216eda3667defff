"""A bad gateway.yaml save must not take down a fleet that shares one Redis (issue 13, item 1):
two replicas on a real redis-server, poison one file (empty, provider-less, broken YAML) then
restore it, restart replicas whose files changed while they were down, and check every replica
serves the right providers throughout."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from gateway.config import parse_config_text
from gateway.errors import ConfigError
from gateway.upstream import start_upstream
from tests.gateway_fixture import provider, start_gateway
from tests.redis_fixture import RedisServer, redis_server

pytestmark = [pytest.mark.integration, pytest.mark.faults]
POISONS = {"empty": "", "provider-less": "providers: []\n", "broken YAML": "providers: [\n  - {name: p1, model"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    base, stop = start_upstream(replay="none")
    yield base
    stop()


@pytest.fixture()
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as srv:
        yield srv


def _text(up: str, store: str, names: list[str]) -> str:
    cfg: dict[str, Any] = {
        "store": store,
        "router": {"artifact": "none"},
        "server": {"reload_interval_s": 0.1},
        "providers": [provider(n, f"openai/model-{n}", up) for n in names],
    }
    return yaml.safe_dump(cfg)


def _save(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # an atomic save, as editors and ConfigMap updates do


def _serving(base: str) -> set[str]:
    models = httpx.get(f"{base}/v1/models", timeout=10).json()["data"]
    return {m["id"] for m in models if not m["id"].startswith("auto")}


def _healthy(base: str, names: set[str]) -> None:
    assert _serving(base) == names
    ready = httpx.get(f"{base}/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["config"]["providers"] == len(names)
    for name in names:
        r = httpx.post(f"{base}/v1/chat/completions", timeout=10,
                       json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        assert r.headers["x-cscr-provider"] == name


def _eventually(check: Callable[[], None], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _published(url: str) -> dict[str, Any]:
    raw = redis.Redis.from_url(url).hget("cscr:docs:config", "current")
    assert raw is not None
    doc: dict[str, Any] = json.loads(raw)
    return doc


@pytest.mark.parametrize("text", list(POISONS.values()), ids=list(POISONS))
def test_an_empty_or_provider_less_file_is_invalid(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config_text(text, "/etc/cscr/gateway.yaml", {})
    assert "/etc/cscr/gateway.yaml" in str(err.value)


def test_a_poisoned_save_never_reaches_the_fleet_and_restarts_serve_the_newest_file(
    upstream: str, redis_srv: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    file_a, file_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    good = _text(upstream, redis_srv.url, ["p1", "p2"])
    _save(file_a, good)
    _save(file_b, good)
    a, stop_a = start_gateway(file_a)
    b, stop_b = start_gateway(file_b)
    stops = {"a": stop_a, "b": stop_b}
    try:
        _healthy(a, {"p1", "p2"})
        _healthy(b, {"p1", "p2"})
        version = _published(redis_srv.url)["version"]
        for name, poison in POISONS.items():
            _save(file_a, poison)
            _eventually(lambda: _assert_rejected(a, str(file_a)))
            time.sleep(0.5)  # several watcher ticks on both replicas
            for base in (a, b):
                _healthy(base, {"p1", "p2"})
            assert _published(redis_srv.url)["version"] == version, f"{name} was published"
            _save(file_a, good)  # restored: nothing to apply, nothing to publish
            time.sleep(0.3)
            for base in (a, b):
                _healthy(base, {"p1", "p2"})

        # A poisoned text in the store (as an older release published it) is rejected by every replica.
        doc = _published(redis_srv.url)
        redis.Redis.from_url(redis_srv.url).hset("cscr:docs:config", "current", json.dumps(
            {**doc, "version": doc["version"] + 1, "sha256": "0" * 64, "text": "", "published_at": time.time()}))
        time.sleep(0.5)
        for base in (a, b):
            _healthy(base, {"p1", "p2"})

        # B is down while its file gains a provider: on restart it serves and publishes its file,
        # and A follows.
        stops.pop("b")()
        time.sleep(0.05)
        caplog.clear()
        _save(file_b, _text(upstream, redis_srv.url, ["p1", "p2", "newcomer"]))
        b, stops["b"] = start_gateway(file_b)
        _healthy(b, {"p1", "p2", "newcomer"})
        _eventually(lambda: _healthy(a, {"p1", "p2", "newcomer"}))
        ready_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gateway ready")]
        assert ready_lines and ready_lines[-1].startswith("gateway ready: 3 providers"), ready_lines
        assert not any("removed ['newcomer']" in r.getMessage() for r in caplog.records)

        # A restarts with its file, older than what B published: it serves the shared config and says so.
        stops.pop("a")()
        caplog.clear()
        a, stops["a"] = start_gateway(file_a)
        _healthy(a, {"p1", "p2", "newcomer"})
        assert any("differs from the shared config" in r.getMessage() and r.levelno == logging.WARNING
                   for r in caplog.records)
    finally:
        for stop in stops.values():
            stop()


def _assert_rejected(base: str, path: str) -> None:
    error = httpx.get(f"{base}/ready", timeout=10).json()["checks"]["config"]["last_reload_error"]
    assert error is not None and path in error
