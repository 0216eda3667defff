"""The Starlette application: routes, lifespan, and the one place errors become OpenAI JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import anthropic, endpoints
from gateway.admin import admin_routes
from gateway.config import GatewayConfig
from gateway.dashboard import dashboard_routes
from gateway.errors import GatewayError, ModelNotFound
from gateway.forward import Forwarder
from gateway.health import ProviderHealth
from gateway.metrics import Metrics
from gateway.observe import SCOPE_KEY, AccessRecord, Tracing, access_of, request_id
from gateway.policy import auto_model_names
from gateway.proxy import GatewayState, handle_chat
from gateway.reload import ConfigReloader
from gateway.stats import StatsRecorder
from gateway.store import SettlementQueue, StoreOptions, open_store, redact_text, redact_url
from router_core.types import CostOnlyPolicy, RoutingPolicy

log = logging.getLogger(__name__)


def load_policy(config: GatewayConfig) -> tuple[RoutingPolicy, str | None]:
    """The router ``auto`` uses. If the configured artifact cannot be loaded the gateway still
    serves, with the cost-only policy, and says why on /ready and in the log (documented)."""
    artifact = config.router.artifact
    if artifact == "none":
        return CostOnlyPolicy(), None
    try:
        from router_core.router import load_routing_policy

        path = None if artifact == "bundled" else Path(artifact)
        return load_routing_policy(path, top_k=config.router.top_k), None
    except Exception as exc:  # any failure to load degrades to cost-only, loudly
        problem = f"router artifact {artifact!r} not loaded ({type(exc).__name__}: {exc}); using cost-only"
        log.error(problem)
        return CostOnlyPolicy(), problem


def _json(body: Any, status: int, headers: Mapping[str, str] | None = None) -> Response:
    # ASCII-escaped: an error may quote what the caller sent (a lone surrogate cannot be UTF-8).
    return Response(json.dumps(body).encode(), status, headers, media_type="application/json")


def _error_response(err: GatewayError, state: GatewayState | None, shape: str = "openai") -> Response:
    if state is not None:
        state.metrics.errors.labels(err.code or err.type).inc()
        state.metrics.requests.labels(str(err.status), "false").inc()
    body = anthropic.error_body(err) if shape == "anthropic" else err.to_dict()
    return _json(body, err.status, err.headers())


def _is_tradeoff(model: str) -> bool:
    """``auto@T`` with T in [0, 1]."""
    try:
        return model.startswith("auto@") and 0.0 <= float(model[5:]) <= 1.0
    except ValueError:
        return False


# What a 404 lists: the API this gateway serves (anything else is "not supported", not just absent).
SERVED = ("POST /v1/chat/completions, POST /v1/responses, POST /v1/messages, POST /v1/embeddings, "
          "POST /v1/completions, GET /v1/models, GET /v1/models/{id}")


def _internal_error(rid: str) -> Response:
    body = {"error": {"message": f"internal error in the gateway (request {rid})", "type": "server_error",
                      "param": None, "code": None}}
    return _json(body, 500)


class Observe:
    """Gives every HTTP request its id (``x-request-id`` on every response) and its access record,
    writes the record's line when the response ends (a stream's own end writes it otherwise), and
    contains errors: an exception nothing else handled becomes a 500 naming the request id, with
    one log line. Starlette's handler for ``Exception`` answers and then re-raises, so uvicorn logs
    a traceback and closes the keep-alive connection: this answers and stops. After the response
    started there is nothing to answer with; the connection closes (the response is incomplete)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = request_id(sent.decode("latin-1") if sent is not None else None)
        state = getattr(getattr(scope.get("app"), "state", None), "gateway", None)
        enabled = state.config.server.access_log if state is not None else True
        rec = AccessRecord(rid, scope["method"], scope["path"], time.perf_counter(), enabled)
        scope[SCOPE_KEY] = rec
        header = (b"x-request-id", rid.encode())

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                rec.status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        except Exception as exc:
            log.error("unhandled error on %s %s [request %s]: %s", scope["method"], scope["path"], rid,
                      type(exc).__name__)
            log.debug("request %s", rid, exc_info=exc)  # the traceback, for whoever turns debug on
            rec.error = rec.error or "internal_error"
            if rec.status == 0:
                await _internal_error(rid)(scope, receive, tagged)
        finally:
            if not rec.relaying:
                rec.finish()


