"""An in-process storage for ``limits``' moving-window strategy that costs O(1) per hit.

``limits``' own :class:`~limits.storage.MemoryStorage` keeps a key's window as a list with
the newest entry first: every hit inserts at the front, moving the whole window in memory,
and a timer thread is started to trim expired entries. With a generous limit the window is
long, and its cost grows with it (see docs/benchmarks.md, "Rate limiter").

This storage keeps each window as a deque of timestamps, oldest first: a hit appends on the
right, expired entries leave on the left (amortised O(1)), and keys that went quiet are swept
on a hit at most once a second, with no thread. It implements only what
:class:`limits.strategies.MovingWindowRateLimiter` uses, with the same semantics as
``MemoryStorage``: an entry is in the window while ``now - its time <= expiry``; a hit of
``amount`` is refused when that would take the window above ``limit``. Entries are timed by
the monotonic clock (a wall-clock step cannot empty or freeze a window); the window's start
is reported in wall-clock time, as ``limits`` expects.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from limits.storage import MovingWindowSupport, Storage

__all__ = ["MovingWindowMemory"]

#: Keys whose whole window has expired are dropped at most this often (seconds).
SWEEP_SECONDS = 1.0


class MovingWindowMemory(Storage, MovingWindowSupport):
    """Moving windows in this process (one event loop or several threads: a lock guards
    every operation)."""

    STORAGE_SCHEME = None  # not registered: constructed directly, never from a URI

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock  # monotonic seconds (a test may pass its own)
        self._windows: dict[str, tuple[deque[float], float]] = {}  # key -> (times, expiry)
        self._lock = threading.Lock()
        self._next_sweep = clock() + SWEEP_SECONDS

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = self._clock()
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            window = self._windows.get(key)
            if window is None:
                times: deque[float] = deque()
                self._windows[key] = (times, expiry)
            else:
                times = window[0]
                if window[1] != expiry:
                    self._windows[key] = (times, max(window[1], expiry))
                _trim(times, now - expiry)
            if len(times) + amount > limit:
                return False
            times.extend([now] * amount)
            return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """The (wall-clock) time of the oldest entry in the window and the number of entries
        in it."""
        now = self._clock()
        wall = time.time()
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                return wall, 0
            times = window[0]
            _trim(times, now - expiry)
            if not times:
                return wall, 0
            return wall - (now - times[0]), len(times)

    def _sweep(self, now: float) -> None:
        for key, (times, expiry) in list(self._windows.items()):
            _trim(times, now - expiry)
            if not times:
                del self._windows[key]
        self._next_sweep = now + SWEEP_SECONDS

    # The rest of limits' storage interface (the counters of the other strategies): only
    # ``clear``, ``reset`` and ``check`` mean anything for a moving window.

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        raise NotImplementedError("only the moving window strategy is supported")

    def get(self, key: str) -> int:
        raise NotImplementedError("only the moving window strategy is supported")

    def get_expiry(self, key: str) -> float:
        raise NotImplementedError("only the moving window strategy is supported")

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        with self._lock:
            count = len(self._windows)
            self._windows.clear()
        return count

    def clear(self, key: str) -> None:
        with self._lock:
            self._windows.pop(key, None)


def _trim(times: deque[float], cutoff: float) -> None:
    """Drop the entries older than ``cutoff`` (the window keeps ``t >= cutoff``)."""
    while times and times[0] < cutoff:
        times.popleft()
