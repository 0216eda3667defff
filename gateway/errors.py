"""One error tree for the gateway, mapped in one place to OpenAI's error JSON. Imports nothing internal."""

from __future__ import annotations

import math
import time
from typing import Any


class GatewayError(Exception):
    """Base of every error the gateway turns into an HTTP response."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict[str, Any]:
        """The body OpenAI returns for errors: ``{"error": {message, type, param, code}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """Response headers that tell a client what to do about this error."""
        return {}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class ModelNotFound(InvalidRequest):
    status = 404
    code = "model_not_found"


class AuthError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class BudgetExceeded(GatewayError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"

    def headers(self) -> dict[str, str]:
        # A spent budget does not come back in a few seconds: the openai client retries a 429
        # unless told not to, and would spend its retries (and the caller's time) for nothing.
        return {"x-should-retry": "false"}


class RateLimited(GatewayError):
    """A key's requests- or tokens-per-minute limit. The store's windows are fixed and aligned to
    the epoch (``Store.hit``), so the next one opens at the next multiple of ``window_s``."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 window_s: int = 60) -> None:
        super().__init__(message, code=code, param=param)
        self.retry_after_s = max(1, math.ceil(window_s - time.time() % window_s))

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after_s)}


class UpstreamError(GatewayError):
    """A provider call failed. ``retryable`` decides whether the next provider is tried."""

    type = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        retryable: bool,
        provider: str,
        body: dict[str, Any] | None = None,
        kind: str = "status",
    ) -> None:
        super().__init__(message, status=status)
        self.retryable = retryable
        self.provider = provider
        self.body = body
        self.kind = kind  # "status" | "timeout" | "connection" | "protocol" | "context_length"

    def to_dict(self) -> dict[str, Any]:
        # A caller's-fault 4xx is returned as the provider said it (OpenAI-shaped where it was).
        if self.body and isinstance(self.body.get("error"), dict):
            return self.body
        return super().to_dict()


class AllProvidersFailed(GatewayError):
    status = 502
    type = "upstream_error"
    code = "all_providers_failed"


class DeadlineExceeded(GatewayError):
    status = 504
    type = "upstream_error"
    code = "deadline_exceeded"


class StoreUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "store_unavailable"


class ConfigError(Exception):
    """``gateway.yaml`` is invalid. The message names the file and the field."""

    def __init__(self, file: str, field: str, reason: str) -> None:
        super().__init__(f"{file}: {field}: {reason}")
        self.file = file
        self.field = field
        self.reason = reason


def is_retryable_status(status: int) -> bool:
    """Timeouts, rate limits and server errors go to the next provider; so do the provider's own
    credential and routing failures (401/403/404: the gateway's configuration, not the caller)."""
    return status in (401, 403, 404, 408, 409, 429) or status >= 500
