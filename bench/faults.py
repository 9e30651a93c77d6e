"""Fault runs: one per infrastructure fault, each against the portal under gunicorn in sandbox mode
with its job workers, on loopback only. Each prints what it injected and the outcome: requests by
status, paid / fulfilled / duplicated / lost, and the time to recover.

    .venv/bin/python bench/faults.py [RUN ...] [--database-url URL] [--keep]
    .venv/bin/python bench/faults.py --list

Runs (all of them when none is named):

- postgres-stop: a private PostgreSQL (initdb into a temporary folder, its own port) stopped for
  5 s while learners buy, then started again.
- redis-loss: a private Redis holding the rate-limit counters killed and started again; checkout
  goes on meanwhile and the limits come back with Redis.
- smtp-refusing: pay-link mails queued while the SMTP server refuses connections, then a
  greylisting server (451 at RCPT on a first attempt); each mail arrives once.
- stripe-bursts: Stripe answering 429 and 5xx in bursts (some after doing the work, as when an
  answer is lost) during handoffs and during refunds; one Checkout Session per order, no
  duplicate refund.
- rolling-hup: SIGHUP to gunicorn twice under steady traffic.
- term-in-flight: SIGTERM to gunicorn with handoffs to (slow) Stripe in flight.
- connection-limit: the private PostgreSQL at its connection limit.
- worker-stopped: SIGTERM to a job worker in the middle of a (slow) platform call.

The portal's own database is a fresh schema of --database-url (the shared test PostgreSQL) unless
the run brings its own PostgreSQL; the stand-ins keep their state in a SQLite file. Bounded: each
run makes at most a few hundred requests and waits at most a minute or two. The runs that take under
a minute are also pytest tests (tests/test_faults.py, on PostgreSQL).
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402
import requests  # noqa: E402
from fault_run import (  # noqa: E402
    BIN,
    CARD,
    DEFAULT_PG,
    OFFERS,
    ScratchSchema,
    free_port,
    learner,
    summarise,
)
from sqlalchemy import create_engine, select  # noqa: E402

from portal.db import normalise_url  # noqa: E402
from portal.models import Job, JobState, Order, OrderState  # noqa: E402
from portal.sandbox.store import Store  # noqa: E402

# --- what a run reports ----------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    injected: list[str] = field(default_factory=list)
    requests: Counter = field(default_factory=Counter)  # "GET /path-kind 200" -> count
    figures: dict = field(default_factory=dict)
    recovery_seconds: float | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    def report(self) -> str:
        lines = [f"== {self.name} ({self.seconds:.1f} s)"]
        lines += [f"  injected: {line}" for line in self.injected]
        lines.append("  requests by status:")
        lines += [f"    {n:5d}  {what}" for what, n in sorted(self.requests.items())]
        for name, value in self.figures.items():
            lines.append(f"  {name}: {value}")
        recovery = "-" if self.recovery_seconds is None else f"{self.recovery_seconds:.2f} s"
        lines.append(f"  time to recover: {recovery}")
        lines.append("  outcome: " + ("OK" if not self.problems else "; ".join(self.problems)))
        return "\n".join(lines)


# --- the pieces a fault needs: a private PostgreSQL, a private Redis, a Stripe in between --------


def _as_postgres() -> list[str]:
    """PostgreSQL's programs refuse to run as root: run them as the postgres account then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PrivatePostgres:
    """A PostgreSQL of the run's own (initdb into a temporary folder, on a free port), so that
    stopping it disturbs nobody else's tests."""

    def __init__(self, max_connections: int = 100):
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not bins:
            raise RuntimeError("no PostgreSQL server programs under /usr/lib/postgresql")
        self.bin = bins[-1]
        self.folder = Path(tempfile.mkdtemp(prefix="fault-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self.data = self.folder / "data"
        self.port = free_port()
        self.max_connections = max_connections
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        subprocess.run(
            [*_as_postgres(), str(self.bin / "initdb"), "-D", str(self.data)]
            + ["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        self.start()

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*_as_postgres(), str(self.bin / "pg_ctl"), "-D", str(self.data), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            f"-c max_connections={self.max_connections} -c superuser_reserved_connections=0 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._ctl("-w", "-t", "30", "-l", str(self.folder / "server.log"), "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-w", "-t", "30", "-m", mode, "stop")

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.SubprocessError:
            pass  # already stopped
        shutil.rmtree(self.folder, ignore_errors=True)


class PrivateRedis:
    def __init__(self):
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="fault-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.keys() is not None:
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not come up")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def keys(self, pattern: str = "*") -> list[str] | None:
        import redis

        try:
            client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
            with client:
                return [key.decode() for key in client.scan_iter(pattern)]
        except redis.RedisError:
            return None

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


class StripeFaults:
    """A loopback proxy in front of the Stripe stand-in. `plan(path_part, [...])` sets how the
    next matching POSTs are answered: "429" or "503" (not passed on), "500-after" (passed on,
    then the answer replaced by a 500: the work was done, the answer lost), anything else passes.
    """

    HOP = {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length"}

    def __init__(self):
        self.target = ""  # set once the portal's port is known
        self.plans: dict[str, list[str]] = {}
        self.injected: Counter = Counter()
        self.lock = threading.Lock()
        self.http = requests.Session()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                action = proxy.next_action(self.command, self.path)
                if action in {"429", "503"}:
                    return self._answer(int(action), {"error": {"type": "api_error"}})
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                upstream = proxy.http.request(
                    self.command, proxy.target + self.path, data=body, headers=headers, timeout=60
                )
                if action == "500-after":
                    return self._answer(500, {"error": {"type": "api_error"}})
                self.send_response(upstream.status_code)
                for name, value in upstream.headers.items():
                    if name.lower() not in proxy.HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)
                return None

            def _answer(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _forward  # noqa: N815 - http.server's names

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def plan(self, path_part: str, actions: list[str]) -> None:
        with self.lock:
            self.plans[path_part] = list(actions)

    def next_action(self, method: str, path: str) -> str:
        if method != "POST":
            return "pass"
        with self.lock:
            for part, actions in self.plans.items():
                if part in path and actions:
                    action = actions.pop(0)
                    self.injected[f"{part} {action}"] += action != "pass"
                    return action
        return "pass"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the portal: gunicorn, job workers, a scratch database ---------------------------------------


class Stack:
    """The portal in sandbox mode under gunicorn plus `job_workers` job workers, on a fresh schema
    of `database_url` (or on `own_database_url`, a whole database of the run's own)."""

    def __init__(
        self,
        name: str,
        database_url: str,
        *,
        own_database_url: str | None = None,
        gunicorn_workers: int = 2,
        threads: int = 8,
        job_workers: int = 1,
        stripe: StripeFaults | None = None,
        env: dict | None = None,
        keep: bool = False,
    ):
        self.name = name
        self.workdir = Path(tempfile.mkdtemp(prefix=f"fault-{name}-"))
        self.keep = keep
        self.scratch = None
        if own_database_url is None:
            self.scratch = ScratchSchema(database_url, "faults")
            self.database_url = self.scratch.url
        else:
            self.database_url = own_database_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sandbox_url = f"sqlite:///{self.workdir / 'sandbox.db'}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "PROMETHEUS_"))},
            "PORTAL_SANDBOX": "1",
            "PORTAL_SECRET_KEY": "faults-" + uuid.uuid4().hex,
            "PORTAL_PUBLIC_URL": self.url,
            "PORTAL_DATABASE_URL": self.database_url,
            "PORTAL_SANDBOX_DATABASE_URL": self.sandbox_url,
            "PORTAL_SANDBOX_WEBHOOK_DELAY_SECONDS": "0.5",
            "PORTAL_RETRY_BASE_SECONDS": "0.5",
            "PORTAL_RETRY_MAX_SECONDS": "3",
            "PORTAL_RETRY_MAX_ATTEMPTS": "40",
            # A job claimed just as the database went away is taken again when its lease runs
            # out (120 s by default); a short lease keeps the runs short.
            "PORTAL_JOB_LEASE_SECONDS": "15",
            "PORTAL_RATELIMIT_ENABLED": "0",  # every client is 127.0.0.1
            "PORTAL_LOG_FORMAT": "text",
            "GUNICORN_ACCESSLOG": "/dev/null",
            **(env or {}),
        }
        # The stand-ins' APIs (Stripe's, Skilljar's) answer from a second gunicorn, "outside":
        # the portal never calls itself, so a fault in the portal (a reload, a full pool, the
        # database gone) is not also a fault of the platforms. It shares the stand-ins' store
        # and PUBLIC_URL (the Stripe pay page and the webhooks point at the portal) and has a
        # SQLite database of its own.
        self.outside_port = free_port()
        self.outside_url = f"http://127.0.0.1:{self.outside_port}"
        self.outside_env = {
            **self.env,
            "PORTAL_DATABASE_URL": f"sqlite:///{self.workdir / 'outside.db'}",
        }
        self.env["PORTAL_STRIPE_API_BASE"] = f"{self.outside_url}/sandbox/stripe"
        self.env["PORTAL_SKILLJAR_API_BASE"] = f"{self.outside_url}/sandbox/skilljar"
        if stripe is not None:
            stripe.target = self.outside_url
            self.env["PORTAL_STRIPE_API_BASE"] = f"{stripe.base}/sandbox/stripe"
        self.gunicorn_workers = gunicorn_workers
        self.threads = threads
        self.job_workers = job_workers
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: list = []
        self.engine = None

    # processes

    def spawn(self, name: str, command: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "a")  # noqa: SIM115 - closed in __exit__
        self.logs.append(log)
        process = subprocess.Popen(
            command, cwd=ROOT, env=env or self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.processes[name] = process
        return process

    def start_gunicorn(self, wait: bool = True) -> subprocess.Popen:
        process = self.spawn(
            "gunicorn",
            [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{self.port}"]
            + ["--workers", str(self.gunicorn_workers), "--threads", str(self.threads), "wsgi:app"],
        )
        if wait:
            self.wait_healthy()
        return process

    def start_worker(self, name: str) -> subprocess.Popen:
        return self.spawn(name, [str(BIN / "flask"), "--app", "wsgi", "portal", "worker"])

    def start_outside(self) -> None:
        self.flask("init-db", env=self.outside_env)
        self.spawn(
            "outside",
            [
                str(BIN / "gunicorn"),
                "-c",
                "gunicorn.conf.py",
                "-b",
                f"127.0.0.1:{self.outside_port}",
            ]
            + ["--workers", "1", "--threads", "16", "wsgi:app"],
            self.outside_env,
        )
        self.wait_healthy(url=self.outside_url)

    def wait_healthy(self, seconds: float = 60, url: str | None = None) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url or self.url}/healthz", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: the portal did not come up (see {self.workdir})")

    def flask(self, *args: str, stdin: str | None = None, env: dict | None = None) -> str:
        done = subprocess.run(
            [str(BIN / "flask"), "--app", "wsgi", "portal", *args],
            cwd=ROOT,
            env=env or self.env,
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return done.stdout

    def __enter__(self) -> Stack:
        try:
            self.start_outside()
            self.flask("init-db")
            self.start_gunicorn()
            for index in range(self.job_workers):
                self.start_worker(f"worker-{index + 1}")
            self.engine = create_engine(normalise_url(self.database_url), pool_pre_ping=True)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def stop(self, name: str, sig=signal.SIGTERM, wait: float = 40) -> int | None:
        process = self.processes.get(name)
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        process.send_signal(sig)
        try:
            return process.wait(wait)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def __exit__(self, *_exc) -> None:
        for name in sorted(self.processes, key=lambda n: n == "outside"):  # the outside last
            self.stop(name, wait=30)
        for log in self.logs:
            log.close()
        if self.engine is not None:
            self.engine.dispose()
        if self.scratch is not None:
            self.scratch.drop(keep=self.keep)
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # the stand-ins and the database

    @property
    def store(self) -> Store:
        return Store(self.sandbox_url)

    def control(self, **values) -> None:
        requests.post(f"{self.url}/sandbox/control", json=values, timeout=10).raise_for_status()

    def figures(self, purchases: list[dict]) -> dict:
        return summarise(self.engine, self.store, purchases)

    def settle(self, purchases: list[dict], seconds: float = 90) -> dict:
        """Wait until every order paid at Stripe is fulfilled (or given up), at most `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            figures = self.figures(purchases)
            done = figures["fulfilled_skilljar"] + figures["fulfil_failed"]
            if done >= figures["paid_stripe"] or time.monotonic() > deadline:
                return figures
            time.sleep(0.5)

    def log_lines(self, *needles: str) -> int:
        count = 0
        for path in self.workdir.glob("*.log"):
            for line in path.read_text(errors="replace").splitlines():
                count += any(needle in line for needle in needles)
        return count


def explain_lost(stack: Stack, outcome: Outcome, purchases: list[dict]) -> None:
    """For each order paid at Stripe and not fulfilled: its state and its last timeline events."""
    from portal.models import OrderEvent

    ours = {p["purchase_id"] for p in purchases if p.get("purchase_id")}
    skilljar = {
        p["id"]: p["state"] for p in stack.store.list("skilljar.purchase") if p["id"] in ours
    }
    paid = {
        s["client_reference_id"]
        for s in stack.store.list("checkout.session")
        if s["payment_status"] == "paid"
    }
    with stack.engine.connect() as connection:
        for order in connection.execute(select(Order.__table__).where(Order.reference.in_(paid))):
            if skilljar.get(order.platform_ref) == "SUCCESS":
                continue
            events = connection.execute(
                select(OrderEvent.created_at, OrderEvent.kind, OrderEvent.message)
                .where(OrderEvent.order_id == order.id)
                .order_by(OrderEvent.id)
            ).all()
            outcome.figures[f"not fulfilled: {order.reference}"] = (
                f"state {order.state}; " + " | ".join(f"{k}: {m}" for _t, k, m in events[-8:])
            )


def money_figures(outcome: Outcome, figures: dict) -> None:
    """The purchase figures every run reports, and the two that must hold."""
    outcome.figures.update(
        {
            "paid (Stripe)": figures["paid_stripe"],
            "fulfilled (Skilljar SUCCESS)": figures["fulfilled_skilljar"],
            "duplicated": figures["duplicates"],
            "lost (paid, never fulfilled)": figures["lost"],
            "fulfil_failed (operator alerted)": figures["fulfil_failed"],
        }
    )
    if figures["times"]:
        times = figures["times"]
        outcome.figures["paid -> fulfilled p50 / max (s)"] = (
            f"{statistics.median(times):.2f} / {max(times):.2f}"
        )
    outcome.check(figures["duplicates"] == 0, f"{figures['duplicates']} duplicated fulfilments")
    outcome.check(figures["lost"] == 0, f"{figures['lost']} paid orders not fulfilled")


class Probe(threading.Thread):
    """GETs `url` every `interval` seconds and keeps (time, status or error, seconds taken)."""

    def __init__(self, url: str, interval: float = 0.05):
        super().__init__(daemon=True)
        self.url = url
        self.interval = interval
        self.samples: list[tuple[float, str, float]] = []
        self.stopping = threading.Event()
        self.bodies: dict[str, str] = {}

    def run(self) -> None:
        http = requests.Session()
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                response = http.get(self.url, timeout=30, allow_redirects=False)
                status = str(response.status_code)
                self.bodies.setdefault(status, response.text)
            except requests.RequestException as exc:
                status = type(exc).__name__
            self.samples.append((started, status, time.monotonic() - started))
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join(15)

    def statuses(self, since: float = 0, until: float = float("inf")) -> Counter:
        return Counter(s for t, s, _ in self.samples if since <= t < until)

    def first_ok_after(self, moment: float) -> float | None:
        return next((t for t, s, _ in self.samples if t >= moment and s == "200"), None)

    def latencies(self, status: str) -> list[float]:
        return sorted(took for _t, s, took in self.samples if s == status)


def open_review(base: str, index: int) -> tuple[str, str]:
    """A Skilljar purchase made in the sandbox academy: (the entry URL, which asks Skilljar for
    the purchase on every GET and is rate limited; the order's own review page, which needs only
    the portal and its database, so a probe of it measures the fault and nothing else)."""
    response = requests.post(
        f"{base}/sandbox/skilljar/academy/checkout",
        data={"offer": OFFERS[index % len(OFFERS)], "quantity": "1"},
        timeout=30,
    )
    response.raise_for_status()
    action = re.search(r'action="([^"]+)/pay"', response.text).group(1)
    return response.url, urljoin(base, action)


def count_outcomes(outcome: Outcome, purchases: list[dict]) -> None:
    for purchase in purchases:
        outcome.requests[f"learner: {purchase['outcome']}"] += 1


class Learners:
    """Learners buying one after another on `threads` threads until stopped."""

    def __init__(self, base: str, threads: int = 4, returns: bool = True, first: int = 0):
        self.base = base
        self.results: list[dict] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.next_index = first
        self.returns = returns
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                index = self.next_index
                self.next_index += 1
            result = learner(self.base, index, self.returns, 15)
            with self.lock:
                self.results.append(result)
            if not result["outcome"].startswith(("returned, enrolled", "paid")):
                self.stopping.wait(0.2)  # a learner shown an error page waits before trying again

    def stop(self) -> list[dict]:
        self.stopping.set()
        for thread in self.threads:
            thread.join(120)
        return self.results


# --- the runs ------------------------------------------------------------------------------------


def run_postgres_stop(database_url: str = DEFAULT_PG, keep: bool = False) -> Outcome:
    outcome = Outcome("postgres-stop")
    pg = PrivatePostgres()
    try:
        with Stack("postgres-stop", database_url, own_database_url=pg.url, keep=keep) as stack:
            probe = Probe(open_review(stack.url, 0)[1])
            probe.start()
            learners = Learners(stack.url, threads=4)
            time.sleep(3)
            stopped = time.monotonic()
            pg.stop("fast")
            down = time.monotonic()
            outcome.injected.append("PostgreSQL stopped (pg_ctl stop -m fast) 3 s into the run")
            time.sleep(5)
            pg.start()
            back = time.monotonic()
            outcome.injected.append(f"PostgreSQL started again after {back - stopped:.1f} s")
            time.sleep(4)
            purchases = learners.stop()
            probe.stop()
            figures = stack.settle(purchases, 60)
            explain_lost(stack, outcome, purchases)
            during = probe.statuses(down, back)
            outcome.requests.update({f"review page {s}": n for s, n in probe.statuses().items()})
            count_outcomes(outcome, purchases)
            money_figures(outcome, figures)
            outcome.recovery_seconds = (
                probe.first_ok_after(back) - back if probe.first_ok_after(back) else None
            )
            latencies = probe.latencies("503")
            outcome.figures["review page while PostgreSQL was down"] = dict(during)
            if latencies:
                outcome.figures["503 answer time p50 / max (ms)"] = (
                    f"{statistics.median(latencies) * 1000:.0f} / {max(latencies) * 1000:.0f}"
                )
            outcome.figures["webhook 503s logged"] = stack.log_lines("/webhooks/stripe", "503")
            outcome.check(during.get("503", 0) > 0, "no 503 while PostgreSQL was down")
            # A 200 is fine: a review page can be served from the worker's recent-orders cache.
            outcome.check(
                set(during) <= {"503", "200"}, f"answers other than 503 while down: {dict(during)}"
            )
            outcome.check("Temporarily unavailable" in probe.bodies.get("503", ""), "unbranded 503")
            outcome.check(probe.statuses().get("500", 0) == 0, "a 500 was served")
            outcome.check(
                outcome.recovery_seconds is not None and outcome.recovery_seconds < 10,
                "did not recover within 10 s",
            )
            outcome.check(figures["paid_stripe"] > 0, "nothing was paid")
    finally:
        pg.destroy()
    return outcome


def run_redis_loss(database_url: str = DEFAULT_PG, keep: bool = False) -> Outcome:
    outcome = Outcome("redis-loss")
    redis_server = PrivateRedis()
    limit = 30
    env = {
        "PORTAL_RATELIMIT_ENABLED": "1",
        "PORTAL_RATELIMIT_STORAGE_URL": redis_server.url,
        "PORTAL_RATELIMIT_ENTRY": f"{limit}/minute",
    }
    try:
        with Stack("redis-loss", database_url, gunicorn_workers=1, env=env, keep=keep) as stack:
            entry, _order_page = open_review(stack.url, 0)
            http = requests.Session()

            def burst(label: str, count: int) -> Counter:
                statuses = Counter(
                    str(http.get(entry, timeout=10, allow_redirects=False).status_code)
                    for _ in range(count)
                )
                outcome.requests.update({f"{label}: entry {s}": n for s, n in statuses.items()})
                return statuses

            before = burst("Redis up", limit + 5)
            keys_before = redis_server.keys("*portal*") or []
            redis_server.kill()
            outcome.injected.append(f"Redis killed (SIGKILL) after {limit + 5} entry requests")
            lost_at = time.monotonic()
            during = burst("Redis down", 10)
            purchases = [learner(stack.url, 100 + i, True, 15) for i in range(3)]
            count_outcomes(outcome, purchases)
            time.sleep(max(0.0, 5 - (time.monotonic() - lost_at)))
            redis_server.start()
            back = time.monotonic()
            outcome.injected.append(f"Redis started again (empty) after {back - lost_at:.1f} s")
            recovered = None
            while time.monotonic() - back < 45:
                answer = http.get(entry, timeout=10, allow_redirects=False)
                outcome.requests[f"Redis back: entry {answer.status_code}"] += 1
                if redis_server.keys("*portal*"):
                    recovered = time.monotonic() - back
                    break
                time.sleep(0.25)
            outcome.recovery_seconds = recovered
            after = burst("limits back", limit + 5) if recovered is not None else Counter()
            figures = stack.settle(purchases, 60)
            money_figures(outcome, figures)
            warnings = stack.log_lines("Rate limit storage", "falling back", "ConnectionError")
            outcome.figures["rate-limit storage warnings logged"] = warnings
            outcome.figures["Redis keys before the loss"] = len(keys_before)
            outcome.check(before.get("429", 0) > 0, "the limit did not hold with Redis up")
            outcome.check(bool(keys_before), "no counters in Redis before the loss")
            outcome.check(
                during.get("200", 0) == 10, f"entry refused while Redis was down: {dict(during)}"
            )
            outcome.check(figures["fulfilled_skilljar"] == 3, "purchases without Redis failed")
            outcome.check(recovered is not None, "the limits did not come back with Redis")
            outcome.check(after.get("429", 0) > 0, "no 429 from the Redis counts after the return")
    finally:
        redis_server.destroy()
    return outcome


class Mailbox:
    """aiosmtpd handler: `greylist` answers 451 to the first RCPT of each recipient."""

    def __init__(self, greylist: bool):
        self.greylist = greylist
        self.seen: set[str] = set()
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []
        self.refusals = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if self.greylist and address not in self.seen:
            self.seen.add(address)
            self.refusals += 1
            return "451 4.7.1 Greylisted, please try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), parsed))
        return "250 OK"


def api_key(stack: Stack) -> str:
    out = stack.flask("create-api-key", "Faults ERP", "--allowed-host", "127.0.0.1")
    return re.search(r"^\s+(sk_test_\S+)$", out, re.M).group(1)  # the line with the key alone


def merchant_session(stack: Stack, secret: str, index: int, *, mode: str | None = None) -> dict:
    body = {
        "items": [{"name": f"Seat {index}", "unit_amount": 4900, "quantity": 1}],
        "currency": "usd",
        "customer": {"email": f"buyer{index}@example.com", "name": "Ada Lovelace"},
        "reference": f"SO-{index}",
        "success_url": f"{stack.url}/sandbox/merchant/thank-you",
        "cancel_url": f"{stack.url}/sandbox/merchant",
    }
    if mode:
        body["mode"] = mode
    response = requests.post(
        f"{stack.url}/api/v1/checkout-sessions",
        json=body,
        headers={"Authorization": f"Bearer {secret}", "Idempotency-Key": f"create-{index}"},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()


def run_smtp_refusing(database_url: str = DEFAULT_PG, keep: bool = False) -> Outcome:
    from aiosmtpd.controller import Controller

    outcome = Outcome("smtp-refusing")
    smtp_port = free_port()
    count = 10
    env = {"PORTAL_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}", "PORTAL_HTTP_READ_TIMEOUT": "2"}
    controller = None
    with Stack("smtp-refusing", database_url, env=env, keep=keep) as stack:
        secret = api_key(stack)
        orders = [
            merchant_session(stack, secret, i, mode="link")["order"]["id"] for i in range(count)
        ]
        outcome.requests["API create (link mode) 200"] = count
        outcome.injected.append(f"SMTP server down (connection refused) for 5 s, {count} pay links")
        time.sleep(5)
        with stack.engine.connect() as connection:
            failed_attempts = connection.scalar(
                select(Job.attempts.label("a")).where(Job.kind == "mail").order_by(Job.id).limit(1)
            )
        mailbox = Mailbox(greylist=True)
        controller = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
        controller.start()
        back = time.monotonic()
        outcome.injected.append("SMTP server back, greylisting: 451 at RCPT on a first attempt")
        try:
            while time.monotonic() - back < 60 and len(mailbox.messages) < count:
                time.sleep(0.2)
            drained = time.monotonic() - back
            time.sleep(2)  # anything sent twice would arrive now
        finally:
            controller.stop()
        to = Counter(message["To"] for _rcpt, message in mailbox.messages)
        with stack.engine.connect() as connection:
            jobs = connection.execute(
                select(Job.state, Job.attempts).where(Job.kind == "mail")
            ).all()
            alerts = stack.log_lines("ALERT order")
        delivered = len(to)
        outcome.recovery_seconds = drained if delivered == count else None
        outcome.figures.update(
            {
                "pay links queued": count,
                "attempts refused while down (first mail)": failed_attempts,
                "greylisting refusals (451)": mailbox.refusals,
                "delivered": delivered,
                "duplicated": sum(n - 1 for n in to.values()),
                "lost": count - delivered,
                "mail jobs by state": dict(Counter(state for state, _ in jobs)),
                "operator alerts": alerts,
            }
        )
        outcome.requests["SMTP messages taken (250)"] = len(mailbox.messages)
        outcome.check(delivered == count, f"{count - delivered} pay links never arrived")
        outcome.check(all(n == 1 for n in to.values()), "a pay link arrived twice")
        outcome.check(mailbox.refusals >= count, "the greylisting server was not met")
        outcome.check(alerts == 0, "an operator was alerted for a passing failure")
        outcome.check(len(orders) == count, "orders missing")
    return outcome


def buy_with_retries(base: str, index: int, tries: int = 4) -> dict:
    """A learner who, shown the 503 page at the pay step, waits a second and presses Pay again."""
    browser = requests.Session()
    result = {"index": index, "purchase_id": None, "outcome": None, "pay_statuses": []}
    result["first_failure"] = result["handed_off"] = None
    review = browser.post(
        f"{base}/sandbox/skilljar/academy/checkout",
        data={"offer": OFFERS[index % len(OFFERS)], "quantity": "1"},
        timeout=60,
    )
    if review.status_code != 200:
        result["outcome"] = f"review {review.status_code}"
        return result
    result["purchase_id"] = parse_qs(urlsplit(review.url).query)["purchase_id"][0]
    for _attempt in range(tries):
        page = browser.get(review.url, timeout=60)
        action = re.search(r'action="([^"]+/pay)"', page.text)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        if page.status_code != 200 or not action or not token:
            result["pay_statuses"].append(f"review {page.status_code}")
            time.sleep(1)
            continue
        to_stripe = browser.post(
            base + action.group(1),
            data={"csrf_token": token.group(1)},
            allow_redirects=False,
            timeout=60,
        )
        result["pay_statuses"].append(str(to_stripe.status_code))
        if to_stripe.status_code == 303:
            result["handed_off"] = time.monotonic()
            break
        result["first_failure"] = result["first_failure"] or time.monotonic()
        time.sleep(1)
    else:
        result["outcome"] = "gave up at pay"
        return result
    paid = browser.post(
        to_stripe.headers["Location"], data={**CARD, "cvc": "123"}, allow_redirects=False
    )
    landed = browser.get(urljoin(base, paid.headers["Location"]), allow_redirects=False)
    result["outcome"] = f"paid, return {landed.status_code}"
    return result


def buy_merchant_order(stack: Stack, secret: str, index: int) -> str:
    created = merchant_session(stack, secret, index)
    browser = requests.Session()
    review = browser.get(created["url"], timeout=30)
    token = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
    action = re.search(r'action="([^"]+/pay)"', review.text).group(1)
    to_stripe = browser.post(
        urljoin(created["url"], action), data={"csrf_token": token}, allow_redirects=False
    )
    paid = browser.post(
        to_stripe.headers["Location"], data={**CARD, "cvc": "123"}, allow_redirects=False
    )
    browser.get(urljoin(stack.url, paid.headers["Location"]), allow_redirects=False)
    return created["order"]["id"]


def run_stripe_bursts(database_url: str = DEFAULT_PG, keep: bool = False) -> Outcome:
    outcome = Outcome("stripe-bursts")
    stripe = StripeFaults()
    try:
        with Stack("stripe-bursts", database_url, stripe=stripe, keep=keep) as stack:
            # Handoffs: the next 24 session creates fail. The SDK tries each pay 3 times, so the
            # 6 learners' first presses of Pay all fail, and some of their second presses.
            burst = ["429", "503", "500-after", "429", "500-after", "503"] * 4
            stripe.plan("/v1/checkout/sessions", burst)
            outcome.injected.append(
                f"Stripe: {len(burst)} Checkout Session creates answered 429 / 503 / 500 (the 500s "
                "after creating the session, as when an answer is lost), 6 learners paying at once"
            )
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(6) as pool:
                buyers = list(pool.map(lambda i: buy_with_retries(stack.url, i), range(6)))
            for buyer in buyers:
                for status in buyer["pay_statuses"]:
                    outcome.requests[f"handoff: pay {status}"] += 1
                outcome.requests[f"handoff learner: {buyer['outcome']}"] += 1
            figures = stack.settle(buyers, 60)
            money_figures(outcome, figures)
            waits = [
                b["handed_off"] - b["first_failure"]
                for b in buyers
                if b["first_failure"] and b["handed_off"]
            ]
            # From a learner's first 503 page to their handoff on a later press of Pay.
            outcome.recovery_seconds = max(waits) if waits else None
            sessions = Counter(
                s["client_reference_id"] for s in stack.store.list("checkout.session")
            )
            extra_sessions = sum(n - 1 for n in sessions.values())
            outcome.figures["Checkout Sessions beyond one per order"] = extra_sessions
            outcome.check(extra_sessions == 0, f"{extra_sessions} extra Checkout Sessions")
            outcome.check(
                figures["paid_stripe"] == len(buyers), "a learner could not pay after the burst"
            )

            # Refunds: each refund's first three tries fail (the SDK's own retries), two of them
            # after Stripe made the refund; the merchant then tries again with the same key.
            secret = api_key(stack)
            orders = [buy_merchant_order(stack, secret, 100 + i) for i in range(4)]
            stripe.plan("/v1/refunds", ["500-after", "429", "500-after"] * len(orders))
            outcome.injected.append(
                f"Stripe: {3 * len(orders)} refund calls answered 500 (after refunding) / 429, "
                f"{len(orders)} orders refunded through the merchant API"
            )
            http = requests.Session()
            for order in orders:
                for _attempt in range(4):
                    answer = http.post(
                        f"{stack.url}/api/v1/refunds",
                        json={"order": order, "amount": 2000},
                        headers={
                            "Authorization": f"Bearer {secret}",
                            "Idempotency-Key": f"refund-{order}",
                        },
                        timeout=60,
                    )
                    outcome.requests[f"refund: API {answer.status_code}"] += 1
                    if answer.status_code == 200:
                        break
                    time.sleep(0.5)
            refunds = [r for r in stack.store.list("refund") if r.get("status") == "succeeded"]
            by_intent = Counter(r["payment_intent"] for r in refunds)
            at_stripe = Counter()
            for refund in refunds:
                at_stripe[refund["payment_intent"]] += refund["amount"]
            with stack.engine.connect() as connection:
                refunded = connection.execute(
                    select(Order.reference, Order.amount_refunded_minor).where(
                        Order.reference.in_(orders)
                    )
                ).all()
            duplicate_refunds = sum(n - 1 for n in by_intent.values())
            outcome.figures.update(
                {
                    "refunds asked": len(orders),
                    "refunds made at Stripe": len(refunds),
                    "duplicate refunds": duplicate_refunds,
                    "refunded per order at Stripe": sorted(set(at_stripe.values())),
                    "refunded per order in the portal's books": sorted(
                        amount for _ref, amount in refunded
                    ),
                    "faults injected": dict(stripe.injected),
                }
            )
            outcome.check(duplicate_refunds == 0, f"{duplicate_refunds} duplicate refunds")
            outcome.check(len(refunds) == len(orders), "a refund was not made")
            outcome.check(
                set(at_stripe.values()) == {2000}, f"refunded at Stripe: {dict(at_stripe)}"
            )
            outcome.check(
                all(amount == 2000 for _ref, amount in refunded),
                "the portal's books count a refund twice: "
                + ", ".join(f"{ref} {amount}" for ref, amount in refunded if amount != 2000),
            )
    finally:
        stripe.close()
    return outcome


def run_rolling_hup(database_url: str = DEFAULT_PG, keep: bool = False) -> Outcome:
    outcome = Outcome("rolling-hup")
    with Stack("rolling-hup", database_url, keep=keep) as stack:
        probes = [Probe(open_review(stack.url, i)[1], interval=0.01) for i in range(3)]
        for probe in probes:
            probe.start()
        learners = Learners(stack.url, threads=2)
        master = stack.processes["gunicorn"]
        for moment in (2, 5):
            time.sleep(moment - (2 if moment == 5 else 0))
            master.send_signal(signal.SIGHUP)
            last_hup = time.monotonic()
            outcome.injected.append(f"SIGHUP to the gunicorn master at {moment} s")
        time.sleep(4)
        purchases = learners.stop()
        for probe in probes:
            probe.stop()
            outcome.requests.update({f"review page {s}": n for s, n in probe.statuses().items()})
        count_outcomes(outcome, purchases)
        figures = stack.settle(purchases, 60)
        money_figures(outcome, figures)
        bad = {k: n for k, n in outcome.requests.items() if not k.endswith((" 200", "enrolled"))}
        bad = {k: n for k, n in bad.items() if "after waiting" not in k}
        outcome.figures["requests"] = sum(p.statuses().total() for p in probes) + len(purchases)
        slowest = max(took for p in probes for _t, _s, took in p.samples)
        outcome.figures["slowest review page (s)"] = f"{slowest:.2f}"
        # Until answers are quick again: the end of the last answer slower than 1 s.
        slow_ends = [
            t + took
            for p in probes
            for t, _s, took in p.samples
            if took > 1 and t + took > last_hup
        ]
        outcome.recovery_seconds = max(slow_ends) - last_hup if slow_ends else 0.0
        outcome.check(not bad, f"failed requests: {bad}")
        outcome.check(figures["paid_stripe"] == len(purchases), "a purchase was not paid")
    return outcome


def run_term_in_flight(database_url: str = DEFAULT_PG, keep: bool = False) -> Outcome:
    outcome = Outcome("term-in-flight")
    in_flight = 10
    with Stack("term-in-flight", database_url, threads=8, keep=keep) as stack:
        browsers = []
        for index in range(in_flight):
            browser = requests.Session()
            review = browser.post(
                f"{stack.url}/sandbox/skilljar/academy/checkout",
                data={"offer": OFFERS[index % len(OFFERS)], "quantity": "1"},
                timeout=30,
            )
            token = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
            action = re.search(r'action="([^"]+/pay)"', review.text).group(1)
            purchase = parse_qs(urlsplit(review.url).query)["purchase_id"][0]
            browsers.append((browser, stack.url + action, token, purchase))
        stack.control(stripe_latency_ms=2000)
        answers: list = [None] * in_flight

        def pay(index):
            browser, action, token, _purchase = browsers[index]
            try:
                answers[index] = browser.post(
                    action, data={"csrf_token": token}, allow_redirects=False, timeout=60
                )
            except requests.RequestException as exc:
                answers[index] = exc

        threads = [threading.Thread(target=pay, args=(i,)) for i in range(in_flight)]
        for thread in threads:
            thread.start()
        time.sleep(0.7)
        master = stack.processes["gunicorn"]
        term_at = time.monotonic()
        master.send_signal(signal.SIGTERM)
        outcome.injected.append(
            f"SIGTERM to the gunicorn master with {in_flight} handoffs in flight "
            "(Stripe answering in 2 s)"
        )
        for thread in threads:
            thread.join(60)
        code = master.wait(60)
        exited = time.monotonic() - term_at
        for answer in answers:
            status = answer.status_code if isinstance(answer, requests.Response) else answer
            outcome.requests[f"pay in flight: {status}"] += 1
        refused = 0
        try:
            requests.get(f"{stack.url}/healthz", timeout=2)
        except requests.RequestException:
            refused = 1
        stack.start_gunicorn()
        back = time.monotonic()
        stack.control(stripe_latency_ms=0)
        purchases = []
        for (browser, _action, _token, purchase), answer in zip(browsers, answers, strict=True):
            result = {"purchase_id": purchase, "outcome": "no handoff"}
            if isinstance(answer, requests.Response) and answer.status_code == 303:
                paid = browser.post(
                    answer.headers["Location"], data={**CARD, "cvc": "123"}, allow_redirects=False
                )
                landed = browser.get(urljoin(stack.url, paid.headers["Location"]))
                result["outcome"] = f"paid after the restart, return {landed.status_code}"
            purchases.append(result)
        count_outcomes(outcome, purchases)
        figures = stack.settle(purchases, 60)
        money_figures(outcome, figures)
        outcome.recovery_seconds = back - term_at
        outcome.figures.update(
            {
                "gunicorn exit code / seconds after TERM": f"{code} / {exited:.1f}",
                "new connections refused once stopped": bool(refused),
            }
        )
        completed = outcome.requests.get("pay in flight: 303", 0)
        outcome.check(completed == in_flight, f"{in_flight - completed} handoffs lost to TERM")
        outcome.check(code == 0, f"gunicorn exited {code}")
        outcome.check(figures["fulfilled_skilljar"] == in_flight, "not every order fulfilled")
    return outcome


def run_connection_limit(database_url: str = DEFAULT_PG, keep: bool = False) -> Outcome:
    outcome = Outcome("connection-limit")
    pg = PrivatePostgres(max_connections=12)
    held: list = []
    try:
        with Stack(
            "connection-limit",
            database_url,
            own_database_url=pg.url,
            gunicorn_workers=1,
            threads=8,
            job_workers=0,
            keep=keep,
        ) as stack:
            reviews = [open_review(stack.url, i)[1] for i in range(8)]
            stack.engine.dispose()
            while True:  # take every connection PostgreSQL has left
                try:
                    held.append(psycopg.connect(pg.url, connect_timeout=3))
                except psycopg.OperationalError:
                    break
            outcome.injected.append(
                f"PostgreSQL max_connections=12; the run holds the {len(held)} left free"
            )
            timings: list[tuple[str, float]] = []

            def fetch(url):
                started = time.monotonic()
                try:
                    status = str(requests.get(url, timeout=30).status_code)
                except requests.RequestException as exc:
                    status = type(exc).__name__
                timings.append((status, time.monotonic() - started))

            threads = [threading.Thread(target=fetch, args=(u,)) for u in reviews * 3]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            outcome.requests.update(Counter(f"at the limit: review page {s}" for s, _ in timings))
            slow = [t for s, t in timings if s == "503"]
            if slow:
                outcome.figures["503 answer time p50 / max (ms)"] = (
                    f"{statistics.median(slow) * 1000:.0f} / {max(slow) * 1000:.0f}"
                )
            probe = Probe(reviews[0])
            probe.start()
            time.sleep(0.5)
            for connection in held:
                connection.close()
            released = time.monotonic()
            held.clear()
            outcome.injected.append("the held connections released")
            time.sleep(2)
            probe.stop()
            outcome.requests.update(
                {f"probe: review page {s}": n for s, n in probe.statuses().items()}
            )
            first = probe.first_ok_after(released)
            outcome.recovery_seconds = first - released if first else None
            statuses = {s for s, _ in timings}
            outcome.check("500" not in statuses, "a 500 at the connection limit")
            outcome.check(statuses <= {"200", "503"}, f"unexpected answers {statuses}")
            outcome.check(not slow or max(slow) < 5, "a 503 took longer than 5 s")
            outcome.check(first is not None, "no 200 after the connections were released")
            outcome.check(
                "Temporarily unavailable" in probe.bodies.get("503", "Temporarily unavailable")
                and all(s in {"200", "503"} for s in probe.statuses()),
                "unbranded or unexpected answers",
            )
    finally:
        for connection in held:
            connection.close()
        pg.destroy()
    return outcome


def run_worker_stopped(database_url: str = DEFAULT_PG, keep: bool = False) -> Outcome:
    outcome = Outcome("worker-stopped")
    with Stack("worker-stopped", database_url, job_workers=0, keep=keep) as stack:
        purchases = [learner(stack.url, i, False, 0) for i in range(4)]  # close the tab on Stripe
        count_outcomes(outcome, purchases)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the webhooks have queued the fulfil jobs
            with stack.engine.connect() as connection:
                queued = connection.scalar(
                    select(Job.id)
                    .where(Job.kind == "fulfil", Job.state == JobState.QUEUED)
                    .limit(1)
                    .offset(3)
                )
            if queued:
                break
            time.sleep(0.2)
        stack.control(skilljar_latency_ms=3000)
        worker = stack.start_worker("worker-1")
        deadline = time.monotonic() + 30
        holding = None
        while time.monotonic() < deadline and holding is None:
            with stack.engine.connect() as connection:
                holding = connection.scalar(
                    select(Job.id).where(Job.kind == "fulfil", Job.locked_by.is_not(None))
                )
            time.sleep(0.1)
        time.sleep(1.0)  # into the 3 s fulfil call
        term_at = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        outcome.injected.append(
            "SIGTERM to the job worker 1 s into a 3 s Skilljar fulfil call (job "
            f"{holding}), 4 fulfil jobs queued"
        )
        code = worker.wait(60)
        exited = time.monotonic() - term_at
        with stack.engine.connect() as connection:
            held_state = connection.scalar(select(Job.state).where(Job.id == holding))
            done_by_first = connection.scalar(
                select(Job.id).where(Job.kind == "fulfil", Job.state == JobState.DONE).limit(1)
            )
        stack.control(skilljar_latency_ms=0)
        stack.start_worker("worker-2")
        restarted = time.monotonic()
        figures = stack.settle(purchases, 60)
        outcome.recovery_seconds = time.monotonic() - restarted
        money_figures(outcome, figures)
        with stack.engine.connect() as connection:
            states = Counter(
                connection.scalars(select(Order.state).where(Order.paid_at.is_not(None))).all()
            )
        outcome.figures.update(
            {
                "worker exit code / seconds after TERM": f"{code} / {exited:.1f}",
                "the job it held, after it exited": str(held_state),
                "orders by state": {str(k): v for k, v in states.items()},
            }
        )
        outcome.check(holding is not None, "the worker never took a job")
        outcome.check(code == 0, f"worker exited {code}")
        outcome.check(held_state == JobState.DONE, f"the held job ended {held_state}")
        outcome.check(done_by_first is not None, "the call in flight was not finished")
        outcome.check(
            states.get(OrderState.FULFILLED, 0) == len(purchases), "not every order fulfilled"
        )
    return outcome


RUNS: dict[str, Callable[..., Outcome]] = {
    "postgres-stop": run_postgres_stop,
    "redis-loss": run_redis_loss,
    "smtp-refusing": run_smtp_refusing,
    "stripe-bursts": run_stripe_bursts,
    "rolling-hup": run_rolling_hup,
    "term-in-flight": run_term_in_flight,
    "connection-limit": run_connection_limit,
    "worker-stopped": run_worker_stopped,
}


def run(name: str, **options) -> Outcome:
    started = time.monotonic()
    outcome = RUNS[name](**options)
    outcome.seconds = time.monotonic() - started
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", metavar="RUN", help="default: all")
    parser.add_argument("--database-url", default=DEFAULT_PG)
    parser.add_argument("--keep", action="store_true", help="keep logs and scratch schemas")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        print("\n".join(RUNS))
        return 0
    unknown = set(args.runs) - set(RUNS)
    if unknown:
        parser.error(f"unknown runs: {sorted(unknown)}; see --list")
    failed = 0
    for name in args.runs or RUNS:
        outcome = run(name, database_url=args.database_url, keep=args.keep)
        print(outcome.report(), flush=True)
        failed += bool(outcome.problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
