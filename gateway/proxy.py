"""One chat request end to end: authenticate, validate, price, route, reserve, forward with
fallback, settle. The HTTP layer (``app.py``) only wires this to Starlette."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway import cache, stats
from gateway.cache import Ticket
from gateway.config import GatewayConfig, KeyConfig, ProviderConfig
from gateway.errors import (
    AllProvidersFailed,
    BodyTooLarge,
    BudgetExceeded,
    DeadlineExceeded,
    GatewayError,
    InvalidRequest,
    RateLimited,
    StoreUnavailable,
    UpstreamError,
)
from gateway.forward import Chunk, Forwarder
from gateway.health import ProviderHealth
from gateway.keys import authenticate, budget_account
from gateway.metrics import Metrics
from gateway.observe import AccessRecord, Tracing, access_of, detached
from gateway.policy import (
    Target,
    capable,
    cost_cap,
    eligible,
    estimate_cost,
    expected_cost,
    request_needs,
    resolve_target,
)
from gateway.store import Reservation, SettlementQueue, Store, StoreBusy, new_reservation_id, redact_text, redact_url
from gateway.tokens import count_messages, count_text
from gateway.wire import ChatRequest, parse_body, refuse_foreign_part, validate_chat
from router_core.conversation import routing_prompt
from router_core.types import Candidate, RoutingPolicy

log = logging.getLogger(__name__)

RESERVATION_TTL_S = 600.0


@dataclass
class GatewayState:
    """Everything a request needs, built once in the app's lifespan."""

    config: GatewayConfig
    forwarder: Forwarder
    router: RoutingPolicy
    store: Store
    metrics: Metrics
    settlements: SettlementQueue
    router_problem: str | None = None  # why the configured router is not in use, if it is not
    reloader: Any = None  # gateway.reload.ConfigReloader, set by the app
    health: ProviderHealth | None = None  # provider cooldowns; None: every provider is always tried
    tracing: Tracing = field(default_factory=lambda: Tracing(None))  # spans; off unless an OTLP endpoint is set
    stats: Any = None  # gateway.stats.StatsRecorder, set by the app: usage for the dashboard
    background: set[asyncio.Task[None]] = field(default_factory=set)  # work left after a response: cache writes
    cache_writes: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # cache key -> its write in flight

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` off the response path. The loop holds tasks weakly: the set keeps each one
        until it is done; the app awaits what is left at shutdown (``drain``). ``work`` handles its
        own errors."""
        task = asyncio.get_running_loop().create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for the background work still running."""
        if self.background:
            _, late = await asyncio.wait(set(self.background), timeout=timeout_s)
            if late:
                log.warning("%d background tasks (cache writes) unfinished at shutdown", len(late))

    async def store_op(self, what: str, op: Any) -> Any:
        """Await a store operation; an unreachable store becomes StoreUnavailable (and is counted).
        A busy one (every pooled connection in use for the whole pool timeout) becomes
        StoreUnavailable with code ``store_busy``: never served unmetered, it is no outage."""
        try:
            return await op
        except GatewayError:
            raise
        except StoreBusy as exc:
            self.metrics.errors.labels("store_busy").inc()
            log.error("store %s busy during %s: %s", redact_url(self.store.url), what, exc)
            raise StoreUnavailable(f"the budget store is busy ({what}): {exc}; retry shortly",
                                   code="store_busy") from exc
        except Exception as exc:  # redis raises its ConnectionError/TimeoutError family, and OSError
            self.metrics.errors.labels("store_unavailable").inc()
            log.error("store %s failed during %s: %s: %s", redact_url(self.store.url), what,
                      type(exc).__name__, redact_text(str(exc), self.store.url))
            raise StoreUnavailable(f"the budget store is unreachable ({what}); "
                                   f"store_failure is {self.config.server.store_failure}") from exc

    def may_serve_unmetered(self, err: StoreUnavailable) -> bool:
        """``store_failure: open`` and the store is unreachable (a busy store is not an outage)."""
        return self.config.server.store_failure == "open" and err.code != "store_busy"


@dataclass
class Plan:
    request: ChatRequest
    key: KeyConfig | None
    order: list[ProviderConfig]
    estimates: dict[str, float]
    prompt_tokens: int
    policy: str
    routing_s: float
    started: float
    account: str | None = None  # the key's budget account for this period
    unmetered: bool = False  # the store was unreachable and store_failure is "open"
    tried: list[str] = field(default_factory=list)
    cap: float | None = None  # the most this request may cost (header, key's per-request cap, budget)
    output_cap: int | None = None  # output tokens reserved and sent upstream as the limit; None: not metered
    expected_output: int = 0  # output tokens the estimates assume (max_tokens, else the server's expectation)
    access: AccessRecord = field(default_factory=detached)  # the access-log line and the trace
    tradeoff: float | None = None  # the trade-off T the router was asked for; None: not routed
    predicted: dict[str, float] = field(default_factory=dict)  # the router's p-hat per candidate, where it has one
    cache: Ticket | None = None  # the response cache's ticket; None: this request does not use it
    # the prompt holds parts whose tokens are not counted here (a file, a part type the gateway does
    # not know): a metered request reserves the provider's whole context window for its prompt
    prompt_unbounded: bool = False

    def prompt_bound(self, provider: ProviderConfig) -> int:
        """The most prompt tokens ``provider`` can bill for this request, as far as is known: the
        count, or for a prompt with uncounted parts the provider's context window if it is larger
        (no provider takes a prompt past its window; one whose window is unknown holds the count)."""
        if not self.prompt_unbounded:
            return self.prompt_tokens
        return max(self.prompt_tokens, provider.context_window or 0)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def plan_request(state: GatewayState, request: Request,
                       translate: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Plan:
    """``translate`` turns another API's body into a chat body (``gateway.responses``,
    ``gateway.anthropic``); it runs after authentication, so a stranger learns nothing from a 400."""
    started = time.perf_counter()
    config = state.config
    rec = access_of(request)
    rec.trace = state.tracing.start("chat", request.headers)
    key = await state.store_op("key lookup", authenticate(config, state.store, request.headers))
    rec.key = key.name if key is not None else None
    body = parse_body(await read_body(request, config.server.max_body_bytes), config.server.max_body_bytes)
    if translate is not None:
        body = translate(body)
    chat = validate_chat(body)
    rec.model, rec.stream = chat.model, chat.stream
    target = resolve_target(config, chat.model, key, request.headers)
    if target.routed:
        refuse_foreign_part(chat)
    prompt_tokens = count_messages(body["messages"], body.get("tools"), config.server.image_tokens,
                                   config.server.file_tokens)
    needs = request_needs(body, prompt_tokens, chat.max_output_tokens)
    target = capable(target, needs)  # parts, tools, window
    # Routing and eligibility use the expected output; a metered request reserves (and sends
    # upstream) a hard output cap instead, so it can never cost more than was reserved.
    expected = chat.max_output_tokens or config.server.estimate_output_tokens
    estimates = {p.name: estimate_cost(p, prompt_tokens, expected, chat.n) for p in target.providers}
    account = budget_account(key) if key is not None else None
    unmetered = await _admit(state, key, account, prompt_tokens + expected * chat.n)
    # What is left of the key's budget is enforced when the cap is reserved (one round trip).
    cap = cost_cap(key, request.headers)
    ticket = await _cache_lookup(state, key, chat, request.headers, target)
    if ticket is not None and ticket.entry is not None:  # answered from the cache: no routing, no reservation
        return Plan(chat, key, [], estimates, prompt_tokens, "cache", 0.0, started, account, unmetered, cache=ticket,
                    access=rec)
    fits = eligible(target.providers, estimates, cap)
    routing_s, policy = 0.0, "named"
    predicted: dict[str, float] = {}
    if target.routed:
        fits, policy, routing_s, predicted = await route(
            state, rec, routing_prompt(body["messages"]), fits, estimates, target.tradeoff,
            lambda p: expected_cost(p, prompt_tokens, chat.max_output_tokens, chat.n))
    if state.health is not None:
        fits = await state.health.usable(fits, named=not target.routed)
    metered = key is not None and cap is not None
    unbounded = needs.files or chat.foreign_part is not None
    if metered and unbounded:
        fits = _windowed(fits)
    output_cap = (chat.max_output_tokens or config.server.max_output_tokens) if metered else None
    plan = Plan(chat, key, fits, estimates, prompt_tokens, policy, routing_s, started, account, unmetered,
                cap=cap, output_cap=output_cap, expected_output=expected, access=rec,
                tradeoff=target.tradeoff if target.routed else None, predicted=predicted, cache=ticket,
                prompt_unbounded=unbounded)
    rec.tried, rec.policy = plan.tried, policy  # the same list: it grows as providers are tried
    return plan


def _windowed(fits: list[ProviderConfig]) -> list[ProviderConfig]:
    """A budgeted request whose prompt holds parts not counted here reserves the provider's whole
    context window: a provider whose window is unknown has no bound to reserve, so it is left out
    (named: a 400 that says what to declare) rather than served past the budget."""
    known = [p for p in fits if p.context_window is not None]
    if fits and not known:
        names = ", ".join(repr(p.name) for p in fits)
        raise InvalidRequest(f"a budgeted request with a file (or a part the gateway does not count) reserves the "
                             f"provider's whole context window as its prompt, and {names} declare none; set "
                             "context_window in gateway.yaml", param="messages", code="model_not_supported")
    return known


async def route(state: GatewayState, rec: AccessRecord, prompt: str, fits: list[ProviderConfig],
                estimates: Mapping[str, float], tradeoff: float,
                cost_at: Callable[[ProviderConfig], Callable[[float], float]] | None = None,
                ) -> tuple[list[ProviderConfig], str, float, dict[str, float]]:
    """The router's ranking of ``fits`` for ``prompt``: (providers in order, policy, seconds spent,
    the router's predicted quality per provider). ``cost_at`` prices a provider at an expected
    answer length (``policy.expected_cost``); the estimates stay the budget's bound. A router that
    blocks runs off the event loop."""
    t = time.perf_counter()
    candidates = [Candidate(p.name, p.expert, estimates[p.name], cost_at(p) if cost_at else None) for p in fits]
    with rec.trace.span("route"):
        if state.router.blocking:
            ranking = await asyncio.to_thread(state.router.rank, prompt, candidates, tradeoff)
        else:
            ranking = state.router.rank(prompt, candidates, tradeoff)
    routing_s = time.perf_counter() - t
    by_name = {p.name: p for p in fits}
    order = [by_name[n] for n in ranking.names]
    state.metrics.routing.observe(routing_s)
    state.metrics.decisions.labels(order[0].name, ranking.policy).inc()
    return order, ranking.policy, routing_s, stats.predicted_quality(ranking)


async def _cache_lookup(state: GatewayState, key: KeyConfig | None, chat: ChatRequest,
                        headers: Mapping[str, str], target: Target) -> Ticket | None:
    """The request's cache ticket, with the cached answer when there is one. A store that fails
    here only costs the hit: the request is served (and counted) as a miss."""
    ticket = cache.ticket_for(state.config.cache, key, chat.body, headers, target.providers, target.tradeoff)
    if ticket is None:
        return None
    try:
        writing = state.cache_writes.get(ticket.key)
        if writing is not None:  # this replica is storing the answer right now: read it, do not miss it
            await asyncio.wait({writing}, timeout=state.config.server.store_socket_timeout_s)
        await cache.look_up(state.store, ticket)
    except Exception as exc:
        state.metrics.errors.labels("cache_unavailable").inc()
        log.warning("response cache lookup failed (%s); served as a miss", type(exc).__name__)
    (state.metrics.cache_hits if ticket.entry is not None else state.metrics.cache_misses).inc()
    return ticket


def _cache_later(state: GatewayState, plan: Plan, payload: dict[str, Any] | None, provider: ProviderConfig) -> None:
    """Keep a successful answer for the next identical request, off the response path: the client
    never waits for the store, and a write that fails is only logged and counted. Until it lands,
    an identical request on this replica waits for it (``_cache_lookup``) rather than miss."""
    if plan.cache is None:
        return
    key = plan.cache.key
    task = state.spawn(_cache_store(state, plan.cache, payload, provider, plan.request.body))
    state.cache_writes[key] = task
    task.add_done_callback(lambda done: state.cache_writes.pop(key) if state.cache_writes.get(key) is done else None)


async def _cache_store(state: GatewayState, ticket: Ticket, payload: dict[str, Any] | None,
                       provider: ProviderConfig, sent: Mapping[str, Any]) -> None:
    try:
        await cache.remember(state.store, state.config.cache, ticket, payload, provider.name, sent)
    except Exception as exc:
        state.metrics.errors.labels("cache_unavailable").inc()
        log.warning("response cache store failed (%s); the answer is not cached", type(exc).__name__)


def _cache_hit(state: GatewayState, plan: Plan) -> Response:
    """The cached answer: no provider call, nothing reserved, cost 0."""
    assert plan.cache is not None and plan.cache.entry is not None
    gateway_s = time.perf_counter() - plan.started
    state.metrics.overhead.observe(gateway_s)
    log.info("cache hit (key %s): %s's answer replayed, no provider call",
             plan.key.name if plan.key else "-", plan.cache.entry.provider)
    rec = plan.access
    rec.cost_usd, rec.provider, rec.policy = 0.0, plan.cache.entry.provider, "cache"
    if plan.request.stream:  # handle_chat counts the others
        state.metrics.requests.labels("200", "true").inc()
        state.metrics.ttft.observe(gateway_s)
        state.metrics.stream_endings.labels("ok").inc()
    return cache.hit_response(plan.cache.entry, plan.request.stream, plan.request.include_usage, gateway_s)


async def _admit(state: GatewayState, key: KeyConfig | None, account: str | None, tokens: int) -> bool:
    """The key's rate limits. Returns True when the store is unreachable and we serve unmetered."""
    if key is None or account is None or (key.rpm is None and key.tpm is None):
        return False
    try:
        if key.rpm is not None and not await state.store_op("rpm", state.store.hit(f"rpm:{key.name}", 1, key.rpm, 60)):
            raise RateLimited(f"key {key.name!r} is limited to {key.rpm} requests per minute")
        if key.tpm is not None and not await state.store_op(
            "tpm", state.store.hit(f"tpm:{key.name}", tokens, key.tpm, 60)
        ):
            raise RateLimited(f"key {key.name!r} is limited to {key.tpm} tokens per minute "
                              f"(this request is estimated at {tokens})", code="tokens_rate_limit_exceeded")
        return False
    except StoreUnavailable as err:
        if not state.may_serve_unmetered(err):
            raise
        log.warning("store unreachable: serving key %s unmetered (store_failure: open)", key.name)
        return True


def _affordable(provider: ProviderConfig, plan: Plan, usd: float) -> int:
    """Output tokens (per choice) that ``usd`` pays for after the prompt."""
    per_token = provider.output_usd_per_mtok * plan.request.n / 1e6
    left = usd - provider.cost(plan.prompt_bound(provider), 0)
    return 2**31 if per_token <= 0 else max(math.floor(left / per_token * (1 - 1e-9)), 0)


def _bound(provider: ProviderConfig, plan: Plan, usd: float | None) -> int | None:
    """The output cap for ``provider``: the plan's, lowered to what ``usd`` affords but never below
    the expected output the request was admitted with (None: not even that is affordable)."""
    assert plan.output_cap is not None
    expected = min(plan.expected_output, plan.output_cap)
    bound = plan.output_cap if usd is None else min(plan.output_cap, _affordable(provider, plan, usd))
    return bound if bound >= expected else None


async def _reserve(state: GatewayState, plan: Plan, provider: ProviderConfig) -> tuple[Reservation | None, float]:
    """Hold the request's cost bound on the key's account: (reservation, live spend before it).
    The reservation is None when there is nothing to hold (no key) or the budget refuses it.
    Metered: the output cap, lowered to what the per-request cap and then the remaining budget
    afford, is held and sent upstream. Otherwise the estimate is held. The id is chosen here,
    before the call: a reserve that failed may still run when a stalled store resumes, so the
    failure queues its release (settling an id to 0 is idempotent, and a reserve whose id is
    settled holds nothing)."""
    key, account = plan.key, plan.account
    if key is None or account is None:
        return None, 0.0
    bound = None
    if plan.output_cap is not None:
        bound = _bound(provider, plan, plan.cap) or min(plan.expected_output, plan.output_cap)
    res = _reservation(plan, provider, account, bound)
    got: Reservation | None = res
    live = 0.0
    if not plan.unmetered:
        try:
            got, live = await _hold(state, key, res)
            lower = _bound(provider, plan, key.budget_usd - live) if bound and key.budget_usd is not None else None
            if got is None and lower is not None and bound is not None and lower < bound:
                bound = lower  # the rest of the budget affords a shorter answer: serve that
                res = _reservation(plan, provider, account, bound)
                got, live = await _hold(state, key, res)
        except StoreUnavailable as err:
            if not state.may_serve_unmetered(err):
                if err.code != "store_busy":  # it may have reached the store: undo it if it runs late
                    state.settlements.add(res, 0.0)
                raise
            plan.unmetered = True  # served unmetered; settling the same id later undoes a late reserve
            got = res
    if got is not None and bound is not None:
        _limit_output(plan, bound)
    return got, live


def _held(plan: Plan, provider: ProviderConfig, bound: int) -> float:
    """What a metered request holds on ``provider`` with output cap ``bound``: the most it can bill."""
    return provider.cost(plan.prompt_bound(provider), bound * plan.request.n)


def _reservation(plan: Plan, provider: ProviderConfig, account: str, bound: int | None) -> Reservation:
    amount = plan.estimates[provider.name] if bound is None else _held(plan, provider, bound)
    return Reservation(account, new_reservation_id(), amount, provider.name, capped=bound is not None)


async def _hold(state: GatewayState, key: KeyConfig, res: Reservation) -> tuple[Reservation | None, float]:
    got, live = await state.store_op("reserve", state.store.reserve(
        res.account, res.amount, key.budget_usd, RESERVATION_TTL_S, res.id))
    return (res if got is not None else None), live


def _limit_output(plan: Plan, bound: int) -> None:
    """Send the reserved output cap upstream, in the field the caller used (else ``max_tokens``)."""
    body = plan.request.body
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    body[name] = bound
    if name == "max_completion_tokens":
        body.pop("max_tokens", None)


async def _attempts(state: GatewayState, plan: Plan) -> AsyncIterator[tuple[ProviderConfig, Reservation | None, float]]:
    """The providers to try, in ranking order, each with its reservation and the time left.
    A provider whose estimate the remaining budget cannot cover is skipped (not an attempt); at
    most ``server.max_attempts`` are tried."""
    key = plan.key
    attempts = 0
    remaining: float | None = None  # learnt from a refused reservation
    skipped: list[str] = []
    for provider in plan.order:
        if attempts >= state.config.server.max_attempts:
            return
        estimate = plan.estimates[provider.name]
        if remaining is not None and estimate > remaining:
            skipped.append(provider.name)
            continue
        left = _deadline_left(state, plan)
        with plan.access.trace.span("reserve", provider.name):
            res, live = await _reserve(state, plan, provider)
        if res is None and key is not None and key.budget_usd is not None:
            remaining = max(key.budget_usd - live, 0.0)
            skipped.append(provider.name)
            continue
        attempts += 1
        plan.tried.append(provider.name)
        yield provider, res, left
    if attempts == 0 and key is not None:
        cheapest = min(plan.estimates[n] for n in skipped)
        why = ""
        if plan.prompt_unbounded:  # what was asked of the budget is the window, not the estimate
            least = min(plan.expected_output, plan.output_cap or plan.expected_output)
            held = min(_held(plan, p, least) for p in plan.order if p.name in skipped)
            why = (f", and a request with a file (or a part the gateway does not count) reserves the provider's "
                   f"whole context window as its prompt: ${held:.6f} at the least")
        raise BudgetExceeded(
            f"key {key.name!r} has ${remaining or 0.0:.6f} left of its ${key.budget_usd} "
            f"{'' if key.budget_period == 'none' else key.budget_period + ' '}budget; the cheapest allowed "
            f"provider is estimated at ${cheapest:.6f}{why}"
        )


async def _settle(state: GatewayState, res: Reservation | None, actual: float) -> float | None:
    """Record the actual cost; returns the account's live spend afterwards (None if unknown).
    A capped (metered) reservation never records more than it held: the provider's usage above it
    is logged and counted (``cscr_usage_over_reservation``), not charged to the key."""
    if res is None:
        return None
    if res.capped and actual > res.amount:
        state.metrics.over_reserved.labels(res.provider).inc()
        state.metrics.over_reserved_usd.labels(res.provider).inc(actual - res.amount)
        log.warning("provider %s billed $%.8f for a request that reserved $%.8f; recording the reservation",
                    res.provider, actual, res.amount)
        actual = res.amount
    with anyio.CancelScope(shield=True):  # a disconnect must not lose the settlement
        try:
            live: float = await state.store.settle(res, actual)
            return live
        except Exception as exc:  # unreachable store: retried until it lands (settle is idempotent)
            state.metrics.errors.labels("store_unavailable").inc()
            log.error("settlement of %s queued, store unreachable: %s", res.account, type(exc).__name__)
            state.settlements.add(res, actual)
            return None
    return None  # unreachable: the scope only shields, it swallows nothing


MAX_USAGE_TOKENS = 10_000_000  # more than any context window; a larger count is a broken provider
# A provider counts the prompt with its own tokenizer and counts what ours does not see (images,
# tool schemas): its prompt_tokens may exceed our count, but not by this much.
PROMPT_SLACK_FACTOR = 16
PROMPT_SLACK_TOKENS = 100_000


def _usage_problem(plan: Plan, provider: ProviderConfig, prompt: Any, completion: Any) -> str | None:
    """Why a provider's usage cannot be billed as it stands (None when it can). A prompt with parts
    not counted here (a file) may bill anything up to the provider's window (any count, if the window
    is unknown): only a count past that is implausible."""
    if any(not isinstance(v, int) or isinstance(v, bool) for v in (prompt, completion)):
        return f"token counts {prompt!r:.40}, {completion!r:.40} are not integers"
    if prompt < 0 or completion < 0:
        return f"negative token counts ({prompt}, {completion})"
    bound = plan.request.max_output_tokens
    out_limit = min(bound * plan.request.n, MAX_USAGE_TOKENS) if bound else MAX_USAGE_TOKENS
    if completion > out_limit:
        return f"completion_tokens {str(completion):.24} exceeds the {out_limit} that could be generated"
    in_limit = min(plan.prompt_tokens * PROMPT_SLACK_FACTOR + PROMPT_SLACK_TOKENS, MAX_USAGE_TOKENS)
    if plan.prompt_unbounded:
        in_limit = MAX_USAGE_TOKENS if provider.context_window is None else max(in_limit, provider.context_window)
    if prompt > in_limit:
        return f"prompt_tokens {str(prompt):.24} exceeds {in_limit} (the prompt counts {plan.prompt_tokens} here)"
    return None


def _usage_cost(state: GatewayState, plan: Plan, provider: ProviderConfig, usage: Any,
                text: Callable[[], str]) -> tuple[float, int, int] | None:
    """(cost, prompt tokens, completion tokens) from the provider's ``usage``; None when it sent
    none. Usage that is not plausible (not integers, negative, more output than ``max_tokens``
    allowed, a prompt far beyond ours) is not trusted: the request is billed by the tokens counted
    here (the prompt as ``Plan.prompt_bound`` gives it, the completion from ``text``) and the metric
    counts it."""
    if usage is None:
        return None
    p = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    c = usage.get("completion_tokens") if isinstance(usage, dict) else None
    problem = _usage_problem(plan, provider, p, c)
    if problem is None and isinstance(p, int) and isinstance(c, int):
        return provider.cost(p, c), p, c
    state.metrics.errors.labels("upstream_usage_invalid").inc()
    log.warning("provider %s reported implausible usage (%s); billing the tokens counted here",
                provider.name, problem)
    return _counted(plan, provider, text())


def _counted(plan: Plan, provider: ProviderConfig, generated: str) -> tuple[float, int, int]:
    """(cost, prompt tokens, completion tokens) as counted here, for an answer without usage to
    trust: the prompt as ``Plan.prompt_bound`` gives it (the most a prompt with uncounted parts can
    bill), the completion from the text that was generated."""
    prompt, completion = plan.prompt_bound(provider), count_text(generated)
    return provider.cost(prompt, completion), prompt, completion


def _answer_text(payload: dict[str, Any]) -> str:
    """Everything a non-streamed answer generated: content and tool-call arguments."""
    parts: list[str] = []
    for choice in payload.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        if isinstance(message.get("content"), str):
            parts.append(message["content"])
        for call in message.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                parts.append(fn["arguments"])
    return "".join(parts)


def _headers(state: GatewayState, plan: Plan, provider: ProviderConfig, upstream_s: float) -> dict[str, str]:
    spent_in_gateway = time.perf_counter() - plan.started - upstream_s
    state.metrics.overhead.observe(spent_in_gateway)
    plan.access.provider, plan.access.cost_estimate_usd = provider.name, plan.estimates[provider.name]
    return {
        "x-cscr-provider": provider.name,
        "x-cscr-policy": plan.policy,
        "x-cscr-tried": ",".join(plan.tried),
        "x-cscr-cost-estimate-usd": f"{plan.estimates[provider.name]:.8f}",
        "x-cscr-routing-ms": f"{plan.routing_s * 1000:.3f}",
        "x-cscr-gateway-ms": f"{spent_in_gateway * 1000:.3f}",
    }


def _deadline_left(state: GatewayState, plan: Plan) -> float:
    left = plan.started + state.config.server.deadline_s - time.perf_counter()
    if left <= 0:
        raise DeadlineExceeded(
            f"deadline of {state.config.server.deadline_s}s passed; tried: {', '.join(plan.tried) or 'none'}"
        )
    return left


def _record_failure(state: GatewayState, plan: Plan, err: UpstreamError, failures: list[str]) -> None:
    state.metrics.errors.labels(f"upstream_{err.kind}").inc()
    state.metrics.fallbacks.labels(err.provider).inc()
    failures.append(f"{err.provider}: {err.message}")
    log.warning("provider %s failed (%s); %s", err.provider, err.kind, "falling back" if err.retryable else "")


async def _attempt_failed(
    state: GatewayState, plan: Plan, res: Reservation | None, err: UpstreamError, failures: list[str]
) -> None:
    """One provider failed before answering: release its hold, record it, and raise when the next
    provider must not be tried (the caller's own error)."""
    await _settle(state, res, 0.0)
    _record_failure(state, plan, err, failures)
    if state.health is not None and err.provider:
        await state.health.failure(state.config.server, err.provider, err.kind, err.status)
    if not err.retryable or (err.kind == "context_length" and err.provider == plan.order[-1].name):
        raise err  # the last provider found the prompt too long too: the caller's 400, as it said


async def _deadline(state: GatewayState, plan: Plan, res: Reservation | None, waiting_for: str) -> DeadlineExceeded:
    await _settle(state, res, 0.0)
    return DeadlineExceeded(f"deadline of {state.config.server.deadline_s}s passed while waiting for {waiting_for}; "
                            f"tried: {', '.join(plan.tried)}")


def _all_failed(plan: Plan, failures: list[str]) -> GatewayError:
    return AllProvidersFailed("every provider failed; tried " + "; ".join(failures))


async def complete(state: GatewayState, plan: Plan) -> Response:
    if plan.cache is not None and plan.cache.entry is not None:
        return _cache_hit(state, plan)
    failures: list[str] = []
    async for provider, res, left in _attempts(state, plan):
        t = time.perf_counter()
        try:
            transport = state.forwarder.for_provider(provider)
            with plan.access.trace.span("upstream", provider.name):
                payload = await asyncio.wait_for(transport.complete(provider, plan.request.body), left)
        except UpstreamError as err:
            await _attempt_failed(state, plan, res, err, failures)
            continue
        except TimeoutError:
            raise await _deadline(state, plan, res, repr(provider.name)) from None
        upstream_s = time.perf_counter() - t
        state.metrics.upstream.labels(provider.name).observe(upstream_s)
        if state.health is not None:
            await state.health.success(provider.name)
        priced = _usage_cost(state, plan, provider, payload.get("usage"), functools.partial(_answer_text, payload))
        actual, headers = await settle_answer(state, plan, provider, res, priced, upstream_s)
        if isinstance(payload.get("usage"), dict):
            payload["usage"]["cost"] = actual  # as OpenRouter does; also x-cscr-cost-usd
        if plan.cache is not None:
            headers["x-cscr-cache"] = plan.cache.status
            _cache_later(state, plan, payload, provider)
        return Response(json.dumps(payload).encode(), 200, headers, media_type="application/json")
    raise _all_failed(plan, failures)


async def settle_answer(state: GatewayState, plan: Plan, provider: ProviderConfig, res: Reservation | None,
                        priced: tuple[float, int, int] | None, upstream_s: float) -> tuple[float, dict[str, str]]:
    """A whole (not streamed) answer's bill: its actual cost (``priced`` from the provider's usage,
    else the estimate) settled against the reservation, counted in the metrics and the dashboard,
    and the response headers that report it. (actual USD, headers)"""
    actual = priced[0] if priced else plan.estimates[provider.name]  # no usage: bill the estimate
    live = await _bill(state, plan, provider, res, priced, actual)
    plan.access.cost_usd = actual
    headers = _headers(state, plan, provider, upstream_s)
    headers["x-cscr-cost-usd"] = f"{actual:.8f}"
    headers["x-cscr-cost-reserved-usd"] = f"{res.amount if res else 0.0:.8f}"
    if plan.key is not None and plan.key.budget_usd is not None and live is not None and not plan.unmetered:
        headers["x-cscr-budget-remaining-usd"] = f"{plan.key.budget_usd - live:.8f}"
    if plan.unmetered:
        headers["x-cscr-unmetered"] = "store unreachable"
    return actual, headers


async def _bill(state: GatewayState, plan: Plan, provider: ProviderConfig, res: Reservation | None,
                priced: tuple[float, int, int] | None, actual: float) -> float | None:
    """Settle ``actual`` against the reservation and count it (metrics, the key's spend, the
    dashboard): every answer, whole or streamed. Returns the account's live spend (None: unknown)."""
    with plan.access.trace.span("settle", provider.name):
        live = await _settle(state, res, actual)
    _account(state, provider, priced, actual)
    _key_spend(state, plan, res, actual, live)
    stats.record_request(state, plan, provider, priced, actual)
    return live


def _account(state: GatewayState, provider: ProviderConfig, priced: tuple[float, int, int] | None,
             actual: float) -> None:
    m = state.metrics
    if math.isfinite(actual) and actual > 0:  # counters only go up; usage was validated upstream of here
        m.spend.labels(provider.name).inc(actual)
    if priced:
        m.tokens.labels(provider.name, "input").inc(max(priced[1], 0))
        m.tokens.labels(provider.name, "output").inc(max(priced[2], 0))


def _key_spend(state: GatewayState, plan: Plan, res: Reservation | None, actual: float, live: float | None) -> None:
    """Per key: what was charged (as ``_settle`` records it, capped at the reservation) and what
    is left of the budget after it."""
    key = plan.key
    if key is None or res is None:
        return
    charged = min(actual, res.amount) if res.capped else actual
    if math.isfinite(charged) and charged > 0:
        state.metrics.key_spend.labels(key.name).inc(charged)
    if key.budget_usd is not None and live is not None and not plan.unmetered:
        state.metrics.key_budget_remaining.labels(key.name).set(key.budget_usd - live)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _stream_error(message: str) -> bytes:
    return _sse({"error": {"message": message, "type": "upstream_error", "param": None,
                           "code": "stream_interrupted"}})


async def stream(state: GatewayState, plan: Plan) -> Response:
    if plan.cache is not None and plan.cache.entry is not None:
        return _cache_hit(state, plan)
    failures: list[str] = []
    async for provider, res, left in _attempts(state, plan):
        # Ask every upstream for usage so streamed spend is real; the caller sees the usage chunk
        # only if it asked for it. Built per attempt: the reservation sets the output cap.
        body = {**plan.request.body, "stream_options": {**(plan.request.body.get("stream_options") or {}),
                                                         "include_usage": True}}
        t = time.perf_counter()
        chunks = state.forwarder.for_provider(provider).stream(provider, body)  # an async generator
        try:
            with plan.access.trace.span("upstream", provider.name):  # to the first chunk
                first = await asyncio.wait_for(anext(chunks), left)
        except UpstreamError as err:
            await _attempt_failed(state, plan, res, err, failures)
            continue
        except StopAsyncIteration:
            empty = UpstreamError(f"provider {provider.name!r} sent an empty stream", status=502,
                                  retryable=True, provider=provider.name, kind="protocol")
            await _attempt_failed(state, plan, res, empty, failures)
            continue
        except TimeoutError:
            await chunks.aclose()
            raise await _deadline(state, plan, res, f"{provider.name!r}'s first chunk") from None
        upstream_s = time.perf_counter() - t
        state.metrics.upstream.labels(provider.name).observe(upstream_s)  # to the first chunk
        if state.health is not None:
            await state.health.success(provider.name)
        plan.access.ttft_s = time.perf_counter() - plan.started
        state.metrics.ttft.observe(plan.access.ttft_s)
        headers = _headers(state, plan, provider, upstream_s)
        headers["x-cscr-cost-reserved-usd"] = f"{res.amount if res else 0.0:.8f}"
        if plan.unmetered:
            headers["x-cscr-unmetered"] = "store unreachable"
        if plan.cache is not None:
            headers["x-cscr-cache"] = plan.cache.status
        relay = _relay(state, plan, provider, res, first, chunks)
        return StreamingResponse(relay, 200, headers, media_type="text/event-stream")
    raise _all_failed(plan, failures)


async def _relay(
    state: GatewayState, plan: Plan, provider: ProviderConfig, res: Reservation | None,
    first: Chunk, chunks: AsyncGenerator[Chunk, None],
) -> AsyncIterator[bytes]:
    """Relay the stream; once it has started a failure is an SSE error event, never a silent cut and
    never a retry. Spend is settled whatever happens: usage from the stream, else the tokens seen.
    Chunks the gateway does not change go out as the provider's bytes, not re-encoded. The usage
    chunk, when the caller asked for it, carries the actual cost (``usage.cost``, USD)."""
    plan.access.relaying = True  # this generator's end writes the access line
    usage: Any = None
    priced: tuple[float, int, int] | None = None
    text: list[str] = []
    outcome = "ok"
    assembled = cache.Assembler() if plan.cache is not None else None  # a complete stream is cached
    try:
        item: Chunk | None = first
        while item is not None:
            chunk, raw = item
            if assembled is not None:
                assembled.add(chunk)
            if chunk.get("usage"):
                usage = chunk["usage"]
                if not plan.request.include_usage:
                    if not chunk.get("choices"):
                        item = await anext(chunks, None)
                        continue
                    chunk, raw = {k: v for k, v in chunk.items() if k != "usage"}, None
            _add_text(chunk, text)
            if isinstance(chunk.get("usage"), dict):  # the caller asked for usage: it gets the cost too
                priced = _usage_cost(state, plan, provider, chunk["usage"], lambda: "".join(text))
                chunk, raw = {**chunk, "usage": {**chunk["usage"], "cost": priced[0] if priced else None}}, None
            yield b"data: " + raw + b"\n\n" if raw is not None else _sse(chunk)
            item = await anext(chunks, None)
        if assembled is not None:
            _cache_later(state, plan, assembled.result(), provider)
        yield b"data: [DONE]\n\n"
    except UpstreamError as err:
        outcome = "upstream_error"
        state.metrics.errors.labels(f"stream_{err.kind}").inc()
        log.warning("stream from %s broke after it started: %s", provider.name, err.message)
        yield _stream_error(f"the stream from {provider.name!r} failed after it started: {err.message}")
    except Exception as exc:  # a fault of the gateway's own: still an error event, not a cut stream
        outcome = "gateway_error"
        state.metrics.errors.labels("stream_internal").inc()
        log.error("stream from %s failed in the gateway: %s: %.200s", provider.name, type(exc).__name__, exc)
        yield _stream_error(f"the stream from {provider.name!r} failed in the gateway after it started")
    except BaseException:
        outcome = "client_disconnect"
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await chunks.aclose()
            priced = priced or _usage_cost(state, plan, provider, usage, lambda: "".join(text))
            if priced is None:  # no usage (stream cut or client gone): charge what was generated, as counted here
                priced = _counted(plan, provider, "".join(text))
            await _bill(state, plan, provider, res, priced, priced[0])
            _stream_ended(state, plan, outcome, priced[0])


def _add_text(chunk: dict[str, Any], text: list[str]) -> None:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if isinstance(delta.get("content"), str):
            text.append(delta["content"])


def _stream_ended(state: GatewayState, plan: Plan, outcome: str, cost: float) -> None:
    m = state.metrics
    m.requests.labels("200", "true").inc()  # the status the client got; how it ended is counted apart
    m.stream_endings.labels(outcome).inc()
    m.stream_seconds.observe(time.perf_counter() - plan.started)
    rec = plan.access
    rec.cost_usd = cost
    if outcome != "ok":
        rec.error = "client_disconnect" if outcome == "client_disconnect" else "stream_interrupted"
    rec.finish()


async def handle_chat(state: GatewayState, request: Request) -> Response:
    plan = await plan_request(state, request)
    if plan.request.stream:
        return await stream(state, plan)
    response = await complete(state, plan)
    state.metrics.requests.labels("200", "false").inc()
    state.metrics.latency.observe(time.perf_counter() - plan.started)
    return response
