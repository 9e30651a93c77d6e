"""`portal.outbound`: requests to destinations a merchant or operator chose go only to public
addresses, every resolved address is checked, the connection goes to the address that was
checked (with the host name kept for `Host`, SNI and the certificate), redirects are not followed,
and PORTAL_OUTBOUND_ALLOW_LOOPBACK opens loopback and nothing else.

Names resolve through `fake_dns` (tests/conftest.py); the only real connections are to servers
this module starts on 127.0.0.1."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from portal import ConfigError, outbound
from portal.alerts import alert
from portal.api import webhooks_out
from portal.config import load_settings, validate
from portal.db import db
from portal.http import UpstreamError
from portal.models import OrderState, WebhookDelivery
from tests.admin_support import make_order
from tests.api_support import make_key

REFUSED = [
    "127.0.0.1",
    "127.255.0.9",
    "::1",
    "10.1.2.3",
    "172.16.5.4",
    "192.168.0.1",
    "169.254.169.254",  # cloud metadata
    "fd00:ec2::254",  # AWS metadata over IPv6
    "100.100.100.200",  # Alibaba metadata (shared address space)
    "100.64.0.1",
    "fe80::1",
    "fc00::1",
    "0.0.0.0",  # noqa: S104 - an address under test, not a bind
    "::",
    "224.0.0.1",
    "ff02::1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.10",
    "198.18.0.1",
    "::ffff:10.0.0.1",
    "::ffff:127.0.0.1",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
]
PUBLIC = ["93.184.215.14", "8.8.8.8", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]


@pytest.mark.parametrize("address", REFUSED)
def test_internal_addresses_are_refused(address):
    assert outbound.refusal(ipaddress.ip_address(address), loopback_ok=False)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert outbound.refusal(ipaddress.ip_address(address), loopback_ok=False) is None


def test_the_loopback_setting_opens_loopback_and_nothing_else():
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert outbound.refusal(ipaddress.ip_address(address), loopback_ok=True) is None
    for address in set(REFUSED) - {"127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1"}:
        assert outbound.refusal(ipaddress.ip_address(address), loopback_ok=True), address


def test_every_resolved_address_must_pass(fake_dns):
    fake_dns["mixed.example.com"] = ["93.184.215.14", "10.0.0.1"]
    with pytest.raises(outbound.BlockedDestination, match="private"):
        outbound.checked_addresses("mixed.example.com", 443, loopback_ok=False)
    fake_dns["gone.example.com"] = []
    with pytest.raises(outbound.BlockedDestination, match="does not resolve"):
        outbound.checked_addresses("gone.example.com", 443, loopback_ok=False)


def test_the_loopback_setting_defaults_to_the_sandbox():
    assert outbound.allow_loopback(
        load_settings({"SANDBOX": True, "OUTBOUND_ALLOW_LOOPBACK": None}, environ={})
    )
    assert not outbound.allow_loopback(
        load_settings({"SANDBOX": False, "OUTBOUND_ALLOW_LOOPBACK": None}, environ={})
    )
    assert not outbound.allow_loopback(
        load_settings({"SANDBOX": True, "OUTBOUND_ALLOW_LOOPBACK": False}, environ={})
    )
    assert outbound.allow_loopback(
        load_settings({"SANDBOX": False, "OUTBOUND_ALLOW_LOOPBACK": True}, environ={})
    )


def test_a_loopback_alert_url_needs_the_setting():
    url = "http://127.0.0.1:9000/alerts"
    with pytest.raises(ConfigError, match="PORTAL_ALERT_WEBHOOK_URL"):
        validate(load_settings({"ALERT_WEBHOOK_URL": url}, environ={}), testing=True)
    settings = load_settings({"ALERT_WEBHOOK_URL": url, "OUTBOUND_ALLOW_LOOPBACK": "1"}, environ={})
    validate(settings, testing=True)
    with pytest.raises(ConfigError, match="private"):  # loopback only: private stays shut
        validate(
            load_settings(
                {"ALERT_WEBHOOK_URL": "https://10.0.0.1/", "OUTBOUND_ALLOW_LOOPBACK": "1"},
                environ={},
            ),
            testing=True,
        )


# --- real connections to servers on 127.0.0.1 --------------------------------------------------


class Receiver:
    """A tiny HTTP(S) server on 127.0.0.1 that records what reaches it."""

    def __init__(self, *, status=200, location=None, tls=None):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                received.append((self.path, self.headers.get("Host"), self.rfile.read(length)))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver():
    made = []

    def factory(**kwargs):
        server = Receiver(**kwargs)
        made.append(server)
        return server

    yield factory
    for server in made:
        server.close()


def test_the_connection_goes_to_the_checked_address_with_the_host_name_kept(
    fake_dns, receiver, monkeypatch
):
    server = receiver()
    fake_dns["hooks.pinned.test"] = ["127.0.0.1"]
    calls = []
    resolver = outbound.getaddrinfo
    monkeypatch.setattr(outbound, "getaddrinfo", lambda *a, **k: calls.append(a) or resolver(*a))
    session = outbound.guarded_session(True)
    response = session.post(f"http://hooks.pinned.test:{server.port}/in", data=b"{}", timeout=5)
    assert response.status_code == 200
    assert server.received == [("/in", f"hooks.pinned.test:{server.port}", b"{}")]
    assert len(calls) == 1  # resolved once: the answer checked is the answer connected to


def test_an_answer_that_changes_after_the_check_gains_nothing(fake_dns, receiver):
    """DNS rebinding: each request resolves once, checks, and connects to what it checked; an
    answer that turns internal is refused on the next request, before any connection."""
    server = receiver()
    fake_dns["rebind.pinned.test"] = ["127.0.0.1"]
    session = outbound.guarded_session(True)
    url = f"http://rebind.pinned.test:{server.port}/in"
    assert session.post(url, data=b"1", timeout=5).status_code == 200
    fake_dns["rebind.pinned.test"] = ["10.0.0.1"]
    with pytest.raises(outbound.BlockedDestination, match="private"):
        session.post(url, data=b"2", timeout=5)
    assert [body for _path, _host, body in server.received] == [b"1"]


def test_loopback_is_refused_without_the_setting(fake_dns, receiver):
    server = receiver()
    fake_dns["local.pinned.test"] = ["127.0.0.1"]
    session = outbound.guarded_session(False)
    for url in (
        f"http://127.0.0.1:{server.port}/in",
        f"http://local.pinned.test:{server.port}/in",
        f"http://localhost:{server.port}/in",
    ):
        with pytest.raises(outbound.BlockedDestination, match="loopback"):
            session.post(url, data=b"x", timeout=5)
    assert server.received == []


def test_redirects_are_not_followed(fake_dns, receiver):
    server = receiver(status=302, location="http://169.254.169.254/latest/meta-data/")
    response = outbound.post(
        load_settings({"SANDBOX": False, "OUTBOUND_ALLOW_LOOPBACK": True}, environ={}),
        f"http://127.0.0.1:{server.port}/in",
        json={},
        timeout=5,
    )
    assert response.status_code == 302
    assert len(server.received) == 1


@pytest.fixture
def tls_for_name(tmp_path):
    """A certificate for hooks.tls.test (only), trusted through a CA file of its own."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.tls.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.tls.test")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return SimpleNamespace(context=context, ca=str(cert_path))


