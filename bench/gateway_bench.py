"""Side-by-side benchmark: direct to the replay upstream, through cscr-gateway (a named provider and
``auto`` with the configured router), and through LiteLLM's proxy, in one run on one machine.

    bash bench/setup_litellm_proxy.sh                 # once: LiteLLM's proxy in its own venv
    .venv/bin/python bench/gateway_bench.py           # full run (~8 minutes)
    .venv/bin/python bench/gateway_bench.py --quick   # ~1.5 minutes, concurrency 1 and 16

Every server is a separate process on loopback; the load generator (bench/loadgen.py) is another.
The targets are interleaved scenario by scenario (and round by round) so that a busy machine slows
them alike. Per target and scenario: requests/s, p50/p99 latency, added latency over direct (same
scenario), errors, time to first byte for streams, the server's CPU seconds per request (utime +
stime from /proc, the process and its children) and resident memory (idle after warm-up; peak under
load). The prompts are RouterBench test-split prompts, which the replay upstream answers with the
recorded answers. Results: a Markdown table on stdout and all numbers as JSON (``--out``).
Only 127.0.0.1 is ever contacted; LiteLLM runs with its local price map (no fetch).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
UPSTREAM_MODEL = "mistralai/mistral-7b-chat"  # a cheap RouterBench model: short recorded answers
NAMED = "mistral-7b-chat"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- processes and /proc ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return out


def cpu_s(pid: int) -> float:
    """utime + stime of the process tree, in seconds (children still running are counted live)."""
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / CLK_TCK


def rss_mb(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1])
        except OSError:
            continue
    return total * PAGE / 2**20


class RssSampler:
    """Peak RSS of a process tree while a scenario runs (sampled every 100 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self._stop.wait(0.1)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.pid))


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(name: str, args: list[str], url: str, health: str, workdir: Path, env: dict[str, str] | None = None,
          timeout: float = 180.0) -> Server:
    log = workdir / f"{name}.log"
    proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=workdir,
                            env={**os.environ, **(env or {})})
    server = Server(name, proc, url, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(health, timeout=2) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            time.sleep(0.3)
    server.stop()
    raise TimeoutError(f"{name} not healthy after {timeout}s; see {log}")


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server of the bench's own on a free port (nothing saved to disk)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:  # /ready answers 503 with a body
        return json.loads(err.read())


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    server: Server
    path: str  # chat completions path
    model: str
    headers: list[str] = field(default_factory=list)
    count_headers: list[str] = field(default_factory=list)
    numeric_headers: list[str] = field(default_factory=list)


def prompts(n: int, seed: int) -> list[str]:
    """``n`` distinct RouterBench test-split prompts, all task families, shuffled (distinct so that
    a router's embedding cache, if any, does not hide the encoder's cost)."""
    import pandas as pd

    from router_core.paths import default_data_dir

    df = pd.read_parquet(default_data_dir() / "routerbench_subset" / "routerbench_subset.parquet",
                         columns=["prompt_text", "split"])
    texts = sorted(set(df[df["split"] == "test"]["prompt_text"]))
    random.Random(seed).shuffle(texts)
    return texts[:n]


def write_bodies(path: Path, model: str, texts: list[str], stream: bool) -> None:
    with path.open("w") as f:
        for t in texts:
            body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": t}], "max_tokens": 256}
            if stream:
                body |= {"stream": True, "stream_options": {"include_usage": True}}
            f.write(json.dumps(body) + "\n")


def gateway_config(path: Path, upstream: int, artifact: str, key_sha: str, store: str = "memory://",
                   budget_usd: float | None = None) -> None:
    raw = yaml.safe_load((ROOT / "gateway.yaml").read_text())
    raw["store"] = store
    raw["router"]["artifact"] = artifact
    key: dict[str, Any] = {"name": "bench", "secret_sha256": key_sha}  # auth on, like LiteLLM's master key
    if budget_usd is not None:
        key["budget_usd"] = budget_usd  # metered: every request reserves and settles in the store
    raw["keys"] = [key]
    for p in raw["providers"]:
        p["api_base"] = f"http://127.0.0.1:{upstream}/v1"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def litellm_config(path: Path, upstream: int) -> None:
    path.write_text(yaml.safe_dump({
        "model_list": [{"model_name": NAMED, "litellm_params": {
            "model": f"openai/{UPSTREAM_MODEL}", "api_base": f"http://127.0.0.1:{upstream}/v1", "api_key": "unused"}}],
        "litellm_settings": {"drop_params": True, "turn_off_message_logging": True, "set_verbose": False},
    }))


def run_load(target: Target, bodies: Path, concurrency: int, duration: float, max_requests: int,
             upstream: Server) -> dict[str, Any]:
    cmd = [sys.executable, str(LOADGEN), "--url", target.server.url + target.path, "--bodies", str(bodies),
           "--concurrency", str(concurrency), "--duration", str(duration), "--max-requests", str(max_requests)]
    for h in target.headers:
        cmd += ["--header", h]
    for h in target.count_headers:
        cmd += ["--count-header", h]
    for h in target.numeric_headers:
        cmd += ["--numeric-header", h]
    pid = target.server.proc.pid
    cpu0, up0 = cpu_s(pid), cpu_s(upstream.proc.pid)
    with RssSampler(pid) as rss:
        out = subprocess.run(cmd, capture_output=True, check=True, timeout=duration + 180)
    result: dict[str, Any] = json.loads(out.stdout)
    result["server_cpu_s"] = cpu_s(pid) - cpu0
    result["upstream_cpu_s"] = cpu_s(upstream.proc.pid) - up0 if target.server is not upstream else 0.0
    result["peak_rss_mb"] = rss.peak
    return result


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    lat = [x for r in runs for x in r["latencies_ms"]]
    ttfb = [x for r in runs for x in r["ttfb_ms"]]
    ok = sum(r["ok"] for r in runs)
    errors: Counter[str] = Counter()
    headers: dict[str, Counter[str]] = {}
    numeric: dict[str, list[float]] = {}
    for r in runs:
        errors.update(r["errors"])
        for h, c in r["headers"].items():
            headers.setdefault(h, Counter()).update(c)
        for h, xs in r["numeric_headers"].items():
            numeric.setdefault(h, []).extend(xs)
    n_err = sum(errors.values())
    return {
        "ok": ok,
        "errors": dict(errors),
        "error_count": n_err,
        "rps": statistics.median(r["ok"] / r["wall_s"] for r in runs),
        "rps_runs": [r["ok"] / r["wall_s"] for r in runs],
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "ttfb_p50_ms": pct(ttfb, 50),
        "ttfb_p99_ms": pct(ttfb, 99),
        "cpu_ms_per_req": 1000 * sum(r["server_cpu_s"] for r in runs) / max(ok + n_err, 1),
        "upstream_cpu_ms_per_req": 1000 * sum(r["upstream_cpu_s"] for r in runs) / max(ok + n_err, 1),
        "client_cpu_ms_per_req": 1000 * sum(r["client_cpu_s"] for r in runs) / max(ok + n_err, 1),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "headers": {h: dict(c) for h, c in headers.items()},
        "numeric_headers_p50": {h: pct(xs, 50) for h, xs in numeric.items()},
    }


def profile(target: Target, bodies: Path, out: Path, seconds: float, py_spy: str, upstream: Server,
            concurrency: int = 16) -> Path:
    """py-spy (raw collapsed stacks) on the server while the load generator drives it."""
    raw = out.with_name(f"pyspy-{out.name}.txt")
    spy = subprocess.Popen([py_spy, "record", "--pid", str(target.server.proc.pid), "--duration", str(int(seconds)),
                            "--rate", "250", "--format", "raw", "--output", str(raw), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(1.0)
    run_load(target, bodies, concurrency, seconds - 1.5, 10**6, upstream)
    spy.wait(timeout=seconds + 60)
    return raw


def top_frames(raw: Path, n: int = 25) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(inclusive, self) shares of samples per frame ``function (file)`` from py-spy's raw output."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        total += k
        frames = [f.rsplit(":", 1)[0] for f in stack.split(";")[1:]]  # drop the thread name; drop line numbers
        for f in set(frames):
            inclusive[f] += k
        if frames:
            own[frames[-1]] += k
    return ([(f, c / total) for f, c in inclusive.most_common(n)], [(f, c / total) for f, c in own.most_common(n)])


# --- report ----------------------------------------------------------------------------------


def fmt(x: float, digits: int = 1) -> str:
    return "—" if x != x else f"{x:,.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    rows = ["| path | mode | conc. | req/s | p50 ms | p99 ms | added p50 / p99 ms | TTFB p50 / p99 ms "
            "| errors | server CPU ms/req | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    by_key = {(s["target"], s["stream"], s["concurrency"]): s for s in results["scenarios"]}
    for s in results["scenarios"]:
        d = by_key.get(("direct", s["stream"], s["concurrency"]))
        added = "—" if d is None or s["target"] == "direct" else (
            f"{fmt(s['p50_ms'] - d['p50_ms'])} / {fmt(s['p99_ms'] - d['p99_ms'])}")
        ttfb = f"{fmt(s['ttfb_p50_ms'])} / {fmt(s['ttfb_p99_ms'])}" if s["stream"] else "—"
        rows.append(f"| {s['target']} | {'stream' if s['stream'] else 'json'} | {s['concurrency']} | "
                    f"{fmt(s['rps'], 0)} | {fmt(s['p50_ms'], 2)} | {fmt(s['p99_ms'], 2)} | {added} | {ttfb} | "
                    f"{s['error_count']} | {fmt(s['cpu_ms_per_req'], 2)} | {fmt(s['peak_rss_mb'], 0)} |")
    idle = ", ".join(f"{k} {v:.0f} MB" for k, v in results["idle_rss_mb"].items())
    lines = ["\n".join(rows), "", f"Idle RSS after warm-up: {idle}.", f"Router: {json.dumps(results['router'])}."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short scenarios, concurrency 1 and 16, one round")
    parser.add_argument("--duration", type=float, default=None, help="seconds per scenario (default 8; quick 3)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds over all scenarios (default 2; quick 1)")
    parser.add_argument("--concurrency", default=None, help="comma list (default 1,16,64; quick 1,16)")
    parser.add_argument("--max-requests", type=int, default=20_000, help="per scenario and target")
    parser.add_argument("--targets", default="direct,gateway-named,gateway-auto,litellm-proxy")
    parser.add_argument("--modes", default="json,stream")
    parser.add_argument("--artifact", default="bundled", help="router.artifact for the gateway (bundled|PATH|none)")
    parser.add_argument("--litellm-venv", default="/tmp/litellm-proxy-venv")
    parser.add_argument("--prompts", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write all results as JSON here")
    parser.add_argument("--profile", type=Path, default=None, help="also py-spy the gateway; write stacks here")
    parser.add_argument("--profile-concurrency", type=int, default=16, help="clients while profiling")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "/tmp/benchenv/bin/py-spy")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="K=V",
                        help="extra environment for the gateway process only (experiments)")
    parser.add_argument("--gateway-arg", action="append", default=[], metavar="ARG",
                        help="extra argument to `cscr serve`, e.g. --gateway-arg=--workers=2")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:K=V[,K=V]",
                        help="also run a second gateway with this environment (ARGS=... adds `cscr serve` "
                             "arguments), as targets LABEL-named and LABEL-auto (side-by-side experiments)")
    parser.add_argument("--store", choices=["memory", "redis"], default="memory",
                        help="the gateway's store; redis starts a redis-server of the bench's own (production shape)")
    parser.add_argument("--budget-usd", type=float, default=None,
                        help="give the bench key this budget (requests reserve and settle; default: no budget)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a plain kill still stops the servers
    duration = args.duration or (3.0 if args.quick else 8.0)
    rounds = args.rounds or (1 if args.quick else 2)
    concurrency = [int(c) for c in (args.concurrency or ("1,16" if args.quick else "1,16,64")).split(",")]
    names = args.targets.split(",")
    modes = [m == "stream" for m in args.modes.split(",")]
    litellm_bin = Path(args.litellm_venv) / "bin" / "litellm"
    if "litellm-proxy" in names and not litellm_bin.exists():
        print(f"note: {litellm_bin} missing (run bench/setup_litellm_proxy.sh); LiteLLM's proxy left out",
              file=sys.stderr)
        names.remove("litellm-proxy")

    work = Path(tempfile.mkdtemp(prefix="cscr-bench-"))
    texts = prompts(args.prompts, args.seed)
    key = "sk-bench-" + secrets.token_hex(16)
    import hashlib

    servers: list[Server] = []
    cleanup: list[Any] = []
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # threads: as `cscr serve` sets them
    try:
        up_port = free_port()
        upstream = start("upstream", [sys.executable, "-m", "gateway.cli", "upstream", "--port", str(up_port),
                                      "--log-level", "warning"], f"http://127.0.0.1:{up_port}",
                         f"http://127.0.0.1:{up_port}/health", work, env)
        servers.append(upstream)
        targets: dict[str, Target] = {"direct": Target("direct", upstream, "/v1/chat/completions", UPSTREAM_MODEL)}
        router: dict[str, Any] = {}
        if any(n.startswith("gateway") for n in names):
            gw_port = free_port()
            store_url = "memory://"
            if args.store == "redis":
                redis_proc, store_url = start_redis(work)
                cleanup.append(lambda: (redis_proc.terminate(), redis_proc.wait()))
            gateway_config(work / "gateway.yaml", up_port, args.artifact, hashlib.sha256(key.encode()).hexdigest(),
                           store_url, args.budget_usd)
            gw = start("gateway", [sys.executable, "-m", "gateway.cli", "serve", "--config", str(work / "gateway.yaml"),
                                   "--port", str(gw_port), "--log-level", "warning", *args.gateway_arg],
                       f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{gw_port}/health", work,
                       {**env, **dict(kv.split("=", 1) for kv in args.gateway_env)})
            servers.append(gw)
            router = get_json(f"{gw.url}/ready")["checks"]["router"]
            auth = [f"Authorization: Bearer {key}"]
            gw_headers = ["x-cscr-policy", "x-cscr-provider"]
            gw_numeric = ["x-cscr-gateway-ms", "x-cscr-routing-ms"]
            targets["gateway-named"] = Target("gateway-named", gw, "/v1/chat/completions", NAMED, auth,
                                              gw_headers, gw_numeric)
            targets["gateway-auto"] = Target("gateway-auto", gw, "/v1/chat/completions", "auto", auth,
                                             gw_headers, gw_numeric)
        for spec in args.variant:
            label, _, kvs = spec.partition(":")
            v_port = free_port()
            v_env = {**env, **dict(kv.split("=", 1) for kv in kvs.split(",") if kv)}
            v_args = v_env.pop("ARGS", "").split()  # ARGS=--workers=2: extra `cscr serve` arguments
            v = start(label, [sys.executable, "-m", "gateway.cli", "serve", "--config", str(work / "gateway.yaml"),
                              "--port", str(v_port), "--log-level", "warning", *v_args],
                      f"http://127.0.0.1:{v_port}", f"http://127.0.0.1:{v_port}/health", work, v_env)
            servers.append(v)
            auth = [f"Authorization: Bearer {key}"]
            for kind, model in (("named", NAMED), ("auto", "auto")):
                targets[f"{label}-{kind}"] = Target(f"{label}-{kind}", v, "/v1/chat/completions", model, auth,
                                                    ["x-cscr-policy", "x-cscr-provider"],
                                                    ["x-cscr-gateway-ms", "x-cscr-routing-ms"])
                names.append(f"{label}-{kind}")
        if "litellm-proxy" in names:
            lt_port = free_port()
            litellm_config(work / "litellm.yaml", up_port)
            lt = start("litellm-proxy", [str(litellm_bin), "--config", str(work / "litellm.yaml"), "--host",
                                         "127.0.0.1", "--port", str(lt_port), "--num_workers", "1"],
                       f"http://127.0.0.1:{lt_port}", f"http://127.0.0.1:{lt_port}/health/liveliness", work,
                       {**env, "LITELLM_MASTER_KEY": key})
            servers.append(lt)
            targets["litellm-proxy"] = Target("litellm-proxy", lt, "/v1/chat/completions", NAMED,
                                              [f"Authorization: Bearer {key}"])
        active = [targets[n] for n in names]
        bodies = {}
        for t in active:
            for stream in (False, True):
                path = work / f"{t.name}-{'stream' if stream else 'json'}.jsonl"
                write_bodies(path, t.model, texts, stream)
                bodies[(t.name, stream)] = path
        # Warm-up: imports done lazily on the first request, connection pools, the router's encoder.
        for t in active:
            for stream in (False, True):
                warm = run_load(t, bodies[(t.name, stream)], 2, 30, 40, upstream)
                if warm["ok"] == 0:
                    raise RuntimeError(f"{t.name} answered nothing in warm-up: {warm['errors']}; see {work}")
        time.sleep(2.0)
        idle_rss = {t.server.name: rss_mb(t.server.proc.pid) for t in active}
        print(f"# router: {router}\n# idle RSS: {idle_rss}", file=sys.stderr)

        raw: dict[tuple[str, bool, int], list[dict[str, Any]]] = {}
        for r in range(rounds):
            for stream in modes:
                for c in concurrency:
                    order = active if r % 2 == 0 else active[::-1]  # alternate who goes first
                    for t in order:
                        res = run_load(t, bodies[(t.name, stream)], c, duration, args.max_requests, upstream)
                        raw.setdefault((t.name, stream, c), []).append(res)
                        print(f"round {r + 1} {t.name:14s} {'stream' if stream else 'json':6s} c={c:<3d} "
                              f"{res['ok'] / res['wall_s']:8.1f} req/s  p50 {pct(res['latencies_ms'], 50):8.2f} ms  "
                              f"errors {sum(res['errors'].values())}  cpu/req "
                              f"{1000 * res['server_cpu_s'] / max(res['ok'], 1):.2f} ms", file=sys.stderr)
        scenarios = [{"target": t.name, "stream": s, "concurrency": c, **summarize(raw[(t.name, s, c)])}
                     for s in modes for c in concurrency for t in active]
        results: dict[str, Any] = {
            "command": " ".join(["python", "bench/gateway_bench.py", *argv]),
            "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(), "python": sys.version.split()[0]},
            "duration_s": duration, "rounds": rounds, "prompts": len(texts),
            "router": router, "idle_rss_mb": idle_rss, "scenarios": scenarios,
            "store": args.store, "budget_usd": args.budget_usd,
        }
        if args.profile is not None and "gateway-named" in targets:
            args.profile.mkdir(parents=True, exist_ok=True)
            results["profile"] = {}
            for name, stream in (("gateway-named", False), ("gateway-auto", False), ("gateway-named", True)):
                label = f"{name}-{'stream' if stream else 'json'}"
                stacks = profile(targets[name], bodies[(name, stream)], args.profile / label, 12.0, args.py_spy,
                                 upstream, args.profile_concurrency)
                inclusive, own = top_frames(stacks)
                results["profile"][label] = {"inclusive": inclusive, "self": own}
        print(markdown(results))
        if args.out is not None:
            args.out.write_text(json.dumps(results, indent=1))
    finally:
        for s in reversed(servers):
            s.stop()
        for undo in cleanup:
            undo()
        if args.keep:
            print(f"# work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
