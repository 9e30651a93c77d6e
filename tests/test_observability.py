"""Request ids (accepted, generated, echoed, sent upstream), JSON logs with the request id and the
order, secrets and card numbers never in the logs, Prometheus series for requests and upstream
calls, and Stripe's 429 answered with a back-off."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from portal import _PortalHandler
from portal.config import load_settings
from portal.observability.logs import JsonFormatter, TextFormatter, json_handler, secret_values
from portal.observability.request_ids import outbound_headers
from portal.stripe_gateway import StripeGateway
from portal.stripe_gateway.http_client import StripeHttpClient
from tests.conftest import ROOT, STRIPE_BASE, free_port, wait_for
from tests.test_openlearning_sandbox import join
from tests.test_openlearning_sandbox import pay as openlearning_pay
from tests.test_skilljar_checkout import (
    PURCHASE_URL,
    SESSIONS_URL,
    open_review,
    order_row,
)

GENERATED = re.compile(r"[0-9a-f]{32}")
TOKEN = "metrics-token-0123456789"


@contextmanager
def captured_logs(level=logging.DEBUG, secrets=()):
    """Every log record of the process, as the portal's JSON handler writes it."""
    stream = io.StringIO()
    handler = json_handler(stream, secrets)
    handler.setLevel(level)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, old_level) if old_level else level)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def lines(stream) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


# --- request ids ---------------------------------------------------------------------------------


def test_a_request_without_an_id_gets_a_new_one_on_the_response(client):
    first = client.get("/healthz").headers["X-Request-Id"]
    second = client.get("/healthz").headers["X-Request-Id"]
    assert GENERATED.fullmatch(first)
    assert GENERATED.fullmatch(second)
    assert first != second


def test_a_sane_request_id_is_kept_and_echoed(client):
    response = client.get("/healthz", headers={"X-Request-Id": "nginx-4f1c2a9e0b7d"})
    assert response.headers["X-Request-Id"] == "nginx-4f1c2a9e0b7d"
    # Error pages carry it too.
    missing = client.get("/no-such-page", headers={"X-Request-Id": "req.404.check"})
    assert missing.status_code == 404
    assert missing.headers["X-Request-Id"] == "req.404.check"


@pytest.mark.parametrize(
    "offered",
    ["short", "x" * 129, "has spaces in it", "semi;colon;value", "<script>alert(1)</script>"],
)
def test_an_unusable_request_id_is_replaced(client, offered):
    echoed = client.get("/healthz", headers={"X-Request-Id": offered}).headers["X-Request-Id"]
    assert echoed != offered
    assert GENERATED.fullmatch(echoed)


def test_the_request_id_goes_out_to_the_platform_and_to_stripe(
    client, mocked, purchase, checkout_session
):
    mocked.get(PURCHASE_URL, json=purchase())
    review = client.get(
        "/skilljar/checkout?purchase_id=p1abc", headers={"X-Request-Id": "entry-request-0001"}
    )
    assert review.status_code == 200
    assert mocked.calls[-1].request.headers["X-Request-Id"] == "entry-request-0001"
    order = order_row()
    mocked.post(SESSIONS_URL, json=checkout_session(client_reference_id=order.reference))
    token = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
    paid = client.post(
        f"/orders/{order.reference}/pay",
        data={"csrf_token": token},
        headers={"X-Request-Id": "pay-request-0002"},
    )
    assert paid.status_code == 303
    stripe_call = mocked.calls[-1].request
    assert stripe_call.url == SESSIONS_URL
    assert stripe_call.headers["X-Request-Id"] == "pay-request-0002"


def test_outside_a_request_no_id_is_invented():
    assert outbound_headers({"Accept": "x"}) == {"Accept": "x"}


# --- logs ----------------------------------------------------------------------------------------


