"""Usage statistics for the savings dashboard: every answered request adds integer counters to a
per-minute, a per-quarter-hour and a per-hour bucket in the store, so every replica's traffic adds up in one place.

Counters per key, in one hash per bucket (field ``<key>\\x1f<counter>``): ``requests``,
``spend_nusd`` (what was charged, nano-dollars), ``ref_nusd`` (what the same tokens would have cost
on the reference provider: ``server.savings_reference``, else the dearest configured provider),
``fallbacks`` (providers tried before the one that answered), ``p:<provider>`` (who answered),
``auto:<provider>`` (who answered when the router chose), ``routed``, ``tradeoff_u`` (the sum of the
trade-off T routed requests asked for, in millionths) and, where the router predicted the quality
of both the chosen and the reference provider, ``q_n``, ``q_chosen_u`` and ``q_ref_u`` (sums of p̂,
in millionths). Integers only, so sums across replicas are exact.

Recording happens off the request's path: once the answer is settled its counters are added up in
the process and written every half second (``StatsRecorder``); a failed write is logged and counted
(``cscr_errors_total{kind="stats_unrecorded"}``), never an error for the caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.config import GatewayConfig, ProviderConfig
from gateway.store import NANO, Store
from router_core.types import Ranking

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.proxy import GatewayState, Plan

log = logging.getLogger(__name__)

SEP = "\x1f"
NO_KEY = "(no key)"  # requests served without a key (a gateway without keys)
# bucket width (s) -> how long it is kept (s). A day's chart reads 96 quarter-hours, not 1,440 minutes.
WIDTHS = {60: 8 * 86400, 900: 40 * 86400, 3600: 400 * 86400}
MICRO = 1_000_000


@dataclass(frozen=True, slots=True)
class Usage:
    """One answered request, as the dashboard counts it."""

    key: str
    provider: str
    cost_usd: float
    reference_usd: float
    fallbacks: int
    tradeoff: float | None  # None: a named provider, not routed
    quality: float | None = None  # the router's p̂ for the provider that answered
    reference_quality: float | None = None  # and for the reference provider, if it was a candidate

    def counts(self) -> dict[str, int]:
        k = self.key + SEP
        out = {f"{k}requests": 1, f"{k}spend_nusd": round(self.cost_usd * NANO),
               f"{k}ref_nusd": round(self.reference_usd * NANO), f"{k}fallbacks": self.fallbacks,
               f"{k}p:{self.provider}": 1}
        if self.tradeoff is not None:
            out.update({f"{k}routed": 1, f"{k}auto:{self.provider}": 1, f"{k}tradeoff_u": round(self.tradeoff * MICRO)})
        if self.quality is not None and self.reference_quality is not None:
            out.update({f"{k}q_n": 1, f"{k}q_chosen_u": round(self.quality * MICRO),
                        f"{k}q_ref_u": round(self.reference_quality * MICRO)})
        return out


def predicted_quality(ranking: Ranking) -> dict[str, float]:
    """The router's predicted quality p̂ per candidate, where it states one: the kernel-shrink
    policy puts p̂ in ``Scored.similarity``; the CSCR router puts a similarity there, not a quality."""
    if ranking.policy != "kernel-shrink":
        return {}
    return {s.name: s.similarity for s in ranking.order if s.similarity is not None}


def bucket_name(width: int, start: int) -> str:
    return f"stats:{width}:{start}"


def buckets_at(now: float) -> dict[str, int]:
    """The buckets a request at ``now`` (unix seconds) adds to, with their TTLs."""
    return {bucket_name(w, int(now // w) * w): ttl for w, ttl in WIDTHS.items()}


def reference_provider(config: GatewayConfig, prompt_tokens: int, completion_tokens: int) -> ProviderConfig:
    """``server.savings_reference``, else the provider these tokens would have cost the most on."""
    named = config.provider(config.server.savings_reference) if config.server.savings_reference else None
    if named is not None:
        return named
    return max(config.providers, key=lambda p: (p.cost(prompt_tokens, completion_tokens), p.name))


class StatsRecorder:
    """Adds up usage in this process and writes it to the store every ``flush_s`` seconds, one
    script per minute with traffic: a request costs a few dict additions, not a store round trip.
    A write that fails is not retried (it may have landed: a retry could count twice); its requests
    are counted in ``cscr_errors_total{kind="stats_unrecorded"}`` and missing from the dashboard.
    A crash loses the last ``flush_s`` seconds; shutdown flushes (``drain``)."""

    def __init__(self, store: Store, metrics: Metrics, flush_s: float = 0.5) -> None:
        self._store = store
        self._metrics = metrics
        self._flush_s = flush_s
        self._pending: dict[int, tuple[int, dict[str, int]]] = {}  # minute -> (requests, counters)
        self._task: asyncio.Task[None] | None = None

    def record(self, usage: Usage, now: float | None = None) -> None:
        minute = int((time.time() if now is None else now) // 60) * 60
        requests, counters = self._pending.get(minute, (0, {}))
        merge(counters, usage.counts())
        self._pending[minute] = (requests + 1, counters)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        # Until nothing is pending: a request recorded while a write was in flight found this task
        # running and scheduled none of its own (its usage would wait for the next request).
        while True:
            await asyncio.sleep(self._flush_s)
            await self.flush()
            if not self._pending:
                return

    async def flush(self) -> None:
        batch, self._pending = self._pending, {}
        for minute, (requests, counters) in batch.items():
            try:
                await self._store.stats_add(buckets_at(minute), counters)
            except Exception as exc:  # the answers are out; the dashboard undercounts, no caller knows
                self._metrics.errors.labels("stats_unrecorded").inc(requests)
                log.warning("usage of %d requests not recorded: %s", requests, type(exc).__name__)

    async def drain(self, timeout_s: float) -> None:
        """Write what is pending (shutdown): the scheduled write, then anything recorded since."""
        try:
            if self._task is not None and not self._task.done():
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            await asyncio.wait_for(self.flush(), timeout_s)
        except TimeoutError:
            log.warning("usage statistics not all written at shutdown")


def record_request(state: GatewayState, plan: Plan, provider: ProviderConfig,
                   priced: tuple[float, int, int] | None, actual: float) -> None:
    """Count one answered request (the call ``gateway.proxy`` makes once the answer is settled)."""
    recorder: StatsRecorder | None = state.stats
    if recorder is None or not state.config.providers:
        return
    try:
        n = plan.request.n  # a provider's usage counts every choice; the estimate counted one
        prompt, completion = (priced[1], priced[2]) if priced else (plan.prompt_tokens, plan.expected_output * n)
        ref = reference_provider(state.config, prompt, completion)
        predicted = plan.predicted
        usage = Usage(plan.key.name if plan.key is not None else NO_KEY, provider.name, actual,
                      ref.cost(prompt, completion), max(len(plan.tried) - 1, 0),
                      plan.tradeoff, predicted.get(provider.name), predicted.get(ref.name))
        recorder.record(usage)
    except Exception as exc:  # never the caller's problem
        state.metrics.errors.labels("stats_unrecorded").inc()
        log.warning("usage not recorded: %s: %.200s", type(exc).__name__, exc)


def split(counters: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """One bucket's fields -> key -> counter -> value."""
    out: dict[str, dict[str, int]] = {}
    for name, value in counters.items():
        key, _, counter = name.rpartition(SEP)
        bucket = out.setdefault(key, {})
        bucket[counter] = bucket.get(counter, 0) + value
    return out


