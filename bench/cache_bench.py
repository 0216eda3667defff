"""Response cache hit vs miss, side by side in one run: latency and the gateway's CPU per request.

    PYTHONPATH=. .venv/bin/python bench/cache_bench.py [--n 300] [--rounds 3] [--store memory|redis]

The replay upstream (synthetic answers, no added latency) and the gateway are separate processes on
loopback; one client sends sequential requests. Scenarios, interleaved round by round so a busy
machine slows them alike (the first round is a warm-up and not counted):

- ``direct``: straight to the upstream (what a provider call costs on this machine);
- ``off``: through the gateway, ``x-cscr-cache: off`` (no lookup, no store: the gateway without a cache);
- ``off-new``: the same with a new prompt each time (the baseline of ``miss``: token counts and the
  upstream's answer are per prompt);
- ``miss``: the cache on, a new prompt each time (lookup, provider call, store);
- ``hit``: the cache on, the same prompt (lookup, answer from the store; the upstream is not called);
- ``hit-stream``: the same, streamed (the answer replayed as SSE chunks).

Per scenario: p50 / p90 latency, and the gateway's CPU seconds per request (utime + stime from
/proc, so 10 ms ticks: keep ``--n`` in the hundreds). On a shared machine the end-to-end numbers
swing by a millisecond or more, so the cache's own work is also timed in process (``micro``: the
ticket — canonical JSON and sha256 —, the memory:// lookup with decode, and the store of a miss).
Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.gateway_bench import Server, cpu_s, free_port, start

KEY = "sk-cache-bench"
PROMPT = "What is the capital of France? Answer in one sentence."


def _config(path: Path, upstream: int, store: str) -> None:
    path.write_text(yaml.safe_dump({
        "store": store,
        "router": {"artifact": "none"},
        "keys": [{"name": "bench", "secret_sha256": hashlib.sha256(KEY.encode()).hexdigest(), "budget_usd": 1000.0,
                  "cache": {"ttl_s": 3600}}],
        "providers": [{"name": "m", "model": "openai/m", "api_base": f"http://127.0.0.1:{upstream}/v1",
                       "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}],
    }))


def _scenarios(gateway: str, upstream: str) -> dict[str, tuple[str, Callable[[int], dict[str, Any]], dict[str, str]]]:
    """name -> (URL, body of the i-th request, headers)."""
    auth = {"authorization": f"Bearer {KEY}"}

    def body(prompt: str, **extra: Any) -> dict[str, Any]:
        return {"model": "m", "temperature": 0, "max_tokens": 64, "messages": [{"role": "user", "content": prompt}],
                **extra}

    run = str(time.time())  # a miss must be a miss in every run, even against a persistent Redis
    return {
        "direct": (upstream + "/v1/chat/completions", lambda i: body(PROMPT), {}),
        "off": (gateway + "/v1/chat/completions", lambda i: body(PROMPT), {**auth, "x-cscr-cache": "off"}),
        "off-new": (gateway + "/v1/chat/completions", lambda i: body(f"{PROMPT} #{run}-off-{i}"),
                    {**auth, "x-cscr-cache": "off"}),
        "miss": (gateway + "/v1/chat/completions", lambda i: body(f"{PROMPT} #{run}-{i}"), auth),
        "hit": (gateway + "/v1/chat/completions", lambda i: body(PROMPT), auth),
        "hit-stream": (gateway + "/v1/chat/completions",
                       lambda i: body(PROMPT, stream=True, stream_options={"include_usage": True}), auth),
    }


def _round(client: httpx.Client, url: str, make: Callable[[int], dict[str, Any]], headers: dict[str, str],
           n: int, offset: int, gw: Server) -> tuple[list[float], float, list[str]]:
    """(latencies, gateway CPU seconds, x-cscr-cache values) of ``n`` sequential requests."""
    times, marks = [], []
    cpu0 = cpu_s(gw.proc.pid)
    for i in range(n):
        t = time.perf_counter()
        r = client.post(url, json=make(offset + i), headers=headers)
        r.read()
        times.append(time.perf_counter() - t)
        r.raise_for_status()
        marks.append(r.headers.get("x-cscr-cache", "-"))
    return times, cpu_s(gw.proc.pid) - cpu0, marks


def _micro(repeat: int = 2000) -> dict[str, float]:
    """Microseconds per call of the cache's own steps, in this process (median of 5 runs)."""
    from gateway import cache
    from gateway.config import CacheConfig, CachePolicy, KeyConfig, ProviderConfig
    from gateway.store import MemoryStore

    key = KeyConfig("bench", "0" * 64, cache=CachePolicy(ttl_s=3600))
    providers = (ProviderConfig(name="m", model="openai/m"),)
    body = {"model": "m", "temperature": 0, "max_tokens": 64, "messages": [{"role": "user", "content": PROMPT * 8}]}
    answer = {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "usage": {"prompt_tokens": 90},
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris. " * 60},
                           "logprobs": None, "finish_reason": "stop"}]}
    store, config = MemoryStore(), CacheConfig()

    async def steps() -> dict[str, float]:
        out: dict[str, list[float]] = {"ticket_us": [], "lookup_hit_us": [], "store_miss_us": []}
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(repeat):
                ticket = cache.ticket_for(config, key, body, {}, providers, 0.5)
            t1 = time.perf_counter()
            assert ticket is not None
            for _ in range(repeat):
                await cache.remember(store, config, ticket, answer, "m", body)
            t2 = time.perf_counter()
            for _ in range(repeat):
                ticket.status, ticket.entry = "miss", None
                await cache.look_up(store, ticket)
            t3 = time.perf_counter()
            out["ticket_us"].append((t1 - t0) / repeat * 1e6)
            out["store_miss_us"].append((t2 - t1) / repeat * 1e6)
            out["lookup_hit_us"].append((t3 - t2) / repeat * 1e6)
        return {k: statistics.median(v) for k, v in out.items()}

    return asyncio.run(steps())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="requests per scenario per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds counted (after one warm-up round)")
    parser.add_argument("--store", choices=["memory", "redis"], default="memory")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = parser.parse_args()
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}  # threads: as `cscr serve` sets them
    servers: list[Server] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        redis_ctx = None
        try:
            store = "memory://"
            if args.store == "redis":
                from tests.redis_fixture import RedisServer

                redis_ctx = RedisServer(work)
                redis_ctx.start()
                store = redis_ctx.url
            up_port, gw_port = free_port(), free_port()
            upstream = start("upstream", [sys.executable, "-m", "gateway.cli", "upstream", "--port", str(up_port),
                                          "--replay", "none", "--log-level", "warning"],
                             f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{up_port}/health", work, env)
            servers.append(upstream)
            _config(work / "gateway.yaml", up_port, store)
            gw = start("gateway", [sys.executable, "-m", "gateway.cli", "serve", "--config", str(work / "gateway.yaml"),
                                   "--port", str(gw_port), "--log-level", "warning"],
                       f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{gw_port}/health", work, env)
            servers.append(gw)
            report = _measure(_scenarios(gw.url, upstream.url), gw, args.n, args.rounds)
        finally:
            for s in reversed(servers):
                s.stop()
            if redis_ctx is not None:
                redis_ctx.stop()
    report["micro"] = _micro()
    _print(report, args)
    if args.out is not None:
        args.out.write_text(json.dumps({"store": args.store, "n": args.n, "rounds": args.rounds, **report}, indent=2))


def _measure(scenarios: dict[str, tuple[str, Callable[[int], dict[str, Any]], dict[str, str]]], gw: Server,
             n: int, rounds: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {name: [] for name in scenarios}
    cpu: dict[str, float] = dict.fromkeys(scenarios, 0.0)
    marks: dict[str, set[str]] = {name: set() for name in scenarios}
    with httpx.Client(timeout=30) as client:
        for r in range(rounds + 1):
            for name, (url, make, headers) in scenarios.items():
                t, c, m = _round(client, url, make, headers, n, r * n, gw)
                if r > 0:
                    times[name] += t
                    cpu[name] += c if name != "direct" else 0.0
                    marks[name] |= set(m)
    out: dict[str, Any] = {}
    for name, ts in times.items():
        ts.sort()
        out[name] = {"p50_ms": statistics.median(ts) * 1000, "p90_ms": ts[int(len(ts) * 0.9)] * 1000,
                     "gateway_cpu_ms_per_request": cpu[name] / len(ts) * 1000, "x-cscr-cache": sorted(marks[name])}
    return out


def _print(report: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"store {args.store}, {args.rounds} rounds x {args.n} sequential requests per scenario (after a warm-up)")
    print(f"{'scenario':12s} {'p50 ms':>8s} {'p90 ms':>8s} {'gw CPU ms/req':>14s}  x-cscr-cache")
    for name, r in report.items():
        if name == "micro":
            continue
        cpu = "-" if name == "direct" else f"{r['gateway_cpu_ms_per_request']:.3f}"
        print(f"{name:12s} {r['p50_ms']:8.3f} {r['p90_ms']:8.3f} {cpu:>14s}  {','.join(r['x-cscr-cache'])}")
    off, new, miss, hit = report["off"], report["off-new"], report["miss"], report["hit"]
    print(f"hit over a bare round trip (direct): {hit['p50_ms'] - report['direct']['p50_ms']:+.3f} ms p50; "
          f"lookup+store on a miss: {miss['p50_ms'] - new['p50_ms']:+.3f} ms p50; "
          f"hit vs off: {hit['p50_ms'] - off['p50_ms']:+.3f} ms p50, "
          f"CPU {hit['gateway_cpu_ms_per_request']:.3f} vs {off['gateway_cpu_ms_per_request']:.3f} ms/request")
    print("in process (memory://): " + ", ".join(f"{k} {v:.1f}" for k, v in report["micro"].items()))


if __name__ == "__main__":
    main()
