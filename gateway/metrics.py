"""Prometheus metrics, one registry per app (several apps share a test process), with the
standard process and Python GC collectors added to it. Names follow Prometheus' guide: units in the
name (``_seconds``, ``_usd``), counters end in ``_total`` (the client adds it), ``status`` is the
HTTP code."""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_STREAM_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)  # process_*, python_info, python_gc_*: read at scrape time only
        self.requests = Counter("cscr_requests", "Chat requests by HTTP status (streams: when they end)",
                                ["status", "stream"], registry=r)
        self.latency = Histogram(
            "cscr_request_seconds", "Non-streamed requests: arrival to the answer, as the client sees it",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        # Streams apart: their length is the answer's, and their first chunk is what a user waits for.
        self.ttft = Histogram(
            "cscr_time_to_first_token_seconds", "Streams: arrival to the first chunk ready for the client",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.stream_seconds = Histogram(
            "cscr_stream_seconds", "Streams: arrival to their last chunk", buckets=_STREAM_BUCKETS, registry=r,
        )
        self.stream_endings = Counter(
            "cscr_stream_endings", "How streams ended (ok, upstream_error, gateway_error, client_disconnect)",
            ["outcome"], registry=r)
        self.key_spend = Counter("cscr_key_spend_usd", "USD charged to each key (capped at its reservation)",
                                 ["key"], registry=r)
        self.key_budget_remaining = Gauge(
            "cscr_key_budget_remaining_usd", "Budget left in the key's current period, as this replica last "
            "settled it", ["key"], registry=r)
        self.overhead = Histogram(
            "cscr_gateway_seconds", "Time spent in the gateway itself (request minus upstream)",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.routing = Histogram(
            "cscr_routing_seconds", "Routing decision time", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.upstream = Histogram(
            "cscr_upstream_seconds", "Provider call time", ["provider"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.errors = Counter("cscr_errors", "Errors by kind", ["kind"], registry=r)
        self.tokens = Counter("cscr_tokens", "Tokens by provider and direction", ["provider", "direction"],
                              registry=r)
        self.spend = Counter("cscr_spend_usd", "Actual spend in USD by provider", ["provider"], registry=r)
        self.decisions = Counter("cscr_decisions", "Routing decisions (first choice)", ["provider", "policy"],
                                 registry=r)
        self.reloads = Counter("cscr_config_reloads", "Config reloads by outcome (applied, rejected)", ["outcome"],
                               registry=r)
        self.fallbacks = Counter("cscr_fallbacks", "Provider attempts that failed and fell back", ["provider"],
                                 registry=r)
        self.cooldown = Gauge("cscr_provider_cooldown_seconds",
                              "Seconds of cooldown left per provider (0: in service), as this replica last read it",
                              ["provider"], registry=r)
        self.cooldowns = Counter("cscr_provider_cooldowns", "Cooldowns opened by this replica", ["provider"],
                                 registry=r)
        self.over_reserved = Counter(
            "cscr_usage_over_reservation", "Metered requests whose provider usage cost more than was reserved "
            "(the spend recorded is capped at the reservation)", ["provider"], registry=r)
        self.over_reserved_usd = Counter(
            "cscr_usage_over_reservation_usd", "USD by which provider usage exceeded the reservation (not recorded)",
            ["provider"], registry=r)
        self.cache_hits = Counter("cscr_cache_hits", "Requests answered from the response cache", registry=r)
        self.cache_misses = Counter("cscr_cache_misses", "Cacheable requests the response cache could not answer "
                                    "(absent, expired, undecodable, refreshed)", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
