"""The admin API for virtual keys, guarded by the master key (``server.master_key_env``).

- ``POST /admin/keys``: create; the secret is in this response and nowhere else, ever.
- ``GET /admin/keys``: list (no secrets), with each key's spend in its current budget period.
- ``PATCH /admin/keys/{name}``: change budget, period, caps, providers, trade-off, rate limits.
- ``DELETE /admin/keys/{name}``: revoke.
Keys defined in gateway.yaml are listed but changed only by editing the file (409 here).
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.config import KeyConfig, hash_secret
from gateway.errors import AuthError, ConfigError, GatewayError, InvalidRequest
from gateway.keys import KEY_DOCS, budget_account, key_from_doc, key_to_doc, new_secret, public_view
from gateway.proxy import GatewayState, read_body
from gateway.wire import parse_body

EDITABLE = ("budget_usd", "budget_period", "max_cost_per_request_usd", "allowed_providers", "tradeoff", "rpm", "tpm",
            "cache")


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "key_not_found"


def _check_master(state: GatewayState, request: Request) -> None:
    master = state.config.server.master_key
    if master is None:
        raise NotFound("the admin API is disabled (set server.master_key_env)")
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(secret.strip().encode(), master.encode()):
        raise AuthError("the admin API needs the master key")


async def _json(request: Request, state: GatewayState) -> dict[str, Any]:
    """The body, held to the checks every endpoint's body gets (size, depth, lone surrogates): a key
    saved with a name no encoder takes broke the key list for good (a 500 on every read after)."""
    limit = state.config.server.max_body_bytes
    return parse_body(await read_body(request, limit), limit)


def _validated(state: GatewayState, doc: dict[str, Any]) -> KeyConfig:
    try:
        return key_from_doc(doc, {p.name for p in state.config.providers})
    except ConfigError as err:
        raise InvalidRequest(f"{err.field.removeprefix('key.')}: {err.reason}",
                             param=err.field.removeprefix("key.")) from err


async def _admin_keys(state: GatewayState) -> dict[str, tuple[str, KeyConfig]]:
    docs = await state.store.list_docs(KEY_DOCS)
    return {d["name"]: (h, _validated(state, d)) for h, d in docs.items()}


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    _check_master(state, request)
    return state


async def _guard(request: Request, handler: Any) -> Response:
    try:
        response: Response = await handler(request)
        return response
    except GatewayError as err:
        return JSONResponse(err.to_dict(), status_code=err.status)


async def _create(request: Request) -> Response:
    state = _state(request)
    body = await _json(request, state)
    unknown = set(body) - {"name", *EDITABLE}
    if unknown:
        raise InvalidRequest(f"unknown field {sorted(unknown)[0]!r}", param=sorted(unknown)[0])
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("'name' is required", param="name")
    if any(k.name == name for k in state.config.keys) or name in await _admin_keys(state):
        raise Conflict(f"a key named {name!r} exists")
    secret = new_secret()
    key = _validated(state, {**body, "secret_sha256": hash_secret(secret)})
    await state.store.put_doc(KEY_DOCS, key.secret_sha256, key_to_doc(key))
    return JSONResponse({**public_view(key), "secret": secret}, status_code=201)


async def _list(request: Request) -> Response:
    state = _state(request)
    keys = list(state.config.keys) + [k for _, k in (await _admin_keys(state)).values()]
    out = []
    for key in keys:
        view = public_view(key)
        view["spent_usd"] = await state.store.spent(budget_account(key))
        out.append(view)
    return JSONResponse({"object": "list", "data": out})


async def _find(state: GatewayState, name: str) -> tuple[str, KeyConfig]:
    if any(k.name == name for k in state.config.keys):
        raise Conflict(f"key {name!r} is defined in {state.config.source}; edit the file to change it")
    found = (await _admin_keys(state)).get(name)
    if found is None:
        raise NotFound(f"no key named {name!r}")
    return found


async def _update(request: Request) -> Response:
    state = _state(request)
    digest, key = await _find(state, request.path_params["name"])
    body = await _json(request, state)
    unknown = set(body) - set(EDITABLE)
    if unknown:
        raise InvalidRequest(f"field {sorted(unknown)[0]!r} cannot be changed", param=sorted(unknown)[0])
    updated = _validated(state, {**key_to_doc(key), **body})
    await state.store.put_doc(KEY_DOCS, digest, key_to_doc(updated))
    return JSONResponse(public_view(updated))


async def _revoke(request: Request) -> Response:
    state = _state(request)
    digest, key = await _find(state, request.path_params["name"])
    await state.store.delete_doc(KEY_DOCS, digest)
    return JSONResponse({"name": key.name, "revoked": True})


async def _reload(request: Request) -> Response:
    state = _state(request)
    if state.reloader is None or state.reloader.path is None:
        raise NotFound("this gateway was not started from a config file")
    applied = await state.reloader.reload_file()
    status = state.reloader.status
    body = {"applied": applied, "sha256": status.sha256[:12], "version": status.version,
            "error": None if applied else status.last_error}
    return JSONResponse(body, status_code=200 if applied else 422)


def admin_routes() -> list[Route]:
    async def keys(request: Request) -> Response:
        return await _guard(request, _create if request.method == "POST" else _list)

    async def one_key(request: Request) -> Response:
        return await _guard(request, _update if request.method == "PATCH" else _revoke)

    async def reload(request: Request) -> Response:
        return await _guard(request, _reload)

    return [
        Route("/admin/reload", reload, methods=["POST"]),
        Route("/admin/keys", keys, methods=["GET", "POST"]),
        Route("/admin/keys/{name}", one_key, methods=["PATCH", "DELETE"]),
    ]
