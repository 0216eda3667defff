"""Shared state behind one small async interface; the backend is picked by URL.

- ``memory://``: this process only (one replica; the default).
- ``redis://host:port/db`` (or ``rediss://``): shared by every replica. Read-modify-write happens
  in short Lua scripts, so many replicas admit against one truth.

Money is held as integer nano-dollars so sums never drift. Spend per account is settled spend plus
live reservations: a request reserves its estimated cost before the provider call (so concurrent
requests cannot overspend) and settles to the actual cost after it. Reservations carry a TTL, so a
crashed replica cannot hold money forever; until they expire they count in full. Settling is
idempotent per reservation, so a settlement retried after a store outage is never counted twice.

The reservation id is chosen by the caller before the call. A reserve that timed out may still run
when a stalled Redis resumes; the caller then settles that id to 0 (``SettlementQueue``), and a
reserve whose id was already settled holds nothing, so the two cancel out in either order.

Provider health (``health_*``): consecutive failures per provider and the cooldown they open, shared
by every replica (see ``gateway.health``).

Response cache (``cache_*``, see ``gateway.cache``): opaque strings under a key, each with a TTL.
memory:// also keeps at most ``max_entries`` (least recently used dropped first); redis:// relies on
the TTL and the server's ``maxmemory`` (docs/CONFIG.md, ``cache``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

NANO = 1_000_000_000
ACCOUNT_TTL_S = 40 * 86400  # an account (key + budget period) is forgotten 40 days after its last use
HEALTH_FORGET_S = 3600.0  # a cooldown nobody probed is forgotten this long after it ended


def to_nano(usd: float) -> int:
    return int(round(usd * NANO))


def new_reservation_id() -> str:
    return uuid.uuid4().hex


def redact_url(url: str) -> str:
    """``url`` with any password (and user) replaced by ``***``: store URLs are logged and shown."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable store URL>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def redact_text(text: str, url: str) -> str:
    """``text`` (an error message) with the store URL's password, if any, replaced by ``***``."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


class StoreBusy(Exception):
    """Every pooled connection stayed in use for the whole pool timeout: the store is reachable
    but this process is asking too much of it at once (not an outage: never served unmetered)."""


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """Client-side limits of a redis:// store (``server.store_*`` in gateway.yaml)."""

    max_connections: int = 64  # per process; requests beyond it wait for a free connection
    pool_timeout_s: float = 5.0  # how long a request waits for a free connection
    socket_timeout_s: float = 2.0  # one command (connect, or send and answer)


@dataclass(frozen=True, slots=True)
class Reservation:
    account: str
    id: str
    amount: float
    provider: str = ""  # who the money is held for (logs, metrics)
    capped: bool = False  # the upstream call is bounded by ``amount``: settle never records more


