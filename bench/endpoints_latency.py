"""Client latency of one non-streamed request on each translated endpoint against chat, to see
what the Responses / Messages translation costs: a gateway and the replay upstream (synthetic
answers) in this process, one named provider, sequential requests, the first round a warm-up.

    PYTHONPATH=. python bench/endpoints_latency.py [--n 300]
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

from gateway.upstream import start_upstream
from tests.gateway_fixture import provider, start_gateway

BODIES = {
    "/v1/chat/completions": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/responses": {"model": "m", "input": "hi"},
    "/v1/messages": {"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300)
    n = parser.parse_args().n
    up, stop_up = start_upstream(replay="none")
    base, stop = start_gateway({"router": {"artifact": "none"}, "providers": [provider("m", "openai/m", up)]})
    try:
        with httpx.Client(base_url=base) as client:
            for warm in (True, False):
                for path, body in BODIES.items():
                    times = []
                    for _ in range(n):
                        t = time.perf_counter()
                        client.post(path, json=body).raise_for_status()
                        times.append(time.perf_counter() - t)
                    if not warm:
                        times.sort()
                        print(f"{path:24s} median {statistics.median(times) * 1000:.2f} ms  "
                              f"p90 {times[int(n * 0.9)] * 1000:.2f} ms")
    finally:
        stop()
        stop_up()


if __name__ == "__main__":
    main()
