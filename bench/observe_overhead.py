"""CPU cost per request of the observability layer (issue 14 item 5): the ``Observe`` middleware
(request id, access record, the JSON access line written to a real file) and the metric updates a
chat request adds. The ASGI app is called directly, without sockets, so only that code is timed.

    .venv/bin/python bench/observe_overhead.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.types import Receive, Scope, Send

from gateway.app import Observe
from gateway.metrics import Metrics
from gateway.observe import ACCESS, JsonFormatter


async def _plain(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}", "more_body": False})


def _scope() -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions", "app": None,
            "headers": [(b"authorization", b"Bearer sk-x"), (b"content-type", b"application/json")]}


async def _drive(app: Callable[..., Any], n: int) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    start = time.process_time()
    for _ in range(n):
        await app(_scope(), receive, send)
    return (time.process_time() - start) / n


def _metrics_per_request(n: int) -> float:
    """The metric updates this change adds to one streamed, keyed request."""
    m = Metrics()
    start = time.process_time()
    for _ in range(n):
        m.requests.labels("200", "true").inc()
        m.stream_endings.labels("ok").inc()
        m.stream_seconds.observe(0.2)
        m.ttft.observe(0.05)
        m.key_spend.labels("team").inc(0.0001)
        m.key_budget_remaining.labels("team").set(4.2)
    return (time.process_time() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    n = args.requests
    with tempfile.TemporaryDirectory() as tmp:
        handler = logging.FileHandler(Path(tmp) / "access.log")
        ACCESS.addHandler(handler)
        ACCESS.propagate = False
        rows: list[tuple[str, float]] = []
        for _ in range(2):  # the first round warms up
            rows = []
            ACCESS.setLevel(logging.WARNING)
            rows.append(("bare app", asyncio.run(_drive(_plain, n))))
            rows.append(("Observe, access log off", asyncio.run(_drive(Observe(_plain), n))))
            ACCESS.setLevel(logging.INFO)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            rows.append(("Observe, access log on (text)", asyncio.run(_drive(Observe(_plain), n))))
            handler.setFormatter(JsonFormatter())
            rows.append(("Observe, access log on (json)", asyncio.run(_drive(Observe(_plain), n))))
            rows.append(("metric updates added per request", _metrics_per_request(n)))
        lines = (Path(tmp) / "access.log").read_text().count("\n")
    base = rows[0][1]
    print("| case | CPU µs/request | added µs |\n|---|---|---|")
    for name, cost in rows:
        added = cost if name.startswith("metric") else cost - base
        print(f"| {name} | {cost * 1e6:.1f} | {added * 1e6:.1f} |")
    print(f"\n{n} requests per case; {lines} access lines written")


if __name__ == "__main__":
    main()
