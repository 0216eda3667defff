"""``gateway.yaml`` parsed once into frozen, typed objects.

Unknown keys, wrong types and missing environment variables are errors that name the file and the
field. Secrets appear only as the NAME of an environment variable (provider keys) or as a sha256
hash (virtual keys); the values are read when the config is loaded and never logged.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gateway.errors import ConfigError

Transport = Literal["auto", "openai", "litellm"]
# What a provider serves (litellm's ``model_info.mode`` names): chat completions (and the
# Responses and Anthropic Messages endpoints, translated to chat), legacy text completions, or
# embeddings. ``auto`` routes chat requests among the chat providers only.
Mode = Literal["chat", "completion", "embedding"]
MODES = ("chat", "completion", "embedding")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,127}$")
RESERVED_MODELS = ("auto",)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    max_body_bytes: int = 1_048_576
    max_attempts: int = 3  # providers tried per request, fallbacks included
    deadline_s: float = 120.0  # overall time for one request, fallbacks included
    estimate_output_tokens: int = 512  # expected output when max_tokens is absent: routing estimates
    max_output_tokens: int = 4096  # output cap sent upstream and reserved for a metered request without max_tokens
    image_tokens: int = 765  # prompt tokens counted per image part (OpenAI: a 1024x1024 image in high detail)
    file_tokens: int = 4000  # prompt tokens counted per file part (a PDF: ~2 pages of text plus page images)
    reload_interval_s: float = 1.0  # how often the config file and the store's config version are checked
    store_failure: Literal["closed", "open"] = "closed"  # store unreachable: refuse to spend, or serve unmetered
    master_key_env: str | None = None  # env var holding the admin API's master key; None = no admin API
    master_key: str | None = field(default=None, repr=False)
    store_max_connections: int = 256  # redis:// connections per process; more requests wait for one
    store_pool_timeout_s: float = 30.0  # the longest wait for a free connection (then 503 store_busy)
    store_socket_timeout_s: float = 2.0  # one Redis command or connect (then the store counts as unreachable)
    provider_failure_threshold: int = 3  # consecutive failures/timeouts that put a provider in cooldown; 0 = never
    provider_cooldown_s: float = 30.0  # how long a provider is skipped before one request probes it
    provider_failure_window_s: float = 60.0  # failures further apart than this do not add up
    access_log: bool = True  # one JSON line per request on the ``cscr.access`` logger
    otlp_endpoint: str | None = None  # OTLP/HTTP base URL for spans (else $OTEL_EXPORTER_OTLP_ENDPOINT); None: off
    savings_reference: str | None = None  # the provider savings are measured against; None = the dearest


@dataclass(frozen=True, slots=True)
class RouterConfig:
    artifact: str = "bundled"  # "bundled", a path to an artifact directory, or "none" (cost-only)
    default_tradeoff: float = 0.5  # 0 = best quality, 1 = cheapest
    top_k: int | None = None


@dataclass(frozen=True, slots=True)
class DescribeConfig:
    """How the gateway makes a provider's descriptor itself when it joins (``descriptor:`` mapping).

    ``probe``: send the router's probe prompts to the provider through litellm, spending at most
    ``max_cost_usd``, and make the descriptor the router's space needs: graded answers on
    ``n_probes`` gradable probes (seed ``seed``) for a kernel-shrink router, a perplexity fingerprint
    of the answers (scorer LM) for a perplexity-keyed CSCR router.
    ``logit``: the logit footprint of a local open-weight model (``lm``: a packaged model name or
    a transformers directory); costs CPU, no money.
    """

    method: Literal["probe", "logit"]
    lm: str | None = None  # logit: which local model
    max_cost_usd: float = 1.0
    concurrency: int = 4
    retries: int = 2
    max_tokens: int = 256
    max_missing: float = 0.25  # refuse a fingerprint when more of the probes than this fail
    timeout_s: float = 3600.0  # the whole job (probing + scoring)
    n_probes: int = 200  # graded space: how many gradable probes are asked (stratified by task)
    seed: int = 0  # graded space: which ones


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    model: str  # litellm model string, e.g. "openai/gpt-4o-mini"
    api_base: str | None = None
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)  # resolved from api_key_env at load time
    input_usd_per_mtok: float = 0.0
    output_usd_per_mtok: float = 0.0
    timeout_s: float = 60.0
    expert: str | None = None  # expert key name in the router artifact
    descriptor: str | None = None  # file with this model's descriptor vector (a model the artifact lacks)
    describe: DescribeConfig | None = None  # or: the gateway makes the descriptor when the provider joins
    transport: Transport = "auto"
    mode: Mode = "chat"
    # What the model can take (``auto`` ranks only providers that can serve a request); None: unknown,
    # which allows it. Declared in gateway.yaml, else litellm's model map, else unknown.
    context_window: int | None = None  # prompt + max_tokens, in tokens
    supports_vision: bool | None = None
    supports_tools: bool | None = None
    supports_audio_input: bool | None = None  # input_audio parts
    supports_pdf_input: bool | None = None  # file parts (PDFs)

    @property
    def upstream_model(self) -> str:
        """The model name the provider itself expects (litellm's provider prefix removed)."""
        return self.model.split("/", 1)[1] if self.model.startswith("openai/") else self.model

    @property
    def direct(self) -> bool:
        """True when the provider speaks OpenAI's protocol and the lean httpx path serves it."""
        if self.transport == "auto":
            return self.model.startswith("openai/") and self.api_base is not None
        return self.transport == "openai"

    def cost(self, prompt_tokens: int, completion_tokens: float) -> float:
        return (prompt_tokens * self.input_usd_per_mtok + completion_tokens * self.output_usd_per_mtok) / 1e6


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """Who may reuse an answer and for how long (``keys[].cache``, or the top-level ``cache``)."""

    enabled: bool = True
    ttl_s: float = 3600.0
    shared: bool = False  # True: one namespace for every key that says so; False: the key's own
    allow_nondeterministic: bool = False  # also cache temperature > 0 (or unset: OpenAI's default is 1)
    default: bool = True  # False: only requests sending ``x-cscr-cache: on`` (or refresh) use it


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The top-level ``cache`` section: bounds, and the policy of keys that set none."""

    max_entry_bytes: int = 262_144  # a larger answer is served but not stored
    max_entries: int = 2_000  # memory:// only (least recently used dropped); redis:// uses TTL + maxmemory
    policy: CachePolicy | None = None  # None: only keys with their own ``cache`` use one


@dataclass(frozen=True, slots=True)
class KeyConfig:
    name: str
    secret_sha256: str = field(repr=False)
    budget_usd: float | None = None  # per budget_period; None = unlimited
    budget_period: Literal["none", "daily", "monthly"] = "none"  # UTC calendar periods; "none" = lifetime
    max_cost_per_request_usd: float | None = None
    allowed_providers: tuple[str, ...] | None = None  # None = all
    tradeoff: float | None = None  # default trade-off for this key (else the router's)
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute (estimated prompt + output bound, counted before the call)
    cache: CachePolicy | None = None  # None: the top-level ``cache`` policy, if any
    source: Literal["config", "admin"] = "config"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    source: str
    store: str = field(default="memory://", repr=False)  # may carry a Redis password (${VAR} expanded)
    server: ServerConfig = ServerConfig()
    router: RouterConfig = RouterConfig()
    providers: tuple[ProviderConfig, ...] = ()
    keys: tuple[KeyConfig, ...] = ()
    cache: CacheConfig = CacheConfig()

    def provider(self, name: str) -> ProviderConfig | None:
        for p in self.providers:
            if p.name == name:
                return p
        return None

    def key_by_secret(self, secret: str) -> KeyConfig | None:
        digest = hash_secret(secret)
        for k in self.keys:
            if k.secret_sha256 == digest:
                return k
        return None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class _Reader:
    """Reads one mapping, remembering the path for error messages; unknown keys are errors."""

    def __init__(self, file: str, path: str, raw: Any) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(file, path or "<root>", f"expected a mapping, got {type(raw).__name__}")
        self.file, self.path, self.raw = file, path, raw
        self.seen: set[str] = set()

    def _field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        self.seen.add(key)
        if key not in self.raw or self.raw[key] is None:
            if required:
                raise ConfigError(self.file, self._field(key), "is required")
            return default
        value = self.raw[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = "/".join(k.__name__ for k in kinds)
            raise ConfigError(self.file, self._field(key), f"expected {names}, got {type(value).__name__}")
        return value

    def number(self, key: str, default: float | None, *, lo: float | None = None, hi: float | None = None) -> Any:
        value = self.get(key, float, default)
        if value is not None and ((lo is not None and value < lo) or (hi is not None and value > hi)):
            raise ConfigError(self.file, self._field(key), f"{value} is outside [{lo}, {hi}]")
        return value

    def sub(self, key: str) -> _Reader | None:
        self.seen.add(key)
        if key not in self.raw or self.raw[key] is None:
            return None
        return _Reader(self.file, self._field(key), self.raw[key])

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            raise ConfigError(self.file, self._field(str(unknown[0])), "unknown key")


OTLP_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"


def _otlp_endpoint(r: _Reader | None, env: Mapping[str, str]) -> str | None:
    """``server.otlp_endpoint``, else the standard OpenTelemetry variable; checked here so a typo is
    one start-up error naming where it came from, not spans silently lost."""
    value = r.get("otlp_endpoint", str) if r is not None else None
    where = "server.otlp_endpoint"
    if value is None:
        value, where = env.get(OTLP_ENV) or None, f"environment variable {OTLP_ENV}"
    if value is None:
        return None
    parsed = urllib.parse.urlsplit(value)
    try:
        port_ok = parsed.port is None or parsed.port > 0
    except ValueError:  # not a number, or out of range
        port_ok = False
    if not (parsed.scheme in ("http", "https") and parsed.hostname and port_ok and not parsed.query
            and not parsed.fragment and parsed.username is None and not any(c.isspace() for c in value)):
        file = r.file if r is not None else "<environment>"
        raise ConfigError(file, where, f"{value!r} is not an http(s)://host[:port][/path] URL (OTLP/HTTP)")
    return value.rstrip("/")


def _server(r: _Reader | None, env: Mapping[str, str]) -> ServerConfig:
    if r is None:
        return ServerConfig(otlp_endpoint=_otlp_endpoint(None, env))
    d = ServerConfig()
    failure = r.get("store_failure", str, d.store_failure)
    if failure not in ("closed", "open"):
        raise ConfigError(r.file, r._field("store_failure"), "must be closed or open")
    master_env = r.get("master_key_env", str)
    master = None
    if master_env is not None:
        master = env.get(master_env)
        if not master:
            raise ConfigError(r.file, r._field("master_key_env"), f"environment variable {master_env} is not set")
    cfg = ServerConfig(
        max_body_bytes=r.get("max_body_bytes", int, d.max_body_bytes),
        max_attempts=r.get("max_attempts", int, d.max_attempts),
        deadline_s=r.number("deadline_s", d.deadline_s, lo=0.001),
        estimate_output_tokens=r.get("estimate_output_tokens", int, d.estimate_output_tokens),
        max_output_tokens=r.get("max_output_tokens", int, d.max_output_tokens),
        image_tokens=r.get("image_tokens", int, d.image_tokens),
        file_tokens=r.get("file_tokens", int, d.file_tokens),
        reload_interval_s=r.number("reload_interval_s", d.reload_interval_s, lo=0.05),
        store_failure=failure,
        master_key_env=master_env,
        master_key=master,
        store_max_connections=r.get("store_max_connections", int, d.store_max_connections),
        store_pool_timeout_s=r.number("store_pool_timeout_s", d.store_pool_timeout_s, lo=0.001),
        store_socket_timeout_s=r.number("store_socket_timeout_s", d.store_socket_timeout_s, lo=0.001),
        provider_failure_threshold=r.get("provider_failure_threshold", int, d.provider_failure_threshold),
        provider_cooldown_s=r.number("provider_cooldown_s", d.provider_cooldown_s, lo=0.001),
        provider_failure_window_s=r.number("provider_failure_window_s", d.provider_failure_window_s, lo=0.001),
        access_log=r.get("access_log", bool, d.access_log),
        otlp_endpoint=_otlp_endpoint(r, env),
        savings_reference=r.get("savings_reference", str),
    )
    for name in ("max_body_bytes", "max_attempts", "estimate_output_tokens", "max_output_tokens",
                 "store_max_connections"):
        if getattr(cfg, name) < 1:
            raise ConfigError(r.file, r._field(name), "must be >= 1")
    for name in ("image_tokens", "file_tokens", "provider_failure_threshold"):
        if getattr(cfg, name) < 0:
            raise ConfigError(r.file, r._field(name), "must be >= 0")
    r.done()
    return cfg


def _router(r: _Reader | None) -> RouterConfig:
    if r is None:
        return RouterConfig()
    d = RouterConfig()
    cfg = RouterConfig(
        artifact=r.get("artifact", str, d.artifact),
        default_tradeoff=r.number("default_tradeoff", d.default_tradeoff, lo=0.0, hi=1.0),
        top_k=r.get("top_k", int, d.top_k),
    )
    r.done()
    return cfg


def _provider(r: _Reader, env: Mapping[str, str], litellm_prices: Any) -> ProviderConfig:
    name = r.get("name", str, required=True)
    if not _NAME_RE.match(name) or name in RESERVED_MODELS or name.startswith("auto:") or "@" in name:
        raise ConfigError(r.file, r._field("name"), f"invalid provider name {name!r}")
    model = r.get("model", str, required=True)
    key_env = r.get("api_key_env", str)
    api_key = None
    if key_env is not None:
        api_key = env.get(key_env)
        if not api_key:
            raise ConfigError(r.file, r._field("api_key_env"), f"environment variable {key_env} is not set")
    transport = r.get("transport", str, "auto")
    if transport not in ("auto", "openai", "litellm"):
        raise ConfigError(r.file, r._field("transport"), "must be auto, openai or litellm")
    mode = r.get("mode", str, "chat")
    if mode not in MODES:
        raise ConfigError(r.file, r._field("mode"), "must be chat, completion or embedding")
    in_price = r.number("input_usd_per_mtok", None, lo=0.0)
    out_price = r.number("output_usd_per_mtok", None, lo=0.0)
    if in_price is None or out_price is None:
        listed = litellm_prices(model)
        if listed is None:
            raise ConfigError(
                r.file, r._field("input_usd_per_mtok"), f"no price given and litellm has none for {model!r}"
            )
        in_price = listed[0] if in_price is None else in_price
        out_price = listed[1] if out_price is None else out_price
    descriptor_file, describe = _descriptor(r)
    listed_caps = litellm_capabilities(model)
    window = r.get("context_window", int, listed_caps.get("context_window"))
    if window is not None and window < 1:
        raise ConfigError(r.file, r._field("context_window"), "must be >= 1")
    cfg = ProviderConfig(
        name=name,
        model=model,
        api_base=r.get("api_base", str),
        api_key_env=key_env,
        api_key=api_key,
        input_usd_per_mtok=in_price,
        output_usd_per_mtok=out_price,
        timeout_s=r.number("timeout_s", 60.0, lo=0.001),
        # A model added by descriptor is its own expert unless it names one.
        expert=r.get("expert", str) or (name if r.raw.get("descriptor") else None),
        descriptor=descriptor_file,
        describe=describe,
        transport=transport,
        mode=mode,
        context_window=window,
        supports_vision=r.get("supports_vision", bool, listed_caps.get("supports_vision")),
        supports_tools=r.get("supports_tools", bool, listed_caps.get("supports_tools")),
        supports_audio_input=r.get("supports_audio_input", bool, listed_caps.get("supports_audio_input")),
        supports_pdf_input=r.get("supports_pdf_input", bool, listed_caps.get("supports_pdf_input")),
    )
    if mode != "chat" and (cfg.expert is not None or cfg.describe is not None or cfg.descriptor is not None):
        # The router ranks chat providers; a descriptor would even be probed with chat prompts.
        raise ConfigError(r.file, r._field("mode"), f"a mode {mode} provider is not routed by the router: "
                          "give it no expert or descriptor")
    if mode != "chat" and not cfg.direct:
        # Embeddings and legacy completions are passed through as sent: OpenAI's protocol only.
        raise ConfigError(r.file, r._field("mode"), f"mode {mode} needs an OpenAI-protocol provider "
                          "(model openai/... with an api_base, or transport: openai)")
    r.done()
    return cfg


def _descriptor(r: _Reader) -> tuple[str | None, DescribeConfig | None]:
    """``descriptor:`` is a file path, ``probe`` (defaults), or a mapping with one of ``file``,
    ``probe: {max_cost_usd, concurrency, retries, max_tokens, max_missing, timeout_s, n_probes, seed}`` or
    ``logit: {lm, timeout_s}`` (or ``logit: LM``). Shorthands are expanded first, then read once."""
    r.seen.add("descriptor")
    raw = r.raw.get("descriptor")
    if raw is None:
        return None, None
    if isinstance(raw, str):
        raw = {"probe": {}} if raw == "probe" else {"file": raw}
    elif isinstance(raw, Mapping):
        raw = dict(raw)
        if "probe" in raw and raw["probe"] is None:
            raw["probe"] = {}
        if "logit" in raw and not isinstance(raw["logit"], Mapping):
            raw["logit"] = {} if raw["logit"] is None else {"lm": raw["logit"]}
    d = _Reader(r.file, r._field("descriptor"), raw)
    given = [k for k in ("file", "probe", "logit") if k in d.raw]
    if len(given) != 1:
        raise ConfigError(r.file, d.path, "give exactly one of file, probe, logit")
    if given[0] == "file":
        path = d.get("file", str, required=True)
        d.done()
        return path, None
    sub = d.sub(given[0])
    assert sub is not None
    base = DescribeConfig("probe")
    if given[0] == "probe":
        out = DescribeConfig(
            "probe",
            max_cost_usd=sub.number("max_cost_usd", base.max_cost_usd, lo=0.0),
            concurrency=int(sub.number("concurrency", base.concurrency, lo=1, hi=256)),
            retries=int(sub.number("retries", base.retries, lo=0, hi=20)),
            max_tokens=int(sub.number("max_tokens", base.max_tokens, lo=1)),
            max_missing=sub.number("max_missing", base.max_missing, lo=0.0, hi=1.0),
            timeout_s=sub.number("timeout_s", base.timeout_s, lo=1.0),
            n_probes=int(sub.number("n_probes", base.n_probes, lo=1, hi=100_000)),
            seed=int(sub.number("seed", base.seed, lo=0)),
        )
    else:
        out = DescribeConfig("logit", lm=sub.get("lm", str, required=True),
                             timeout_s=sub.number("timeout_s", base.timeout_s, lo=1.0))
    sub.done()
    d.done()
    return None, out


def _key(r: _Reader, providers: set[str]) -> KeyConfig:
    secret_hash = r.get("secret_sha256", str, required=True).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", secret_hash):
        raise ConfigError(r.file, r._field("secret_sha256"), "must be 64 hex digits (sha256 of the secret)")
    allowed = r.get("allowed_providers", list)
    if allowed is not None:
        for i, p in enumerate(allowed):
            if p not in providers:
                raise ConfigError(r.file, r._field(f"allowed_providers[{i}]"), f"unknown provider {p!r}")
    period = r.get("budget_period", str, "none")
    if period not in ("none", "daily", "monthly"):
        raise ConfigError(r.file, r._field("budget_period"), "must be none, daily or monthly")
    limits = {}
    for name in ("rpm", "tpm"):
        limits[name] = r.get(name, int)
        if limits[name] is not None and limits[name] < 1:
            raise ConfigError(r.file, r._field(name), "must be >= 1")
    cfg = KeyConfig(
        name=r.get("name", str, required=True),
        secret_sha256=secret_hash,
        budget_usd=r.number("budget_usd", None, lo=0.0),
        budget_period=period,
        max_cost_per_request_usd=r.number("max_cost_per_request_usd", None, lo=0.0),
        allowed_providers=tuple(allowed) if allowed is not None else None,
        tradeoff=r.number("tradeoff", None, lo=0.0, hi=1.0),
        rpm=limits["rpm"],
        tpm=limits["tpm"],
        cache=_cache_policy(r.sub("cache")),
    )
    r.done()
    return cfg


def _cache_policy(r: _Reader | None, defaults_only: bool = False) -> CachePolicy | None:
    """``defaults_only``: the top-level section, whose policy exists only when it sets ``ttl_s``."""
    if r is None or (defaults_only and r.raw.get("ttl_s") is None):
        return None
    d = CachePolicy()
    policy = CachePolicy(
        enabled=r.get("enabled", bool, d.enabled),
        ttl_s=r.number("ttl_s", d.ttl_s, lo=0.001),
        shared=r.get("shared", bool, d.shared),
        allow_nondeterministic=r.get("allow_nondeterministic", bool, d.allow_nondeterministic),
        default=r.get("default", bool, d.default),
    )
    if not defaults_only:
        r.done()
    return policy


def _cache(r: _Reader | None) -> CacheConfig:
    if r is None:
        return CacheConfig()
    d = CacheConfig()
    cfg = CacheConfig(max_entry_bytes=r.get("max_entry_bytes", int, d.max_entry_bytes),
                      max_entries=r.get("max_entries", int, d.max_entries),
                      policy=_cache_policy(r, defaults_only=True))
    for name in ("max_entry_bytes", "max_entries"):
        if getattr(cfg, name) < 1:
            raise ConfigError(r.file, r._field(name), "must be >= 1")
    for name in ("enabled", "shared", "allow_nondeterministic", "default"):
        r.get(name, bool)  # type-checked above when ttl_s is set; without it they would do nothing
        if name in r.raw and cfg.policy is None:
            raise ConfigError(r.file, r._field(name), "needs ttl_s (the top-level policy exists only with it)")
    r.done()
    return cfg


def parse_key(raw: Any, providers: set[str], source: str = "<admin>") -> KeyConfig:
    """A key document (admin API, store) validated like a gateway.yaml entry."""
    return _key(_Reader(source, "key", raw), providers)


def litellm_price(model: str) -> tuple[float, float] | None:
    """USD per million input/output tokens from litellm's bundled price map (never fetched)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm  # heavy: only when a provider leaves its prices to litellm

    info = litellm.model_cost.get(model) or litellm.model_cost.get(model.split("/", 1)[-1])
    if not info or info.get("input_cost_per_token") is None:
        return None
    return info["input_cost_per_token"] * 1e6, info.get("output_cost_per_token", 0.0) * 1e6


@functools.lru_cache(maxsize=1)
def _litellm_model_map() -> dict[str, Any]:
    """litellm's bundled model map, read as JSON from its package (importing litellm takes seconds,
    and the lean image may not have it: then nothing is known)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        return {}
    path = Path(spec.origin).parent / "model_prices_and_context_window_backup.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def litellm_capabilities(model: str) -> dict[str, Any]:
    """``context_window`` (max_input_tokens), ``supports_vision``, ``supports_tools``
    (supports_function_calling), ``supports_audio_input``, ``supports_pdf_input`` from litellm's model
    map; a field it does not state is left out."""
    table = _litellm_model_map()
    info = table.get(model) or table.get(model.split("/", 1)[-1])
    if not isinstance(info, dict):
        return {}
    found = {"context_window": info.get("max_input_tokens"), "supports_vision": info.get("supports_vision"),
             "supports_tools": info.get("supports_function_calling"),
             "supports_audio_input": info.get("supports_audio_input"),
             "supports_pdf_input": info.get("supports_pdf_input")}
    return {k: v for k, v in found.items()
            if (isinstance(v, bool) if k != "context_window" else isinstance(v, int) and not isinstance(v, bool))}


def _expand_env(value: str, env: Mapping[str, str], file: str, field_name: str) -> str:
    """``${VAR}`` in the store URL (a Redis password from a Secret, not in the ConfigMap)."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(file, field_name, f"environment variable {name} is not set")
        return env[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, value)


def parse_config(raw: Any, source: str = "<memory>", env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate an already-parsed YAML document."""
    env = os.environ if env is None else env
    root = _Reader(source, "", raw if raw is not None else {})
    store = _expand_env(root.get("store", str, "memory://"), env, source, "store")
    if not store.startswith(("memory://", "redis://", "rediss://")):
        raise ConfigError(source, "store", "must start with memory:// or redis://")
    server = _server(root.sub("server"), env)
    router = _router(root.sub("router"))
    cache = _cache(root.sub("cache"))
    providers: list[ProviderConfig] = []
    for i, item in enumerate(root.get("providers", list, [])):
        p = _provider(_Reader(source, f"providers[{i}]", item), env, litellm_price)
        if any(q.name == p.name for q in providers):
            raise ConfigError(source, f"providers[{i}].name", f"duplicate provider {p.name!r}")
        providers.append(p)
    names = {p.name for p in providers}
    if server.savings_reference is not None and server.savings_reference not in names:
        raise ConfigError(source, "server.savings_reference", f"unknown provider {server.savings_reference!r}")
    keys = [_key(_Reader(source, f"keys[{i}]", item), names) for i, item in enumerate(root.get("keys", list, []))]
    root.done()
    return GatewayConfig(
        source=source, store=store, server=server, router=router, providers=tuple(providers), keys=tuple(keys),
        cache=cache,
    )


def parse_config_text(text: str, source: str, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate the text of a gateway.yaml (from a file, or as published through the store).

    An empty file, or one without providers, is an error: a half-written save or a truncated
    ConfigMap would otherwise be served as "no providers" (and, with Redis, by every replica)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, "<yaml>", str(exc).replace("\n", " ")) from exc
    if raw is None:
        raise ConfigError(source, "<file>", "is empty; a gateway.yaml needs at least one provider")
    config = parse_config(raw, source, env)
    if not config.providers:
        raise ConfigError(source, "providers", "no providers; a gateway.yaml needs at least one")
    return config


def read_config_text(path: str | Path) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(str(path), "<file>", f"cannot read: {exc.strerror}") from exc


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and validate ``gateway.yaml``; raises ConfigError naming the file and field."""
    return parse_config_text(read_config_text(path), str(path), env)
