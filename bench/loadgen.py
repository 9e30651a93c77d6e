"""A small asyncio HTTP/1.1 load generator for the benchmarks: keep-alive connections, cookies,
no dependencies. Light on CPU (one process, no threads), so it takes less of a 2-core machine
from the servers it measures than a thread-per-client generator would.

Only loopback addresses are accepted: the benchmarks never send traffic anywhere else.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class HttpError(Exception):
    pass


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class Connection:
    """One keep-alive connection to one host:port, with the cookies a browser would keep."""

    host: str
    port: int
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    cookies: dict[str, str] = field(default_factory=dict)

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.writer = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        for attempt in range(2):  # a keep-alive connection the server closed: reopen once
            if self.writer is None:
                await self._open()
            try:
                return await self._exchange(method, path, body, headers or {})
            except (ConnectionError, asyncio.IncompleteReadError, HttpError):
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(self, method, path, body, headers) -> Reply:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if self.cookies:
            lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        if body or method in {"POST", "PUT", "PATCH"}:
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise HttpError("connection closed")
        status = int(status_line.split()[1])
        response_headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            value = value.strip()
            if name == "set-cookie":
                cookie = value.split(";", 1)[0]
                key, _, cookie_value = cookie.partition("=")
                self.cookies[key.strip()] = cookie_value.strip()
            response_headers[name] = value
        if response_headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                if size == 0:
                    await self.reader.readline()
                    break
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readline()
            payload = b"".join(chunks)
        else:
            payload = await self.reader.readexactly(int(response_headers.get("content-length", 0)))
        if response_headers.get("connection", "").lower() == "close":
            await self.close()
        return Reply(status, response_headers, payload)


def connection_for(url: str) -> Connection:
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        raise ValueError(f"{url}: the load generator only talks to loopback")
    return Connection(parts.hostname, parts.port or 80)


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Figures:
    done: int
    failed: int
    seconds: float
    latencies: list[float]
    failures: dict[str, int]

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        return {
            "per_second": round(self.rate, 1),
            "p50_ms": round(percentile(self.latencies, 0.50) * 1000, 1),
            "p99_ms": round(percentile(self.latencies, 0.99) * 1000, 1),
            "mean_ms": round(statistics.fmean(self.latencies) * 1000, 1) if self.latencies else 0,
            "done": self.done,
            "failed": self.failed,
        }


async def timed(one, index: int, since: float, latencies: list, failures: dict) -> None:
    """Runs `await one(index)`: its time from `since` goes to `latencies` on success, else its
    failure is counted by description (a network error by its exception's name)."""
    try:
        problem = await one(index)
    except (OSError, HttpError, asyncio.IncompleteReadError, ValueError) as exc:
        problem = type(exc).__name__
    if problem is None:
        latencies.append(time.monotonic() - since)
    else:
        failures[problem] = failures.get(problem, 0) + 1


async def run_clients(make_client, *, clients: int, seconds: float, limit: int | None = None):
    """Runs `clients` concurrent loops; each calls `await one(index)` (from `make_client()`)
    until `seconds` pass or `limit` iterations are done in all. `one` returns None on success
    or a short failure description."""
    latencies: list[float] = []
    failures: dict[str, int] = {}
    counter = {"started": 0}
    deadline = time.monotonic() + seconds

    async def loop():
        one, close = make_client()
        try:
            while time.monotonic() < deadline:
                if limit is not None and counter["started"] >= limit:
                    return
                index = counter["started"]
                counter["started"] += 1
                await timed(one, index, time.monotonic(), latencies, failures)
        finally:
            await close()

    began = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(clients)))
    elapsed = time.monotonic() - began
    return Figures(len(latencies), sum(failures.values()), elapsed, latencies, failures)


async def run_arrivals(
    make_client, *, rate: float, clients: int, seconds: float, limit: int | None = None, seed=7
):
    """An open loop: learners arrive at random (a Poisson process of `rate` a second) whatever
    the server's speed, each with a client of its own (`make_client()`: a new connection), at
    most `clients` at once; an arrival that finds `clients` busy waits for one, and that wait
    counts in its time. A learner's time runs from its scheduled arrival to its last answer, so
    a slow server cannot hide its queue by slowing the arrivals (no coordinated omission)."""
    import random

    arrivals = random.Random(seed)
    latencies: list[float] = []
    failures: dict[str, int] = {}
    slots = asyncio.Semaphore(clients)
    running: set[asyncio.Task] = set()
    began = time.monotonic()
    deadline = began + seconds

    async def learner(index: int, arrived: float):
        one, close = make_client()
        try:
            await timed(one, index, arrived, latencies, failures)
        finally:
            await close()
            slots.release()

    index, arrival = 0, began
    while limit is None or index < limit:
        arrival += arrivals.expovariate(rate)
        if arrival >= deadline:
            break
        await asyncio.sleep(max(0.0, arrival - time.monotonic()))
        await slots.acquire()
        task = asyncio.create_task(learner(index, arrival))
        running.add(task)
        task.add_done_callback(running.discard)
        index += 1
    await asyncio.gather(*running)
    elapsed = time.monotonic() - began
    return Figures(len(latencies), sum(failures.values()), elapsed, latencies, failures)
