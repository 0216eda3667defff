"""A tiny round-robin HTTP reverse proxy: the load balancer of the multi-replica topology when
neither nginx nor containers are at hand (tests/test_deploy.py, local experiments).

    python deploy/roundrobin.py --port 8080 http://127.0.0.1:8001 http://127.0.0.1:8002

Each request goes to the next backend in turn (per request, not per connection, so one keep-alive
client still reaches every replica); the body is streamed both ways, so SSE passes through as it
arrives. A backend that cannot be reached is skipped for that request. ``x-roundrobin-backend`` on
the response names the backend that answered. Not for production: use nginx (deploy/nginx.conf).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

log = logging.getLogger("roundrobin")

# Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "host", "content-length"}


def create_app(backends: list[str]) -> Starlette:
    """The proxy app over ``backends`` (base URLs, no trailing slash)."""
    order = itertools.cycle(range(len(backends)))
    clients: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        clients["c"] = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(150.0, connect=2.0))
        yield
        await clients["c"].aclose()

    async def proxy(request: Request) -> Response:
        client = clients["c"]
        body = await request.body()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        start = next(order)
        for i in range(len(backends)):
            backend = backends[(start + i) % len(backends)]
            req = client.build_request(request.method, backend + path, headers=headers, content=body)
            try:
                resp = await client.send(req, stream=True)
            except httpx.TransportError as exc:
                log.warning("backend %s unreachable (%s); trying the next", backend, type(exc).__name__)
                continue
            out = [(k, v) for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP]
            out.append(("x-roundrobin-backend", backend))
            return StreamingResponse(resp.aiter_raw(), resp.status_code, dict(out),
                                     background=BackgroundTask(resp.aclose))
        return JSONResponse({"error": {"message": "no backend reachable", "type": "server_error", "param": None,
                                       "code": "bad_gateway"}}, status_code=502)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", proxy, methods=methods)], lifespan=lifespan)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backends", nargs="+", help="backend base URLs, e.g. http://127.0.0.1:8001")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
    backends = [b.rstrip("/") for b in args.backends]
    uvicorn.run(create_app(backends), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
