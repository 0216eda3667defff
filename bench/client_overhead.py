"""What one upstream call costs the gateway's process, by HTTP client: httpx (the gateway's direct
path today), aiohttp (already installed: a litellm dependency) and a bare asyncio HTTP/1.1 client.
Same replay upstream, same bodies, one process per client, side by side.

    .venv/bin/python bench/client_overhead.py [--requests 2000] [--concurrency 1,16]

Prints wall p50/p99 per request and the client process's CPU ms per request (the number that adds
to the gateway's own CPU per request).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gateway_bench import free_port, pct, prompts, start  # noqa: E402
from loadgen import _read_response  # noqa: E402


async def with_httpx(url: str, bodies: list[bytes], n: int, c: int) -> list[float]:
    import httpx

    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(limits=limits, timeout=None) as client:
        return await _drive(n, c, bodies, lambda b: _httpx_one(client, url, b))


async def _httpx_one(client: Any, url: str, body: bytes) -> None:
    resp = await client.post(url, content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 200
    resp.json()


async def with_aiohttp(url: str, bodies: list[bytes], n: int, c: int) -> list[float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: bytes) -> None:
            async with session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
                assert resp.status == 200
                json.loads(await resp.read())

        return await _drive(n, c, bodies, one)


async def with_raw(url: str, bodies: list[bytes], n: int, c: int) -> list[float]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    pool: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def one(body: bytes) -> None:
        conn = pool.pop() if pool else await asyncio.open_connection(host, port)
        head = (f"POST {parts.path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode()
        conn[1].write(head + body)
        status, _, payload, _ = await _read_response(conn[0], time.perf_counter())
        assert status == 200
        json.loads(payload)
        pool.append(conn)

    return await _drive(n, c, bodies, one)


async def _drive(n: int, c: int, bodies: list[bytes], one: Any) -> list[float]:
    lat: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            t = time.perf_counter()
            await one(bodies[i % len(bodies)])
            lat.append((time.perf_counter() - t) * 1000)

    await asyncio.gather(*(worker() for _ in range(c)))
    return lat


def child(kind: str, url: str, bodies_file: str, n: int, c: int) -> None:
    bodies = [line.strip() for line in Path(bodies_file).read_bytes().splitlines() if line.strip()]
    fn = {"httpx": with_httpx, "aiohttp": with_aiohttp, "raw": with_raw}[kind]
    asyncio.run(fn(url, bodies, 50, c))  # warm-up: imports, connections
    cpu0, t0 = os.times(), time.perf_counter()
    lat = asyncio.run(fn(url, bodies, n, c))
    cpu1, wall = os.times(), time.perf_counter() - t0
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    json.dump({"p50": statistics.median(lat), "p99": pct(lat, 99), "cpu_ms": 1000 * cpu / n, "rps": n / wall},
              sys.stdout)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=5, metavar=("KIND", "URL", "BODIES", "N", "C"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, url, bodies, n, c = args.child
        child(kind, url, bodies, int(n), int(c))
        return 0
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="cscr-client-"))
    bodies = work / "bodies.jsonl"
    bodies.write_text("".join(json.dumps({"model": "mistralai/mistral-7b-chat", "max_tokens": 256,
                                          "messages": [{"role": "user", "content": t}]}) + "\n"
                              for t in prompts(200, 0)))
    port = free_port()
    upstream = start("upstream", [sys.executable, "-m", "gateway.cli", "upstream", "--port", str(port),
                                  "--log-level", "warning"], "", f"http://127.0.0.1:{port}/health", work)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for _ in range(args.rounds):
            for c in (int(x) for x in args.concurrency.split(",")):
                for kind in ("httpx", "aiohttp", "raw"):
                    out = subprocess.run([sys.executable, __file__, "--child", kind, url, str(bodies),
                                          str(args.requests), str(c)], capture_output=True, check=True)
                    results.setdefault((kind, c), []).append(json.loads(out.stdout))
    finally:
        upstream.stop()
    print("| client | conc. | client CPU ms/req | wall p50 ms | wall p99 ms | req/s |")
    print("|---|---|---|---|---|---|")
    for (kind, c), rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"| {kind} | {c} | {med['cpu_ms']:.2f} | {med['p50']:.2f} | {med['p99']:.2f} | {med['rps']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
