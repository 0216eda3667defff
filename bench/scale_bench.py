"""Load in the production shape: keyed budgets on a real ``redis-server``, bursts of hundreds of
concurrent requests, a thousand concurrent streams behind a slow upstream, one worker vs two.

    .venv/bin/python bench/scale_bench.py            # all scenarios (~4 minutes on 2 cores)
    .venv/bin/python bench/scale_bench.py --quick    # shorter runs, smaller stream count
    .venv/bin/python bench/scale_bench.py --out docs/results/scale_bench.json

Scenarios, each measured side by side against the replay upstream reached directly:
- ``burst``: N concurrent clients (default 300), `auto`, one worker, a budgeted key on redis://.
  Reports errors by kind (503 = the store refused, the failure this guards against), req/s,
  p50/p99 and the p99 added over direct at the same concurrency, and spend vs budget.
- ``streams``: M concurrent streams (default 1,000) with the upstream holding the first token
  for 200 ms, one worker. Reports errors, time to first byte p50/p99 added over direct.
- ``workers``: `auto` req/s at concurrency 64 with ``--workers 1`` and ``--workers 2``; the ratio.
Every server is its own process; the load generator (bench/loadgen.py) is another.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import (  # noqa: E402  (bench scripts are run as files, not as a package)
    ROOT,
    Server,
    Target,
    free_port,
    get_json,
    pct,
    prompts,
    run_load,
    start,
    start_redis,
    write_bodies,
)

ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # threads: as `cscr serve` sets them


def write_config(path: Path, upstream: int, store: str, key_sha: str, budget: float) -> None:
    raw = yaml.safe_load((ROOT / "gateway.yaml").read_text())
    raw["store"] = store
    raw["keys"] = [{"name": "bench", "secret_sha256": key_sha, "budget_usd": budget}]
    for p in raw["providers"]:
        p["api_base"] = f"http://127.0.0.1:{upstream}/v1"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def gateway(work: Path, label: str, config: Path, workers: int) -> Server:
    port = free_port()
    return start(label, [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port),
                         "--log-level", "warning", "--workers", str(workers)],
                 f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/ready", work, ENV)


def summary(res: dict[str, Any], direct: dict[str, Any] | None = None) -> dict[str, Any]:
    lat, ttfb = res["latencies_ms"], res.get("ttfb_ms") or []
    out: dict[str, Any] = {
        "ok": res["ok"], "errors": res["errors"], "req_s": res["ok"] / max(res["wall_s"], 1e-9),
        "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
        "cpu_ms_per_req": 1000 * res["server_cpu_s"] / max(res["ok"], 1), "peak_rss_mb": res["peak_rss_mb"],
    }
    if ttfb:
        out |= {"ttfb_p50_ms": pct(ttfb, 50), "ttfb_p99_ms": pct(ttfb, 99)}
    if direct is not None:
        out["added_p50_ms"] = out["p50_ms"] - pct(direct["latencies_ms"], 50)
        out["added_p99_ms"] = out["p99_ms"] - pct(direct["latencies_ms"], 99)
        if ttfb and direct.get("ttfb_ms"):
            out["added_ttfb_p99_ms"] = out["ttfb_p99_ms"] - pct(direct["ttfb_ms"], 99)
    return out


def spent(redis_url: str) -> float:
    """Settled spend of every account, in USD, read straight from Redis (nano-dollar integers)."""
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    keys = subprocess.run(["redis-cli", "-p", port, "--scan", "--pattern", "*:settled"], capture_output=True,
                          text=True, check=True).stdout.split()
    total = 0
    for k in keys:
        value = subprocess.run(["redis-cli", "-p", port, "get", k], capture_output=True, text=True).stdout.strip()
        if value.lstrip("-").isdigit():
            total += int(value)
    return total / 1e9


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs; 300 streams instead of 1,000")
    parser.add_argument("--burst", type=int, default=300, help="concurrent clients in the burst scenario")
    parser.add_argument("--streams", type=int, default=None, help="concurrent streams (default 1000; quick 300)")
    parser.add_argument("--ttft-ms", type=float, default=200.0, help="upstream delay before the first token")
    parser.add_argument("--budget-usd", type=float, default=1000.0, help="the bench key's budget")
    parser.add_argument("--out", type=Path, default=None, help="write all results as JSON here")
    args = parser.parse_args(argv)
    n_streams = args.streams or (300 if args.quick else 1000)
    duration = 4.0 if args.quick else 8.0
    work = Path(tempfile.mkdtemp(prefix="cscr-scale-"))
    key = "sk-bench-" + secrets.token_hex(16)
    auth = [f"Authorization: Bearer {key}"]
    servers: list[Server] = []
    redis, redis_url = start_redis(work)
    results: dict[str, Any] = {"command": " ".join(["python", "bench/scale_bench.py", *argv]),
                               "machine": {"cpus": os.cpu_count()}}
    try:
        up_port, slow_port = free_port(), free_port()
        upstream = start("upstream", [sys.executable, "-m", "gateway.cli", "upstream", "--port", str(up_port),
                                      "--log-level", "warning"], f"http://127.0.0.1:{up_port}",
                         f"http://127.0.0.1:{up_port}/health", work, ENV)
        slow = start("upstream-slow", [sys.executable, "-m", "gateway.cli", "upstream", "--port", str(slow_port),
                                       "--log-level", "warning", "--latency-ms", str(args.ttft_ms)],
                     f"http://127.0.0.1:{slow_port}", f"http://127.0.0.1:{slow_port}/health", work, ENV)
        servers += [upstream, slow]
        sha = hashlib.sha256(key.encode()).hexdigest()
        write_config(work / "gw.yaml", up_port, redis_url, sha, args.budget_usd)
        write_config(work / "gw-slow.yaml", slow_port, redis_url, sha, args.budget_usd)
        one = gateway(work, "gateway-1w", work / "gw.yaml", 1)
        two = gateway(work, "gateway-2w", work / "gw.yaml", 2)
        gw_slow = gateway(work, "gateway-slow", work / "gw-slow.yaml", 1)
        servers += [one, two, gw_slow]
        results["router"] = get_json(f"{one.url}/ready")["checks"].get("router")
        texts = prompts(400, 0)
        bodies: dict[str, Path] = {}
        for name, model, stream in (("direct", "mistralai/mistral-7b-chat", False), ("auto", "auto", False),
                                    ("direct-stream", "mistralai/mistral-7b-chat", True),
                                    ("auto-stream", "auto", True)):
            bodies[name] = work / f"{name}.jsonl"
            write_bodies(bodies[name], model, texts, stream)
        direct = Target("direct", upstream, "/v1/chat/completions", "")
        direct_slow = Target("direct-slow", slow, "/v1/chat/completions", "")
        t_one = Target("gateway-1w", one, "/v1/chat/completions", "auto", auth)
        t_two = Target("gateway-2w", two, "/v1/chat/completions", "auto", auth)
        t_slow = Target("gateway-slow", gw_slow, "/v1/chat/completions", "auto", auth)
        for t, b in ((t_one, "auto"), (t_two, "auto"), (t_slow, "auto-stream")):  # warm-up
            run_load(t, bodies[b], 4, 30, 40, upstream)

        spend0 = spent(redis_url)
        d = run_load(direct, bodies["direct"], args.burst, duration, 20_000, upstream)
        g = run_load(t_one, bodies["auto"], args.burst, duration, 20_000, upstream)
        results["burst"] = {"concurrency": args.burst, "direct": summary(d), "gateway": summary(g, d),
                            "spend_usd": spent(redis_url) - spend0, "budget_usd": args.budget_usd}
        print(f"burst c={args.burst}: {json.dumps(results['burst']['gateway'])}", file=sys.stderr)

        ds = run_load(direct_slow, bodies["direct-stream"], n_streams, duration + 4, n_streams * 3, slow)
        gs = run_load(t_slow, bodies["auto-stream"], n_streams, duration + 4, n_streams * 3, slow)
        results["streams"] = {"concurrency": n_streams, "ttft_ms": args.ttft_ms, "direct": summary(ds),
                              "gateway": summary(gs, ds)}
        print(f"streams c={n_streams}: {json.dumps(results['streams']['gateway'])}", file=sys.stderr)

        w1 = run_load(t_one, bodies["auto"], 64, duration, 20_000, upstream)
        w2 = run_load(t_two, bodies["auto"], 64, duration, 20_000, upstream)
        s1, s2 = summary(w1), summary(w2)
        results["workers"] = {"one": s1, "two": s2, "ratio": s2["req_s"] / max(s1["req_s"], 1e-9)}
        print(f"workers: 1w {s1['req_s']:.0f} req/s, 2w {s2['req_s']:.0f} req/s, "
              f"ratio {results['workers']['ratio']:.2f}", file=sys.stderr)
        results["machine"]["load_avg_at_end"] = os.getloadavg()
        print(json.dumps(results, indent=1))
        if args.out is not None:
            args.out.write_text(json.dumps(results, indent=1))
    finally:
        for s in reversed(servers):
            s.stop()
        redis.terminate()
        redis.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
