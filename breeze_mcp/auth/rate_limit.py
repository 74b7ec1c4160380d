"""Rate limits (the ``limits`` library): per API key, per OAuth grant, per tool.

In-process storage by default; shared Redis storage when ``BREEZE_REDIS_URL`` is set, so
every instance counts against the same buckets. Buckets are keyed by credential (key id,
grant id), never by token, so limits survive token rotation.

If the shared storage is unreachable the call is let through and a warning is logged: a
Redis outage degrades throttling, it does not take the service down.

Besides the buckets, two small tools for the failed-authentication path
(:mod:`breeze_mcp.auth.auth_failures`): counters (:meth:`RateLimiter.add`,
:meth:`RateLimiter.take`) in the same storage, so a count is shared by every instance, and a
memory of refused buckets in this process (:meth:`RateLimiter.remember_refusal`,
:meth:`RateLimiter.refusal`) that lets a refused source be turned away again without asking the
storage.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.strategies import MovingWindowRateLimiter as InProcessMovingWindow

from breeze_mcp.auth.window_storage import MovingWindowMemory

__all__ = ["RateDecision", "RateLimiter"]

log = logging.getLogger(__name__)

#: Most in-process counters and remembered refusals kept at once, so that a flood from many
#: addresses cannot grow them without bound (beyond it, new ones are dropped).
MAX_HELD = 100_000


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    bucket: str
    limit: int
    remaining: int
    reset_after: int  # seconds until a request is allowed again / the window resets
    window: int  # window length in seconds

    @property
    def message(self) -> str:
        """What a refused caller is told."""
        return (f"rate limit of {self.limit} per {self.window}s exceeded; retry in "
                f"{max(self.reset_after, 1)}s")

    def headers(self) -> dict[str, str]:
        """IETF RateLimit headers (draft-ietf-httpapi-ratelimit-headers) + Retry-After."""
        headers = {
            "RateLimit-Policy": f"{self.limit};w={self.window}",
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(max(self.remaining, 0)),
            "RateLimit-Reset": str(self.reset_after),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(self.reset_after, 1))
        return headers


class RateLimiter:
    def __init__(self, redis_url: str | None = None, *, namespace: str = "breeze") -> None:
        # Moving window: exact. The sliding-window counter's weighted approximation would let
        # an extra request through just after a window boundary.
        self.storage: RedisStorage | MovingWindowMemory
        self._shared: MovingWindowRateLimiter | None = None
        self._local: InProcessMovingWindow | None = None
        if redis_url:
            uri = redis_url if redis_url.startswith("async+") else f"async+{redis_url}"
            self.storage = RedisStorage(uri, implementation="redispy", key_prefix=namespace)
            self._shared = MovingWindowRateLimiter(self.storage)
        else:
            # In process, a synchronous storage: its calls never block (a dict and an
            # uncontended lock). Not limits' MemoryStorage, whose cost grows with the window
            # (see window_storage) and whose asyncio flavour starts an expiry task with a
            # thread hop on a hit.
            self.storage = MovingWindowMemory()
            self._local = InProcessMovingWindow(self.storage)
        self._items: dict[str, RateLimitItem] = {}
        self._counts: dict[str, tuple[int, float]] = {}  # in-process counters: (n, expires)
        self._refused: dict[str, tuple[RateDecision, float]] = {}  # bucket -> (it, until)
        self._next_sweep = 0.0
        self._full = False

    def _item(self, limit: str) -> RateLimitItem:
        item = self._items.get(limit)
        if item is None:
            item = self._items[limit] = parse(limit)
        return item

    async def hit(self, bucket: str, limit: str) -> RateDecision:
        item = self._item(limit)
        window = item.get_expiry()
        try:
            if self._local is not None:
                allowed = self._local.hit(item, bucket)
                stats = self._local.get_window_stats(item, bucket)
            else:
                assert self._shared is not None
                allowed = await self._shared.hit(item, bucket)
                stats = await self._shared.get_window_stats(item, bucket)
        except Exception:  # storage outage: fail open, loudly
            log.warning("rate-limit storage unavailable; letting %s through", bucket,
                        exc_info=True)
            return RateDecision(True, bucket, item.amount, item.amount, window, window)
        reset_after = max(0, math.ceil(stats.reset_time - time.time()))
        return RateDecision(allowed, bucket, item.amount, stats.remaining, reset_after, window)

    async def hit_all(self, buckets: Iterable[tuple[str, str]]) -> RateDecision | None:
        """Hit every bucket; the first refusal, else the tightest allowance (None: no buckets)."""
        tightest: RateDecision | None = None
        for bucket, limit in buckets:
            decision = await self.hit(bucket, limit)
            if not decision.allowed:
                return decision
            if tightest is None or decision.remaining < tightest.remaining:
                tightest = decision
        return tightest

    # Counters -----------------------------------------------------------------------------

    async def add(self, key: str, *, ttl: int) -> None:
        """Add one to the counter ``key``, which is forgotten ``ttl`` seconds after it was
        created (or last emptied by :meth:`take`). A storage outage loses the increment."""
        if isinstance(self.storage, RedisStorage):
            try:
                await self.storage.incr(f"count:{key}", ttl)
            except Exception:
                log.warning("rate-limit storage unavailable; a count of %s is lost", key,
                            exc_info=True)
            return
        now = time.monotonic()
        self._sweep(now)
        count, expires = self._counts.get(key, (0, 0.0))
        if expires > now:
            self._counts[key] = (count + 1, expires)
        elif len(self._counts) < MAX_HELD:
            self._counts[key] = (1, now + ttl)
        elif not self._full:
            self._full = True  # once per sweep: a flood must not flood the log as well
            log.warning("%d counters held: new ones are dropped for now", MAX_HELD)

    async def take(self, key: str) -> int:
        """The counter's value, subtracted from it: increments made meanwhile (by this or
        another instance) stay for the next taker, so every increment is taken once."""
        if isinstance(self.storage, RedisStorage):
            try:
                count = int(await self.storage.get(f"count:{key}"))
                if count:
                    await self.storage.incr(f"count:{key}", 1, -count)
            except Exception:
                log.warning("rate-limit storage unavailable; cannot read %s", key,
                            exc_info=True)
                return 0
            return count
        count, expires = self._counts.pop(key, (0, 0.0))
        return count if expires > time.monotonic() else 0

    # Refusals remembered in this process -----------------------------------------------

    def remember_refusal(self, decision: RateDecision) -> None:
        """Keep ``decision`` (a refusal) until its bucket allows a request again."""
        now = time.monotonic()
        self._sweep(now)
        if len(self._refused) < MAX_HELD or decision.bucket in self._refused:
            self._refused[decision.bucket] = (decision, now + max(decision.reset_after, 1))

    @property
    def holds_refusals(self) -> bool:
        """Whether :meth:`refusal` can answer anything but None (a check costing nothing)."""
        return bool(self._refused)

    def refusal(self, bucket: str) -> RateDecision | None:
        """The remembered refusal of ``bucket`` while it lasts, its ``reset_after`` updated."""
        now = time.monotonic()
        self._sweep(now)  # so that holds_refusals turns false once every refusal is over
        held = self._refused.get(bucket)
        if held is None:
            return None
        decision, until = held
        left = until - now
        if left <= 0:
            del self._refused[bucket]
            return None
        return replace(decision, reset_after=max(1, math.ceil(left)))

    def _sweep(self, now: float) -> None:
        """Forget expired counters and refusals, at most once a second."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        self._full = False
        self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
        self._refused = {k: v for k, v in self._refused.items() if v[1] > now}

    async def reset(self) -> None:
        self._counts.clear()
        self._refused.clear()
        if isinstance(self.storage, MovingWindowMemory):
            self.storage.reset()
        else:
            await self.storage.reset()
