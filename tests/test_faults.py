"""The fault runs of bench/faults.py that take under a minute, as tests on PostgreSQL: each starts
the portal under gunicorn with its job workers, injects one infrastructure fault, and checks that
nothing paid is lost or done twice and that the portal recovers by itself. Each prints its figures
(`pytest -s` shows them)."""

from __future__ import annotations

import functools
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_URL

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.faults,
    pytest.mark.skipif(not PG_URL, reason="PORTAL_TEST_DATABASE_URL is not set"),
]

_spec = importlib.util.spec_from_file_location(
    "bench_faults", Path(__file__).resolve().parent.parent / "bench" / "faults.py"
)
faults = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = faults  # dataclasses look their module up
_spec.loader.exec_module(faults)

needs_postgres_server = pytest.mark.skipif(
    not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")),
    reason="no PostgreSQL server programs to start a private instance with",
)
needs_redis_server = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


@functools.cache
def run(name: str):
    """Each run once per session (two tests read the Stripe run's figures)."""
    outcome = faults.run(name, database_url=PG_URL)
    print(outcome.report())
    return outcome


@needs_postgres_server
def test_postgresql_stopped_mid_run():
    outcome = run("postgres-stop")
    assert outcome.problems == []
    assert outcome.figures["duplicated"] == 0
    assert outcome.figures["lost (paid, never fulfilled)"] == 0
    assert outcome.figures["review page while PostgreSQL was down"].get("503", 0) > 0
    assert outcome.recovery_seconds < 10


@needs_redis_server
def test_redis_lost_and_back():
    outcome = run("redis-loss")
    assert outcome.problems == []
    assert outcome.requests["Redis down: entry 200"] == 10  # checkout goes on without Redis
    assert outcome.requests["limits back: entry 429"] > 0  # the limits come back with it


def test_smtp_refusing_then_greylisting():
    outcome = run("smtp-refusing")
    assert outcome.problems == []
    assert outcome.figures["delivered"] == outcome.figures["pay links queued"]
    assert outcome.figures["duplicated"] == 0
    assert outcome.figures["operator alerts"] == 0


def test_stripe_bursts_during_handoffs_and_refunds():
    outcome = run("stripe-bursts")
    assert outcome.figures["Checkout Sessions beyond one per order"] == 0
    assert outcome.figures["duplicated"] == 0
    assert outcome.figures["lost (paid, never fulfilled)"] == 0
    assert outcome.requests["handoff: pay 503"] > 0  # the learners did meet the burst
    assert outcome.figures["duplicate refunds"] == 0
    assert outcome.figures["refunded per order at Stripe"] == [2000]
    assert outcome.problems == []


def test_a_refund_retried_after_a_lost_answer_is_counted_once_in_the_books():
    """Fixed by the one refund service (portal/refunds.py: one row per Stripe refund id, and a
    retry that finds nothing left answers the refund its key made); the same interleaving, step
    by step: tests/test_money_events_api.py::test_a_refund_retried_after_a_lost_answer_*."""
    outcome = run("stripe-bursts")
    assert outcome.figures["refunded per order in the portal's books"] == [2000] * 4
    # Each merchant's retries end in the refund's answer, never a refusal.
    assert outcome.requests["refund: API 200"] == 4
    assert [status for status in outcome.requests if status.startswith("refund: API 4")] == []


def test_rolling_hup():
    outcome = run("rolling-hup")
    assert outcome.problems == []


def test_term_with_handoffs_in_flight():
    outcome = run("term-in-flight")
    assert outcome.problems == []
    assert outcome.requests["pay in flight: 303"] == 10


@needs_postgres_server
def test_database_at_its_connection_limit():
    outcome = run("connection-limit")
    assert outcome.problems == []


def test_job_worker_stopped_mid_call():
    outcome = run("worker-stopped")
    assert outcome.problems == []
    assert outcome.figures["the job it held, after it exited"] == "done"