def create_app(
    config: GatewayConfig, router: RoutingPolicy | None = None, config_path: str | Path | None = None,
    config_text: str | None = None, env: Mapping[str, str] | None = None,
) -> Starlette:
    """Build the gateway. ``router`` overrides the one named in the config (tests, benchmarks).
    With ``config_path`` the file is watched and reloaded live (see ``gateway.reload``)."""
    holder: dict[str, GatewayState] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        policy, problem = (router, None) if router is not None else load_policy(config)
        server = config.server
        store = open_store(config.store, StoreOptions(server.store_max_connections, server.store_pool_timeout_s,
                                                      server.store_socket_timeout_s))
        metrics = Metrics()
        forwarder = Forwarder(config.providers)  # knows the provider keys, to scrub them from upstream errors
        tracing = Tracing(server.otlp_endpoint)  # no opentelemetry import unless an endpoint is set
        state = GatewayState(config, forwarder, policy, store, metrics, SettlementQueue(store), problem,
                             health=ProviderHealth(store, metrics), tracing=tracing)
        state.stats = StatsRecorder(store, metrics)
        holder["state"] = state
        app.state.gateway = state
        state.reloader = ConfigReloader(state, Path(config_path) if config_path else None, config_text, env)
        await state.reloader.start()
        # What is served now: the reloader may have adopted the shared config instead of the file.
        log.info("gateway ready: %d providers, config %s (version %d), router %s, store %s",
                 len(state.config.providers), state.reloader.status.sha256[:12], state.reloader.status.version,
                 policy.name, redact_url(config.store))
        try:
            yield
        finally:
            await state.reloader.stop()
            await state.drain(timeout_s=5.0)  # cache writes of the last answers
            await state.settlements.flush(timeout_s=5.0)
            await state.stats.drain(timeout_s=5.0)
            if state.settlements.pending:
                log.error("%d settlements could not reach the store before shutdown", state.settlements.pending)
            await state.forwarder.aclose()
            await state.store.aclose()
            await asyncio.to_thread(state.tracing.shutdown)  # exports what is queued (bounded)

    def state_of(request: Request) -> GatewayState:
        state: GatewayState = request.app.state.gateway
        return state

    async def chat(request: Request) -> Response:
        state = state_of(request)
        try:
            return await handle_chat(state, request)
        except GatewayError as err:
            access_of(request).error = err.code or err.type
            return _error_response(err, state)

    def endpoint(handler: Any, shape: str = "openai") -> Any:
        async def serve(request: Request) -> Response:
            state = state_of(request)
            try:
                response: Response = await handler(state, request)
                return response
            except GatewayError as err:
                return _error_response(err, state, shape)
        return serve

    async def one_model(request: Request) -> Response:
        cfg = state_of(request).config
        name = request.path_params["model"]
        provider = cfg.provider(name)
        if provider is not None:
            owner = provider.model.split("/")[0]
        elif name in auto_model_names() or _is_tradeoff(name):
            owner = "cscr-gateway"
        else:
            err = ModelNotFound(f"The model {name!r} does not exist; use 'auto' or one of: "
                                + ", ".join(p.name for p in cfg.providers), param="model")
            return _json(err.to_dict(), err.status)
        return JSONResponse({"id": name, "object": "model", "created": int(time.time()), "owned_by": owner})

    async def models(request: Request) -> Response:
        cfg = state_of(request).config
        created = int(time.time())
        data = [{"id": m, "object": "model", "created": created, "owned_by": "cscr-gateway"}
                for m in auto_model_names()]
        data += [{"id": p.name, "object": "model", "created": created, "owned_by": p.model.split("/")[0]}
                 for p in cfg.providers]
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        state = state_of(request)
        status = state.reloader.status
        checks: dict[str, Any] = {
            "config": {"ok": True, "source": state.config.source, "providers": len(state.config.providers),
                       "sha256": status.sha256[:12], "version": status.version,
                       "last_reload_error": status.last_error, "expert_problems": status.expert_problems,
                       "descriptor_jobs": state.reloader.jobs.status},
            "router": {"ok": state.router_problem is None, "policy": state.router.name,
                       "problem": state.router_problem},
        }
        if state.health is not None:  # cooldowns do not make the replica unready: it serves the others
            names = [p.name for p in state.config.providers]
            cooling = await state.health.refresh(names)
            checks["providers"] = {"ok": True, "cooldown_s": {n: cooling[n] for n in names if n in cooling}}
        try:
            await state.store.ping()
            checks["store"] = {"ok": True, "url": redact_url(state.store.url),
                               "pending_settlements": state.settlements.pending}
        except Exception as exc:  # report, don't crash: /ready exists to say what is wrong
            checks["store"] = {"ok": False, "error": redact_text(f"{type(exc).__name__}: {exc}", state.store.url),
                               "store_failure": state.config.server.store_failure,
                               "pending_settlements": state.settlements.pending}
        # A router that fell back to cost-only still serves traffic: it is reported, not fatal.
        ok = checks["store"]["ok"] and bool(state.config.providers)
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        return Response(state_of(request).metrics.render(), media_type="text/plain; version=0.0.4")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        detail = (f"not supported by this gateway (it serves {SERVED})" if exc.status_code == 404
                  else exc.detail)
        return JSONResponse(
            {"error": {"message": f"{request.method} {request.url.path}: {detail}",
                       "type": "invalid_request_error", "param": None, "code": kind}},
            status_code=exc.status_code,
        )

    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", one_model, methods=["GET"]),
        Route("/v1/responses", endpoint(endpoints.handle_responses), methods=["POST"]),
        Route("/v1/messages", endpoint(endpoints.handle_messages, "anthropic"), methods=["POST"]),
        Route("/v1/embeddings", endpoint(endpoints.handle_embeddings), methods=["POST"]),
        Route("/v1/completions", endpoint(endpoints.handle_completions), methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *admin_routes(),
        *dashboard_routes(),
    ]
    return Starlette(
        routes=routes, lifespan=lifespan,
        exception_handlers={HTTPException: http_error}, middleware=[Middleware(Observe)],
    )
