"""Per-request policy: what the ``model`` field asks for, what the headers and the key allow, and
which providers fit. Pure functions of the config, the request and the key; no I/O.

``model`` values:
- a provider name from gateway.yaml: that provider only, no routing (same budget rules);
- ``auto``: routed with the key's trade-off (else the router's default);
- ``auto:best`` (trade-off 0), ``auto:balanced`` (0.5), ``auto:cheap`` (1);
- ``auto@T`` with T in [0, 1]: an explicit trade-off (0 = best quality, 1 = cheapest).

Request headers (they may only tighten what the key allows):
- ``x-cscr-max-cost-usd``: the most this one request may cost (estimated before the call);
- ``x-cscr-tradeoff``: the trade-off in [0, 1]; it overrides the default but may not go below the
  key's own trade-off when the key sets one (a key pinned to cheap routing cannot be made expensive).
Each header at most once: two values are a 400, not a guess at which one was meant.

A key's trade-off is a floor on every request it makes. Naming a provider chooses without the
router, so a key with a floor above 0 may not name one (403): it would step around the floor
(a key pinned to cheap routing naming the most expensive model). Its ``auto`` requests, presets
and ``auto@T`` included, route at the floor or above.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from starlette.datastructures import Headers

from gateway.config import GatewayConfig, KeyConfig, Mode, ProviderConfig
from gateway.errors import BudgetExceeded, InvalidRequest, ModelNotFound, PermissionDenied

AUTO_PRESETS = {"auto:best": 0.0, "auto:balanced": 0.5, "auto:cheap": 1.0}
MAX_COST_HEADER = "x-cscr-max-cost-usd"
TRADEOFF_HEADER = "x-cscr-tradeoff"
ENDPOINTS = {"chat": "/v1/chat/completions, /v1/responses and /v1/messages",
             "completion": "/v1/completions", "embedding": "/v1/embeddings"}


@dataclass(frozen=True, slots=True)
class Target:
    routed: bool
    tradeoff: float
    providers: tuple[ProviderConfig, ...]


def auto_model_names() -> list[str]:
    return ["auto", *AUTO_PRESETS]


def _header_float(headers: Mapping[str, str], name: str, lo: float, hi: float) -> float | None:
    # A Mapping shows one value of a repeated header; starlette's Headers has them all.
    values = headers.getlist(name) if isinstance(headers, Headers) else [headers[name]] if name in headers else []
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest(f"header {name} was sent {len(values)} times; send it once", param=name,
                             code="invalid_header")
    raw = values[0]
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidRequest(f"header {name} must be a number in [{lo}, {hi}], got {raw!r}", param=name,
                             code="invalid_header")
    return value


def resolve_target(
    config: GatewayConfig, model: str, key: KeyConfig | None, headers: Mapping[str, str], mode: Mode = "chat"
) -> Target:
    """Which providers may serve this request and with what trade-off. ``mode`` is what the
    endpoint needs (``ProviderConfig.mode``): ``auto`` routes among the providers of that mode only,
    and a named provider of another mode is a 400 that says which endpoint serves it."""
    header_tradeoff = _header_float(headers, TRADEOFF_HEADER, 0.0, 1.0)
    floor = key.tradeoff if key is not None and key.tradeoff is not None else 0.0
    default = key.tradeoff if key is not None and key.tradeoff is not None else config.router.default_tradeoff
    allowed = [
        p for p in config.providers
        if (key is None or key.allowed_providers is None or p.name in key.allowed_providers) and p.mode == mode
    ]
    if model == "auto" or model in AUTO_PRESETS or model.startswith("auto@"):
        if model in AUTO_PRESETS:
            tradeoff = AUTO_PRESETS[model]
        elif model.startswith("auto@"):
            try:
                tradeoff = float(model[5:])
            except ValueError:
                tradeoff = math.nan
            if not 0.0 <= tradeoff <= 1.0:  # also false for NaN
                raise InvalidRequest(f"model {model!r}: the trade-off after '@' must be in [0, 1]", param="model")
        else:
            tradeoff = default
        if header_tradeoff is not None:
            tradeoff = header_tradeoff
        if not allowed:
            if not any(p.mode == mode for p in config.providers):
                raise ModelNotFound(f"no provider is configured with mode: {mode}", param="model")
            raise PermissionDenied("this key may not use any provider", param="model")
        return Target(True, max(tradeoff, floor), tuple(allowed))
    provider = config.provider(model)
    if provider is None:
        raise ModelNotFound(
            f"The model {model!r} does not exist; use 'auto' or one of: "
            + ", ".join(p.name for p in config.providers),
            param="model",
        )
    if provider.mode != mode:
        raise InvalidRequest(f"provider {model!r} serves {ENDPOINTS[provider.mode]} (mode: {provider.mode}), "
                             f"not this endpoint", param="model", code="model_not_supported")
    if provider not in allowed:
        raise PermissionDenied(f"this key may not use {model!r}", param="model")
    if floor > 0.0 and mode != "embedding":  # embeddings are never routed: naming is the only way
        assert key is not None
        raise PermissionDenied(
            f"key {key.name!r} routes with a trade-off of at least {floor}, so it may not name a provider; "
            f"use model 'auto'", param="model")
    return Target(False, max(header_tradeoff or 0.0, floor), (provider,))


def cost_cap(key: KeyConfig | None, headers: Mapping[str, str]) -> float | None:
    """The most one request may cost: min(header cap, key's per-request cap, key's whole budget).
    What is left of the budget is checked atomically when the estimate is reserved."""
    caps = [_header_float(headers, MAX_COST_HEADER, 0.0, math.inf)]
    if key is not None:
        caps += [key.max_cost_per_request_usd, key.budget_usd]
    present = [c for c in caps if c is not None]
    return min(present) if present else None


@dataclass(frozen=True, slots=True)
class Needs:
    """What serving a request takes from a provider (``ProviderConfig.context_window`` & co.)."""

    vision: bool  # an image part in some message
    audio: bool  # an input_audio part
    files: bool  # a file part (a PDF)
    tools: bool  # tool definitions sent
    tokens: int  # prompt tokens + max_tokens (the prompt alone when max_tokens is absent)


def request_needs(body: Mapping[str, Any], prompt_tokens: int, max_output_tokens: int | None) -> Needs:
    """Tools are needed by tool definitions and by a history of tool calls and their results (a model
    without tool calling has no template for them, and servers refuse ``role: tool``)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    kinds = {part.get("type") for m in messages if isinstance(m.get("content"), list)
             for part in m["content"] if isinstance(part, dict)}
    tools = bool(body.get("tools") or body.get("functions")) or any(
        m.get("role") in ("tool", "function") or m.get("tool_calls") or m.get("function_call") for m in messages)
    return Needs("image_url" in kinds, "input_audio" in kinds, "file" in kinds, tools,
                 prompt_tokens + (max_output_tokens or 0))


