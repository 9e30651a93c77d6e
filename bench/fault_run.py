"""Fault run: many sandbox purchases while Skilljar fails a share of its calls at random.

    .venv/bin/python bench/fault_run.py [--purchases 500] [--fault-rate 0.3] [--sqlite]

Starts the portal in sandbox mode under gunicorn on a free loopback port (PostgreSQL in a fresh
schema of postgresql://postgres@127.0.0.1:5432/test by default, or SQLite with --sqlite), plus two
`flask portal worker` processes; turns on fault injection in the Skilljar stand-in; drives the
purchases concurrently over HTTP the way a learner's browser does (academy -> review -> pay ->
the sandbox Stripe page -> return; Stripe's webhooks are delivered too); waits until every paid
order is fulfilled or the deadline passes; prints the figures and stops everything it started.

Only 127.0.0.1 is contacted. Bounded: at most --purchases purchases (capped at 5000) and
--deadline seconds of waiting for fulfilment after the last purchase.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import requests
from sqlalchemy import create_engine, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from portal.db import normalise_url  # noqa: E402
from portal.models import Order, OrderState  # noqa: E402
from portal.sandbox.store import Store  # noqa: E402

BIN = Path(sys.executable).parent
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
OFFERS = ["intro-python", "data-team", "ml-tokyo"]
CARD = {"email": "ada@example.com", "card_number": "4242 4242 4242 4242", "expiry": "12/39"}


class ScratchSchema:
    """A fresh PostgreSQL schema for one run (the portal's tables are created in it), dropped at
    the end unless kept. `url` is `database_url` with the schema as its search path."""

    def __init__(self, database_url: str, prefix: str):
        self.name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.admin = create_engine(normalise_url(database_url))
        with self.admin.begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {self.name}"))
        sep = "&" if "?" in database_url else "?"
        self.url = f"{database_url}{sep}options=-csearch_path%3D{self.name}"

    def drop(self, keep: bool = False) -> None:
        if not keep:
            with self.admin.begin() as connection:
                connection.execute(text(f"DROP SCHEMA IF EXISTS {self.name} CASCADE"))
        self.admin.dispose()


def portal_database(args, workdir: Path, prefix: str) -> tuple[str, ScratchSchema | None]:
    """The run's database: SQLite in `workdir` with --sqlite, else a fresh PostgreSQL schema."""
    if args.sqlite:
        return f"sqlite:///{workdir / 'portal.db'}", None
    scratch = ScratchSchema(args.database_url, prefix)
    return scratch.url, scratch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


# --- one learner --------------------------------------------------------------------------------


def learner(base: str, index: int, returns: bool, status_refreshes: int) -> dict:
    """Buy one course through the whole flow; returns what happened."""
    rng = random.Random(index)
    browser = requests.Session()
    result = {"index": index, "purchase_id": None, "outcome": None, "steps": {}}
    clock = time.monotonic()

    def step(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        result["steps"][name] = now - clock
        clock = now

    try:
        review = browser.post(
            f"{base}/sandbox/skilljar/academy/checkout",
            data={"offer": rng.choice(OFFERS), "quantity": str(rng.randint(1, 3))},
            timeout=60,
        )
        step("academy + review")
        if review.status_code != 200:
            result["outcome"] = f"review {review.status_code}"
            return result
        result["purchase_id"] = parse_qs(urlsplit(review.url).query)["purchase_id"][0]
        action = re.search(r'action="([^"]+/pay)"', review.text).group(1)
        token = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
        to_stripe = browser.post(
            base + action, data={"csrf_token": token}, allow_redirects=False, timeout=60
        )
        step("pay")
        if to_stripe.status_code != 303:
            result["outcome"] = f"pay {to_stripe.status_code}"
            return result
        paid = browser.post(
            to_stripe.headers["Location"],
            data={**CARD, "cvc": "123"},
            allow_redirects=False,
            timeout=60,
        )
        step("card")
        if paid.status_code != 303:
            result["outcome"] = f"card {paid.status_code}"
            return result
        if not returns:
            result["outcome"] = "paid, closed the tab"  # only the webhook tells the portal
            return result
        page = browser.get(
            urljoin(base, paid.headers["Location"]), allow_redirects=False, timeout=60
        )
        step("return")
        refreshes = 0
        while True:
            location = page.headers.get("Location", "")
            if page.status_code == 303 and "/thank-you/" in location:
                result["outcome"] = "returned, enrolled" + (" after waiting" if refreshes else "")
                return result
            if page.status_code == 303 and location.endswith("/status"):
                page = browser.get(urljoin(base, location), allow_redirects=False, timeout=60)
            elif page.status_code == 200 and "Refresh" in page.headers:
                if refreshes == status_refreshes:
                    result["outcome"] = "returned, left the waiting page"
                    return result
                refreshes += 1
                # The page refreshes itself: `Refresh: 3` or `Refresh: 3; url=...`.
                delay, _, target = page.headers["Refresh"].partition(";")
                target = target.strip().removeprefix("url=") or page.url
                time.sleep(float(delay))
                page = browser.get(urljoin(page.url, target), allow_redirects=False, timeout=60)
            else:
                result["outcome"] = f"returned, unexpected {page.status_code}"
                return result
    except (requests.RequestException, AttributeError, KeyError) as exc:
        result["outcome"] = f"error {type(exc).__name__}"
        return result


# --- the run --------------------------------------------------------------------------------


def summarise(engine, store: Store, purchases: list[dict]) -> dict:
    ours = {p["purchase_id"] for p in purchases if p["purchase_id"]}
    sessions = store.list("checkout.session")
    paid_sessions = {
        s["client_reference_id"]
        for s in sessions
        if s["status"] == "complete" and s["payment_status"] == "paid"
    }
    with engine.connect() as connection:
        orders = connection.execute(select(Order.__table__)).all()
    by_reference = {o.reference: o for o in orders}
    skilljar = {p["id"]: p["state"] for p in store.list("skilljar.purchase") if p["id"] in ours}
    success_calls: Counter[str] = Counter()
    refused = 0
    for call in store.calls("skilljar"):
        if call["method"] != "POST" or not call["path"].endswith("/fulfill"):
            continue
        if call["status"] == 200 and json.loads(call["body"])["state"] == "SUCCESS":
            success_calls[call["path"].split("/")[-2]] += 1
        elif call["status"] == 503:
            refused += 1
    paid_orders = [by_reference[r] for r in paid_sessions if r in by_reference]
    fulfil_failed = [o for o in paid_orders if o.state == OrderState.FULFIL_FAILED]
    lost = [
        o
        for o in paid_orders
        if skilljar.get(o.platform_ref) != "SUCCESS" and o.state != OrderState.FULFIL_FAILED
    ]
    times = [
        (o.fulfilled_at - o.paid_at).total_seconds()
        for o in paid_orders
        if o.fulfilled_at is not None and o.paid_at is not None
    ]
    return {
        "paid_stripe": len(paid_sessions),
        "paid_orders": sum(1 for o in orders if o.paid_at is not None),
        "fulfilled_skilljar": sum(1 for state in skilljar.values() if state == "SUCCESS"),
        "fulfilled_orders": sum(1 for o in orders if o.state == OrderState.FULFILLED),
        "duplicates": sum(n - 1 for n in success_calls.values() if n > 1),
        "lost": len(lost),
        "fulfil_failed": len(fulfil_failed),
        "refused": refused,
        "times": times,
        "unreferenced_paid": len(paid_sessions - set(by_reference)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--purchases", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument(
        "--never-return",
        type=float,
        default=0.1,
        help="share of learners "
        "who close the tab on Stripe's page (only the webhook reaches the portal)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=300.0,
        help="seconds to wait for fulfilment after the last purchase",
    )
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument("--database-url", default=DEFAULT_PG)
    parser.add_argument(
        "--keep", action="store_true", help="keep the logs, databases and schema for inspection"
    )
    args = parser.parse_args()
    count = max(1, min(args.purchases, 5000))

    workdir = Path(tempfile.mkdtemp(prefix="fault-run-"))
    database_url, scratch = portal_database(args, workdir, "fault_run")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    sandbox_url = f"sqlite:///{workdir / 'sandbox.db'}"
    env = {
        **os.environ,
        "PORTAL_SANDBOX": "1",
        "PORTAL_SECRET_KEY": "fault-run-key",
        "PORTAL_PUBLIC_URL": base,
        "PORTAL_DATABASE_URL": database_url,
        "PORTAL_SANDBOX_DATABASE_URL": sandbox_url,
        "PORTAL_SANDBOX_WEBHOOK_DELAY_SECONDS": "1",
        "PORTAL_RETRY_BASE_SECONDS": "1",
        "PORTAL_RETRY_MAX_SECONDS": "15",
        "PORTAL_RATELIMIT_ENABLED": "0",  # every learner comes from 127.0.0.1
        "GUNICORN_ACCESSLOG": str(workdir / "access.log"),
    }
    processes: list[subprocess.Popen] = []
    logs = []
    started = time.monotonic()
    try:
        subprocess.run(
            [str(BIN / "flask"), "--app", "wsgi", "portal", "init-db"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        for name, command in [
            (
                "gunicorn",
                [
                    str(BIN / "gunicorn"),
                    "-c",
                    "gunicorn.conf.py",
                    "-b",
                    f"127.0.0.1:{port}",
                    "--workers",
                    "3",
                    "--threads",
                    "16",
                    "wsgi:app",
                ],
            ),
            ("worker-1", [str(BIN / "flask"), "--app", "wsgi", "portal", "worker"]),
            ("worker-2", [str(BIN / "flask"), "--app", "wsgi", "portal", "worker"]),
        ]:
            log = open(workdir / f"{name}.log", "w")  # noqa: SIM115 - closed below
            logs.append(log)
            processes.append(
                subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
        wait_for(f"{base}/healthz")
        requests.post(
            f"{base}/sandbox/control", json={"skilljar_fault_rate": args.fault_rate}, timeout=10
        ).raise_for_status()
        store = Store(sandbox_url)
        engine = create_engine(normalise_url(database_url))

        rng = random.Random(2024)
        plan = [(i, rng.random() >= args.never_return) for i in range(count)]
        print(
            f"driving {count} purchases, {args.concurrency} at a time, Skilljar failing "
            f"{args.fault_rate:.0%} of its calls ({'SQLite' if args.sqlite else 'PostgreSQL'})",
            flush=True,
        )
        with ThreadPoolExecutor(args.concurrency) as pool:
            purchases = list(pool.map(lambda p: learner(base, p[0], p[1], 2), plan))
        driven = time.monotonic()
        deadline = driven + args.deadline
        while True:
            figures = summarise(engine, store, purchases)
            settled = figures["fulfilled_skilljar"] + figures["fulfil_failed"]
            if settled >= figures["paid_stripe"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        finished = time.monotonic()
        engine.dispose()
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
        if scratch is not None:
            scratch.drop(keep=args.keep)

    outcomes = Counter(p["outcome"] for p in purchases)
    times = sorted(figures["times"])
    rows = [
        ("purchases attempted", count),
        ("paid (Stripe sessions paid)", figures["paid_stripe"]),
        ("paid (portal orders)", figures["paid_orders"]),
        ("fulfilled (Skilljar SUCCESS)", figures["fulfilled_skilljar"]),
        ("duplicated SUCCESS fulfil calls", figures["duplicates"]),
        ("lost (paid, never fulfilled)", figures["lost"]),
        ("fulfil_failed (operator alerted)", figures["fulfil_failed"]),
        ("fulfil calls failed by injection", figures["refused"]),
        ("time to fulfil p50 (s)", f"{statistics.median(times):.2f}" if times else "-"),
        ("time to fulfil max (s)", f"{max(times):.2f}" if times else "-"),
        ("driving purchases (s)", f"{driven - started:.1f}"),
        ("total wall time (s)", f"{finished - started:.1f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    print()
    print("learner outcomes:")
    for outcome, n in outcomes.most_common():
        print(f"  {n:5d}  {outcome}")
    steps: dict[str, list[float]] = {}
    for purchase in purchases:
        for name, seconds in purchase["steps"].items():
            steps.setdefault(name, []).append(seconds)
    print("learner step times, p50 / max (s):")
    for name, values in steps.items():
        print(f"  {name.ljust(18)} {statistics.median(values):6.2f} / {max(values):6.2f}")
    if figures["unreferenced_paid"]:
        print(f"paid sessions without an order: {figures['unreferenced_paid']}")
    failed = figures["duplicates"] or figures["lost"] or figures["paid_stripe"] < count * 0.99
    if not failed and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs kept in {workdir}" + (f"; schema {scratch.name}" if scratch else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
