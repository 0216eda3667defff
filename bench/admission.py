"""Admission overhead per request: the store work the gateway does for one keyed request
(optional rate-limit hit, one reservation that also reads the spend, one settlement that also
returns the remaining budget), memory:// vs
redis:// side by side in one run, sequential and with 32 concurrent requests.

    python bench/admission.py [--n 3000] [--redis-url redis://127.0.0.1:PORT/0]

Without --redis-url it starts its own redis-server on a free port (needs redis-server on PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

from gateway.store import MemoryStore, RedisStore, Store


async def one_request(store: Store, account: str, i: int, rpm: bool) -> float:
    t = time.perf_counter()
    if rpm:
        await store.hit("rpm:bench", 1, 10**9, 60)
    res, _ = await store.reserve(account, 0.001, 10**9, 600)
    assert res is not None
    await store.settle(res, 0.0009)  # returns the remaining-budget figure too
    return time.perf_counter() - t


async def run(store: Store, n: int, concurrency: int, rpm: bool) -> list[float]:
    times: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def task(i: int) -> None:
        async with sem:
            times.append(await one_request(store, f"bench:{i % 8}", i, rpm))

    for i in range(min(200, n)):  # warm-up
        await one_request(store, "warm", i, rpm)
    await asyncio.gather(*(task(i) for i in range(n)))
    return times


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main_async(n: int, url: str) -> None:
    rows = []
    for name, make in (("memory://", MemoryStore), ("redis://", lambda: RedisStore(url, prefix="bench:"))):
        for rpm in (False, True):
            for conc in (1, 32):
                store = make()
                t = time.perf_counter()
                times = await run(store, n, conc, rpm)
                wall = time.perf_counter() - t
                await store.aclose()
                rows.append((name, rpm, conc, statistics.median(times) * 1e6, pct(times, 0.99), n / wall))
    print(f"admission overhead per keyed request, {n} requests each: reserve + settle (+ rpm hit)")
    print("| store | rpm limit | concurrency | p50 µs | p99 µs | requests/s (store work only) |")
    print("|---|---|---|---|---|---|")
    for name, rpm, conc, p50, p99, rps in rows:
        print(f"| {name} | {'yes' if rpm else 'no'} | {conc} | {p50:.0f} | {p99:.0f} | {rps:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    proc = None
    url = args.redis_url
    if url is None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found; pass --redis-url")
        port = free_port()
        proc = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no",
                                 "--dir", tempfile.mkdtemp()], stdout=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.3)
    try:
        asyncio.run(main_async(args.n, url))
    finally:
        if proc is not None:
            proc.terminate()


if __name__ == "__main__":
    main()