def test_tls_checks_the_certificate_against_the_host_name_not_the_address(
    fake_dns, receiver, tls_for_name
):
    server = receiver(tls=tls_for_name.context)
    fake_dns["hooks.tls.test"] = ["127.0.0.1"]
    session = outbound.guarded_session(True)
    response = session.post(
        f"https://hooks.tls.test:{server.port}/in", data=b"{}", verify=tls_for_name.ca, timeout=5
    )
    assert response.status_code == 200
    assert server.received[0][1] == f"hooks.tls.test:{server.port}"
    # The same server under another name: the certificate does not match, nothing is sent.
    fake_dns["other.tls.test"] = ["127.0.0.1"]
    with pytest.raises(outbound.requests.exceptions.SSLError):
        session.post(
            f"https://other.tls.test:{server.port}/in", data=b"x", verify=tls_for_name.ca, timeout=5
        )
    assert len(server.received) == 1


# --- merchant webhooks and the alert webhook, at send time ------------------------------------


def test_a_webhook_whose_name_now_resolves_internally_is_not_sent(make_app, fake_dns):
    app = make_app()
    made = make_key(webhook_url="https://hooks.example.com/portal")  # public when registered
    fake_dns["hooks.example.com"] = ["169.254.169.254"]  # and then the metadata address
    order = make_order(state=OrderState.PAID, platform="merchant", merchant_key_id=made.key.id)
    services = app.extensions["portal"]
    with db.transaction() as session:
        event = webhooks_out.emit(session, services.settings, order, "order.paid")
    job = SimpleNamespace(payload={"event_id": event, "endpoint_id": made.endpoint.id})
    with pytest.raises(UpstreamError) as refused:
        webhooks_out.run_delivery(services, job)
    assert not refused.value.transient  # not retried: the job gives up and an operator sees it
    assert "metadata" in str(refused.value)
    with db.reader() as session:
        row = session.scalar(select(WebhookDelivery).where(WebhookDelivery.event_id == event))
    assert row.state != "delivered"
    assert row.last_status is None


def test_webhooks_reach_a_loopback_receiver_when_the_setting_allows_it(make_app, receiver):
    server = receiver()
    app = make_app(OUTBOUND_ALLOW_LOOPBACK="1")
    url = f"http://127.0.0.1:{server.port}/hooks"
    made = make_key(webhook_url=url, loopback_ok=True)
    order = make_order(state=OrderState.PAID, platform="merchant", merchant_key_id=made.key.id)
    services = app.extensions["portal"]
    with db.transaction() as session:
        event = webhooks_out.emit(session, services.settings, order, "order.paid")
    webhooks_out.run_delivery(
        services, SimpleNamespace(payload={"event_id": event, "endpoint_id": made.endpoint.id})
    )
    with db.reader() as session:
        row = session.scalar(select(WebhookDelivery).where(WebhookDelivery.event_id == event))
    assert row.state == "delivered"
    assert [path for path, _host, _body in server.received] == ["/hooks"]
    with pytest.raises(ValueError, match="refused"):
        make_key(webhook_url=url)  # the setting is asked for explicitly


def test_an_alert_to_a_name_that_resolves_internally_is_not_sent(make_app, fake_dns, caplog):
    app = make_app(ALERT_WEBHOOK_URL="https://alerts.example.com/hook")
    fake_dns["alerts.example.com"] = ["10.9.8.7"]
    order = make_order(state=OrderState.FULFIL_FAILED)
    with caplog.at_level(logging.ERROR):
        alert(app.extensions["portal"], order, "fulfilment failed")
    assert "alert webhook failed" in caplog.text
    assert "private" in caplog.text