def test_log_lines_are_json_with_the_request_id_and_the_order(
    client, mocked, purchase, checkout_session
):
    review = open_review(client, mocked, purchase)
    order = order_row()
    mocked.post(SESSIONS_URL, json=checkout_session(client_reference_id=order.reference))
    token = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
    with captured_logs(logging.INFO) as stream:
        client.post(
            f"/orders/{order.reference}/pay",
            data={"csrf_token": token},
            headers={"X-Request-Id": "log-check-request-1"},
        )
    records = lines(stream)
    stripe_lines = [
        r
        for r in records
        if r["logger"] == "portal.stripe" and "checkout.sessions.create" in r["message"]
    ]  # (a promo's coupons.create comes first)
    assert stripe_lines, records
    line = stripe_lines[0]
    assert line["request_id"] == "log-check-request-1"
    assert line["order_id"] == order.id
    assert line["order_reference"] == order.reference
    assert line["level"] == "INFO"
    assert "checkout.sessions.create" in line["message"]
    assert line["time"].endswith("+00:00")


def test_the_formatter_masks_secrets_and_card_numbers():
    formatter = JsonFormatter(("sk_live_0123456789abcdef", 'quo"ted-secret'))
    record = logging.LogRecord(
        "portal.test",
        logging.WARNING,
        __file__,
        1,
        "key %s card %s and %s; quoted %s; not a card 1234567890123",
        (
            "sk_live_0123456789abcdef",
            "4242 4242 4242 4242",
            "4000-0000-0000-0002",
            'quo"ted-secret',
        ),
        None,
    )
    line = formatter.format(record)
    assert "sk_live_0123456789abcdef" not in line
    assert "4242 4242 4242 4242" not in line
    assert "4000-0000-0000-0002" not in line
    assert "ted-secret" not in line
    assert json.loads(line)["message"] == (
        "key [redacted] card [card number] and [card number]; quoted [redacted]; "
        "not a card 1234567890123"
    )


def test_plain_text_lines_are_masked_the_same_way():
    """PORTAL_LOG_FORMAT=text has the JSON lines' safety net: secret values and card numbers."""
    formatter = TextFormatter(("sk_live_0123456789abcdef",))
    record = logging.LogRecord(
        "portal.test",
        logging.WARNING,
        __file__,
        1,
        "key %s card %s; not a card 1234567890123",
        ("sk_live_0123456789abcdef", "4242 4242 4242 4242"),
        None,
    )
    record.order_id = 42
    line = formatter.format(record)
    assert "sk_live_0123456789abcdef" not in line
    assert "4242 4242 4242 4242" not in line
    assert line.endswith(
        "WARNING portal.test [order=42] key [redacted] card [card number]; not a card 1234567890123"
    )


