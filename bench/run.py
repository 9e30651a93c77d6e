"""Serving benchmark: the portal under gunicorn against the sandbox stand-ins, beside a bare
Flask "hello" app under the same gunicorn settings, all on loopback.

    .venv/bin/python bench/run.py [--seconds 15] [--rounds 3] [--learners 200]
                                  [--latency-ms 200] [--arrival-rate 100] [--workers N]
                                  [--threads N] [--worker-class gthread|gevent] [--no-nginx]
                                  [--portal-setting NAME=VALUE ...]

Three gunicorn instances, each started with this repository's gunicorn.conf.py:

- the stand-ins (Stripe, Skilljar): the portal app in sandbox mode on a port of its own, so their
  sleeps and writes do not run inside the portal's workers;
- the portal, not in sandbox mode, pointed at the stand-ins through PORTAL_STRIPE_API_BASE and
  PORTAL_SKILLJAR_API_BASE, on PostgreSQL (a fresh schema of
  postgresql://postgres@127.0.0.1:5432/test) or SQLite with --sqlite;
- bench/hello_app.py, with the portal's --workers/--threads/--worker-class.

Prints: the review page of an existing order (requests/s, p50/p99, ratio to hello) for a new
visitor and for the learner back with their session cookie (the three taken in --rounds
interleaved rounds, so a machine whose speed drifts moves all three alike; the median of the
rounds' ratios is the figure), checkout handoffs (entry -> Skilljar
fetch -> Stripe session -> redirect to Stripe) with --latency-ms on every upstream call, as a
closed loop of --learners learners and as an open loop of --arrival-rate learners arriving a
second (at most --learners at once), the open loop twice when nginx is installed (Debian's
`nginx-light`): straight to gunicorn, each learner on a new connection to it, then through nginx
set up as deploy/nginx.conf.example does (keep-alive connections to gunicorn, the proxy headers,
an access log; no TLS), which is how docs/deploy.md serves the portal; Stripe webhook
ingestion (verified, stored, de-duplicated) and each portal worker's resident memory. For
handoffs and webhooks it also prints where the box's CPU went, per handoff or event completed:
the portal, the stand-ins, nginx, PostgreSQL and the load generator, and the most that many
milliseconds allow on this machine's cores (the throughput the CPU caps, whatever the worker
model). wrk (Debian's `wrk`) drives the plain GETs when installed, bench/loadgen.py (asyncio)
otherwise and for the flows that need cookies, forms and signatures. Bounded in time; only
127.0.0.1 is contacted.

The portal's rate limits are switched off here (every learner comes from 127.0.0.1).
--portal-setting passes a PORTAL_ setting to the portal alone, to compare two settings run by run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import requests  # noqa: E402
from fault_run import DEFAULT_PG, free_port, portal_database, wait_for  # noqa: E402
from loadgen import connection_for, run_arrivals, run_clients  # noqa: E402
from sqlalchemy import create_engine, func, select  # noqa: E402

from portal.db import normalise_url  # noqa: E402
from portal.models import StripeEvent  # noqa: E402
from portal.sandbox import skilljar_api  # noqa: E402
from portal.sandbox.store import Store  # noqa: E402

BIN = Path(sys.executable).parent
WEBHOOK_SECRET = "whsec_bench_" + uuid.uuid4().hex
STRIPE_KEY = "sk_test_sandbox"
SKILLJAR_KEY = "sandbox-skilljar-key"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
PAY_ACTION = re.compile(r'action="([^"]*/orders/[^"]+/pay)"')


class Servers:
    """Starts gunicorn instances and stops every one of them at the end."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.logs = []

    def gunicorn(self, name: str, app: str, env: dict, args: list[str]) -> tuple[str, int]:
        port = free_port()
        log = open(self.workdir / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        command = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}"]
        process = subprocess.Popen(
            [*command, *args, app], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        self.processes.append((name, process))
        return f"http://127.0.0.1:{port}", process.pid

    def nginx(self, upstream_port: int) -> tuple[str, int]:
        """nginx in front of the portal as deploy/nginx.conf.example sets it up (keep-alive
        connections to gunicorn, the proxy headers, the body limit, an access log), without TLS."""
        port = free_port()
        for folder in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / f"nginx-{folder}").mkdir(exist_ok=True)
        config = self.workdir / "nginx.conf"
        config.write_text(
            NGINX_CONF.format(workdir=self.workdir, port=port, upstream=upstream_port)
        )
        log = open(self.workdir / "nginx.log", "w")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        process = subprocess.Popen(
            ["nginx", "-c", str(config), "-p", str(self.workdir), "-g", "daemon off;"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(("nginx", process))
        return f"http://127.0.0.1:{port}", process.pid

    def stop(self) -> None:
        for _, process in self.processes:
            if process.poll() is None:
                process.terminate()
        for _, process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.logs:
            log.close()


NGINX_CONF = """\
worker_processes auto;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {workdir}/nginx-access.log;
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    fastcgi_temp_path {workdir}/nginx-fastcgi;
    uwsgi_temp_path {workdir}/nginx-uwsgi;
    scgi_temp_path {workdir}/nginx-scgi;
    upstream portal {{ server 127.0.0.1:{upstream}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 1m;
        proxy_read_timeout 60s;
        location / {{
            proxy_pass http://portal;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-Id $request_id;
        }}
    }}
}}
"""


def clean_environment() -> dict:
    """This process's environment without any portal, gunicorn or Prometheus setting."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PORTAL_", "GUNICORN_", "PROMETHEUS_"))
    }


def stand_ins_environment(workdir: Path, sandbox_url: str) -> dict:
    """The stand-ins' settings: sandbox mode, their own store, no rate limits, no webhooks."""
    return {
        **clean_environment(),
        "PORTAL_SANDBOX": "1",
        "PORTAL_SECRET_KEY": "bench-standins",
        "PORTAL_DATABASE_URL": f"sqlite:///{workdir / 'standins-portal.db'}",
        "PORTAL_SANDBOX_DATABASE_URL": sandbox_url,
        "PORTAL_STRIPE_SECRET_KEY": STRIPE_KEY,
        "PORTAL_SKILLJAR_API_KEY": SKILLJAR_KEY,
        "PORTAL_RATELIMIT_ENABLED": "0",
        "PORTAL_SANDBOX_WEBHOOK_DELAY_SECONDS": "-1",
        "PORTAL_LOG_FORMAT": "text",
        "GUNICORN_ACCESSLOG": "",  # their requests are not the ones measured
    }


def init_db(env: dict) -> None:
    subprocess.run(
        [str(BIN / "flask"), "--app", "wsgi", "portal", "init-db"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


def worker_pids(master: int) -> list[int]:
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return []
    return [int(pid) for pid in children]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of one process, all its threads; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "postgres":
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


class CpuMeter:
    """Where the box's CPU goes during one measurement: each gunicorn instance given (its master
    and workers), PostgreSQL (every `postgres` process on the machine, so the server should
    serve nothing else meanwhile) and the load generator: this process (bench/loadgen.py) and the
    children it has waited for (wrk, which has ended by the time a measurement is read).
    Processes that end during the measurement take their CPU with them."""

    def __init__(self, masters: dict[str, int]):
        self.masters = masters

    def read(self) -> dict[str, float]:
        taken = {
            name: sum(process_cpu(pid) for pid in [master, *worker_pids(master)])
            for name, master in self.masters.items()
        }
        taken["PostgreSQL"] = sum(process_cpu(pid) for pid in postgres_pids())
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        taken["load generator"] = sum(
            (own.ru_utime, own.ru_stime, children.ru_utime, children.ru_stime)
        )
        return taken

    def per_item(self, before: dict[str, float], count: int) -> dict[str, float]:
        """CPU milliseconds per item (handoff, event) of each part since `before`."""
        after = self.read()
        return {name: 1000 * (after[name] - before[name]) / max(1, count) for name in after}


HOST_PARTS = ("portal", "nginx", "PostgreSQL")  # what runs on a production host of the portal


def print_cpu(
    what: str, per_item: dict[str, float], decimals: int = 1, host_parts=HOST_PARTS
) -> None:
    total = sum(per_item.values())
    parts = ", ".join(f"{name} {ms:.{decimals}f}" for name, ms in per_item.items())
    ceiling = 1000 * (os.cpu_count() or 1) / total if total else 0
    print(
        f"  CPU per {what} (ms): {parts}; {total:.{decimals}f} in all, so {os.cpu_count()} "
        f"cores allow at most ~{ceiling:.0f}/s"
    )
    # In production Stripe, the platform and the learners' browsers are elsewhere: what one host
    # can serve is bounded by the portal's and the database's share alone (an estimate from the
    # same measurement, not a run of its own).
    own = sum(ms for name, ms in per_item.items() if name in host_parts)
    if 0 < own < total:
        names = [name for name in host_parts if name in per_item]
        print(
            f"  the {', '.join(names[:-1])} and {names[-1]} alone: {own:.{decimals}f} ms, so "
            f"{os.cpu_count()} cores with "
            f"nothing else on them would allow ~{1000 * (os.cpu_count() or 1) / own:.0f}/s"
        )


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def make_purchases(sandbox_url: str, count: int) -> list[str]:
    """`count` CREATED Skilljar purchases in the stand-in's store, made by the stand-in's own
    `new_purchase` (collected, then written in one transaction)."""
    made: list[dict] = []

    class Collect:
        def put(self, kind, object_id, data):
            made.append(data)

    original = skilljar_api._store
    skilljar_api._store = Collect
    try:
        offers = list(skilljar_api.OFFERS)
        for index in range(count):
            skilljar_api.new_purchase(offers[index % len(offers)], 1 + index % 3)
    finally:
        skilljar_api._store = original
    store = Store(sandbox_url)
    with store.engine.begin() as connection:
        for purchase in made:
            store.put("skilljar.purchase", purchase["id"], purchase, connection=connection)
    return [p["id"] for p in made]


# --- the measurements -----------------------------------------------------------------------


def wrk(url: str, seconds: int, connections: int, headers: dict | None = None) -> dict | None:
    if shutil.which("wrk") is None:
        return None
    extra = [arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")]
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout

    def ms(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    done = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    return {
        "tool": "wrk",
        "per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "done": int(done.group(1)),
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "none",
    }


def python_get(url: str, seconds: int, connections: int, headers: dict | None = None) -> dict:
    async def main():
        def make():
            connection = connection_for(url)
            path = url.split(str(connection.port), 1)[1] or "/"

            async def one(_index):
                reply = await connection.request("GET", path, headers=headers)
                return None if reply.status == 200 else f"HTTP {reply.status}"

            return one, connection.close

        return await run_clients(make, clients=connections, seconds=seconds)

    figures = asyncio.run(main())
    return {"tool": "bench/loadgen.py", **figures.summary()}


def combine(rounds: list[dict]) -> dict:
    """One figure from several equal-length rounds: the mean rate, the median p50 and the
    highest p99 (so a bad round's tail is not averaged away)."""
    combined = dict(rounds[0])
    combined["per_second"] = statistics.fmean(r["per_second"] for r in rounds)
    combined["p50_ms"] = statistics.median(r["p50_ms"] for r in rounds)
    combined["p99_ms"] = max(r["p99_ms"] for r in rounds)
    for key in ("non_2xx", "failed", "done"):
        if key in combined and isinstance(combined[key], int):
            combined[key] = sum(r.get(key, 0) for r in rounds)
    return combined


def get_rate(url: str, seconds: int, connections: int, headers: dict | None = None) -> dict:
    return wrk(url, seconds, connections, headers) or python_get(url, seconds, connections, headers)


def handoffs(
    portal: str, stripe_prefix: str, purchases: list[str], args, rate: float | None = None
) -> dict:
    """Learners, each: the Skilljar entry (the portal fetches the purchase), then Pay (the
    portal creates the Checkout Session) up to the redirect to Stripe's page. Without `rate`, a
    closed loop: `args.learners` learners, each starting the next handoff as soon as one ends.
    With `rate`, an open loop: learners arrive at `rate` a second, at most `args.learners` at
    once (bench/loadgen.py run_arrivals)."""
    queue = iter(purchases)

    async def main():
        def make():
            connection = connection_for(portal)

            async def one(_index):
                purchase_id = next(queue)
                connection.cookies.clear()  # a new learner
                review = await connection.request(
                    "GET", f"/skilljar/checkout?purchase_id={purchase_id}"
                )
                if review.status != 200:
                    return f"entry HTTP {review.status}"
                token = CSRF.search(review.text).group(1)
                action = PAY_ACTION.search(review.text).group(1)
                answer = await connection.request(
                    "POST",
                    action,
                    body=urlencode({"csrf_token": token}).encode(),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
                if answer.status != 303:
                    return f"pay HTTP {answer.status}"
                if not answer.headers.get("location", "").startswith(stripe_prefix):
                    return "pay redirected elsewhere"
                return None

            return one, connection.close

        if rate is not None:
            return await run_arrivals(
                make, rate=rate, clients=args.learners, seconds=args.seconds, limit=len(purchases)
            )
        return await run_clients(
            make, clients=args.learners, seconds=args.seconds, limit=len(purchases)
        )

    figures = asyncio.run(main())
    return {"tool": "bench/loadgen.py", **figures.summary(), "failures": figures.failures}


def signed_events(count: int, duplicates: float) -> list[tuple[bytes, str]]:
    events = []
    now = int(time.time())
    distinct = max(1, int(count * (1 - duplicates)))
    for index in range(count):
        number = index if index < distinct else index % distinct  # the rest are redeliveries
        payload = json.dumps(
            {
                "id": f"evt_bench_{number:07d}",
                "object": "event",
                "api_version": "2025-01-27.acacia",
                "created": now,
                "livemode": False,
                "type": "payment_intent.created",
                "data": {"object": {"id": f"pi_bench_{number:07d}", "object": "payment_intent"}},
            }
        ).encode()
        signature = hmac.new(
            WEBHOOK_SECRET.encode(), f"{now}.".encode() + payload, hashlib.sha256
        ).hexdigest()
        events.append((payload, f"t={now},v1={signature}"))
    return events


def webhooks(portal: str, events: list[tuple[bytes, str]], args) -> dict:
    async def main():
        def make():
            connection = connection_for(portal)

            async def one(index):
                payload, signature = events[index]
                reply = await connection.request(
                    "POST",
                    "/webhooks/stripe",
                    body=payload,
                    headers={"Content-Type": "application/json", "Stripe-Signature": signature},
                )
                return None if reply.status == 200 else f"HTTP {reply.status}"

            return one, connection.close

        return await run_clients(
            make, clients=args.webhook_clients, seconds=args.seconds * 4, limit=len(events)
        )

    figures = asyncio.run(main())
    return {"tool": "bench/loadgen.py", **figures.summary(), "failures": figures.failures}


# --- the run -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15, help="per measurement (max 120)")
    parser.add_argument("--learners", type=int, default=200)
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument(
        "--arrival-rate",
        type=float,
        default=100.0,
        help="handoffs: learners arriving a second in the open-loop run (0: closed loop only)",
    )
    parser.add_argument("--connections", type=int, default=64, help="for the review page")
    parser.add_argument(
        "--rounds", type=int, default=3, help="review page and hello: interleaved rounds"
    )
    parser.add_argument("--webhooks", type=int, default=6000)
    parser.add_argument("--webhook-clients", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="default: gunicorn.conf.py")
    parser.add_argument("--threads", type=int, default=None, help="default: gunicorn.conf.py")
    parser.add_argument("--worker-class", default=None, help="gthread (default) or gevent")
    parser.add_argument("--only", choices=["review", "handoff", "webhooks"], action="append")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument("--database-url", default=DEFAULT_PG)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the servers' logs")
    parser.add_argument(
        "--no-nginx",
        action="store_true",
        help="skip the open loop behind nginx (run when nginx is installed)",
    )
    parser.add_argument(
        "--portal-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PORTAL_ setting for the portal only, e.g. ORDER_CHANGE_LISTENER=0 (repeatable)",
    )
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.portal_setting if "=" in item)
    if len(settings) != len(args.portal_setting):
        parser.error("--portal-setting takes NAME=VALUE")
    args.seconds = max(3, min(args.seconds, 120))
    args.learners = max(1, min(args.learners, 1000))
    args.webhooks = max(100, min(args.webhooks, 50000))
    only = set(args.only or ["review", "handoff", "webhooks"])
    use_nginx = bool(
        "handoff" in only and args.arrival_rate and not args.no_nginx and shutil.which("nginx")
    )

    serving: list[str] = []
    if args.workers:
        serving += ["--workers", str(args.workers)]
    if args.threads:
        serving += ["--threads", str(args.threads)]
    if args.worker_class:
        serving += ["--worker-class", args.worker_class]

    workdir = Path(tempfile.mkdtemp(prefix="bench-run-"))
    database_url, scratch = portal_database(args, workdir, "bench")
    sandbox_url = f"sqlite:///{workdir / 'sandbox.db'}"
    base_env = clean_environment()
    servers = Servers(workdir)
    results: dict = {}
    try:
        standins_env = stand_ins_environment(workdir, sandbox_url)
        standins_port = free_port()
        standins_env["PORTAL_PUBLIC_URL"] = f"http://127.0.0.1:{standins_port}"
        init_db(standins_env)
        log = open(workdir / "standins.log", "w")  # noqa: SIM115 - closed by servers.stop()
        servers.logs.append(log)
        standins_process = subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "-c",
                "gunicorn.conf.py",
                "-b",
                f"127.0.0.1:{standins_port}",
                "--workers",
                "2",
                "--threads",
                "64",
                "wsgi:app",
            ],
            cwd=ROOT,
            env=standins_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        servers.processes.append(("standins", standins_process))
        standins = standins_env["PORTAL_PUBLIC_URL"]

        portal_env = {
            **base_env,
            "PORTAL_SECRET_KEY": "bench-portal-" + uuid.uuid4().hex,
            "PORTAL_DATABASE_URL": database_url,
            "PORTAL_STRIPE_SECRET_KEY": STRIPE_KEY,
            "PORTAL_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "PORTAL_STRIPE_API_BASE": f"{standins}/sandbox/stripe",
            "PORTAL_SKILLJAR_API_KEY": SKILLJAR_KEY,
            "PORTAL_SKILLJAR_API_BASE": f"{standins}/sandbox/skilljar",
            "PORTAL_REDIRECT_HOSTS": "127.0.0.1",
            "PORTAL_RATELIMIT_ENABLED": "0",
            "GUNICORN_ACCESSLOG": "-",
            # as the deploy guide sets it behind nginx (the direct runs send no forwarded headers)
            **({"PORTAL_TRUSTED_PROXY_HOPS": "1"} if use_nginx else {}),
            **{"PORTAL_" + name.removeprefix("PORTAL_"): value for name, value in settings.items()},
        }
        portal_port = free_port()
        portal_env["PORTAL_PUBLIC_URL"] = f"http://127.0.0.1:{portal_port}"
        init_db(portal_env)
        log = open(workdir / "portal.log", "w")  # noqa: SIM115 - closed by servers.stop()
        servers.logs.append(log)
        portal_process = subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "-c",
                "gunicorn.conf.py",
                "-b",
                f"127.0.0.1:{portal_port}",
                *serving,
                "wsgi:app",
            ],
            cwd=ROOT,
            env=portal_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        servers.processes.append(("portal", portal_process))
        portal = portal_env["PORTAL_PUBLIC_URL"]

        hello, hello_pid = servers.gunicorn(
            "hello", "bench.hello_app:app", {**base_env, "GUNICORN_ACCESSLOG": "-"}, serving
        )
        proxy, proxy_pid = servers.nginx(portal_port) if use_nginx else (None, None)
        for url in (f"{standins}/healthz", f"{portal}/healthz", hello + "/"):
            wait_for(url, 60)
        if proxy:
            wait_for(f"{proxy}/healthz", 30)
        time.sleep(1)  # every worker booted

        control = connection_for(standins)

        def set_controls(**values):
            async def send():
                reply = await control.request(
                    "POST",
                    "/sandbox/control",
                    body=json.dumps(values).encode(),
                    headers={"Content-Type": "application/json"},
                )
                await control.close()
                assert reply.status == 200, reply.text

            asyncio.run(send())

        set_controls(skilljar_latency_ms=0, stripe_latency_ms=0)
        print(f"machine: {machine()}", flush=True)
        results["speed_before_s"] = machine_speed()
        print(
            f"machine speed: a 10-million-step Python loop took {results['speed_before_s']} s "
            "of CPU (this figure again at the end: a shared machine's speed drifts)",
            flush=True,
        )
        print(f"portal gunicorn: {serving_description(portal_process.pid, serving)}", flush=True)
        if settings:
            print(f"portal settings: {' '.join(args.portal_setting)}", flush=True)

        if "review" in only:
            (purchase_id,) = make_purchases(sandbox_url, 1)
            page = requests.get(
                f"{portal}/skilljar/checkout", params={"purchase_id": purchase_id}, timeout=30
            )
            page.raise_for_status()
            reference = re.search(r"/orders/(ord_[A-Za-z0-9_-]+)/pay", page.text).group(1)
            review_url = f"{portal}/orders/{reference}"
            # The learner who opened the order comes back with the session cookie the entry
            # page set (its CSRF token in it); a visitor without one gets a new session.
            learner = requests.Session()
            assert learner.get(review_url, timeout=30).status_code == 200
            cookie = "; ".join(f"{name}={value}" for name, value in learner.cookies.items())
            returning = {"Cookie": cookie}
            get_rate(review_url, 2, args.connections)  # warm every worker
            get_rate(hello + "/", 2, args.connections)
            # Interleaved rounds: the three figures of a round are taken within seconds of each
            # other, so a machine that slows down or speeds up over the run (a shared host)
            # moves all three; each round gives its own ratios, and the median is reported.
            targets = {
                "review": (review_url, None),
                "review_returning": (review_url, returning),
                "hello": (hello + "/", None),
            }
            # where the box's CPU goes per request, each app's instance under its own name
            portal_meter = CpuMeter({"portal": portal_process.pid})
            meters = {
                "review": portal_meter,
                "review_returning": portal_meter,
                "hello": CpuMeter({"hello": hello_pid}),
            }
            cpu_ms: dict[str, dict[str, float]] = {name: {} for name in targets}
            rounds = max(1, args.rounds)
            seconds = max(2, round(args.seconds / rounds))
            taken: dict[str, list[dict]] = {name: [] for name in targets}
            for number in range(rounds):
                names = list(targets)
                names = names[number % 3 :] + names[: number % 3]  # no figure always first
                for name in names:
                    url, headers = targets[name]
                    before = meters[name].read()
                    taken[name].append(get_rate(url, seconds, args.connections, headers))
                    for part, used in meters[name].per_item(before, 1).items():
                        cpu_ms[name][part] = cpu_ms[name].get(part, 0.0) + used
            for name in targets:
                results[name] = combine(taken[name])
                done = max(1, results[name]["done"])
                results[name]["cpu_ms"] = {part: used / done for part, used in cpu_ms[name].items()}
            ratios = {
                name: [
                    mine["per_second"] / hello_round["per_second"]
                    for mine, hello_round in zip(taken[name], taken["hello"], strict=True)
                ]
                for name in ("review", "review_returning")
            }
            for name, each in ratios.items():
                results[f"{name}_ratio"] = round(statistics.median(each), 3)
                results[f"{name}_ratio_rounds"] = [round(r, 3) for r in each]
            print_figures(
                "review page (GET /orders/<ref>), a new visitor each time", results["review"]
            )
            print_cpu("request", results["review"]["cpu_ms"], decimals=3)
            print_figures(
                "review page, the learner back with their session cookie",
                results["review_returning"],
            )
            print_cpu("request", results["review_returning"]["cpu_ms"], decimals=3)
            print_figures("bare Flask hello", results["hello"])
            print_cpu("request", results["hello"]["cpu_ms"], decimals=3, host_parts=())
            print(
                f"  review / hello ratio, median of {rounds} interleaved rounds of {seconds} s: "
                f"new visitor {results['review_ratio']:.2f} "
                f"({', '.join(f'{r:.2f}' for r in ratios['review'])}), "
                f"returning learner {results['review_returning_ratio']:.2f} "
                f"({', '.join(f'{r:.2f}' for r in ratios['review_returning'])}) (target >= 0.4)"
            )

        if "handoff" in only:
            open_loops = [("handoff_arrivals", portal, "")]
            if proxy:
                open_loops.append(
                    ("handoff_arrivals_nginx", proxy, ", behind nginx as docs/deploy.md sets it up")
                )
            # each open loop gets its own purchases, with room for a Poisson run's surplus
            reserve = int(args.seconds * args.arrival_rate * 1.2) + 1 if args.arrival_rate else 0
            count = min(40000, args.learners + args.seconds * 400 + reserve * len(open_loops) + 400)
            purchases = make_purchases(sandbox_url, count)
            set_controls(skilljar_latency_ms=args.latency_ms, stripe_latency_ms=args.latency_ms)
            warm_args = argparse.Namespace(**{**vars(args), "seconds": 3})
            handoffs(portal, standins, purchases[: args.learners], warm_args)
            if proxy:  # nginx's keep-alive connections to the portal, opened before measuring
                handoffs(proxy, standins, purchases[args.learners : 2 * args.learners], warm_args)
            unused = purchases[2 * args.learners :]
            closed = unused[: len(unused) - reserve * len(open_loops)]
            meter = CpuMeter({"portal": portal_process.pid, "stand-ins": standins_process.pid})
            before = meter.read()
            results["handoff"] = handoffs(portal, standins, closed, args)
            results["handoff"]["cpu_ms"] = meter.per_item(before, results["handoff"]["done"])
            results["handoff"]["upstream_latency_ms"] = args.latency_ms
            results["handoff"]["learners"] = args.learners
            print_figures(
                f"checkout handoffs, closed loop ({args.learners} learners, each starting again "
                f"at once; {args.latency_ms} ms on every upstream call)",
                results["handoff"],
            )
            print_cpu("handoff", results["handoff"]["cpu_ms"])
            for number, (name, target, where) in enumerate(open_loops if args.arrival_rate else []):
                start = len(unused) - reserve * (len(open_loops) - number)
                parts = {"portal": portal_process.pid, "stand-ins": standins_process.pid}
                if target == proxy:
                    parts["nginx"] = proxy_pid
                meter = CpuMeter(parts)
                before = meter.read()
                results[name] = handoffs(
                    target, standins, unused[start : start + reserve], args, rate=args.arrival_rate
                )
                results[name]["cpu_ms"] = meter.per_item(before, results[name]["done"])
                results[name]["offered_per_second"] = args.arrival_rate
                print_figures(
                    f"checkout handoffs, open loop ({args.arrival_rate:g} learners arriving a "
                    f"second, at most {args.learners} at once; {args.latency_ms} ms upstream"
                    f"{where})",
                    results[name],
                )
                print_cpu("handoff", results[name]["cpu_ms"])
            set_controls(skilljar_latency_ms=0, stripe_latency_ms=0)
            print("  targets: >= 100/s, p99 < 1500 ms")

        if "webhooks" in only:
            events = signed_events(args.webhooks, duplicates=0.1)
            meter = CpuMeter({"portal": portal_process.pid})
            before = meter.read()
            results["webhooks"] = webhooks(portal, events, args)
            results["webhooks"]["cpu_ms"] = meter.per_item(before, results["webhooks"]["done"])
            engine = create_engine(normalise_url(database_url))
            with engine.connect() as connection:
                stored = connection.scalar(select(func.count()).select_from(StripeEvent))
            engine.dispose()
            results["webhooks"]["stored_distinct"] = stored
            print_figures("Stripe webhooks (verified, stored, de-duplicated)", results["webhooks"])
            print(f"  distinct events stored: {stored}; target >= 500/s")
            print_cpu("event", results["webhooks"]["cpu_ms"])

        memory = [rss_mb(pid) for pid in worker_pids(portal_process.pid)]
        hello_memory = [rss_mb(pid) for pid in worker_pids(hello_pid)]
        results["memory_mb"] = {
            "portal_workers": [round(m, 1) for m in memory if m],
            "hello_workers": [round(m, 1) for m in hello_memory if m],
        }
        print("resident memory per worker (VmRSS, MB):")
        print(f"  portal: {results['memory_mb']['portal_workers']} (target < 120)")
        print(f"  hello:  {results['memory_mb']['hello_workers']}")
        results["speed_after_s"] = machine_speed()
        print(
            f"machine speed at the end: the same loop took {results['speed_after_s']} s "
            f"({results['speed_before_s']} s at the start)"
        )
    finally:
        servers.stop()
        if scratch is not None:
            scratch.drop()
    results["machine"] = machine()
    results["serving"] = serving or ["gunicorn.conf.py defaults"]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.keep:
        print(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({model}), {memory:.0f} GiB, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; load average {load}"
    )


def machine_speed(steps: int = 10_000_000) -> float:
    """CPU seconds for a plain Python counting loop, with the servers idle: the same code's
    figures are comparable only between runs whose loops took about as long."""
    started = time.process_time()
    count = 0
    while count < steps:
        count += 1
    return round(time.process_time() - started, 2)


def serving_description(master: int, serving: list[str]) -> str:
    workers = len(worker_pids(master))
    return f"{workers} workers; options {' '.join(serving) or '(gunicorn.conf.py defaults)'}"


def print_figures(title: str, figures: dict) -> None:
    print(f"{title}:")
    print(
        f"  {figures['per_second']:.1f}/s  p50 {figures['p50_ms']:.1f} ms  "
        f"p99 {figures['p99_ms']:.1f} ms  [{figures['tool']}]"
    )
    extra = {k: v for k, v in figures.items() if k in {"failed", "failures", "non_2xx"} and v}
    if extra:
        print(f"  {extra}")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
