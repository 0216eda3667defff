"""Closed-loop HTTP/1.1 load generator for the gateway benchmark, run as its own process.

    python bench/loadgen.py --url http://127.0.0.1:8000/v1/chat/completions --bodies bodies.jsonl \
        --concurrency 16 --duration 10 --max-requests 5000 [--count-header x-cscr-policy]

``concurrency`` clients, each on its own keep-alive connection, send the next body as soon as the
previous answer is complete, until ``duration`` seconds or ``max-requests`` answers. The client is
plain asyncio sockets, not httpx: an HTTP library costs ~0.5-1 ms of CPU per request, which on a
2-core machine would be taken from the server under test. Prints one JSON object: latencies (ms),
time to first body byte for streams, errors, and counts of chosen response headers.

Streams: the answer is complete at the terminating chunk; it counts as an error unless it carried
``data: [DONE]``. TTFB is from sending the request to the first body chunk after the headers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Result:
    latencies_ms: list[float] = field(default_factory=list)
    ttfb_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    headers: dict[str, Counter[str]] = field(default_factory=dict)
    numeric_headers: dict[str, list[float]] = field(default_factory=dict)


class Done(Exception):
    """The run is over (time or count)."""


async def _read_response(reader: asyncio.StreamReader, t0: float) -> tuple[int, dict[str, str], bytes, float]:
    """One HTTP/1.1 response: (status, lower-cased headers, body, ttfb seconds after t0)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    ttfb = 0.0
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
        ttfb = time.perf_counter() - t0
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # end of (empty) trailers
                break
            if not parts:
                ttfb = time.perf_counter() - t0
            parts.append((await reader.readexactly(size + 2))[:-2])
        body = b"".join(parts)
    else:
        body = await reader.read()  # close-delimited
        ttfb = time.perf_counter() - t0
    return status, headers, body, ttfb


async def run(url: str, bodies: list[bytes], concurrency: int, duration: float, max_requests: int,
              extra_headers: list[str], count_headers: list[str], numeric_headers: list[str]) -> Result:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    prefix = (f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\ncontent-type: application/json\r\n"
              + "".join(f"{h}\r\n" for h in extra_headers))
    requests = [(prefix + f"content-length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    streams = [b'"stream": true' in b or b'"stream":true' in b for b in bodies]
    result = Result(headers={h: Counter() for h in count_headers}, numeric_headers={h: [] for h in numeric_headers})
    counter = {"next": 0}
    deadline = time.perf_counter() + duration

    def take() -> int:
        i = counter["next"]
        if i >= max_requests or time.perf_counter() >= deadline:
            raise Done
        counter["next"] = i + 1
        return i

    async def client() -> None:
        reader = writer = None
        try:
            while True:
                i = take()
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                req = requests[i % len(requests)]
                t0 = time.perf_counter()
                try:
                    writer.write(req)
                    status, headers, body, ttfb = await asyncio.wait_for(_read_response(reader, t0), 120)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                        ValueError) as exc:
                    result.errors[type(exc).__name__] += 1
                    writer.close()
                    reader = writer = None
                    continue
                elapsed = time.perf_counter() - t0
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    reader = writer = None
                if status != 200:
                    result.errors[f"http_{status}"] += 1
                    continue
                if streams[i % len(streams)] and b"data: [DONE]" not in body:
                    result.errors["stream_without_done"] += 1
                    continue
                result.latencies_ms.append(elapsed * 1000)
                if streams[i % len(streams)]:
                    result.ttfb_ms.append(ttfb * 1000)
                for h in count_headers:
                    result.headers[h][headers.get(h, "-")] += 1
                for h in numeric_headers:
                    if h in headers:
                        result.numeric_headers[h].append(float(headers[h]))
        except Done:
            pass
        finally:
            if writer is not None:
                writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", required=True, help="JSONL file: one request body per line (used in turn)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (upper bound)")
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--header", action="append", default=[], help="extra request header 'Name: value'")
    parser.add_argument("--count-header", action="append", default=[], help="count the values of this header")
    parser.add_argument("--numeric-header", action="append", default=[], help="collect this header as a number")
    args = parser.parse_args(argv)
    with open(args.bodies, "rb") as f:
        bodies = [line.strip() for line in f if line.strip()]
    t0 = time.perf_counter()
    cpu0 = os.times()
    result = asyncio.run(run(args.url, bodies, args.concurrency, args.duration, args.max_requests, args.header,
                             [h.lower() for h in args.count_header], [h.lower() for h in args.numeric_header]))
    wall = time.perf_counter() - t0
    cpu1 = os.times()
    json.dump({
        "wall_s": wall,
        "ok": len(result.latencies_ms),
        "errors": dict(result.errors),
        "latencies_ms": result.latencies_ms,
        "ttfb_ms": result.ttfb_ms,
        "headers": {h: dict(c) for h, c in result.headers.items()},
        "numeric_headers": result.numeric_headers,
        "client_cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
    }, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
