"""Virtual keys: lookup by secret (gateway.yaml first, then keys created through the admin API and
kept in the store, so every replica sees them), and the budget account a request is charged to."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gateway.config import GatewayConfig, KeyConfig, hash_secret, parse_key
from gateway.errors import AuthError
from gateway.store import Store

KEY_DOCS = "keys"  # store documents: secret sha256 -> key fields
SECRET_PREFIX = "sk-cscr-"


def budget_account(key: KeyConfig, now: datetime | None = None) -> str:
    """The account a request is charged to: the key and its current budget period (UTC). A new
    period is a new account, so a daily or monthly budget resets without any job running."""
    now = now or datetime.now(UTC)
    if key.budget_period == "daily":
        return f"{key.name}:d{now:%Y-%m-%d}"
    if key.budget_period == "monthly":
        return f"{key.name}:m{now:%Y-%m}"
    return f"{key.name}:all"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(24)


def key_to_doc(key: KeyConfig) -> dict[str, Any]:
    doc = dataclasses.asdict(key)
    doc.pop("source")
    doc["allowed_providers"] = list(key.allowed_providers) if key.allowed_providers is not None else None
    return doc


def key_from_doc(doc: Mapping[str, Any], providers: set[str]) -> KeyConfig:
    # A provider removed from gateway.yaml since the key was made is simply no longer allowed.
    fields = dict(doc)
    if fields.get("allowed_providers") is not None:
        fields["allowed_providers"] = [p for p in fields["allowed_providers"] if p in providers]
    return dataclasses.replace(parse_key(fields, providers), source="admin")


def public_view(key: KeyConfig) -> dict[str, Any]:
    """What the admin API shows of a key: everything but the secret's hash."""
    doc = key_to_doc(key)
    doc.pop("secret_sha256")
    doc["source"] = key.source
    return doc


async def authenticate(config: GatewayConfig, store: Store, headers: Mapping[str, str]) -> KeyConfig | None:
    """The key for this request; None when the gateway is open (no keys configured and admin off).
    The store is asked only for secrets gateway.yaml does not know."""
    if not config.keys and config.server.master_key is None:
        return None
    auth = headers.get("authorization", "")
    scheme, _, secret = auth.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise AuthError("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    key = config.key_by_secret(secret)
    if key is not None:
        return key
    if config.server.master_key is not None:  # admin-created keys exist only with the admin API on
        doc = await store.get_doc(KEY_DOCS, hash_secret(secret))
        if doc is not None:
            return key_from_doc(doc, {p.name for p in config.providers})
    raise AuthError("Incorrect API key provided.")  # never echo the secret back
