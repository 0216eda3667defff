"""The endpoints besides chat completions, each reusing ``gateway.proxy``'s machinery (plan,
attempts with fallback, reserve, settle, headers), so keys, budgets, rate limits and the
``x-cscr-*`` headers behave as they do for chat:

- ``POST /v1/responses`` and ``POST /v1/messages`` (Anthropic): translated to one chat request
  (``gateway.responses``, ``gateway.anthropic``) and routed like chat, ``auto`` included.
- ``POST /v1/embeddings`` and ``POST /v1/completions`` (legacy): passed through as sent to the
  providers configured for them (``mode: embedding`` / ``mode: completion``, OpenAI protocol only).
  Embeddings name their provider (vectors from different models are not interchangeable); legacy
  completions may also use ``auto``, routed on the prompt among the ``completion`` providers.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway import anthropic, proxy, responses
from gateway.config import Mode
from gateway.errors import InvalidRequest, UpstreamError
from gateway.forward import DirectTransport
from gateway.keys import authenticate, budget_account
from gateway.observe import access_of
from gateway.policy import cost_cap, eligible, estimate_cost, expected_cost, resolve_target
from gateway.proxy import GatewayState, Plan
from gateway.tokens import count_text
from gateway.wire import ChatRequest, parse_body


def _relayed_headers(inner: Response) -> dict[str, str]:
    return {k: v for k, v in inner.headers.items() if k.startswith("x-cscr-")}


def _json(body: Any, headers: dict[str, str]) -> Response:
    return Response(json.dumps(body).encode(), 200, headers, media_type="application/json")


def _done(state: GatewayState, plan: Plan) -> None:
    state.metrics.requests.labels("200", "false").inc()
    state.metrics.latency.observe(time.perf_counter() - plan.started)


async def _translated(state: GatewayState, request: Request, to_chat: Callable[[dict[str, Any]], dict[str, Any]],
                      ) -> tuple[Plan, dict[str, Any], Response]:
    """Plan and run the chat request another API's body maps to: (plan, the body as sent, proxy's
    response: JSON, or SSE whose iterator is the relay)."""
    sent: dict[str, Any] = {}

    def translate(body: dict[str, Any]) -> dict[str, Any]:
        sent.update(body)
        return to_chat(body)

    plan = await proxy.plan_request(state, request, translate)
    inner = await (proxy.stream(state, plan) if plan.request.stream else proxy.complete(state, plan))
    return plan, sent, inner


def _answered_by(inner: Response, sent: dict[str, Any]) -> str:
    """The ``model`` a translated answer reports: the gateway's name for the provider that served it
    (what the caller can name next time), known before a stream's first event is sent."""
    return inner.headers.get("x-cscr-provider") or str(sent.get("model"))


def _relay_of(inner: Response) -> AsyncGenerator[bytes, None]:
    assert isinstance(inner, StreamingResponse)
    relay: AsyncGenerator[bytes, None] = inner.body_iterator  # type: ignore[assignment]  # proxy._relay
    return relay


async def handle_responses(state: GatewayState, request: Request) -> Response:
    plan, sent, inner = await _translated(state, request, responses.to_chat)
    if plan.request.stream:
        events = responses.translate_stream(_relay_of(inner), {**sent, "model": _answered_by(inner, sent)})
        return StreamingResponse(events, 200, _relayed_headers(inner), media_type="text/event-stream")
    _done(state, plan)
    answer = responses.from_chat(json.loads(bytes(inner.body)), {**sent, "model": _answered_by(inner, sent)})
    return _json(answer, _relayed_headers(inner))


def anthropic_auth(request: Request) -> Request:
    """Anthropic's clients send the key as ``x-api-key``; the gateway's keys are bearer tokens."""
    key = request.headers.get("x-api-key")
    if key is None or "authorization" in request.headers:
        return request
    scope = dict(request.scope)
    scope["headers"] = [*request.scope["headers"], (b"authorization", b"Bearer " + key.encode("latin-1"))]
    return Request(scope, request.receive)


async def handle_messages(state: GatewayState, request: Request) -> Response:
    plan, sent, inner = await _translated(state, anthropic_auth(request), anthropic.to_chat)
    if plan.request.stream:
        events = anthropic.translate_stream(_relay_of(inner), {**sent, "model": _answered_by(inner, sent)},
                                            plan.prompt_tokens)
        return StreamingResponse(events, 200, _relayed_headers(inner), media_type="text/event-stream")
    _done(state, plan)
    payload = json.loads(bytes(inner.body))
    answer = anthropic.from_chat(payload, {**sent, "model": _answered_by(inner, sent)}, plan.prompt_tokens)
    return _json(answer, _relayed_headers(inner))


# --- passed through: embeddings, legacy completions -------------------------------------------


def _texts(body: dict[str, Any], field: str) -> tuple[list[str], int]:
    """The strings of ``input``/``prompt`` (a string, strings, token ids or lists of token ids) and
    the tokens it holds, as counted here."""
    value = body.get(field)
    items = value if isinstance(value, list) else [value]
    if not items or (isinstance(value, list) and all(isinstance(v, int) for v in value)):
        items = [value]  # [] is refused below; a flat list of ints is one tokenised input
    texts, tokens = [], 0
    for v in items:
        if isinstance(v, str) and v:
            texts.append(v)
            tokens += count_text(v)
        elif isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool) for t in v):
            tokens += len(v)
        else:
            raise InvalidRequest(f"'{field}' must be a non-empty string, an array of them, or token ids",
                                 param=field)
    return texts, tokens


