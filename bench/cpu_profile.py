"""CPU cost of the portal's hot paths, in this process, without gunicorn or a load generator:
where bench/run.py says how fast, this says what each request costs and where it goes.

    .venv/bin/python bench/cpu_profile.py [--requests 500] [--only review|handoff|webhook]
                                          [--profile 30] [--sqlite]

The portal app runs in this process (Flask's test client) against PostgreSQL (a fresh schema
of postgresql://postgres@127.0.0.1:5432/test) or SQLite; the Stripe and Skilljar stand-ins run
under gunicorn in a process of their own, so their CPU is not counted. Prints the portal's CPU
milliseconds per review page, per checkout handoff (entry + Pay up to the redirect to Stripe)
and per Stripe webhook; with --profile N, also the N costliest functions of each (cProfile,
cumulative; CPU_PROFILE_SORT=tottime sorts by each function's own time, and
CPU_PROFILE_DUMP=file keeps the profile for pstats, e.g. to ask who called a function).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import hmac
import json
import os
import pstats
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fault_run import DEFAULT_PG, portal_database, wait_for  # noqa: E402
from run import (  # noqa: E402
    CSRF,
    PAY_ACTION,
    SKILLJAR_KEY,
    STRIPE_KEY,
    Servers,
    init_db,
    make_purchases,
    stand_ins_environment,
)

WEBHOOK_SECRET = "whsec_cpu_" + uuid.uuid4().hex


def measure(label: str, requests: int, one, profile: int) -> None:
    for _ in range(min(50, requests)):  # warm caches, pools and prepared statements
        one()
    started = time.process_time()
    for _ in range(requests):
        one()
    per = 1000 * (time.process_time() - started) / requests
    print(f"{label:<40} {per:7.2f} ms CPU per request ({requests} requests)", flush=True)
    if profile:
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        for _ in range(min(requests, 200)):
            one()
        profiler.disable()
        if os.environ.get("CPU_PROFILE_DUMP"):
            profiler.dump_stats(os.environ["CPU_PROFILE_DUMP"])
        pstats.Stats(profiler).sort_stats(
            os.environ.get("CPU_PROFILE_SORT", "cumulative")
        ).print_stats(profile)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--only", choices=["review", "handoff", "webhook"], action="append")
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("--database-url", default=DEFAULT_PG)
    args = parser.parse_args()
    only = set(args.only or ["review", "handoff", "webhook"])

    workdir = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    database_url, scratch = portal_database(args, workdir, "cpu")
    sandbox_url = f"sqlite:///{workdir / 'sandbox.db'}"
    servers = Servers(workdir)
    try:
        standins_env = stand_ins_environment(workdir, sandbox_url)
        init_db(standins_env)
        standins, _ = servers.gunicorn(
            "standins", "wsgi:app", standins_env, ["--workers", "2", "--threads", "16"]
        )
        wait_for(f"{standins}/healthz", 60)

        os.environ.update(
            {
                "PORTAL_SECRET_KEY": "cpu-portal-" + uuid.uuid4().hex,
                "PORTAL_DATABASE_URL": database_url,
                "PORTAL_STRIPE_SECRET_KEY": STRIPE_KEY,
                "PORTAL_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "PORTAL_STRIPE_API_BASE": f"{standins}/sandbox/stripe",
                "PORTAL_SKILLJAR_API_KEY": SKILLJAR_KEY,
                "PORTAL_SKILLJAR_API_BASE": f"{standins}/sandbox/skilljar",
                "PORTAL_REDIRECT_HOSTS": "127.0.0.1",
                "PORTAL_RATELIMIT_ENABLED": "0",
                "PORTAL_PUBLIC_URL": "http://127.0.0.1:9",
                "PORTAL_LOG_FORMAT": "json",
            }
        )
        init_db(dict(os.environ))
        from portal import create_app

        app = create_app()
        count = 2 * args.requests + 60 if "handoff" in only else 1
        purchases = iter(make_purchases(sandbox_url, count + 1))

        if "review" in only:
            client = app.test_client()
            entry = client.get(f"/skilljar/checkout?purchase_id={next(purchases)}")
            assert entry.status_code == 200, entry.status_code
            reference = re.search(r"/orders/(ord_[A-Za-z0-9_-]+)/pay", entry.text).group(1)

            def review():
                fresh = app.test_client()  # a new learner: no session cookie yet
                assert fresh.get(f"/orders/{reference}").status_code == 200

            measure("review page (a new learner)", args.requests, review, args.profile)

        if "handoff" in only:

            def handoff():
                learner = app.test_client()
                page = learner.get(f"/skilljar/checkout?purchase_id={next(purchases)}")
                assert page.status_code == 200, page.status_code
                token = CSRF.search(page.text).group(1)
                action = PAY_ACTION.search(page.text).group(1)
                answer = learner.post(action, data={"csrf_token": token})
                assert answer.status_code == 303, answer.status_code

            measure("checkout handoff (entry + Pay)", args.requests, handoff, args.profile)

        if "webhook" in only:
            numbers = iter(range(10**9))
            client = app.test_client()

            def webhook():
                now = int(time.time())
                payload = json.dumps(
                    {
                        "id": f"evt_cpu_{next(numbers):09d}",
                        "object": "event",
                        "api_version": "2025-01-27.acacia",
                        "created": now,
                        "livemode": False,
                        "type": "payment_intent.created",
                        "data": {"object": {"id": "pi_cpu", "object": "payment_intent"}},
                    }
                ).encode()
                signature = hmac.new(
                    WEBHOOK_SECRET.encode(), f"{now}.".encode() + payload, hashlib.sha256
                ).hexdigest()
                reply = client.post(
                    "/webhooks/stripe",
                    data=payload,
                    headers={
                        "Content-Type": "application/json",
                        "Stripe-Signature": f"t={now},v1={signature}",
                    },
                )
                assert reply.status_code == 200, reply.status_code

            measure("Stripe webhook (verified, stored)", args.requests, webhook, args.profile)
    finally:
        servers.stop()
        if scratch is not None:
            scratch.drop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
