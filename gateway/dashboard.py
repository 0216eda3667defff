"""The savings dashboard: a static page (``GET /dashboard``) and the JSON it draws
(``GET /admin/stats``), guarded like the admin API by the master key.

``GET /admin/stats?from=&to=&key=&bucket=``: ``from``/``to`` are unix seconds (default: the last 24
hours), ``bucket`` the width of one point of the series in seconds (a multiple of 60; default: the
first of 1, 5, 15, 30 minutes, 1, 3, 6 hours, 1 day that gives at most 150 points; the widest stored
bucket that divides it is read: minutes, quarter-hours or hours), ``key`` one key's name. The body holds the
totals (requests, spend, reference cost, saved $ and %, fallbacks, the router's trade-off and
predicted quality), one row per key, the series, the model mix, and the providers in cooldown now.
Counters come from the store (``gateway.stats``), so every replica answers the same.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.admin import _guard, _state
from gateway.errors import InvalidRequest
from gateway.proxy import GatewayState
from gateway.stats import WIDTHS, aggregate, bucket_name

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_SPAN_S = 86400
STEPS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86400)
MAX_POINTS = 2000  # points in the series
MAX_READS = 11_000  # stored buckets read for one answer (a week of minutes; 15 months of hours)


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(float(raw))
    except ValueError:
        raise InvalidRequest(f"{name} must be a number (unix seconds for from/to), not {raw[:40]!r}",
                             param=name) from None


def window(request: Request, now: float) -> tuple[int, int, int, int]:
    """(start, end, step, stored bucket width) from the query, aligned to the stored buckets."""
    end = _int_param(request, "to", int(now))
    start = _int_param(request, "from", end - DEFAULT_SPAN_S)
    if end <= start:
        raise InvalidRequest("'to' must be after 'from'", param="to")
    step = _int_param(request, "bucket", next((s for s in STEPS if (end - start) / s <= 150), STEPS[-1]))
    if step < 60 or step % 60:
        raise InvalidRequest("bucket must be a multiple of 60 seconds", param="bucket")
    width = max(w for w in WIDTHS if step % w == 0)
    start, end = start // step * step, -(-end // step) * step
    if (end - start) // step > MAX_POINTS or (end - start) // width > MAX_READS:
        raise InvalidRequest(f"from..to is too long for bucket={step}: at most {MAX_POINTS} points and "
                             f"{MAX_READS} stored buckets ({max(WIDTHS)}s each at most); use a larger bucket",
                             param="bucket")
    return start, end, step, width


async def stats_body(state: GatewayState, request: Request) -> dict[str, Any]:
    now = time.time()
    start, end, step, width = window(request, now)
    key = request.query_params.get("key") or None
    starts = list(range(start, end, width))
    counters = await state.store_op("stats", state.store.stats_read([bucket_name(width, t) for t in starts]))
    body = aggregate(zip(starts, counters, strict=True), start, end, step, key)
    reference = state.config.server.savings_reference
    names = [p.name for p in state.config.providers]
    cooling = await state.health.refresh(names) if state.health is not None else {}
    return {"object": "stats", "from": start, "to": end, "bucket": step, "key": key, "now": now,
            "reference": reference or "the dearest provider for each request's tokens",
            "providers": names, "cooldowns": {n: round(s, 1) for n, s in cooling.items() if n in names and s > 0},
            **body}


def dashboard_routes() -> list[BaseRoute]:
    async def stats(request: Request) -> Response:
        async def handler(request: Request) -> Response:
            return JSONResponse(await stats_body(_state(request), request))
        return await _guard(request, handler)

    async def page(request: Request) -> Response:
        # The page holds no data and no secret: it asks for the master key, and the API checks it.
        return FileResponse(STATIC / "dashboard.html", headers={"cache-control": "no-store"})

    return [
        Route("/admin/stats", stats, methods=["GET"]),
        Route("/dashboard", page, methods=["GET"]),
        Mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static"),
    ]
