"""`GET /metrics`: Prometheus text format, only for a scraper holding PORTAL_METRICS_TOKEN."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from portal.config import ConfigError
from portal.db import db
from portal.models import JobState, OrderEvent, OrderState, utcnow
from tests.admin_support import add_fulfil_job, make_order

TOKEN = "metrics-token-0123456789"


@pytest.fixture
def scraper(make_app):
    return make_app(METRICS_TOKEN=TOKEN).test_client()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_do_not_exist_without_a_token_setting(client):
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 404


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer wrong-token-0123456789", f"Basic {TOKEN}", f"Bearer {TOKEN}x"],
)
def test_metrics_refuse_a_missing_or_wrong_token(scraper, header):
    headers = {"Authorization": header} if header is not None else {}
    response = scraper.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert "portal_orders" not in response.text


def test_metrics_report_orders_attention_jobs_and_calls(scraper):
    now = utcnow()
    make_order(platform_ref="a", state=OrderState.FULFILLED)
    stalled = make_order(platform_ref="b", state=OrderState.PAID, paid_at=now - timedelta(hours=1))
    add_fulfil_job(stalled, state=JobState.QUEUED, run_at=now - timedelta(seconds=90))
    failed = make_order(platform_ref="c", state=OrderState.FULFIL_FAILED)
    add_fulfil_job(failed, state=JobState.DEAD)
    make_order(platform_ref="d", state=OrderState.FULFILLED, disputed=True)
    with db.transaction() as session:
        for status in (200, 503, None):
            session.add(
                OrderEvent(
                    order_id=stalled.id,
                    kind="http",
                    message="call",
                    detail={"method": "POST", "url": "https://x.test", "status": status},
                )
            )
        session.add(
            OrderEvent(
                order_id=stalled.id,
                kind="http",
                message="stripe",
                detail={"method": "STRIPE", "url": "refunds.create", "status": 200},
            )
        )
    response = scraper.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    assert response.headers["Cache-Control"] == "no-store"
    found = samples(response.text)
    assert found[("portal_orders", (("state", "fulfilled"),))] == 2
    assert found[("portal_orders", (("state", "paid"),))] == 1
    assert found[("portal_orders", (("state", "refunded"),))] == 0
    attention = "portal_orders_needing_attention"
    assert found[(attention, (("reason", "unfulfilled"),))] == 1
    assert found[(attention, (("reason", "fulfil_failed"),))] == 1
    assert found[(attention, (("reason", "disputed"),))] == 1
    assert found[("portal_jobs", (("kind", "fulfil"), ("state", "queued")))] == 1
    assert found[("portal_jobs", (("kind", "fulfil"), ("state", "dead")))] == 1
    oldest = found[("portal_jobs_oldest_due_seconds", (("kind", "fulfil"),))]
    assert 89 <= oldest < 150
    assert found[("portal_external_calls_15m", (("target", "skilljar"),))] == 3
    assert found[("portal_external_call_errors_15m", (("target", "skilljar"),))] == 2
    assert found[("portal_external_calls_15m", (("target", "stripe"),))] == 1
    assert found[("portal_external_call_errors_15m", (("target", "stripe"),))] == 0


def test_a_short_metrics_token_stops_the_app(make_app):
    with pytest.raises(ConfigError, match="PORTAL_METRICS_TOKEN"):
        make_app(METRICS_TOKEN="short")
