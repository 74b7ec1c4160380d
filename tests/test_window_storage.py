"""The in-process moving-window storage under limits' own strategy, on a clock we drive."""

from __future__ import annotations

import threading
import time

import pytest
from limits import parse
from limits.strategies import MovingWindowRateLimiter

from breeze_mcp.auth import window_storage
from breeze_mcp.auth.window_storage import MovingWindowMemory


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limiter(clock: Clock) -> tuple[MovingWindowMemory, MovingWindowRateLimiter]:
    storage = MovingWindowMemory(clock=clock)
    return storage, MovingWindowRateLimiter(storage)


@pytest.mark.req("KEYS-RATELIMIT")
def test_window_slides_and_its_edge_is_inclusive() -> None:
    """3 per 10 s: an entry stays in the window while now - t <= 10 (as in limits'
    MemoryStorage), then leaves it, one at a time."""
    clock = Clock()
    _, limiter = _limiter(clock)
    item = parse("3/10 seconds")
    allowed = []
    for at in (0.0, 1.0, 2.0, 3.0, 10.0, 10.001, 10.5, 11.001):
        clock.now = 1000.0 + at
        allowed.append(limiter.hit(item, "k"))
    #          0     1     2     3      10     10.001 10.5   11.001
    assert allowed == [True, True, True, False, False, True, False, True]


@pytest.mark.req("KEYS-RATELIMIT")
def test_window_stats_report_remaining_and_reset() -> None:
    clock = Clock()
    _, limiter = _limiter(clock)
    item = parse("5/minute")
    assert limiter.get_window_stats(item, "k").remaining == 5
    limiter.hit(item, "k")
    clock.now += 20
    limiter.hit(item, "k")
    stats = limiter.get_window_stats(item, "k")
    assert stats.remaining == 3
    # The window frees its first slot 60 s after the first hit, 40 s from now (wall clock).
    assert stats.reset_time - time.time() == pytest.approx(40, abs=1)
    clock.now += 41
    assert limiter.get_window_stats(item, "k").remaining == 4


@pytest.mark.req("KEYS-RATELIMIT")
def test_costs_and_keys_are_separate() -> None:
    clock = Clock()
    storage, limiter = _limiter(clock)
    item = parse("4/minute")
    assert limiter.hit(item, "a", cost=3)
    assert not limiter.hit(item, "a", cost=2)  # 3 + 2 > 4: refused, nothing taken
    assert limiter.hit(item, "a", cost=1)
    assert not limiter.hit(item, "a")
    assert not limiter.hit(item, "b", cost=5)  # more than the limit at once
    assert limiter.hit(item, "b")
    storage.clear(item.key_for("a"))
    assert limiter.hit(item, "a")
    assert storage.reset() == 2
    assert limiter.get_window_stats(item, "b").remaining == 4


@pytest.mark.req("KEYS-RATELIMIT")
def test_quiet_keys_are_swept_without_a_thread() -> None:
    """Keys whose window emptied are dropped on a later hit; no thread is ever started
    (limits' MemoryStorage starts a timer thread every 10 ms under load)."""
    clock = Clock()
    storage, limiter = _limiter(clock)
    item = parse("100/second")
    threads = threading.active_count()
    for n in range(50):
        limiter.hit(item, f"key-{n}")
    assert threading.active_count() == threads
    assert len(storage._windows) == 50
    clock.now += 1.5 + window_storage.SWEEP_SECONDS  # every window expired, sweep due
    limiter.hit(item, "active")
    assert list(storage._windows) == [item.key_for("active")]
    assert threading.active_count() == threads


@pytest.mark.req("KEYS-RATELIMIT")
def test_a_long_window_holds_every_entry() -> None:
    """60,000 hits within a minute are all counted (the window the benchmark's key keeps)."""
    clock = Clock()
    storage, limiter = _limiter(clock)
    item = parse("60000/minute")
    for n in range(60_000):
        clock.now = 1000.0 + n / 1000
        assert limiter.hit(item, "k")
    assert not limiter.hit(item, "k")
    clock.now = 1000.0 + 60.0005  # the first entry (t=0) has just left the window
    assert limiter.hit(item, "k")
    assert not limiter.hit(item, "k")
    assert storage.get_moving_window(item.key_for("k"), 60000, 60)[1] == 60000