def test_a_plain_text_record_is_one_line_whatever_its_message_holds():
    """A line break in a message (a platform's error text, a learner's name) is escaped, so it
    cannot start what looks like another log line; a traceback still follows on its own lines."""
    formatter = TextFormatter()
    forged = "platform said: bad\n2026-12-05 08:00:00,000 INFO portal.checkout order paid\r\x1b[2J"
    record = logging.LogRecord("portal.test", logging.ERROR, __file__, 1, forged, (), None)
    line = formatter.format(record)
    assert not any(char in line for char in "\n\r\x1b")
    assert "bad\\n2026-12-05 08:00:00,000 INFO portal.checkout order paid\\r\\u001b[2J" in line
    assert "[order=-]" in line
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord(
            "portal.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    lines = formatter.format(failed).splitlines()
    assert lines[0].endswith("ERROR portal.test [order=-] failed")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"


def test_the_text_log_format_gets_the_masking_formatter_with_the_secrets():
    from portal import configure_logging

    root = logging.getLogger()
    kept = [h for h in root.handlers if isinstance(h, _PortalHandler)]
    level = root.level
    for handler in kept:
        root.removeHandler(handler)
    try:
        configure_logging(
            settings=load_settings(
                {"LOG_FORMAT": "text", "SECRET_KEY": "text-format-secret-1"}, environ={}
            )
        )
        (handler,) = [h for h in root.handlers if isinstance(h, _PortalHandler)]
        assert isinstance(handler.formatter, TextFormatter)
        assert "text-format-secret-1" in handler.formatter.secrets
        root.removeHandler(handler)
    finally:
        for handler in kept:
            root.addHandler(handler)
        root.setLevel(level)


def test_digits_inside_an_identifier_are_not_taken_for_a_card_number():
    # 4242424242424242 passes the Luhn check; inside a hex request id or an object id it is
    # part of the identifier, which the log must keep whole.
    formatter = JsonFormatter()
    record = logging.LogRecord(
        "portal.test",
        logging.INFO,
        __file__,
        1,
        "request 5c4242424242424242ab, intent pi_4242424242424242x, card=4242424242424242",
        (),
        None,
    )
    assert json.loads(formatter.format(record))["message"] == (
        "request 5c4242424242424242ab, intent pi_4242424242424242x, card=[card number]"
    )


def test_secret_values_come_from_the_settings():
    values = secret_values(
        load_settings(
            {
                "SECRET_KEY": "flask-secret-1",
                "STRIPE_WEBHOOK_SECRET": ("whsec_old_1", "whsec_new_2"),
                "SMTP_URL": "smtp://mailer:mail-password-9@smtp.example.com:587",
                "PUBLIC_URL": "https://pay.example.com",
            },
            environ={},
        )
    )
    assert {"flask-secret-1", "whsec_old_1", "whsec_new_2", "mail-password-9"} <= set(values)
    assert "https://pay.example.com" not in values


SECRETS = {
    "SECRET_KEY": "obs-flask-secret-7f3a9c51",
    "STRIPE_SECRET_KEY": "sk_test_obs_5e1d8b2c44",
    "STRIPE_WEBHOOK_SECRET": "whsec_obs_9a8b7c6d5e",
    "SKILLJAR_API_KEY": "skilljar-obs-key-314159",
    "OPENLEARNING_API_KEY": "openlearning-obs-key-271828",
}
CARD_FORMS = ("4242 4242 4242 4242", "4242424242424242", "4242-4242-4242-4242")


def test_no_secret_or_card_number_is_ever_logged_across_whole_purchases(sandbox_server):
    """A Skilljar purchase and an OpenLearning enrolment through the sandbox over real HTTP
    (portal and stand-ins in this process), with every logger of the process captured: at
    DEBUG through the portal's JSON handler, and at INFO (the production level) through a plain
    handler that masks nothing, so the second proves the code itself never logs them."""
    server = sandbox_server(SANDBOX_WEBHOOK_DELAY_SECONDS="0", **SECRETS)
    plain = io.StringIO()
    plain_handler = logging.StreamHandler(plain)
    plain_handler.setLevel(logging.INFO)
    plain_handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    # Not the test server's own access log: it prints the stand-ins' query strings, which hold
    # OpenLearning's key by design of its API. Under gunicorn the access log has no query string
    # (test_gunicorn_merges_worker_metrics_and_logs_json_access_lines); the JSON handler above
    # still sees these records and must mask the key.
    plain_handler.addFilter(lambda record: record.name != "werkzeug")
    secrets = secret_values(server.app.config["PORTAL"])
    assert set(SECRETS.values()) <= set(secrets)
    logging.getLogger().addHandler(plain_handler)
    try:
        with captured_logs(logging.DEBUG, secrets) as stream:
            browser = requests.Session()
            review = browser.post(
                f"{server.url}/sandbox/skilljar/academy/checkout",
                data={"offer": "intro-python", "quantity": "1", "promo_code": ""},
                timeout=30,
            )
            assert review.status_code == 200, review.text
            action = re.search(r'action="([^"]+/pay)"', review.text).group(1)
            token = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
            to_stripe = browser.post(
                server.url + action, data={"csrf_token": token}, allow_redirects=False
            )
            assert to_stripe.status_code == 303
            paid = browser.post(
                to_stripe.headers["Location"],
                data={
                    "email": "ada@example.com",
                    "card_number": CARD_FORMS[0],
                    "expiry": "12/39",
                    "cvc": "123",
                    "name": "Ada Lovelace",
                },
                allow_redirects=False,
            )
            assert paid.status_code == 303, paid.text
            back = browser.get(urljoin(server.url, paid.headers["Location"]))
            assert back.status_code == 200
            learner = requests.Session()
            enrol_review, _jwt = join(server, learner, "python-foundations", "ada")
            enrolled = openlearning_pay(server, learner, enrol_review)
            assert enrolled.status_code in {303, 200}
    finally:
        logging.getLogger().removeHandler(plain_handler)
    json_text = stream.getvalue()
    plain_text = plain.getvalue()
    assert "portal.stripe" in json_text  # the calls were logged
    assert "portal.http" in json_text
    assert any(r.get("request_id") for r in lines(stream))
    for secret in SECRETS.values():
        assert secret not in json_text, secret
        assert secret not in plain_text, secret
    for card in CARD_FORMS:
        assert card not in json_text
        assert card not in plain_text


# --- metrics -------------------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape(client) -> dict:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    return samples(response.text)


def test_metrics_expose_requests_by_route_and_upstream_calls(make_app, mocked, purchase):
    client = make_app(METRICS_TOKEN=TOKEN).test_client()
    before = scrape(client)
    requests_key = (
        "portal_http_requests_total",
        (("endpoint", "skilljar.checkout"), ("method", "GET"), ("status", "200")),
    )
    calls_key = ("portal_upstream_calls_total", (("outcome", "ok"), ("target", "skilljar")))
    failed_key = (
        "portal_upstream_calls_total",
        (("outcome", "server_error"), ("target", "skilljar")),
    )
    open_review(client, mocked, purchase)
    mocked.replace("GET", PURCHASE_URL, status=503)
    assert client.get("/skilljar/checkout?purchase_id=p1abc").status_code == 503
    after = scrape(client)
    assert after[requests_key] - before.get(requests_key, 0) == 1
    assert after[calls_key] - before.get(calls_key, 0) == 1
    assert after[failed_key] - before.get(failed_key, 0) == 1
    bucket = (
        "portal_upstream_call_duration_seconds_count",
        (("outcome", "ok"), ("target", "skilljar")),
    )
    assert after[bucket] >= 1
    # Routes by name, never by raw path (no label per order reference).
    assert not any("ord_" in str(labels) for _name, labels in after)
    # The database-derived gauges are still there.
    assert any(name == "portal_orders" for name, _labels in after)
    assert any(name.startswith("portal_http_request_duration_seconds") for name, _ in after)


# --- Stripe's rate limit -----------------------------------------------------------------------


def gateway() -> StripeGateway:
    return StripeGateway("sk_test_unit", STRIPE_BASE, connect_timeout=1, read_timeout=5)


def test_stripe_429_is_retried_with_back_off_and_the_same_idempotency_key(
    mocked, monkeypatch, checkout_session
):
    slept: list[float] = []
    monkeypatch.setattr(StripeHttpClient, "sleep", slept.append)
    limited = {"error": {"type": "rate_limit_error", "message": "Too many requests"}}
    mocked.post(SESSIONS_URL, json=limited, status=429)
    mocked.post(SESSIONS_URL, json=limited, status=429, headers={"Retry-After": "2"})
    mocked.post(SESSIONS_URL, json=checkout_session())
    session = gateway().client.v1.checkout.sessions.create(
        params={"mode": "payment"}, options={"idempotency_key": "order-1-attempt-1"}
    )
    assert session["id"] == "cs_test_1"
    assert slept == [0.5, 2.0]  # exponential, or longer when Stripe says so
    keys = {call.request.headers["Idempotency-Key"] for call in mocked.calls}
    assert keys == {"order-1-attempt-1"}
    assert len(mocked.calls) == 3


def test_stripe_429_that_persists_becomes_a_transient_error(mocked, monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(StripeHttpClient, "sleep", slept.append)
    limited = {"error": {"type": "rate_limit_error", "message": "Too many requests"}}
    mocked.get(f"{SESSIONS_URL}/cs_test_1", json=limited, status=429)
    from portal.http import UpstreamError

    with pytest.raises(UpstreamError) as caught:
        gateway().retrieve_session("cs_test_1")
    assert caught.value.transient is True
    assert caught.value.status == 429
    assert slept == [0.5, 1.0, 2.0]
    assert len(mocked.calls) == 4


# --- under gunicorn --------------------------------------------------------------------------


def test_gunicorn_merges_worker_metrics_and_logs_json_access_lines(database_url, tmp_path):
    """Two gunicorn workers with gunicorn.conf.py: /metrics counts the requests both answered
    (multiprocess mode), and each access log line is JSON with the request id and no query
    string."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_")},
        "PORTAL_SANDBOX": "1",
        "PORTAL_SECRET_KEY": "gunicorn-metrics-key",
        "PORTAL_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "PORTAL_DATABASE_URL": database_url,
        "PORTAL_SANDBOX_DATABASE_URL": f"sqlite:///{tmp_path / 'sandbox.db'}",
        "PORTAL_METRICS_TOKEN": TOKEN,
        "GUNICORN_ACCESSLOG": str(tmp_path / "access.log"),
    }
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [str(bin_dir / "flask"), "--app", "wsgi", "portal", "init-db"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    with open(tmp_path / "gunicorn.log", "w") as log:
        process = subprocess.Popen(
            [
                str(bin_dir / "gunicorn"),
                "-c",
                "gunicorn.conf.py",
                "-b",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--threads",
                "4",
                "wsgi:app",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(f"{base}/healthz")
            answered = 1  # wait_for's successful check
            with ThreadPoolExecutor(8) as pool:  # parallel, so both workers take some
                statuses = list(
                    pool.map(
                        lambda i: (
                            requests.get(
                                f"{base}/healthz",
                                params={"api_key": "query-secret-4711"},
                                headers={"X-Request-Id": f"gunicorn-check-{i:04d}"},
                                timeout=10,
                            ).status_code
                        ),
                        range(40),
                    )
                )
            assert statuses == [200] * 40
            answered += 40
            forging = requests.get(  # a path and an agent that would break a line or forge one
                f"{base}/x%5C%0A%7B%22status%22%3A200%7D",
                headers={"User-Agent": 'evil\\agent "quoted"'},
                timeout=10,
            )
            assert forging.status_code == 404
            scraped = requests.get(
                f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
            )
            assert scraped.status_code == 200
            found = samples(scraped.text)
            health = (
                "portal_http_requests_total",
                (("endpoint", "orders.healthz"), ("method", "GET"), ("status", "200")),
            )
            # wait_for may have tried more than once before the app answered.
            assert answered <= found[health] <= answered + 200
            assert found[health] >= answered
        finally:
            process.terminate()
            process.wait(30)
    access = (tmp_path / "access.log").read_text().splitlines()
    entries = [json.loads(line) for line in access]
    ids = {entry["request_id"] for entry in entries}
    assert {f"gunicorn-check-{i:04d}" for i in range(40)} <= ids
    assert all(GENERATED.fullmatch(i) or i.startswith("gunicorn-check-") for i in ids)
    assert "query-secret-4711" not in "\n".join(access)
    assert {entry["path"] for entry in entries} >= {"/healthz", "/metrics"}
    (forged,) = [entry for entry in entries if entry["path"].startswith("/x")]
    assert forged["path"] == '/x\\\n{"status":200}'
    assert (forged["agent"], forged["status"]) == ('evil\\agent "quoted"', 404)
