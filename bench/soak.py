"""Soak with faults: two portal hosts and two job workers on one PostgreSQL, many purchases at
once, the platform failing and timing out, one worker SIGKILLed mid-run and restarted.

    .venv/bin/python bench/soak.py [--purchases 1000] [--fault-rate 0.3] [--timeout-rate 0.05]

Two gunicorn instances ("two hosts", each in sandbox mode on its own loopback port, sharing one
fresh PostgreSQL schema for the portal and one sandbox store for the stand-ins, so they behave like
one Stripe and one Skilljar) and two `flask portal worker` processes. The Skilljar stand-in answers
--fault-rate of its write calls (fulfil) with a 503, and --timeout-rate of them only after the
portal's read timeout (PORTAL_HTTP_READ_TIMEOUT=2 here): the call has taken effect, its answer is
late, as when a platform's answer is slow or lost on the way back. Learners (bench/fault_run.py's,
half on each host) buy concurrently; once --kill-at of them have finished, worker 1 is SIGKILLed
and restarted a few seconds later. At the end: every order paid at Stripe must be fulfilled at
Skilljar exactly once and nothing lost.

Only 127.0.0.1 is contacted. Bounded: at most 5000 purchases and --deadline seconds of waiting.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import requests  # noqa: E402
from fault_run import (  # noqa: E402
    BIN,
    DEFAULT_PG,
    ScratchSchema,
    free_port,
    learner,
    summarise,
    wait_for,
)
from sqlalchemy import create_engine  # noqa: E402

from portal.db import normalise_url  # noqa: E402
from portal.sandbox.store import Store  # noqa: E402


class Processes:
    def __init__(self, workdir: Path, env: dict):
        self.workdir = workdir
        self.env = env
        self.running: dict[str, subprocess.Popen] = {}
        self.logs = []

    def start(self, name: str, command: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "a")  # noqa: SIM115 - closed in stop_all()
        self.logs.append(log)
        process = subprocess.Popen(
            command, cwd=ROOT, env=env or self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.running[name] = process
        return process

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.terminate()
        for process in self.running.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.logs:
            log.close()


def worker_command() -> list[str]:
    return [str(BIN / "flask"), "--app", "wsgi", "portal", "worker"]


def gunicorn_command(port: int) -> list[str]:
    return [
        str(BIN / "gunicorn"),
        "-c",
        "gunicorn.conf.py",
        "-b",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--threads",
        "32",
        "wsgi:app",
    ]


def resent_after_success(store: Store, purchase_ids: set[str]) -> int:
    """Fulfil calls that reached Skilljar when the purchase was already SUCCESS (refused with
    400 by Skilljar, harmless): how often the portal had to ask again after a lost answer."""
    count = 0
    for call in store.calls("skilljar"):
        if call["method"] != "POST" or not call["path"].endswith("/fulfill"):
            continue
        if call["path"].split("/")[-2] in purchase_ids and call["status"] == 400:
            body = json.loads(call["body"] or "{}")
            count += body.get("state") == "SUCCESS"
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--purchases", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--timeout-rate", type=float, default=0.05)
    parser.add_argument("--never-return", type=float, default=0.1)
    parser.add_argument("--kill-at", type=float, default=0.4, help="share of purchases done")
    parser.add_argument("--deadline", type=float, default=420.0)
    parser.add_argument("--database-url", default=DEFAULT_PG)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    count = max(10, min(args.purchases, 5000))

    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    scratch = ScratchSchema(args.database_url, "soak")
    database_url = scratch.url
    sandbox_url = f"sqlite:///{workdir / 'sandbox.db'}"
    ports = [free_port(), free_port()]
    hosts = [f"http://127.0.0.1:{port}" for port in ports]
    common = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "PROMETHEUS_"))},
        "PORTAL_SANDBOX": "1",
        "PORTAL_SECRET_KEY": "soak-" + uuid.uuid4().hex,
        "PORTAL_DATABASE_URL": database_url,
        "PORTAL_SANDBOX_DATABASE_URL": sandbox_url,
        "PORTAL_SANDBOX_WEBHOOK_DELAY_SECONDS": "1",
        "PORTAL_RETRY_BASE_SECONDS": "1",
        "PORTAL_RETRY_MAX_SECONDS": "15",
        "PORTAL_HTTP_READ_TIMEOUT": "2",
        "PORTAL_JOB_LEASE_SECONDS": "20",
        # The default pools (8 connections a process, no overflow): 2 hosts x 2 gunicorn workers
        # x (8 + 1 order change listener) + 2 job workers x 8 = 52 of PostgreSQL's default 100.
        "PORTAL_RATELIMIT_ENABLED": "0",  # every learner comes from 127.0.0.1
        "GUNICORN_ACCESSLOG": "/dev/null",
    }
    envs = [{**common, "PORTAL_PUBLIC_URL": host} for host in hosts]
    processes = Processes(workdir, envs[0])
    events: list[str] = []
    started = time.monotonic()
    purchases: list[dict] = []
    try:
        subprocess.run(
            [str(BIN / "flask"), "--app", "wsgi", "portal", "init-db"],
            cwd=ROOT,
            env=envs[0],
            check=True,
            capture_output=True,
        )
        for index, (port, env) in enumerate(zip(ports, envs, strict=True)):
            processes.start(f"host-{index + 1}", gunicorn_command(port), env)
        for host in hosts:
            wait_for(f"{host}/healthz", 60)
        processes.start("worker-1", worker_command())
        processes.start("worker-2", worker_command(), envs[1])
        requests.post(
            f"{hosts[0]}/sandbox/control",
            json={
                "skilljar_fault_rate": args.fault_rate,
                "skilljar_timeout_rate": args.timeout_rate,
            },
            timeout=10,
        ).raise_for_status()
        store = Store(sandbox_url)
        engine = create_engine(normalise_url(database_url))

        done = Counter()
        kill_after = int(count * args.kill_at)
        killed = threading.Event()
        lock = threading.Lock()

        def one(plan):
            index, returns = plan
            result = learner(hosts[index % 2], index, returns, 2)
            with lock:
                done["n"] += 1
                due = done["n"] >= kill_after and not killed.is_set()
                if due:
                    killed.set()
            if due:
                victim = processes.running["worker-1"]
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                events.append(f"worker-1 SIGKILLed after {done['n']} purchases")
                print(f"  {events[-1]}", flush=True)
                time.sleep(3)
                processes.start("worker-1", worker_command())
                events.append("worker-1 restarted 3 s later")
                print(f"  {events[-1]}", flush=True)
            return result

        rng = random.Random(7)
        plan = [(i, rng.random() >= args.never_return) for i in range(count)]
        print(
            f"soak: {count} purchases, {args.concurrency} at a time over 2 hosts, 2 workers, "
            f"Skilljar failing {args.fault_rate:.0%} of writes with 503 and "
            f"{args.timeout_rate:.0%} with timeouts, PostgreSQL",
            flush=True,
        )
        with ThreadPoolExecutor(args.concurrency) as pool:
            purchases = list(pool.map(one, plan))
        driven = time.monotonic()
        deadline = driven + args.deadline
        while True:
            figures = summarise(engine, store, purchases)
            settled = figures["fulfilled_skilljar"] + figures["fulfil_failed"]
            if settled >= figures["paid_stripe"] or time.monotonic() > deadline:
                break
            time.sleep(2)
        finished = time.monotonic()
        ours = {p["purchase_id"] for p in purchases if p["purchase_id"]}
        resent = resent_after_success(store, ours)
        timeouts = sum(
            1
            for name in ("host-1", "host-2", "worker-1", "worker-2")
            for line in (workdir / f"{name}.log").read_text().splitlines()
            if "skilljar POST" in line and "/fulfill -> timeout" in line
        )
        engine.dispose()
    finally:
        processes.stop_all()
        scratch.drop(keep=args.keep)

    times = sorted(figures["times"])
    rows = [
        ("purchases attempted", count),
        ("paid (Stripe sessions paid)", figures["paid_stripe"]),
        ("paid (portal orders)", figures["paid_orders"]),
        ("fulfilled (Skilljar SUCCESS)", figures["fulfilled_skilljar"]),
        ("duplicated (SUCCESS accepted twice)", figures["duplicates"]),
        ("lost (paid, never fulfilled)", figures["lost"]),
        ("fulfil_failed (operator alerted)", figures["fulfil_failed"]),
        ("fulfil calls failed by 503 injection", figures["refused"]),
        ("fulfil calls timed out (portal logs)", timeouts),
        ("re-sent after a lost answer (refused)", resent),
        ("time to fulfil p50 (s)", f"{statistics.median(times):.2f}" if times else "-"),
        ("time to fulfil p99 (s)", f"{times[int(0.99 * (len(times) - 1))]:.2f}" if times else "-"),
        ("max time to fulfil (s)", f"{max(times):.2f}" if times else "-"),
        ("driving purchases (s)", f"{driven - started:.1f}"),
        ("total wall time (s)", f"{finished - started:.1f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    for event in events:
        print(f"event: {event}")
    print("learner outcomes:")
    for outcome, n in Counter(p["outcome"] for p in purchases).most_common():
        print(f"  {n:5d}  {outcome}")
    failed = (
        figures["duplicates"]
        or figures["lost"]
        or figures["paid_stripe"] < count * 0.95
        or figures["fulfilled_skilljar"] + figures["fulfil_failed"] < figures["paid_stripe"]
    )
    if failed or args.keep:
        print(f"logs kept in {workdir}" + (f"; schema {scratch.name}" if args.keep else ""))
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