def lacks(provider: ProviderConfig, needs: Needs) -> tuple[str, str] | None:
    """(why, the capability's name) when ``provider`` cannot serve the request; unknown allows it."""
    if needs.vision and provider.supports_vision is False:
        return f"provider {provider.name!r} does not take images (supports_vision: false)", "vision"
    if needs.audio and provider.supports_audio_input is False:
        return f"provider {provider.name!r} does not take audio (supports_audio_input: false)", "audio"
    if needs.files and provider.supports_pdf_input is False:
        return f"provider {provider.name!r} does not take files (supports_pdf_input: false)", "files"
    if needs.tools and provider.supports_tools is False:
        return f"provider {provider.name!r} does not take tools (supports_tools: false)", "tools"
    if provider.context_window is not None and needs.tokens > provider.context_window:
        return (f"provider {provider.name!r} has a context window of {provider.context_window} tokens; this "
                f"request needs {needs.tokens} (prompt + max_tokens)"), "context_window"
    return None


_CAPABILITY_ERRORS = {"vision": ("messages", "model_not_supported"), "audio": ("messages", "model_not_supported"),
                      "files": ("messages", "model_not_supported"), "tools": ("tools", "model_not_supported"),
                      "context_window": ("messages", "context_length_exceeded")}


def capable(target: Target, needs: Needs) -> Target:
    """The target less the providers that cannot serve the request. A named provider that cannot,
    or a routed request no provider can serve, is a 400 that names the missing capability."""
    verdicts = [(p, lacks(p, needs)) for p in target.providers]
    fits = tuple(p for p, why in verdicts if why is None)
    if fits:
        return target if len(fits) == len(target.providers) else replace(target, providers=fits)
    whys = [why for _, why in verdicts if why is not None]
    missing = sorted({cap for _, cap in whys})
    param, code = _CAPABILITY_ERRORS[whys[0][1]]
    if not target.routed:
        raise InvalidRequest(whys[0][0], param=param, code=code)
    raise InvalidRequest(f"no provider can serve this request (missing: {', '.join(missing)}): "
                         + "; ".join(why for why, _ in whys), param=param, code=code)


def estimate_cost(provider: ProviderConfig, prompt_tokens: int, output_bound: int, n: int) -> float:
    """Upper estimate before the call: prompt × input price + n × output bound × output price."""
    return provider.cost(prompt_tokens, output_bound * n)


def expected_cost(provider: ProviderConfig, prompt_tokens: int, max_output_tokens: int | None,
                  n: int) -> Callable[[float], float]:
    """``Candidate.cost_at``: USD were each of the ``n`` answers ``tokens`` long (a router's expected
    length, capped at ``max_tokens``): what the router ranks on; budgets stay on ``estimate_cost``."""
    cap = float(max_output_tokens) if max_output_tokens else math.inf

    def cost_at(tokens: float) -> float:
        return provider.cost(prompt_tokens, min(tokens, cap) * n)

    return cost_at


def eligible(
    providers: tuple[ProviderConfig, ...], estimates: Mapping[str, float], cap: float | None
) -> list[ProviderConfig]:
    fits = [p for p in providers if cap is None or estimates[p.name] <= cap]
    if not fits:
        cheapest = min(providers, key=lambda p: estimates[p.name])
        raise BudgetExceeded(
            f"no provider fits the budget: the cheapest, {cheapest.name!r}, is estimated at "
            f"${estimates[cheapest.name]:.6f} and this request may cost at most ${cap:.6f}",
            param="max_tokens",
        )
    return fits
