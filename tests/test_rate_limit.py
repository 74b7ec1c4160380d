"""Rate-limit storage: in-process by default, shared across instances with Redis."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from breeze_mcp.auth.rate_limit import RateLimiter
from tests.support import free_port

pytestmark = pytest.mark.anyio


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """The machine's Redis if it answers, else a redis-server we start, else skip."""
    import os

    if url := os.environ.get("BREEZE_TEST_REDIS_URL"):
        yield url
        return
    if _reachable("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no Redis on 127.0.0.1:6379 and no redis-server binary to start one")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _reachable("127.0.0.1", port):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.req("KEYS-RATELIMIT")
async def test_memory_limiter_counts_and_resets() -> None:
    limiter = RateLimiter()
    decisions = [await limiter.hit("api_key:x", "3/minute") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    denied = decisions[3]
    assert denied.headers()["Retry-After"] == str(max(denied.reset_after, 1))
    assert 0 < denied.reset_after <= 60
    # Buckets are independent.
    assert (await limiter.hit("api_key:y", "3/minute")).allowed


@pytest.mark.req("KEYS-RATELIMIT")
async def test_hit_all_returns_first_refusal_or_tightest() -> None:
    limiter = RateLimiter()
    both = [("api_key:k", "10/minute"), ("tool:t", "2/minute")]
    first = await limiter.hit_all(both)
    assert first is not None and first.allowed and first.bucket == "tool:t"
    await limiter.hit_all(both)
    third = await limiter.hit_all(both)
    assert third is not None and not third.allowed and third.bucket == "tool:t"
    assert await limiter.hit_all([]) is None


@pytest.mark.req("KEYS-RATELIMIT")
async def test_redis_limits_are_shared_between_instances(redis_url: str) -> None:
    namespace = f"breeze-test-{uuid.uuid4().hex}"
    one = RateLimiter(redis_url, namespace=namespace)
    two = RateLimiter(redis_url, namespace=namespace)
    results = []
    for limiter in (one, two, one, two):
        results.append((await limiter.hit("grant:g1", "3/minute")).allowed)
    assert results == [True, True, True, False]
    # In-process limiters would each have allowed all four.
    local_a, local_b = RateLimiter(), RateLimiter()
    local = [(await lim.hit("grant:g1", "3/minute")).allowed
             for lim in (local_a, local_b, local_a, local_b)]
    assert local == [True, True, True, True]
    await one.reset()


async def test_unreachable_redis_fails_open(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimiter(f"redis://127.0.0.1:{free_port()}/0")
    decision = await limiter.hit("api_key:z", "1/minute")
    assert decision.allowed
    assert "rate-limit storage unavailable" in caplog.text


@pytest.mark.req("KEYS-RATELIMIT")
async def test_limit_is_exact_across_a_window_boundary() -> None:
    """Two hits just before a fixed-window boundary and one just after is three within one
    second: a 2/second limit must refuse the third (an approximating counter lets it in)."""
    import time

    import anyio

    limiter = RateLimiter()
    # The premise (three hits within one second across a boundary) is timing; on a loaded
    # machine the scheduler can break it, so a broken premise is retried, never asserted on.
    for attempt in range(5):
        bucket = f"api_key:edge-{attempt}"
        if time.time() % 1 < 0.85:  # get close to the end of a second
            await anyio.sleep(0.87 - time.time() % 1)
        started = time.monotonic()
        first = await limiter.hit(bucket, "2/second")
        second = await limiter.hit(bucket, "2/second")
        await anyio.sleep(1 - time.time() % 1 + 0.02)  # just past the boundary
        third = await limiter.hit(bucket, "2/second")
        if time.monotonic() - started < 0.9:
            assert (first.allowed, second.allowed, third.allowed) == (True, True, False)
            return
    pytest.fail("the machine was too busy to place three hits within one second")