def merge(into: dict[str, int], more: Mapping[str, int]) -> None:
    for name, value in more.items():
        into[name] = into.get(name, 0) + value


def summary(c: Mapping[str, int]) -> dict[str, Any]:
    """Totals of one set of counters, in the units the API shows."""
    spend, ref = c.get("spend_nusd", 0) / NANO, c.get("ref_nusd", 0) / NANO
    routed, q_n = c.get("routed", 0), c.get("q_n", 0)
    return {
        "requests": c.get("requests", 0), "spend_usd": spend, "reference_usd": ref,
        "saved_usd": ref - spend, "saved_pct": 100.0 * (ref - spend) / ref if ref > 0 else 0.0,
        "fallbacks": c.get("fallbacks", 0), "routed": routed,
        "mean_tradeoff": c.get("tradeoff_u", 0) / MICRO / routed if routed else None,
        "quality": {"n": q_n, "chosen": c.get("q_chosen_u", 0) / MICRO / q_n if q_n else None,
                    "reference": c.get("q_ref_u", 0) / MICRO / q_n if q_n else None},
        "models": {n[2:]: v for n, v in sorted(c.items()) if n.startswith("p:")},
        "auto_models": {n[5:]: v for n, v in sorted(c.items()) if n.startswith("auto:")},
    }


def aggregate(buckets: Iterable[tuple[int, Mapping[str, int]]], start: int, end: int, step: int,
              key: str | None = None) -> dict[str, Any]:
    """Stored buckets ``(start time, counters)`` -> the stats API's body: totals, per key, and a
    series of ``step``-second points from ``start`` to ``end`` (empty points included)."""
    total: dict[str, int] = {}
    per_key: dict[str, dict[str, int]] = {}
    points: dict[int, dict[str, int]] = {t: {} for t in range(start, end, step)}
    for t, counters in buckets:
        for name, c in split(counters).items():
            if key is not None and name != key:
                continue
            merge(total, c)
            merge(per_key.setdefault(name, {}), c)
            slot = start + (t - start) // step * step
            if slot in points:
                merge(points[slot], c)
    series = []
    for t, c in points.items():
        s = summary(c)
        series.append({"t": t, **{n: s[n] for n in ("requests", "spend_usd", "reference_usd", "fallbacks")},
                       "models": s["models"]})
    keys = [{"key": name, **summary(c)} for name, c in sorted(per_key.items())]
    return {"totals": summary(total), "keys": keys, "series": series}