class Store(Protocol):
    url: str

    async def reserve(
        self, account: str, amount: float, limit: float | None, ttl_s: float, rid: str | None = None
    ) -> tuple[Reservation | None, float]:
        """Hold ``amount`` USD on ``account`` under id ``rid`` (new if None) unless spent + held +
        amount would exceed ``limit``, or ``rid`` was already settled (a late reserve after its
        release). Returns (the reservation or None, the account's live spend before it)."""

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

    async def health_failure(self, provider: str, threshold: int, cooldown_s: float, window_s: float) -> float:
        """Count one failure of ``provider`` (the count lapses ``window_s`` after the last one). At
        ``threshold`` failures in a row, or any failure while a cooldown is recorded, (re)open the
        cooldown for ``cooldown_s``. Returns the cooldown seconds left (0: none opened)."""

    async def health_success(self, provider: str) -> None:
        """``provider`` answered: forget its failures and its cooldown."""

    async def health_state(self) -> dict[str, float]:
        """Providers with a cooldown record -> seconds left (<= 0: over, waiting for a probe)."""

    # --- usage statistics (gateway.stats): integer counters in time buckets, summed by every replica ---
    async def stats_add(self, buckets: Mapping[str, int], counts: Mapping[str, int]) -> None:
        """Add ``counts`` (field -> amount) to every bucket in ``buckets`` (name -> TTL seconds) as
        one atomic step; a bucket is forgotten its TTL after its last write."""

    async def stats_read(self, buckets: Sequence[str]) -> list[dict[str, int]]:
        """The counters of each bucket, in order ({} for one never written or forgotten)."""
    # --- end usage statistics ---
    async def cache_get(self, key: str) -> str | None:
        """The cached value under ``key``, None when absent or expired."""

    async def cache_put(self, key: str, value: str, ttl_s: float, max_entries: int) -> None:
        """Keep ``value`` under ``key`` for ``ttl_s``. memory:// drops its least recently used
        entries beyond ``max_entries``; redis:// ignores it (TTL and the server's maxmemory bound it)."""

    async def cache_drop(self, key: str) -> None:
        """Forget ``key`` (an entry that failed to decode)."""

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
        self._fails: dict[str, tuple[int, float]] = {}  # provider -> (failures, monotonic expiry)
        self._cooldowns: dict[str, tuple[float, float]] = {}  # provider -> (until, forget at), monotonic
        self._stats: dict[str, tuple[dict[str, int], float]] = {}  # bucket -> (counters, monotonic expiry)
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key -> (value, monotonic expiry), LRU first

    async def reserve(
        self, account: str, amount: float, limit: float | None, ttl_s: float, rid: str | None = None
    ) -> tuple[Reservation | None, float]:
        now = time.monotonic()
        state = self._accounts.setdefault(account, _Account())
        nano = to_nano(amount)
        live = state.live(now)
        rid = rid or str(next(self._ids))
        if (limit is not None and live + nano > to_nano(limit)) or rid in state.done:
            return None, live / NANO
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

    async def health_failure(self, provider: str, threshold: int, cooldown_s: float, window_s: float) -> float:
        now = time.monotonic()
        count, expiry = self._fails.get(provider, (0, now))
        count = count + 1 if expiry > now else 1
        cooling = self._cooldowns.get(provider)
        if count < threshold and (cooling is None or cooling[1] <= now):
            self._fails[provider] = (count, now + window_s)
            return 0.0
        self._fails.pop(provider, None)
        self._cooldowns[provider] = (now + cooldown_s, now + cooldown_s + HEALTH_FORGET_S)
        return cooldown_s

    async def health_success(self, provider: str) -> None:
        self._fails.pop(provider, None)
        self._cooldowns.pop(provider, None)

    async def health_state(self) -> dict[str, float]:
        now = time.monotonic()
        for name in [n for n, (_, forget) in self._cooldowns.items() if forget <= now]:
            del self._cooldowns[name]
        return {name: until - now for name, (until, _) in self._cooldowns.items()}

    # --- usage statistics ---
    async def stats_add(self, buckets: Mapping[str, int], counts: Mapping[str, int]) -> None:
        now = time.monotonic()
        for name, ttl_s in buckets.items():
            held = self._stats.get(name)
            counters = held[0] if held is not None and held[1] > now else {}
            for field_name, amount in counts.items():
                counters[field_name] = counters.get(field_name, 0) + amount
            self._stats[name] = (counters, now + ttl_s)

    async def stats_read(self, buckets: Sequence[str]) -> list[dict[str, int]]:
        now = time.monotonic()
        out = []
        for name in buckets:
            held = self._stats.get(name)
            out.append(dict(held[0]) if held is not None and held[1] > now else {})
        return out
    # --- end usage statistics ---
    async def cache_get(self, key: str) -> str | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return entry[0]

    async def cache_put(self, key: str, value: str, ttl_s: float, max_entries: int) -> None:
        self._cache[key] = (value, time.monotonic() + ttl_s)
        self._cache.move_to_end(key)
        while len(self._cache) > max_entries:
            self._cache.popitem(last=False)

    async def cache_drop(self, key: str) -> None:
        self._cache.pop(key, None)

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


# KEYS: settled (int string), holds (zset id -> expiry, server time), amounts (hash id -> nano),
# done (set of settled ids: a reserve that arrives after its own release holds nothing)
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
if redis.call('SISMEMBER', KEYS[4], ARGV[4]) == 1 then return {0, settled + held} end
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

# KEYS: failures (counter), cooldown (server time it ends). ARGV: threshold, cooldown_s, window_s, forget_s
# A failure while a cooldown is recorded (a failed probe) reopens it at once.
_HEALTH_FAIL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local n = redis.call('INCR', KEYS[1])
if n < tonumber(ARGV[1]) and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(ARGV[3]) * 1000))
  return '0'
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], tostring(now + tonumber(ARGV[2])),
           'PX', math.floor((tonumber(ARGV[2]) + tonumber(ARGV[4])) * 1000))
return ARGV[2]
"""

# KEYS: the cooldown keys. Returns seconds left per key ('' where there is none), server time.
_HEALTH_STATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local out = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  out[i] = v and tostring(tonumber(v) - now) or ''
end
return out
"""

# --- usage statistics ---
# KEYS: the buckets. ARGV: one TTL (s) per bucket, then field, amount, field, amount, ...
_STATS_ADD = """
local n = #KEYS
for i, key in ipairs(KEYS) do
  for j = n + 1, #ARGV, 2 do redis.call('HINCRBY', key, ARGV[j], ARGV[j + 1]) end
  redis.call('EXPIRE', key, ARGV[i])
end
return n
"""
# --- end usage statistics ---


