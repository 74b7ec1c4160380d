"""The load generator: a lean HTTP/1.1 keep-alive client on asyncio streams.

Closed loop: ``concurrency`` connections, each sending its next request as soon as the
previous response is in. A hand-written client is used instead of a general one (httpx)
because this machine's cores are shared by the client, the server under test and PostgreSQL:
every cycle the client spends is taken from them, so it has to be cheap. Its CPU use is
measured and printed with the results so a saturated client is visible.

Every response is checked: HTTP 200 *and* a success payload (a JSON-RPC result that is not
an error, or a REST result), so a fast stream of errors can never pass for throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["STOP", "Request", "Result", "Scenario", "fetch_once", "percentile", "run_load"]

Check = Callable[[int, bytes], str | None]  # None: success, else why not


class StopFlag:
    """Set by the benchmark's signal handler: the load winds down after in-flight requests.

    Raising from a signal handler inside the event loop can abort any callback half-way (a
    connection's close, say) and leave the loop unable to finish; a flag the workers check
    between requests always lets it finish.
    """

    def __init__(self) -> None:
        self.loading = False  # a load phase is running (a flag is enough to stop it)
        self.requested = False


STOP = StopFlag()


@dataclass(frozen=True)
class Request:
    """One fixed HTTP request, pre-encoded once."""

    host: str
    port: int
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, body: bytes | None = None) -> bytes:
        body = self.body if body is None else body
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "User-Agent: breeze-bench/1",
            f"Content-Length: {len(body)}",
            *(f"{k}: {v}" for k, v in self.headers),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Stepper(Protocol):
    """A per-connection source of request bodies, for requests that cannot repeat (a
    single-use code; a refresh token that rotates on every use)."""

    def body(self) -> bytes: ...

    def observe(self, status: int, body: bytes) -> None: ...


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    request: Request
    check: Check
    baseline: bool = False  # the bare SDK scenario every other one is compared with
    stepper: Callable[[], Stepper] | None = None  # per-connection bodies, when they vary


@dataclass
class Result:
    """What one measured run of a scenario produced (several rounds are merged)."""

    name: str
    requests: int = 0
    errors: int = 0
    warmup_errors: int = 0
    elapsed: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    client_cpu: float = 0.0
    error_samples: list[str] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)  # server/db CPU seconds, RSS, ...

    def merge(self, other: Result) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.warmup_errors += other.warmup_errors
        self.elapsed += other.elapsed
        self.latencies_ns.extend(other.latencies_ns)
        self.client_cpu += other.client_cpu
        for sample in other.error_samples:
            if len(self.error_samples) < 5:
                self.error_samples.append(sample)
        for key, value in other.extra.items():
            if key.endswith("_cpu"):
                self.extra[key] = self.extra.get(key, 0.0) + value
            else:  # gauges: the latest value wins
                self.extra[key] = value

    @property
    def throughput(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0

    def percentile_ms(self, pct: float) -> float:
        return percentile(self.latencies_ns, pct) / 1e6

    def cpu_percent(self, key: str) -> float | None:
        if key == "client_cpu":
            return 100 * self.client_cpu / self.elapsed if self.elapsed else None
        value = self.extra.get(key)
        return None if value is None or not self.elapsed else 100 * value / self.elapsed


def percentile(values: list[int], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[rank - 1])


class ProtocolError(Exception):
    pass


class Connection:
    """One keep-alive connection; ``send`` returns (status, body)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def send(self, payload: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, _, header_block = head.partition(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ProtocolError(f"bad status line {status_line[:80]!r}")
        status = int(parts[1])
        length: int | None = None
        chunked = False
        close = False
        for line in header_block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            body = await self._read_chunked()
        elif length is not None:
            body = await self.reader.readexactly(length)
        else:  # body runs to the end of the connection
            body = await self.reader.read()
            close = True
        if close:
            await self.close()
        return status, body

    async def _read_chunked(self) -> bytes:
        assert self.reader is not None
        chunks: list[bytes] = []
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")  # no trailers are expected
                return b"".join(chunks)
            chunks.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)


async def fetch_once(request: Request, body: bytes | None = None) -> tuple[int, bytes]:
    """One request on a fresh connection (used to validate a scenario before loading it)."""
    conn = Connection(request.host, request.port)
    try:
        return await asyncio.wait_for(conn.send(request.encode(body)), timeout=30)
    finally:
        await conn.close()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _worker(
    scenario: Scenario, payload: bytes, stop_at: float, record: bool, result: Result
) -> None:
    conn = Connection(scenario.request.host, scenario.request.port)
    latencies = result.latencies_ns
    clock = time.perf_counter_ns
    stepper = scenario.stepper() if scenario.stepper is not None else None
    try:
        while time.perf_counter() < stop_at and not STOP.requested:
            if stepper is not None:
                payload = scenario.request.encode(stepper.body())
            started = clock()
            problem: str | None
            try:
                status, body = await conn.send(payload)
                problem = scenario.check(status, body)
                if stepper is not None:
                    stepper.observe(status, body)
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ProtocolError,
                    ValueError, asyncio.LimitOverrunError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                await conn.close()
            if record:
                latencies.append(clock() - started)
            result.requests += 1
            if problem is not None:
                result.errors += 1
                if len(result.error_samples) < 5:
                    result.error_samples.append(problem[:300])
    finally:
        await conn.close()


async def _phase(scenario: Scenario, concurrency: int, seconds: float, record: bool,
                 result: Result) -> float:
    payload = scenario.request.encode()
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(
        _worker(scenario, payload, stop_at, record, result) for _ in range(concurrency)
    ))
    return time.perf_counter() - started


async def run_load(
    scenario: Scenario,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    sample: Callable[[], dict[str, float]] | None = None,
) -> tuple[Result, int]:
    """Warm up, then load ``scenario`` for ``duration`` seconds.

    Returns what was measured and the number of successful warm-up requests. ``sample`` is
    read just before and just after the measured phase; the differences of its counters
    (keys ending in ``_cpu``) and its final gauges go into ``Result.extra``.
    """
    STOP.loading = True
    try:
        return await _run_load(scenario, concurrency, duration, warmup, sample)
    finally:
        STOP.loading = False


async def _run_load(
    scenario: Scenario,
    concurrency: int,
    duration: float,
    warmup: float,
    sample: Callable[[], dict[str, float]] | None,
) -> tuple[Result, int]:
    result = Result(scenario.name)
    warm = Result(scenario.name)
    if warmup > 0:
        await _phase(scenario, concurrency, warmup, False, warm)
        result.warmup_errors = warm.errors
        result.error_samples.extend(f"warm-up: {s}" for s in warm.error_samples)
    gc.collect()
    gc.disable()  # no collector pauses in the client while measuring
    try:
        before = sample() if sample else {}
        cpu_before = _cpu_seconds()
        result.elapsed = await _phase(scenario, concurrency, duration, True, result)
        result.client_cpu = _cpu_seconds() - cpu_before
        after = sample() if sample else {}
    finally:
        gc.enable()
    for key, value in after.items():
        result.extra[key] = value - before.get(key, 0.0) if key.endswith("_cpu") else value
    return result, warm.requests - warm.errors


# Response checks ---------------------------------------------------------------------------


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def check_mcp_call(expect: Callable[[dict[str, Any]], bool] | None = None) -> Check:
    """HTTP 200 with a JSON-RPC result that is not a tool error (and passes ``expect``)."""

    def check(status: int, body: bytes) -> str | None:
        if status != 200:
            return f"HTTP {status}: {body[:200]!r}"
        message = _json(body)
        if not isinstance(message, dict) or not isinstance(message.get("result"), dict):
            return f"not a JSON-RPC result: {body[:200]!r}"
        result = message["result"]
        if result.get("isError"):
            return f"tool error: {body[:200]!r}"
        if expect is not None and not expect(result):
            return f"unexpected result: {body[:200]!r}"
        return None

    return check


def check_rest_call(expect: Callable[[dict[str, Any]], bool] | None = None) -> Check:
    """HTTP 200 with a JSON object carrying ``result`` (and passing ``expect``)."""

    def check(status: int, body: bytes) -> str | None:
        if status != 200:
            return f"HTTP {status}: {body[:200]!r}"
        message = _json(body)
        if not isinstance(message, dict) or not isinstance(message.get("result"), dict):
            return f"no result: {body[:200]!r}"
        if expect is not None and not expect(message["result"]):
            return f"unexpected result: {body[:200]!r}"
        return None

    return check
