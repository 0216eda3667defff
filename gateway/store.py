"""Shared state behind one small async interface; the backend is picked by URL.

- ``memory://``: this process only (one replica; the default).
- ``redis://host:port/db`` (or ``rediss://``): shared by every replica. Read-modify-write happens
  in short Lua scripts, so many replicas admit against one truth.

Money is held as integer nano-dollars so sums never drift. Spend per account is settled spend plus
live reservations: a request reserves its estimated cost before the provider call (so concurrent
requests cannot overspend) and settles to the actual cost after it. Reservations carry a TTL, so a
crashed replica cannot hold money forever; until they expire they count in full. Settling is
idempotent per reservation, so a settlement retried after a store outage is never counted twice.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

NANO = 1_000_000_000
ACCOUNT_TTL_S = 40 * 86400  # an account (key + budget period) is forgotten 40 days after its last use


def to_nano(usd: float) -> int:
    return int(round(usd * NANO))


@dataclass(frozen=True, slots=True)
class Reservation:
    account: str
    id: str
    amount: float


class Store(Protocol):
    url: str

    async def reserve(
        self, account: str, amount: float, limit: float | None, ttl_s: float
    ) -> tuple[Reservation | None, float]:
        """Hold ``amount`` USD on ``account`` unless spent + held + amount would exceed ``limit``.
        Returns (the reservation or None, the account's live spend before it) in one round trip."""

    async def settle(self, reservation: Reservation, actual: float) -> float:
        """Drop the hold and record ``actual`` USD as spent (idempotent per reservation).
        Returns the account's live spend afterwards."""

    async def spent(self, account: str) -> float:
        """Settled spend plus live reservations, in USD."""

    async def hit(self, counter: str, amount: int, limit: int, window_s: int) -> bool:
        """Fixed-window rate limit: add ``amount``; False (and nothing added) if it would pass ``limit``."""

    async def acquire(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take the lease ``name`` for ``owner`` unless someone else holds it; it lapses after
        ``ttl_s`` (a crashed holder cannot block the others forever)."""

    async def release(self, name: str, owner: str) -> None:
        """Drop the lease if ``owner`` still holds it."""

    async def get_doc(self, kind: str, name: str) -> dict[str, Any] | None: ...

    async def put_doc(self, kind: str, name: str, doc: dict[str, Any]) -> None: ...

    async def delete_doc(self, kind: str, name: str) -> bool: ...

    async def list_docs(self, kind: str) -> dict[str, dict[str, Any]]: ...

    async def ping(self) -> None:
        """Raise if the backend cannot be reached."""

    async def aclose(self) -> None: ...


@dataclass
class _Account:
    settled: int = 0
    held: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> (nano, expires_at)
    done: set[str] = field(default_factory=set)

    def live(self, now: float) -> int:
        for rid in [r for r, (_, exp) in self.held.items() if exp <= now]:
            del self.held[rid]
        return self.settled + sum(a for a, _ in self.held.values())


class MemoryStore:
    """One process. No method awaits before it has finished its update, so each is atomic on the loop."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._accounts: dict[str, _Account] = {}
        self._windows: dict[str, tuple[int, int]] = {}  # counter -> (window number, used)
        self._leases: dict[str, tuple[str, float]] = {}  # name -> (owner, monotonic expiry)
        self._docs: dict[str, dict[str, dict[str, Any]]] = {}
        self._ids = itertools.count(1)

    async def reserve(
        self, account: str, amount: float, limit: float | None, ttl_s: float
    ) -> tuple[Reservation | None, float]:
        now = time.monotonic()
        state = self._accounts.setdefault(account, _Account())
        nano = to_nano(amount)
        live = state.live(now)
        if limit is not None and live + nano > to_nano(limit):
            return None, live / NANO
        rid = str(next(self._ids))
        state.held[rid] = (nano, now + ttl_s)
        return Reservation(account, rid, amount), live / NANO

    async def settle(self, reservation: Reservation, actual: float) -> float:
        state = self._accounts.setdefault(reservation.account, _Account())
        if reservation.id not in state.done:
            state.done.add(reservation.id)
            # An expired hold is gone already; the money was still spent, so it is recorded all the same.
            state.held.pop(reservation.id, None)
            state.settled += to_nano(actual)
        return state.live(time.monotonic()) / NANO

    async def spent(self, account: str) -> float:
        state = self._accounts.get(account)
        return 0.0 if state is None else state.live(time.monotonic()) / NANO

    async def hit(self, counter: str, amount: int, limit: int, window_s: int) -> bool:
        window = int(time.time() // window_s)
        current, used = self._windows.get(counter, (window, 0))
        if current != window:
            used = 0
        if used + amount > limit:
            return False
        self._windows[counter] = (window, used + amount)
        return True

    async def acquire(self, name: str, owner: str, ttl_s: float) -> bool:
        now = time.monotonic()
        held = self._leases.get(name)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self._leases[name] = (owner, now + ttl_s)
        return True

    async def release(self, name: str, owner: str) -> None:
        if self._leases.get(name, ("", 0.0))[0] == owner:
            del self._leases[name]

    async def get_doc(self, kind: str, name: str) -> dict[str, Any] | None:
        doc = self._docs.get(kind, {}).get(name)
        return None if doc is None else json.loads(json.dumps(doc))

    async def put_doc(self, kind: str, name: str, doc: dict[str, Any]) -> None:
        self._docs.setdefault(kind, {})[name] = json.loads(json.dumps(doc))

    async def delete_doc(self, kind: str, name: str) -> bool:
        return self._docs.get(kind, {}).pop(name, None) is not None

    async def list_docs(self, kind: str) -> dict[str, dict[str, Any]]:
        docs: dict[str, dict[str, Any]] = json.loads(json.dumps(self._docs.get(kind, {})))
        return docs

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


# KEYS: settled (int string), holds (zset id -> expiry, server time), amounts (hash id -> nano)
# ARGV: amount, limit (-1 = none), ttl_s, id, account ttl
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, rid in ipairs(expired) do
  redis.call('HDEL', KEYS[3], rid)
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
local held = 0
for _, v in ipairs(redis.call('HVALS', KEYS[3])) do held = held + tonumber(v) end
local settled = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
if limit >= 0 and settled + held + amount > limit then return {0, settled + held} end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
redis.call('HSET', KEYS[3], ARGV[4], amount)
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
return {1, settled + held}
"""

# KEYS: settled, holds, amounts, done (set of settled ids). ARGV: id, actual nano, account ttl.
# Returns the live spend afterwards (settled + unexpired holds).
_SETTLE = """
if redis.call('SADD', KEYS[4], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('INCRBY', KEYS[1], ARGV[2])
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local held = 0
for _, rid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')) do
  held = held + tonumber(redis.call('HGET', KEYS[3], rid) or '0')
end
return tonumber(redis.call('GET', KEYS[1]) or '0') + held
"""

# KEYS: settled, holds, amounts. Live spend = settled + unexpired holds.
_SPENT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local held = 0
local live = redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')
for _, rid in ipairs(live) do held = held + tonumber(redis.call('HGET', KEYS[3], rid) or '0') end
return tonumber(redis.call('GET', KEYS[1]) or '0') + held
"""

# KEYS: counter (suffixed with the window number). ARGV: amount, limit, window_s
_HIT = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return 0 end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3] * 2)
return 1
"""


_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStore:
    """Shared by replicas. Every read-modify-write is one Lua script (atomic on the server)."""

    def __init__(self, url: str, prefix: str = "cscr:") -> None:
        import redis.asyncio as aioredis  # imported when a redis:// store is opened, not before

        self.url = url
        self._prefix = prefix
        self._redis = aioredis.from_url(url, decode_responses=True, socket_timeout=2.0,
                                        socket_connect_timeout=2.0, health_check_interval=10)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        self._spent = self._redis.register_script(_SPENT)
        self._hit = self._redis.register_script(_HIT)
        self._release = self._redis.register_script(_RELEASE)

    def _account_keys(self, account: str) -> list[str]:
        # {account} is a hash tag: one account's keys live in one Redis Cluster slot.
        base = f"{self._prefix}acct:{{{account}}}"
        return [f"{base}:settled", f"{base}:holds", f"{base}:amounts", f"{base}:done"]

    async def reserve(
        self, account: str, amount: float, limit: float | None, ttl_s: float
    ) -> tuple[Reservation | None, float]:
        rid = uuid.uuid4().hex
        ok, live = await self._reserve(
            keys=self._account_keys(account)[:3],
            args=[to_nano(amount), -1 if limit is None else to_nano(limit), ttl_s, rid, ACCOUNT_TTL_S],
        )
        return (Reservation(account, rid, amount) if int(ok) == 1 else None), int(live) / NANO

    async def settle(self, reservation: Reservation, actual: float) -> float:
        live = await self._settle(keys=self._account_keys(reservation.account),
                                  args=[reservation.id, to_nano(actual), ACCOUNT_TTL_S])
        return int(live) / NANO

    async def spent(self, account: str) -> float:
        return int(await self._spent(keys=self._account_keys(account)[:3])) / NANO

    async def hit(self, counter: str, amount: int, limit: int, window_s: int) -> bool:
        window = int(time.time() // window_s)
        ok = await self._hit(keys=[f"{self._prefix}rate:{counter}:{window}"], args=[amount, limit, window_s])
        return int(ok) == 1

    async def acquire(self, name: str, owner: str, ttl_s: float) -> bool:
        key = f"{self._prefix}lease:{name}"
        if await self._redis.set(key, owner, nx=True, px=max(int(ttl_s * 1000), 1)):
            return True
        return bool(await self._redis.get(key) == owner)  # re-entrant for its holder

    async def release(self, name: str, owner: str) -> None:
        await self._release(keys=[f"{self._prefix}lease:{name}"], args=[owner])

    async def get_doc(self, kind: str, name: str) -> dict[str, Any] | None:
        raw = await self._redis.hget(f"{self._prefix}docs:{kind}", name)
        if raw is None:
            return None
        doc: dict[str, Any] = json.loads(raw)
        return doc

    async def put_doc(self, kind: str, name: str, doc: dict[str, Any]) -> None:
        await self._redis.hset(f"{self._prefix}docs:{kind}", name, json.dumps(doc))

    async def delete_doc(self, kind: str, name: str) -> bool:
        return int(await self._redis.hdel(f"{self._prefix}docs:{kind}", name)) == 1

    async def list_docs(self, kind: str) -> dict[str, dict[str, Any]]:
        raw = await self._redis.hgetall(f"{self._prefix}docs:{kind}")
        return {str(k): json.loads(v) for k, v in raw.items()}

    async def ping(self) -> None:
        await self._redis.ping()

    async def aclose(self) -> None:
        await self._redis.aclose()


class SettlementQueue:
    """Settlements that failed because the store was unreachable, retried until they land.

    Settling is idempotent, so a retry after a timeout whose first attempt did reach Redis is
    harmless; nothing is lost while this process lives (a crash loses the queue, and the
    reservation then expires after its TTL — spend is under-counted, never double-counted)."""

    def __init__(self, store: Store, retry_s: float = 1.0) -> None:
        self._store = store
        self._pending: list[tuple[Reservation, float]] = []
        self._retry_s = retry_s
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, reservation: Reservation, actual: float) -> None:
        self._pending.append((reservation, actual))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(self._retry_s)
            still: list[tuple[Reservation, float]] = []
            for res, actual in self._pending:
                try:
                    await self._store.settle(res, actual)
                except Exception:  # still unreachable: keep it for the next round
                    still.append((res, actual))
            self._pending = still

    async def flush(self, timeout_s: float) -> None:
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                pass


def open_store(url: str) -> Store:
    """The backend for ``url``: ``memory://`` or ``redis://`` / ``rediss://``."""
    if url.startswith("memory://"):
        return MemoryStore(url)
    if url.startswith(("redis://", "rediss://")):
        return RedisStore(url)
    raise ValueError(f"unknown store URL {url!r}: use memory:// or redis://")
