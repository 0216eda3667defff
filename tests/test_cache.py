"""The response cache, for real: a gateway on a socket, the replay upstream (whose ``/_stats`` counts
the requests that reached it, so a hit is proven never to have gone upstream), the official
``openai`` client, and both stores (memory:// and a redis-server of the tests' own)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway import cache
from gateway.config import CacheConfig, CachePolicy, parse_config
from gateway.errors import ConfigError
from gateway.store import MemoryStore, RedisStore, Store
from gateway.upstream import start_upstream
from tests.gateway_fixture import fresh_rate_window, provider, start_gateway
from tests.redis_fixture import RedisServer, redis_server

MASTER = "sk-master-cache"
KEYS = {  # name -> the key's cache block (None: no cache of its own)
    "alice": {"ttl_s": 600},
    "bob": {"ttl_s": 600},
    "carol": {"ttl_s": 600, "shared": True},
    "dave": {"ttl_s": 600, "shared": True},
    "eve": None,
    "loose": {"ttl_s": 600, "allow_nondeterministic": True},
    "asker": {"ttl_s": 600, "default": False},
    "limited": {"ttl_s": 600},
}
MSG = [{"role": "user", "content": "What is the capital of France?"}]


def secret(name: str) -> str:
    return f"sk-cache-{name}"


@pytest.fixture(scope="module")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    up, stop = start_upstream(replay="none", faults={"cutter": "cut:4", "broken": "status:503"})
    yield up
    stop()


def _config(up: str, store: str) -> dict[str, Any]:
    keys = []
    for name, block in KEYS.items():
        key: dict[str, Any] = {"name": name, "secret_sha256": hashlib.sha256(secret(name).encode()).hexdigest(),
                               "budget_usd": 5.0}
        if block is not None:
            key["cache"] = block
        if name == "limited":
            key["rpm"] = 3
        keys.append(key)
    return {
        "store": store,
        "router": {"artifact": "none"},
        "server": {"master_key_env": "CSCR_MASTER", "provider_failure_threshold": 0},
        "cache": {"max_entry_bytes": 65536, "max_entries": 100},
        "keys": keys,
        "providers": [provider("m", "openai/m", up), provider("cutter", "openai/cutter", up),
                      provider("broken", "openai/broken", up)],
    }


@pytest.fixture(scope="module", params=["memory", "redis"])
def gateway(request: pytest.FixtureRequest, upstream: str, redis_srv: RedisServer) -> Iterator[tuple[str, str]]:
    """(gateway URL, store URL)."""
    store = "memory://" if request.param == "memory" else redis_srv.url.replace("/0", "/3")
    base, stop = start_gateway(_config(upstream, store), env={"CSCR_MASTER": MASTER})
    yield base, store
    stop()


def client(base: str, name: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=secret(name), max_retries=0)


def upstream_calls(up: str) -> int:
    return int(httpx.get(up.removesuffix("/v1") + "/_stats").json()["total"])


def spent(base: str, name: str) -> float:
    keys = httpx.get(base + "/admin/keys", headers={"authorization": f"Bearer {MASTER}"}).json()["data"]
    return float(next(k for k in keys if k["name"] == name)["spent_usd"])


def ask(base: str, name: str, content: str, **extra: Any) -> tuple[Any, dict[str, str]]:
    """One non-streamed chat request: (the parsed completion, the response headers)."""
    raw = client(base, name).chat.completions.with_raw_response.create(
        model=extra.pop("model", "m"), messages=[{"role": "user", "content": content}], **extra)
    return raw.parse(), dict(raw.headers)


# --- through the gateway ------------------------------------------------------------------------


def test_hit_never_reaches_the_upstream_and_costs_nothing(gateway: tuple[str, str], upstream: str) -> None:
    base, _ = gateway
    prompt = f"capital of France? {base}"
    first, h1 = ask(base, "alice", prompt, temperature=0)
    assert h1["x-cscr-cache"] == "miss" and float(h1["x-cscr-cost-usd"]) > 0
    before, budget = upstream_calls(upstream), spent(base, "alice")
    second, h2 = ask(base, "alice", prompt, temperature=0)
    assert upstream_calls(upstream) == before  # never reached the provider
    assert h2["x-cscr-cache"] == "hit" and h2["x-cscr-cost-usd"] == "0.00000000"
    assert h2["x-cscr-provider"] == "m" and "x-cscr-budget-remaining-usd" not in h2
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.id == first.id and second.usage is not None and first.usage is not None
    # the original answer's tokens; usage.cost is what this request cost: nothing
    assert second.usage.model_dump(exclude={"cost"}) == first.usage.model_dump(exclude={"cost"})
    assert first.usage.model_dump()["cost"] > 0 and second.usage.model_dump()["cost"] == 0
    assert spent(base, "alice") == budget  # no reservation, no spend
    metrics = {line.split()[0]: float(line.split()[1]) for line in httpx.get(base + "/metrics").text.splitlines()
               if line.startswith("cscr_cache_")}
    assert metrics["cscr_cache_hits_total"] >= 1 and metrics["cscr_cache_misses_total"] >= 1


def test_streamed_miss_is_stored_and_replayed_as_a_stream(gateway: tuple[str, str], upstream: str) -> None:
    base, _ = gateway
    prompt = f"tell me a story {base}"
    c = client(base, "alice")
    with c.chat.completions.with_streaming_response.create(
            model="m", messages=[{"role": "user", "content": prompt}], temperature=0, stream=True,
            stream_options={"include_usage": True}) as raw:
        assert raw.headers["x-cscr-cache"] == "miss"
        chunks = list(raw.parse())
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    usage = chunks[-1].usage
    assert text and usage is not None
    before, budget = upstream_calls(upstream), spent(base, "alice")
    with c.chat.completions.with_streaming_response.create(
            model="m", messages=[{"role": "user", "content": prompt}], temperature=0, stream=True,
            stream_options={"include_usage": True}) as raw:
        assert raw.headers["x-cscr-cache"] == "hit" and raw.headers["x-cscr-cost-usd"] == "0.00000000"
        replayed = list(raw.parse())
    assert "".join(ch.choices[0].delta.content or "" for ch in replayed if ch.choices) == text
    assert [ch.choices[0].finish_reason for ch in replayed if ch.choices][-1] == "stop"
    # the original answer's tokens; the cost is what this request cost: nothing
    assert replayed[-1].usage is not None and replayed[-1].usage.model_dump(exclude={"cost"}) == \
        usage.model_dump(exclude={"cost"})
    assert usage.model_dump()["cost"] > 0 and replayed[-1].usage.model_dump()["cost"] == 0
    # The same request not streamed is the same answer (stream is not part of the key).
    whole, h = ask(base, "alice", prompt, temperature=0)
    assert h["x-cscr-cache"] == "hit" and whole.choices[0].message.content == text
    # Without include_usage, the replay carries no usage chunk.
    quiet = list(c.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}],
                                           temperature=0, stream=True))
    assert all(ch.usage is None for ch in quiet)
    assert upstream_calls(upstream) == before and spent(base, "alice") == budget


def test_streamed_tool_call_round_trips(gateway: tuple[str, str], upstream: str) -> None:
    base, _ = gateway
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    args = {"model": "m", "messages": [{"role": "user", "content": f"weather in Paris {base}"}],
            "temperature": 0, "tools": tools, "tool_choice": "required"}
    c = client(base, "alice")
    streamed = list(c.chat.completions.create(stream=True, **args))
    calls = [tc for ch in streamed if ch.choices for tc in (ch.choices[0].delta.tool_calls or ())]
    assert calls and calls[0].function.name == "get_weather"
    before = upstream_calls(upstream)
    hit = c.chat.completions.create(**args)
    assert upstream_calls(upstream) == before
    call = hit.choices[0].message.tool_calls[0]
    assert hit.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert call.function.arguments == "".join(tc.function.arguments or "" for tc in calls)


def test_keys_are_isolated_unless_shared(gateway: tuple[str, str], upstream: str) -> None:
    base, _ = gateway
    prompt = f"isolation {base}"
    ask(base, "alice", prompt, temperature=0)
    before = upstream_calls(upstream)
    _, h = ask(base, "bob", prompt, temperature=0)
    assert h["x-cscr-cache"] == "miss" and upstream_calls(upstream) == before + 1
    _, h = ask(base, "carol", prompt, temperature=0)  # shared, but nothing shared yet
    assert h["x-cscr-cache"] == "miss"
    before = upstream_calls(upstream)
    _, h = ask(base, "dave", prompt, temperature=0)
    assert h["x-cscr-cache"] == "hit" and upstream_calls(upstream) == before
    _, h = ask(base, "eve", prompt, temperature=0)  # no cache configured: not even looked up
    assert "x-cscr-cache" not in h


def test_only_temperature_zero_is_cached_unless_allowed(gateway: tuple[str, str], upstream: str) -> None:
    base, _ = gateway
    for extra in ({}, {"temperature": 0.7}):  # unset is OpenAI's default of 1
        prompt = f"creative {extra} {base}"
        ask(base, "alice", prompt, **extra)
        before = upstream_calls(upstream)
        _, h = ask(base, "alice", prompt, **extra)
        assert "x-cscr-cache" not in h and upstream_calls(upstream) == before + 1
    prompt = f"loose {base}"
    ask(base, "loose", prompt, temperature=0.7)
    before = upstream_calls(upstream)
    _, h = ask(base, "loose", prompt, temperature=0.7)
    assert h["x-cscr-cache"] == "hit" and upstream_calls(upstream) == before
    _, h = ask(base, "loose", prompt, temperature=0.2)  # a sampling parameter is part of the key
    assert h["x-cscr-cache"] == "miss"


def test_request_header_off_refresh_on(gateway: tuple[str, str], upstream: str) -> None:
    base, _ = gateway
    prompt = f"header {base}"
    ask(base, "alice", prompt, temperature=0)
    before = upstream_calls(upstream)
    _, h = ask(base, "alice", prompt, temperature=0, extra_headers={"x-cscr-cache": "off"})
    assert "x-cscr-cache" not in h and upstream_calls(upstream) == before + 1
    _, h = ask(base, "alice", prompt, temperature=0, extra_headers={"x-cscr-cache": "refresh"})
    assert h["x-cscr-cache"] == "refresh" and upstream_calls(upstream) == before + 2
    _, h = ask(base, "alice", prompt, temperature=0)
    assert h["x-cscr-cache"] == "hit" and upstream_calls(upstream) == before + 2
    # A key whose policy defaults to off caches only what the caller asks for.
    _, h = ask(base, "asker", prompt, temperature=0)
    assert "x-cscr-cache" not in h
    ask(base, "asker", prompt, temperature=0, extra_headers={"x-cscr-cache": "on"})
    _, h = ask(base, "asker", prompt, temperature=0, extra_headers={"x-cscr-cache": "on"})
    assert h["x-cscr-cache"] == "hit"
    with pytest.raises(openai.BadRequestError) as err:
        ask(base, "alice", prompt, temperature=0, extra_headers={"x-cscr-cache": "maybe"})
    assert err.value.body["param"] == "x-cscr-cache"  # type: ignore[index]
    twice = httpx.post(base + "/v1/chat/completions", json={"model": "m", "messages": MSG, "temperature": 0},
                       headers=[("authorization", f"Bearer {secret('alice')}"), ("x-cscr-cache", "on"),
                                ("x-cscr-cache", "off")])
    assert twice.status_code == 400 and twice.json()["error"]["param"] == "x-cscr-cache"


def test_errors_and_cut_streams_are_never_stored(gateway: tuple[str, str], upstream: str) -> None:
    base, _ = gateway
    c = client(base, "alice")
    for _ in range(2):
        with pytest.raises(openai.APIStatusError):
            c.chat.completions.create(model="broken", messages=MSG, temperature=0)
    prompt = f"a long answer please, several words long {base}"
    before = upstream_calls(upstream)
    for _ in range(2):
        with pytest.raises(openai.APIError):  # the cut stream ends in an error event
            list(c.chat.completions.create(model="cutter", messages=[{"role": "user", "content": prompt}],
                                           temperature=0, stream=True))
    assert upstream_calls(upstream) == before + 2


def test_rate_limits_apply_to_hits(gateway: tuple[str, str]) -> None:
    base, _ = gateway
    prompt = f"limited {base}"
    fresh_rate_window()  # the four requests must share one minute
    for _ in range(3):
        ask(base, "limited", prompt, temperature=0)
    with pytest.raises(openai.RateLimitError):
        ask(base, "limited", prompt, temperature=0)


def test_garbage_entry_is_dropped_and_served_normally(gateway: tuple[str, str], upstream: str) -> None:
    base, store_url = gateway
    if not store_url.startswith("redis://"):
        pytest.skip("the memory:// store lives inside the gateway; garbage is written through Redis")
    import redis

    r = redis.Redis.from_url(store_url)
    prompt = f"garbage {base}"
    first, _ = ask(base, "bob", prompt, temperature=0)
    keys = r.keys("cscr:cache:key=bob:*")
    assert keys
    before = upstream_calls(upstream)
    # Bytes that are not UTF-8, then JSON of the right format that is not a complete answer.
    incomplete = json.dumps({"v": 1, "provider": "m", "payload": {"choices": []}})
    for n, garbage in enumerate((b"\xff\xfe not json", incomplete)):
        for k in keys:
            r.set(k, garbage, px=60_000)
        again, h = ask(base, "bob", prompt, temperature=0)
        assert h["x-cscr-cache"] == "miss" and upstream_calls(upstream) == before + n + 1
        assert again.choices[0].message.content == first.choices[0].message.content
    _, h = ask(base, "bob", prompt, temperature=0)  # the fresh answer replaced the garbage
    assert h["x-cscr-cache"] == "hit" and upstream_calls(upstream) == before + 2
    r.close()


def test_unreachable_store_costs_only_the_hit(upstream: str, tmp_path: Path) -> None:
    """``store_failure: open`` and Redis gone: the lookup fails, the request is served as a miss."""
    with redis_server(tmp_path) as srv:
        config = _config(upstream, srv.url)
        config["server"] |= {"store_failure": "open", "store_socket_timeout_s": 0.5}
        base, stop = start_gateway(config, env={"CSCR_MASTER": MASTER})
        try:
            prompt = f"store down {base}"
            ask(base, "alice", prompt, temperature=0)
            srv.stop()
            before = upstream_calls(upstream)
            answer, h = ask(base, "alice", prompt, temperature=0)
            assert h["x-cscr-cache"] == "miss" and h["x-cscr-unmetered"] == "store unreachable"
            assert answer.choices[0].message.content and upstream_calls(upstream) == before + 1
            assert 'cscr_errors_total{kind="cache_unavailable"}' in httpx.get(base + "/metrics").text
        finally:
            stop()


def test_the_cache_write_is_off_the_response_path(upstream: str, redis_srv: RedisServer) -> None:
    """A store whose writes hang (redis ``CLIENT PAUSE ... WRITE``; reads go on) delays no answer,
    streamed or not: the miss is written after the response, and lands once the store resumes."""
    import redis

    config = {"store": redis_srv.url.replace("/0", "/4"), "router": {"artifact": "none"},
              "server": {"store_socket_timeout_s": 30}, "cache": {"ttl_s": 600},  # no keys: nothing to reserve
              "providers": [provider("m", "openai/m", upstream)]}
    base, stop = start_gateway(config)
    r = redis.Redis.from_url(config["store"])
    try:
        body = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": f"paused store {base}"}]}
        streamed = {**body, "stream": True, "messages": [{"role": "user", "content": f"paused stream {base}"}]}
        r.client_pause(60_000, all=False)  # writes wait up to a minute; the old path waited with them
        try:
            # well under the pause and the socket timeout: an answer that waited for its write fails
            answer = httpx.post(base + "/v1/chat/completions", json=body, timeout=20)
            assert answer.status_code == 200 and answer.headers["x-cscr-cache"] == "miss"
            with httpx.stream("POST", base + "/v1/chat/completions", json=streamed, timeout=20) as events:
                assert events.headers["x-cscr-cache"] == "miss"
                text = "".join(events.iter_text())
            assert text.endswith("data: [DONE]\n\n")
            assert r.keys("cscr:cache:*") == []  # answered while the writes still wait
        finally:
            r.client_unpause()
        deadline = time.monotonic() + 30
        while len(r.keys("cscr:cache:*")) < 2:  # the writes land once the store resumes
            assert time.monotonic() < deadline, r.keys("cscr:cache:*")
            time.sleep(0.05)
        before = upstream_calls(upstream)
        again = httpx.post(base + "/v1/chat/completions", json=body, timeout=10)
        assert again.headers["x-cscr-cache"] == "hit" and again.json()["choices"] == answer.json()["choices"]
        replayed = httpx.post(base + "/v1/chat/completions", json=streamed, timeout=10)
        assert replayed.headers["x-cscr-cache"] == "hit" and upstream_calls(upstream) == before
    finally:
        r.close()
        stop()


# --- the pieces ---------------------------------------------------------------------------------


def test_request_key_is_canonical() -> None:
    config = parse_config({"providers": [provider("m", "openai/m", "http://x/v1")]})
    ps = config.providers
    body = {"model": "m", "messages": MSG, "temperature": 0, "seed": 1, "stop": ["x"]}
    k = cache.request_key("ns", body, ps, 0.5)
    shuffled = dict(reversed(list(body.items())))
    assert cache.request_key("ns", {**shuffled, "stream": True, "user": "u"}, ps, 0.5) == k
    for change in ({"seed": 2}, {"temperature": 0.1}, {"n": 2}, {"max_tokens": 5}, {"tools": []},
                   {"response_format": {"type": "json_object"}}, {"model": "auto"}):
        assert cache.request_key("ns", {**body, **change}, ps, 0.5) != k
    assert cache.request_key("other", body, ps, 0.5) != k and cache.request_key("ns", body, ps, 0.4) != k


def test_stream_assembly_inverts_replay() -> None:
    payload = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi there"},
                            "logprobs": None, "finish_reason": "stop"},
                           {"index": 1, "message": {"role": "assistant", "content": None, "tool_calls": [
                               {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                            "logprobs": None, "finish_reason": "tool_calls"}],
               "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    events = cache.replay(payload, include_usage=True)
    assert events[-1] == b"data: [DONE]\n\n"
    assembler = cache.Assembler()
    for event in events[:-1]:
        assembler.add(json.loads(event.removeprefix(b"data: ")))
    assert assembler.result() == payload
    spoilt = cache.Assembler()
    spoilt.add({"choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": {"content": []}}]})
    spoilt.add({"choices": "nonsense"})
    assert spoilt.result() is None
    # a cache must not keep (nor die on) what the SDK cannot read
    for bad in ({"logprobs": {"content": "not a list"}}, {"logprobs": {"content": [1, "x", None]}},
                {"index": "abc"}, {"index": float("inf")}):
        odd = cache.Assembler()
        odd.add({"choices": [{"index": 0, "delta": {"content": "x"}, **bad}]})
        assert odd.result() is None, bad


def test_a_streamed_answer_with_logprobs_is_assembled_and_replayed_whole() -> None:
    """Streams with logprobs were never stored (the assembler gave up on them): every repeat of a
    logprobs request missed. Its chunks' token lists now add up to the non-streamed answer's."""
    tokens = [{"token": t, "logprob": -0.1 * i, "bytes": list(t.encode()), "top_logprobs": []}
              for i, t in enumerate(["Par", "is", "."])]
    whole = {"id": "c3", "object": "chat.completion", "created": 1, "model": "m",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                          "logprobs": {"content": tokens, "refusal": None}, "finish_reason": "stop"}]}
    assembler = cache.Assembler()
    for event in cache.replay(whole, include_usage=False)[:-1]:
        assembler.add(json.loads(event.removeprefix(b"data: ")))
    assert assembler.result() == whole
    by_chunk = cache.Assembler()  # as a provider streams them: one token per chunk
    for t in tokens:
        by_chunk.add({"id": "c3", "created": 1, "model": "m", "choices": [
            {"index": 0, "delta": {"content": t["token"]}, "logprobs": {"content": [t], "refusal": None}}]})
    by_chunk.add({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    assert by_chunk.result() == whole


def test_a_stream_replayed_from_a_non_streamed_answer_carries_its_logprobs() -> None:
    """``stream`` is not part of the key: a caller streaming a request first answered whole gets
    the same answer, logprobs included, in chunks the openai SDK reads."""
    from openai.types.chat import ChatCompletionChunk

    tokens = [{"token": t, "logprob": -0.1 * i, "bytes": list(t.encode()), "top_logprobs": []}
              for i, t in enumerate(["Par", "is"])]
    payload = {"id": "c2", "object": "chat.completion", "created": 1, "model": "m",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"},
                            "logprobs": {"content": tokens, "refusal": None}, "finish_reason": "stop"}]}
    chunks = [ChatCompletionChunk.model_validate(json.loads(e.removeprefix(b"data: ")))
              for e in cache.replay(payload, include_usage=False)[:-1]]
    got = [lp.model_dump() for ch in chunks for c in ch.choices if c.logprobs and c.logprobs.content
           for lp in c.logprobs.content]
    assert got == tokens
    assert "".join(c.delta.content or "" for ch in chunks for c in ch.choices) == "Paris"


def test_decode_refuses_what_it_did_not_write() -> None:
    good = cache.encode({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]}, "m")
    assert cache.decode(good).provider == "m"
    for raw in ("", "not json", "[]", json.dumps({"v": 99}), good.replace('"stop"', '"content_filter"')):
        with pytest.raises(ValueError):
            cache.decode(raw)


def test_cache_config() -> None:
    base = {"providers": [provider("m", "openai/m", "http://x/v1")]}
    assert parse_config(base).cache == CacheConfig()
    top = parse_config({**base, "cache": {"ttl_s": 60, "shared": True, "max_entries": 5}}).cache
    assert top.policy == CachePolicy(ttl_s=60.0, shared=True) and top.max_entries == 5
    assert cache.policy_for(top, None) == top.policy
    key = {"name": "k", "secret_sha256": "a" * 64, "cache": {"enabled": False}}
    config = parse_config({**base, "cache": {"ttl_s": 60}, "keys": [key]})
    assert cache.policy_for(config.cache, config.keys[0]) is None  # a key may opt out of the default
    for bad, field in (({"cache": {"shared": True}}, "cache.shared"),
                       ({"cache": {"max_entries": 0}}, "cache.max_entries"),
                       ({"cache": {"ttl_s": 0}}, "cache.ttl_s"), ({"cache": {"ttl": 5}}, "cache.ttl"),
                       ({"keys": [{**key, "cache": {"shared": "yes"}}]}, "keys[0].cache.shared")):
        with pytest.raises(ConfigError) as err:
            parse_config({**base, **bad})
        assert field in str(err.value)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    with redis_server(tmp_path) as srv:
        s = RedisStore(srv.url, prefix="tc:")
        yield s
        await s.aclose()


async def test_store_cache_ttl_and_drop(store: Store) -> None:
    assert await store.cache_get("a") is None
    await store.cache_put("a", "one", ttl_s=1.0, max_entries=10)  # read back well within its second
    await store.cache_put("b", "two", ttl_s=60, max_entries=10)
    assert await store.cache_get("a") == "one"
    await store.cache_drop("b")
    assert await store.cache_get("b") is None
    time.sleep(1.1)
    assert await store.cache_get("a") is None


async def test_memory_cache_is_lru_bounded() -> None:
    store = MemoryStore()
    for name in "abc":
        await store.cache_put(name, name, ttl_s=60, max_entries=2)
    assert await store.cache_get("a") is None and await store.cache_get("b") == "b"
    await store.cache_put("d", "d", ttl_s=60, max_entries=2)  # b was used last: c goes
    assert await store.cache_get("c") is None and await store.cache_get("b") == "b"


def test_translated_endpoints_share_the_chat_cache(gateway: tuple[str, str], upstream: str) -> None:
    base, _ = gateway
    c = client(base, "alice")
    prompt = f"responses api {base}"
    first = c.responses.create(model="m", input=prompt, temperature=0)
    before = upstream_calls(upstream)
    raw = c.responses.with_raw_response.create(model="m", input=prompt, temperature=0)
    assert raw.headers["x-cscr-cache"] == "hit" and upstream_calls(upstream) == before
    assert raw.parse().output_text == first.output_text
    events = list(c.responses.create(model="m", input=prompt, temperature=0, stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == first.output_text
    body = {"model": "m", "max_tokens": 64, "temperature": 0, "messages": [{"role": "user", "content": prompt}]}
    headers = {"x-api-key": secret("alice"), "anthropic-version": "2023-06-01"}
    answers = [httpx.post(base + "/v1/messages", json=body, headers=headers) for _ in range(2)]
    assert [a.headers["x-cscr-cache"] for a in answers] == ["miss", "hit"]
    assert answers[0].json()["content"] == answers[1].json()["content"]
    streamed = httpx.post(base + "/v1/messages", json={**body, "stream": True}, headers=headers)
    assert streamed.headers["x-cscr-cache"] == "hit" and "message_stop" in streamed.text
    assert upstream_calls(upstream) == before + 1


def test_admin_created_key_keeps_its_cache_policy(gateway: tuple[str, str], upstream: str) -> None:
    base, store_url = gateway
    admin = {"authorization": f"Bearer {MASTER}"}
    name = f"made-{store_url[:5]}"
    made = httpx.post(base + "/admin/keys", headers=admin, json={"name": name, "cache": {"ttl_s": 60, "shared": True}})
    assert made.status_code == 201, made.text
    assert made.json()["cache"] == {"enabled": True, "ttl_s": 60.0, "shared": True, "allow_nondeterministic": False,
                                    "default": True}
    c = openai.OpenAI(base_url=base + "/v1", api_key=made.json()["secret"], max_retries=0)
    prompt = f"admin made {base}"
    ask(base, "carol", prompt, temperature=0)  # carol's policy is shared too: one namespace
    before = upstream_calls(upstream)
    raw = c.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": prompt}],
                                                      temperature=0)
    assert raw.headers["x-cscr-cache"] == "hit" and upstream_calls(upstream) == before
    bad = httpx.post(base + "/admin/keys", headers=admin, json={"name": "bad", "cache": {"ttl_s": -1}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "cache.ttl_s"


async def test_look_up_drops_garbage(store: Store) -> None:
    ticket = cache.Ticket("ns:abc", 60.0, "miss", (None, None))
    await store.cache_put("ns:abc", "{not json", ttl_s=60, max_entries=10)
    await cache.look_up(store, ticket)
    assert ticket.entry is None and ticket.dropped and ticket.status == "miss"
    assert await store.cache_get("ns:abc") is None
    answer = {"choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": "stop"}]}
    assert await cache.remember(store, CacheConfig(), ticket, answer, "m", {})
    await cache.look_up(store, ticket)
    assert ticket.status == "hit" and ticket.entry is not None and ticket.entry.payload == answer
    cut = {"choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": "length"}]}
    assert not await cache.remember(store, CacheConfig(), ticket, cut, "m", {"max_tokens": 5})  # a lowered cap
    assert not await cache.remember(store, CacheConfig(max_entry_bytes=10), ticket, answer, "m", {})


def test_a_spent_budget_still_gets_its_hits(gateway: tuple[str, str]) -> None:
    base, store_url = gateway
    admin = {"authorization": f"Bearer {MASTER}"}
    name = f"broke-{store_url[:5]}"
    made = httpx.post(base + "/admin/keys", headers=admin, json={"name": name, "budget_usd": 1.0,
                                                                 "cache": {"ttl_s": 60}}).json()
    c = openai.OpenAI(base_url=base + "/v1", api_key=made["secret"], max_retries=0)
    prompt = [{"role": "user", "content": f"broke {base}"}]
    first = c.chat.completions.create(model="m", messages=prompt, temperature=0, max_tokens=30)
    assert httpx.patch(base + f"/admin/keys/{name}", headers=admin, json={"budget_usd": 0.0}).status_code == 200
    with pytest.raises(openai.RateLimitError) as err:  # a new question costs money it does not have
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "new"}], temperature=0)
    assert err.value.code == "budget_exceeded"
    hit = c.chat.completions.create(model="m", messages=prompt, temperature=0, max_tokens=30)
    assert hit.choices[0].message.content == first.choices[0].message.content
