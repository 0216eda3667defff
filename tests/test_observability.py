"""Observability over real sockets: the request id, the JSON access log, Prometheus metrics, the
cost in ``usage`` (read by the official ``openai`` client), and OpenTelemetry spans exported over
OTLP/HTTP to a real local receiver."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.observe import ACCESS, JsonFormatter, request_id
from gateway.replay import REPLAY_PRICES
from gateway.upstream import start_upstream
from router_core.types import Candidate, CostOnlyPolicy, Ranking
from tests.gateway_fixture import provider, start_gateway

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-observed-team-secret"
MSG = [{"role": "user", "content": "What is the capital of France?"}]


class Boom(CostOnlyPolicy):
    """A router with a bug: an unhandled exception inside the gateway (the 500 path)."""

    def rank(self, prompt: str, candidates: Sequence[Candidate], tradeoff: float) -> Ranking:
        if "boom" in prompt:
            raise RuntimeError("router bug")
        return super().rank(prompt, candidates, tradeoff)


def _config(up: str, **server: Any) -> dict[str, Any]:
    return {
        "router": {"artifact": "none"},
        "server": {"deadline_s": 20, **server},
        "keys": [{"name": "team", "secret_sha256": hashlib.sha256(SECRET.encode()).hexdigest(), "budget_usd": 5.0}],
        "providers": [
            provider("gpt-4", "openai/gpt-4-1106-preview", up, REPLAY_PRICES["gpt-4-1106-preview"]),
            provider("mistral-7b", "openai/mistralai/mistral-7b-chat", up, REPLAY_PRICES["mistralai/mistral-7b-chat"]),
            provider("cutter", "openai/cutter", up, (50.0, 50.0)),  # dearest: never chosen by auto
        ],
    }


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        """The first line (parsed from the text written) that satisfies ``pred``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in list(self.records):
                line = json.loads(r.getMessage())
                if pred(line):
                    return dict(line)
            time.sleep(0.01)
        raise AssertionError("no such access-log line")


@pytest.fixture()
def lines() -> Iterator[Lines]:
    handler = Lines()
    level = ACCESS.level
    ACCESS.setLevel(logging.INFO)  # as `cscr serve` sets it
    ACCESS.addHandler(handler)
    yield handler
    ACCESS.removeHandler(handler)
    ACCESS.setLevel(level)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    base, stop = start_upstream(faults={"cutter": "cut:3"})
    yield base
    stop()


@pytest.fixture(scope="module")
def gateway(upstream: str) -> Iterator[str]:
    base, stop = start_gateway(_config(upstream), router=Boom())
    yield base
    stop()


def _client(base: str, key: str = SECRET) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30)


def _metric(text: str, prefix: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(prefix))


# --- request id --------------------------------------------------------------------------------------

def test_request_id_is_the_callers_when_sane_else_new() -> None:
    assert request_id("abc-123_X.y:z") == "abc-123_X.y:z"
    for bad in (None, "", "a b", "x" * 129, "caf\u00e9", "a\nb", "\x00"):
        new = request_id(bad)
        assert new != bad and len(new) == 32 and int(new, 16) >= 0


def test_every_response_has_a_request_id_and_one_access_line(gateway: str, lines: Lines) -> None:
    mine = httpx.post(gateway + "/v1/chat/completions", json={"model": "gpt-4", "messages": MSG},
                      headers={"authorization": f"Bearer {SECRET}", "x-request-id": "trace-me-42"}, timeout=30)
    assert mine.status_code == 200 and mine.headers["x-request-id"] == "trace-me-42"
    line = lines.wait(lambda r: r["request_id"] == "trace-me-42")
    assert line["status"] == 200 and line["key"] == "team" and line["model"] == "gpt-4"
    assert line["provider"] == "gpt-4" and line["tried"] == ["gpt-4"] and line["policy"] == "named"
    assert line["cost_usd"] == pytest.approx(float(mine.headers["x-cscr-cost-usd"]), abs=1e-8)
    assert line["cost_estimate_usd"] == pytest.approx(float(mine.headers["x-cscr-cost-estimate-usd"]), abs=1e-8)
    assert line["latency_ms"] > 0 and line["ttft_ms"] is None and line["stream"] is False and line["error"] is None
    assert SECRET not in json.dumps(line)
    # a request id that is not sane is replaced; 401, 404 and /health get one too
    for path, headers, status in (("/v1/chat/completions", {"x-request-id": "x" * 500}, 401),
                                  ("/nowhere", {}, 404), ("/health", {}, 200)):
        r = httpx.post(gateway + path, json={"model": "gpt-4", "messages": MSG}, headers=headers) if status != 200 \
            else httpx.get(gateway + path)
        assert r.status_code == status and len(r.headers["x-request-id"]) == 32
        line = lines.wait(lambda r_, rid=r.headers["x-request-id"]: r_["request_id"] == rid)
        assert line["status"] == status and line["path"] == path
        if status == 401:
            assert line["error"] == "invalid_api_key" and line["key"] is None
    assert len([r for r in lines.records if json.loads(r.getMessage())["request_id"] == "trace-me-42"]) == 1