class RedisStore:
    """Shared by replicas. Every read-modify-write is one Lua script (atomic on the server)."""

    def __init__(self, url: str, prefix: str = "cscr:", options: StoreOptions | None = None) -> None:
        import redis.asyncio as aioredis  # imported when a redis:// store is opened, not before

        opts = options or StoreOptions()
        self.url = url
        self._prefix = prefix
        # A bounded pool that waits for a free connection: redis-py's default pool opens a new
        # connection per concurrent command, and a burst then fails with timeouts on a healthy Redis.
        pool = _blocking_pool_class().from_url(
            url, decode_responses=True, max_connections=opts.max_connections, timeout=opts.pool_timeout_s,
            socket_timeout=opts.socket_timeout_s, socket_connect_timeout=opts.socket_timeout_s,
            health_check_interval=10,
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._health_fail = self._redis.register_script(_HEALTH_FAIL)
        self._health_state = self._redis.register_script(_HEALTH_STATE)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        self._spent = self._redis.register_script(_SPENT)
        self._hit = self._redis.register_script(_HIT)
        self._release = self._redis.register_script(_RELEASE)
        self._stats_add = self._redis.register_script(_STATS_ADD)

    def _account_keys(self, account: str) -> list[str]:
        # {account} is a hash tag: one account's keys live in one Redis Cluster slot.
        base = f"{self._prefix}acct:{{{account}}}"
        return [f"{base}:settled", f"{base}:holds", f"{base}:amounts", f"{base}:done"]

    async def reserve(
        self, account: str, amount: float, limit: float | None, ttl_s: float, rid: str | None = None
    ) -> tuple[Reservation | None, float]:
        rid = rid or new_reservation_id()
        ok, live = await self._reserve(
            keys=self._account_keys(account),
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

    def _health_keys(self, provider: str) -> list[str]:
        base = f"{self._prefix}health:{{{provider}}}"
        return [f"{base}:failures", f"{base}:cooldown"]

    async def health_failure(self, provider: str, threshold: int, cooldown_s: float, window_s: float) -> float:
        await self._redis.sadd(f"{self._prefix}health:providers", provider)
        left = await self._health_fail(keys=self._health_keys(provider),
                                       args=[threshold, cooldown_s, window_s, HEALTH_FORGET_S])
        return float(left)

    async def health_success(self, provider: str) -> None:
        await self._redis.delete(*self._health_keys(provider))

    async def health_state(self) -> dict[str, float]:
        names = sorted(str(n) for n in await self._redis.smembers(f"{self._prefix}health:providers"))
        if not names:
            return {}
        left = await self._health_state(keys=[self._health_keys(n)[1] for n in names])
        return {n: float(v) for n, v in zip(names, left, strict=True) if v != ""}

    # --- usage statistics: one script per request, so a bucket never holds half a request ---
    async def stats_add(self, buckets: Mapping[str, int], counts: Mapping[str, int]) -> None:
        args: list[Any] = list(buckets.values())
        for field_name, amount in counts.items():
            args += [field_name, amount]
        await self._stats_add(keys=[f"{self._prefix}{name}" for name in buckets], args=args)

    async def stats_read(self, buckets: Sequence[str]) -> list[dict[str, int]]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in buckets:
                pipe.hgetall(f"{self._prefix}{name}")
            raw = await pipe.execute()
        return [{str(k): int(v) for k, v in got.items()} for got in raw]
    # --- end usage statistics ---
    async def cache_get(self, key: str) -> str | None:
        value = await self._redis.get(f"{self._prefix}cache:{key}")
        return None if value is None else str(value)

    async def cache_put(self, key: str, value: str, ttl_s: float, max_entries: int) -> None:
        await self._redis.set(f"{self._prefix}cache:{key}", value, px=max(int(ttl_s * 1000), 1))

    async def cache_drop(self, key: str) -> None:
        await self._redis.delete(f"{self._prefix}cache:{key}")

    async def ping(self) -> None:
        await self._redis.ping()

    async def aclose(self) -> None:
        await self._redis.aclose()


def _blocking_pool_class() -> Any:
    """redis-py's BlockingConnectionPool, whose wait for a free connection ends in StoreBusy
    (its own error is a ConnectionError, indistinguishable from an unreachable server)."""
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError

    class BoundedPool(aioredis.BlockingConnectionPool):
        async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return await super().get_connection(*args, **kwargs)
            except RedisConnectionError as exc:
                if isinstance(exc.__cause__, TimeoutError):  # the pool's wait, not the socket
                    raise StoreBusy(f"no free store connection within {self.timeout}s "
                                    f"(max_connections {self.max_connections})") from exc
                raise

    return BoundedPool


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
            batch, self._pending = self._pending, []
            for i, (res, actual) in enumerate(batch):
                try:
                    await self._store.settle(res, actual)
                except Exception:  # still unreachable: keep the rest for the next round, untried
                    self._pending = batch[i:] + self._pending  # (one timeout per round, not one per entry)
                    break

    async def flush(self, timeout_s: float) -> None:
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                pass


def open_store(url: str, options: StoreOptions | None = None) -> Store:
    """The backend for ``url``: ``memory://`` or ``redis://`` / ``rediss://``."""
    if url.startswith("memory://"):
        return MemoryStore(url)
    if url.startswith(("redis://", "rediss://")):
        return RedisStore(url, options=options)
    raise ValueError(f"unknown store URL {redact_url(url)!r}: use memory:// or redis://")
