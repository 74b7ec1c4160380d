"""Rate limits (the ``limits`` library): per API key, per OAuth grant, per tool.

In-process storage by default; shared Redis storage when ``BREEZE_REDIS_URL`` is set, so
every instance counts against the same buckets. Buckets are keyed by credential (key id,
grant id), never by token, so limits survive token rotation.

If the shared storage is unreachable the call is let through and a warning is logged: a
Redis outage degrades throttling, it does not take the service down.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.strategies import MovingWindowRateLimiter as InProcessMovingWindow

from breeze_mcp.auth.window_storage import MovingWindowMemory

__all__ = ["RateDecision", "RateLimiter"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    bucket: str
    limit: int
    remaining: int
    reset_after: int  # seconds until a request is allowed again / the window resets
    window: int  # window length in seconds

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
        # Moving window: exact. (The sliding-window counter was tried for speed, but its
        # weighted approximation lets an extra request through just after a window boundary.)
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
            # (see window_storage); its asyncio flavour also starts an expiry task with a
            # thread hop on nearly every hit under load.
            self.storage = MovingWindowMemory()
            self._local = InProcessMovingWindow(self.storage)
        self._items: dict[str, RateLimitItem] = {}

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

    async def reset(self) -> None:
        if isinstance(self.storage, MovingWindowMemory):
            self.storage.reset()
        else:
            await self.storage.reset()