def test_a_500_names_the_same_request_id_in_body_header_and_log(gateway: str, lines: Lines,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": "boom"}]}
    with caplog.at_level(logging.ERROR, logger="gateway.app"):
        r = httpx.post(gateway + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {SECRET}"})
        mine = httpx.post(gateway + "/v1/chat/completions", json=body,
                          headers={"authorization": f"Bearer {SECRET}", "x-request-id": "req-500"})
    assert r.status_code == 500 and mine.status_code == 500
    rid = r.headers["x-request-id"]
    assert f"(request {rid})" in r.json()["error"]["message"] and "(request req-500)" in mine.json()["error"]["message"]
    assert any(rid in m for m in caplog.messages) and any("req-500" in m for m in caplog.messages)
    line = lines.wait(lambda r_: r_["request_id"] == rid)
    assert line["status"] == 500 and line["error"] == "internal_error" and line["key"] == "team"
    assert r.headers.get_list("x-request-id") == [rid]  # one id, not one per layer


# --- cost in usage, streams, metrics -------------------------------------------------------------------

def test_usage_carries_the_cost_streamed_or_not(gateway: str, lines: Lines) -> None:
    client = _client(gateway)
    raw = client.chat.completions.with_raw_response.create(model="mistral-7b", messages=MSG)  # type: ignore[arg-type]
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens > 0
    assert getattr(usage, "cost") == pytest.approx(float(raw.headers["x-cscr-cost-usd"]), abs=1e-8)  # noqa: B009
    assert getattr(usage, "cost") > 0  # noqa: B009

    stream = client.chat.completions.with_raw_response.create(
        model="gpt-4", messages=MSG, stream=True, stream_options={"include_usage": True})  # type: ignore[arg-type]
    chunks = list(stream.parse())
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens > 0
    cost = getattr(last.usage, "cost")  # noqa: B009
    price = REPLAY_PRICES["gpt-4-1106-preview"]
    assert cost == pytest.approx((last.usage.prompt_tokens * price[0] + last.usage.completion_tokens * price[1]) / 1e6)
    line = lines.wait(lambda r: r["request_id"] == stream.headers["x-request-id"])
    # written when the stream ended: it has the actual cost, and the time to the first chunk apart
    assert line["stream"] is True and line["cost_usd"] == pytest.approx(cost) and line["status"] == 200
    assert 0 < line["ttft_ms"] <= line["latency_ms"] and line["error"] is None

    plain = list(client.chat.completions.create(model="gpt-4", messages=MSG, stream=True))  # type: ignore[arg-type]
    assert all(c.usage is None for c in plain)  # not asked: no usage chunk (the cost is in the log and metrics)


def test_a_stream_cut_upstream_is_logged_as_interrupted(gateway: str, lines: Lines) -> None:
    with pytest.raises(openai.APIError):
        for _ in _client(gateway).chat.completions.create(model="cutter", messages=MSG, stream=True):  # type: ignore[arg-type]
            pass
    line = lines.wait(lambda r: r["provider"] == "cutter")
    assert line["status"] == 200 and line["error"] == "stream_interrupted" and line["cost_usd"] > 0
    assert _metric(httpx.get(gateway + "/metrics").text, 'cscr_stream_endings_total{outcome="upstream_error"}') >= 1


def test_metrics_follow_the_naming_guide(gateway: str, lines: Lines) -> None:
    client = _client(gateway)
    before = httpx.get(gateway + "/metrics").text
    raw = client.chat.completions.with_raw_response.create(model="gpt-4", messages=MSG)  # type: ignore[arg-type]
    list(client.chat.completions.create(model="gpt-4", messages=MSG, stream=True))  # type: ignore[arg-type]
    with pytest.raises(openai.AuthenticationError):
        _client(gateway, "sk-wrong").chat.completions.create(model="gpt-4", messages=MSG)  # type: ignore[arg-type]
    lines.wait(lambda r: r["stream"] is True)  # the stream's end has been counted
    text = httpx.get(gateway + "/metrics").text
    for status, stream, n in (("200", "false", 1), ("200", "true", 1), ("401", "false", 1)):
        key = f'cscr_requests_total{{status="{status}",stream="{stream}"}}'
        assert _metric(text, key) - _metric(before, key) == n, key
    assert 'status="ok"' not in text  # the status label is the HTTP code only
    assert _metric(text, "cscr_time_to_first_token_seconds_count") - _metric(
        before, "cscr_time_to_first_token_seconds_count") == 1
    for name in ("cscr_stream_seconds_count", "cscr_request_seconds_count"):  # one stream, one not
        assert _metric(text, name) - _metric(before, name) == 1, name
    assert _metric(text, 'cscr_stream_endings_total{outcome="ok"}') >= 1
    spend = 'cscr_key_spend_usd_total{key="team"}'
    assert _metric(text, spend) - _metric(before, spend) > float(raw.headers["x-cscr-cost-usd"])  # and the stream
    remaining = _metric(text, 'cscr_key_budget_remaining_usd{key="team"}')
    assert 0 < remaining < 5.0 and remaining == pytest.approx(5.0 - _metric(text, spend))
    for family in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_gc_collections_total",
                   "cscr_spend_usd_total", "cscr_tokens_total", "cscr_gateway_seconds", "cscr_upstream_seconds"):
        assert family in text, family


def test_access_log_can_be_turned_off(upstream: str, lines: Lines) -> None:
    base, stop = start_gateway(_config(upstream, access_log=False))
    try:
        r = httpx.post(base + "/v1/chat/completions", json={"model": "gpt-4", "messages": MSG},
                       headers={"authorization": f"Bearer {SECRET}"}, timeout=30)
        assert r.status_code == 200 and r.headers["x-request-id"]
        time.sleep(0.2)
        assert lines.records == []
    finally:
        stop()


def test_json_log_format_puts_access_fields_at_the_top() -> None:
    fmt = JsonFormatter()
    access = logging.LogRecord("cscr.access", logging.INFO, "", 0, "%s", ("{}",), None)
    access.access = {"request_id": "r1", "status": 200}
    out = json.loads(fmt.format(access))
    assert out["request_id"] == "r1" and out["status"] == 200 and out["logger"] == "cscr.access"
    plain = json.loads(fmt.format(logging.LogRecord("gateway", logging.WARNING, "", 0, "a %s", ("b",), None)))
    assert plain["message"] == "a b" and plain["level"] == "WARNING" and plain["ts"].endswith("+00:00")


# --- tracing ---------------------------------------------------------------------------------------------

class Receiver(http.server.ThreadingHTTPServer):
    """A minimal OTLP/HTTP collector: keeps every POST /v1/traces body."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.path == "/v1/traces" and self.headers["content-type"] == "application/x-protobuf":
                    outer.bodies.append(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        super().__init__(("127.0.0.1", 0), Handler)


def _spans(bodies: list[bytes]) -> list[Any]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans = []
    for body in bodies:
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        spans += [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    return spans


def test_spans_reach_a_real_otlp_receiver(upstream: str) -> None:
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    base, stop = start_gateway(_config(upstream, otlp_endpoint=endpoint))
    parent_trace, parent_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    try:
        auth = {"authorization": f"Bearer {SECRET}"}
        r = httpx.post(base + "/v1/chat/completions", json={"model": "auto", "messages": MSG},
                       headers={**auth, "traceparent": f"00-{parent_trace}-{parent_span}-01"}, timeout=30)
        assert r.status_code == 200
        streamed = httpx.post(base + "/v1/chat/completions", json={"model": "gpt-4", "messages": MSG, "stream": True},
                              headers=auth, timeout=30)
        assert streamed.status_code == 200 and "[DONE]" in streamed.text
    finally:
        stop()  # the lifespan's end exports what is queued
        receiver.shutdown()
    spans = _spans(receiver.bodies)
    roots = [s for s in spans if s.name == "chat"]
    assert len(roots) == 2
    routed = next(s for s in roots if s.trace_id.hex() == parent_trace)  # continues the caller's trace
    assert routed.parent_span_id.hex() == parent_span
    children = sorted(s.name for s in spans if s.parent_span_id == routed.span_id)
    assert children == ["reserve", "route", "settle", "upstream"]
    attrs = {a.key: a.value for a in routed.attributes}
    assert attrs["cscr.key"].string_value == "team" and attrs["http.response.status_code"].int_value == 200
    assert attrs["cscr.request_id"].string_value == r.headers["x-request-id"]
    other = next(s for s in roots if s is not routed)
    assert sorted(s.name for s in spans if s.parent_span_id == other.span_id) == ["reserve", "settle", "upstream"]
    assert other.end_time_unix_nano >= max(s.end_time_unix_nano for s in spans if s.parent_span_id == other.span_id)


def test_a_malformed_otlp_endpoint_is_one_start_up_error_naming_it() -> None:
    base = {"providers": [{"name": "p", "model": "openai/p", "api_base": "http://127.0.0.1:1/v1",
                           "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}]}
    for bad in ("localhost:4318", "ftp://collector", "http://", "http://c:notaport", "http://c:4318?x=1"):
        with pytest.raises(ConfigError, match=r"server\.otlp_endpoint.*not an http"):
            parse_config({**base, "server": {"otlp_endpoint": bad}}, "g.yaml", {})
        with pytest.raises(ConfigError, match="environment variable OTEL_EXPORTER_OTLP_ENDPOINT"):
            parse_config(base, "g.yaml", {"OTEL_EXPORTER_OTLP_ENDPOINT": bad})
    cfg = parse_config(base, "g.yaml", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    assert cfg.server.otlp_endpoint == "http://collector:4318"
    both = {**base, "server": {"otlp_endpoint": "https://mine:4318"}}
    assert parse_config(both, "g.yaml", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}).server.otlp_endpoint \
        == "https://mine:4318"  # the file wins over the environment
    assert parse_config(base, "g.yaml", {}).server.otlp_endpoint is None


NO_OTEL = """
import json, sys
from gateway.app import create_app
from gateway.config import parse_config
from starlette.testclient import TestClient

cfg = parse_config({"router": {"artifact": "none"}, "providers": [
    {"name": "p", "model": "openai/p", "api_base": "http://127.0.0.1:9/v1", "input_usd_per_mtok": 1,
     "output_usd_per_mtok": 1}]}, "g.yaml", {})
with TestClient(create_app(cfg)) as client:
    status = client.post("/v1/chat/completions", json={"model": "auto", "messages": [
        {"role": "user", "content": "hi"}]}).status_code
    metrics = client.get("/metrics").text
print(json.dumps({"status": status, "otel": sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")}))
"""


def test_tracing_off_imports_no_opentelemetry() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run([sys.executable, "-c", NO_OTEL], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] in (502, 503, 504) and out["otel"] == []


def test_an_unreachable_collector_loses_spans_not_requests(upstream: str) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base, stop = start_gateway(_config(upstream, otlp_endpoint=f"http://127.0.0.1:{port}"))
    try:
        for stream in (False, True):
            r = httpx.post(base + "/v1/chat/completions", json={"model": "auto", "messages": MSG, "stream": stream},
                           headers={"authorization": f"Bearer {SECRET}"}, timeout=30)
            assert r.status_code == 200
    finally:
        t = time.monotonic()
        stop()
    assert time.monotonic() - t < 10  # the export on shutdown gives up (exporter timeout 5 s)


def test_cscr_serve_log_format_json_writes_only_json_lines(tmp_path: Path, upstream: str) -> None:
    import yaml

    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(_config(upstream)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port),
                             "--log-format", "json"], cwd=ROOT, stderr=subprocess.PIPE,
                            env={**env, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(base + "/health")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        r = httpx.post(base + "/v1/chat/completions", json={"model": "gpt-4", "messages": MSG},
                       headers={"authorization": f"Bearer {SECRET}", "x-request-id": "json-line-1"}, timeout=30)
        assert r.status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    records = [json.loads(line) for line in err.splitlines() if line.strip()]  # every line is JSON
    chat = next(r for r in records if r.get("request_id") == "json-line-1")
    assert chat["logger"] == "cscr.access" and chat["status"] == 200 and chat["key"] == "team"
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's own lines too
