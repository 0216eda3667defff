"""Per-request observability: the request id, the JSON access-log line, and OpenTelemetry spans when
an OTLP endpoint is configured. Without one nothing here imports opentelemetry, and the spans are a
shared no-op (tests/test_observability.py checks both)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request

ACCESS = logging.getLogger("cscr.access")

SCOPE_KEY = "cscr.access"  # where the middleware (gateway.app.Observe) keeps the record
# A caller's id is echoed in a header and in every log line: visible ASCII, bounded, else replaced.
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")


def request_id(sent: str | None) -> str:
    """The caller's ``x-request-id`` when it is sane (1-128 visible ASCII characters), else a new one."""
    if sent is not None and _REQUEST_ID.fullmatch(sent):
        return sent
    return uuid.uuid4().hex


class Trace:
    """The spans of one request; this base class is the no-op used when tracing is off."""

    def span(self, name: str, provider: str | None = None) -> contextlib.AbstractContextManager[Any]:
        """A child of the request's root span, for a ``with`` block."""
        return _NOTHING

    def end(self, record: AccessRecord) -> None:
        return None


_NOTHING = contextlib.nullcontext()
NO_TRACE = Trace()


@dataclass(slots=True)
class AccessRecord:
    """What the access-log line says about one request; filled in as the request goes."""

    request_id: str
    method: str
    path: str
    started: float  # perf_counter at arrival
    enabled: bool = True  # server.access_log
    status: int = 0
    key: str | None = None  # the key's name, never its secret
    model: str | None = None  # the model asked for
    provider: str | None = None
    tried: list[str] = field(default_factory=list)
    policy: str | None = None
    stream: bool = False
    cost_estimate_usd: float | None = None
    cost_usd: float | None = None
    ttft_s: float | None = None
    error: str | None = None  # the error code, or how a stream ended when not normally
    relaying: bool = False  # a stream is being relayed: its end writes the line, not the response's
    written: bool = False
    trace: Trace = NO_TRACE

    def fields(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id, "method": self.method, "path": self.path, "status": self.status,
            "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
            "ttft_ms": None if self.ttft_s is None else round(self.ttft_s * 1000, 3),
            "key": self.key, "model": self.model, "provider": self.provider, "tried": self.tried,
            "policy": self.policy, "stream": self.stream, "cost_estimate_usd": self.cost_estimate_usd,
            "cost_usd": self.cost_usd, "error": self.error,
        }

    def finish(self) -> None:
        """Write the line and end the trace, once."""
        if self.written:
            return
        self.written = True
        self.trace.end(self)
        if self.enabled and ACCESS.isEnabledFor(logging.INFO):
            line = self.fields()
            # Made here rather than by ACCESS.info(), which walks the stack for a source line the
            # access log does not need; the JSON text is made only by a formatter that asks for it.
            ACCESS.handle(ACCESS.makeRecord(ACCESS.name, logging.INFO, "(access)", 0, _Line(line), (), None,
                                            extra={"access": line}))


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps(..., separators=) builds one per call


class _Line:
    """An access record's message: its JSON, encoded when a text formatter reads it (the JSON
    formatter takes the fields themselves)."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return _ENCODE(self.fields)


def detached() -> AccessRecord:
    """A record that writes nothing (a request that did not come through ``Observe``)."""
    return AccessRecord(uuid.uuid4().hex, "", "", time.perf_counter(), enabled=False)


def access_of(request: Request) -> AccessRecord:
    """The request's record, made by ``Observe`` (a detached one when the app runs without it)."""
    rec = request.scope.get(SCOPE_KEY)
    if not isinstance(rec, AccessRecord):
        rec = request.scope[SCOPE_KEY] = detached()
    return rec


# --- tracing ----------------------------------------------------------------------------------------

class _OtelTrace(Trace):
    def __init__(self, tracer: Any, root: Any, context: Any) -> None:
        self._tracer, self._root, self._context = tracer, root, context

    @contextlib.contextmanager
    def _span(self, name: str, attributes: dict[str, Any]) -> Iterator[Any]:
        # Explicit parent, no current-span context variable: a stream's spans end in another task.
        span = self._tracer.start_span(name, context=self._context, attributes=attributes)
        try:
            yield span
        except BaseException as exc:
            span.record_exception(exc)
            span.set_attribute("error.type", type(exc).__name__)
            raise
        finally:
            span.end()

    def span(self, name: str, provider: str | None = None) -> contextlib.AbstractContextManager[Any]:
        return self._span(name, {} if provider is None else {"cscr.provider": provider})

    def end(self, record: AccessRecord) -> None:
        values = {"http.response.status_code": record.status, "cscr.request_id": record.request_id,
                  "cscr.key": record.key, "cscr.model": record.model, "cscr.provider": record.provider,
                  "cscr.policy": record.policy, "cscr.tried": ",".join(record.tried), "cscr.stream": record.stream,
                  "cscr.cost_usd": record.cost_usd, "cscr.cost_estimate_usd": record.cost_estimate_usd,
                  "error.type": record.error}
        self._root.set_attributes({k: v for k, v in values.items() if v is not None})
        self._root.end()


class Tracing:
    """OTLP/HTTP span export to ``endpoint`` (``<endpoint>/v1/traces``), or nothing at all when it
    is None. ``exporter`` replaces the OTLP exporter (tests)."""

    def __init__(self, endpoint: str | None, exporter: Any = None) -> None:
        self.endpoint = endpoint
        self._provider: Any = None
        self._tracer: Any = None
        self._extract: Any = None
        self._in_context: Any = None
        if endpoint is None and exporter is None:
            return
        try:
            from opentelemetry.propagate import extract
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace import set_span_in_context

            if exporter is None:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=5)
        except ImportError as exc:
            raise RuntimeError(f"an OTLP endpoint is configured ({endpoint}) but OpenTelemetry is not installed "
                               f"({exc.name}): pip install 'cscr-gateway[otel]'") from exc
        # Its own provider, not the process-global one: two apps in one process trace apart.
        self._provider = TracerProvider(resource=Resource.create({"service.name": "cscr-gateway"}))
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("cscr.gateway")
        self._extract, self._in_context = extract, set_span_in_context

    def start(self, name: str, headers: Mapping[str, str]) -> Trace:
        """The root span of one request, continuing the caller's ``traceparent`` if it sent one."""
        if self._tracer is None:
            return NO_TRACE
        context = self._extract(headers)
        root = self._tracer.start_span(name, context=context)
        return _OtelTrace(self._tracer, root, self._in_context(root, context))

    def shutdown(self) -> None:
        """Export what is queued (bounded by the exporter's timeout) and stop."""
        if self._provider is not None:
            self._provider.shutdown()


# --- log formatting ----------------------------------------------------------------------------------

class JsonFormatter(logging.Formatter):
    """One JSON object per line; an access record's fields are top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name,
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            out.update(access)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str, fmt: str, access: bool = True) -> None:
    """The CLI's logging: ``text`` or ``json`` lines on stderr; the access log is on at INFO
    whatever ``level`` is, unless ``access`` is False (or ``server.access_log: false``)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    ACCESS.setLevel(logging.INFO if access else logging.WARNING)