def _positive(body: dict[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
        raise InvalidRequest(f"'{name}' must be a positive integer", param=name)
    return v


async def _plan_passthrough(state: GatewayState, request: Request, mode: Mode) -> Plan:
    """``proxy.plan_request`` for a body passed through: the prompt is ``input`` (embeddings: no
    output tokens) or ``prompt`` (legacy completions: ``max_tokens`` × ``n`` per prompt)."""
    started = time.perf_counter()
    config, limit = state.config, state.config.server.max_body_bytes
    key = await state.store_op("key lookup", authenticate(config, state.store, request.headers))
    rec = access_of(request)
    rec.trace = state.tracing.start(mode, request.headers)
    rec.key = key.name if key is not None else None
    body = parse_body(await proxy.read_body(request, limit), limit)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string", param="model")
    rec.model = model
    if mode == "embedding":
        texts, prompt_tokens = _texts(body, "input")
        bound, n, max_out = 0, 1, None
        if model.startswith("auto"):
            raise InvalidRequest("embeddings are not routed: name a provider configured with mode: embedding "
                                 "(vectors of different models are not interchangeable)", param="model")
    else:
        if body.get("stream"):
            raise InvalidRequest("streaming is not supported on /v1/completions by this gateway; use "
                                 "/v1/chat/completions to stream", param="stream", code="unsupported_parameter")
        texts, prompt_tokens = _texts(body, "prompt")
        max_out = _positive(body, "max_tokens")
        bound = max_out or config.server.estimate_output_tokens
        n = (_positive(body, "n") or 1) * max(len(texts), 1) * (_positive(body, "best_of") or 1)
    target = resolve_target(config, model, key, request.headers, mode)
    estimates = {p.name: estimate_cost(p, prompt_tokens, bound, n) for p in target.providers}
    account = budget_account(key) if key is not None else None
    unmetered = await proxy._admit(state, key, account, prompt_tokens + bound * n)
    fits = eligible(target.providers, estimates, cost_cap(key, request.headers))
    policy, routing_s = "named", 0.0
    predicted: dict[str, float] = {}
    if target.routed:  # on the first prompt, priced at the router's expected answer length as chat is
        fits, policy, routing_s, predicted = await proxy.route(
            state, rec, texts[0] if texts else "", fits, estimates, target.tradeoff,
            lambda p: expected_cost(p, prompt_tokens, max_out, n))
    if state.health is not None:  # providers in cooldown are skipped here as for chat
        fits = await state.health.usable(fits, named=not target.routed)
    request_view = ChatRequest(body, model, False, False, max_out, n)
    plan = Plan(request_view, key, fits, estimates, prompt_tokens, policy, routing_s, started, account, unmetered,
                access=rec, tradeoff=target.tradeoff if target.routed else None, predicted=predicted)
    rec.tried, rec.policy = plan.tried, policy  # the same list: it grows as providers are tried
    return plan


def _billable_usage(payload: dict[str, Any]) -> Any:
    """Embeddings report no completion_tokens: zero, not a malformed count."""
    u = payload.get("usage")
    return {"completion_tokens": 0, **u} if isinstance(u, dict) and "prompt_tokens" in u else u


def _generated_text(payload: dict[str, Any]) -> str:
    return "".join(c.get("text", "") for c in payload.get("choices") or () if isinstance(c, dict)
                   and isinstance(c.get("text"), str))


async def _pass_through(state: GatewayState, plan: Plan, path: str) -> Response:
    """``proxy.complete`` for a body passed through as sent to ``path``: same fallback, settlement
    (the provider's usage, else what was counted here) and headers."""
    failures: list[str] = []
    async for provider, res, left in proxy._attempts(state, plan):
        t = time.perf_counter()
        transport = state.forwarder.for_provider(provider)
        assert isinstance(transport, DirectTransport)  # config: mode other than chat implies direct
        try:
            payload = await asyncio.wait_for(transport.call(provider, path, plan.request.body), left)
        except UpstreamError as err:
            await proxy._attempt_failed(state, plan, res, err, failures)
            continue
        except TimeoutError:
            raise await proxy._deadline(state, plan, res, repr(provider.name)) from None
        upstream_s = time.perf_counter() - t
        state.metrics.upstream.labels(provider.name).observe(upstream_s)
        if state.health is not None:
            await state.health.success(provider.name)
        priced = proxy._usage_cost(state, plan, provider, _billable_usage(payload),
                                   functools.partial(_generated_text, payload))
        _, headers = await proxy.settle_answer(state, plan, provider, res, priced, upstream_s)
        _done(state, plan)
        return _json(payload, headers)
    raise proxy._all_failed(plan, failures)


async def handle_embeddings(state: GatewayState, request: Request) -> Response:
    return await _pass_through(state, await _plan_passthrough(state, request, "embedding"), "/embeddings")


async def handle_completions(state: GatewayState, request: Request) -> Response:
    return await _pass_through(state, await _plan_passthrough(state, request, "completion"), "/completions")
