"""Shared fixtures: an app on a clean database (SQLite, and PostgreSQL when
PORTAL_TEST_DATABASE_URL is set), HTTP mocks, factories, and live sandbox servers."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
import responses
from sqlalchemy import create_engine, text
from werkzeug.serving import make_server

from portal import create_app
from portal.db import db, normalise_url, upgrade_schema
from portal.models import Base

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("PORTAL_TEST_DATABASE_URL")

STRIPE_BASE = "https://stripe.test"
SKILLJAR_BASE = "https://skilljar.test"
UNIT_SETTINGS = {
    "TESTING": True,
    "SECRET_KEY": "test-secret-key",
    "PUBLIC_URL": "http://portal.test",
    "STRIPE_SECRET_KEY": "sk_test_unit",
    "STRIPE_WEBHOOK_SECRET": "whsec_unit_1,whsec_unit_2",
    "STRIPE_API_BASE": STRIPE_BASE,
    "SKILLJAR_API_KEY": "sj-unit-key",
    "SKILLJAR_API_BASE": SKILLJAR_BASE,
    "REDIRECT_HOSTS": "academy.test",
    "RETRY_BASE_SECONDS": "0",
    "RETRY_MAX_ATTEMPTS": "3",
    "INLINE_FULFIL_SECONDS": "2",
}


STRIPE_COUPON = {"id": "co_test_1", "object": "coupon", "valid": True}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reset_database(url: str) -> None:
    """Empty every table (the schema itself is built once per run by the migrations)."""
    engine = create_engine(normalise_url(url))
    with engine.begin() as connection:
        tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
        if engine.dialect.name == "postgresql":
            names = ", ".join(tables)  # our own table names, not input
            connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))  # noqa: S608
        else:
            for table in tables:
                connection.execute(text(f"DELETE FROM {table}"))  # noqa: S608
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("db") / "portal.db"
    upgrade_schema(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url():
    if not PG_URL:
        yield None
        return
    # A schema of our own inside the test database, rebuilt by the migrations once per run.
    schema = f"portal_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalise_url(PG_URL))
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    url = f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    upgrade_schema(url)
    yield url
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, sqlite_template, tmp_path):
    """Each test that needs a database runs on SQLite and, when configured, on PostgreSQL."""
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        if url is None:
            pytest.skip("PORTAL_TEST_DATABASE_URL is not set")
        _reset_database(url)
        return url
    path = tmp_path / "portal.db"
    path.write_bytes(sqlite_template.read_bytes())
    return f"sqlite:///{path}"


@pytest.fixture
def settings(database_url, tmp_path):
    return {**UNIT_SETTINGS, "DATABASE_URL": database_url}


@pytest.fixture
def make_app(database_url, tmp_path):
    """Build an app with extra settings: make_app(TAX_MODE="fixed", ...)."""
    created = []

    def factory(**overrides):
        app = create_app({**UNIT_SETTINGS, "DATABASE_URL": database_url, **overrides})
        app.instance_path = str(tmp_path / "instance")
        created.append(app)
        return app

    yield factory
    db.dispose()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def mocked():
    """Outbound HTTP stand-ins; every request made must have been registered."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        # A promo's one-use coupon, made before its Checkout Session (see stripe_gateway).
        rsps.post(f"{STRIPE_BASE}/v1/coupons", json=STRIPE_COUPON)
        yield rsps


# --- factories ------------------------------------------------------------------------------------


@pytest.fixture
def purchase():
    def factory(**overrides) -> dict:
        data = {
            "id": "p1abc",
            "user": {
                "id": "u1",
                "email": "learner@example.com",
                "first_name": "Grace",
                "last_name": "Hopper",
                "full_name": "Grace Hopper",
            },
            "state": "CREATED",
            "status_msg": "",
            "purchased_at": None,
            "refunded_at": None,
            "refund_cents": None,
            "payment_processor": "EXTERNAL",
            "order_id": "o1",
            "price_cents": 7840,
            "quantity": 2,
            "offer_id": "off1",
            "offer_sku": "PY-101",
            "offer_description": "Introduction to Python",
            "offer_price_cents": 4900,
            "promo_code": "LAUNCH20",
            "promo_code_price_cents": 3920,
            "promo_code_percent_off": 20,
            "promo_code_quantity": 2,
            "tax_price_cents": None,
            "payment_processor_order_id": "",
            "payment_processor_response_data": "",
            "currency_code": "USD",
        }
        data.update(overrides)
        return data

    return factory


@pytest.fixture
def checkout_session():
    def factory(**overrides) -> dict:
        data = {
            "id": "cs_test_1",
            "object": "checkout.session",
            "status": "open",
            "payment_status": "unpaid",
            "amount_total": 7840,
            "amount_subtotal": 7840,
            "currency": "usd",
            "client_reference_id": None,
            "metadata": {},
            "payment_intent": None,
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "url": "https://checkout.stripe.test/c/pay/cs_test_1",
            "expires_at": int(time.time()) + 3600,
        }
        data.update(overrides)
        return data

    return factory


# --- live servers ---------------------------------------------------------------------------


class LiveServer:
    def __init__(self, app, port):
        self.app = app
        self.url = f"http://127.0.0.1:{port}"
        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.thread.join(5)

    @property
    def services(self):
        return self.app.extensions["portal"]

    @property
    def store(self):
        return self.app.extensions["sandbox_store"]

    def control(self, **values):
        requests.post(self.url + "/sandbox/control", json=values, timeout=5).raise_for_status()


@pytest.fixture
def sandbox_server(database_url, tmp_path):
    """The portal in sandbox mode, served in-process over real HTTP on loopback. Webhooks are
    not delivered automatically (tests send them when they want them)."""
    started = []

    def factory(**overrides):
        port = free_port()
        settings = {
            "TESTING": True,
            "SANDBOX": "1",
            "SECRET_KEY": "sandbox-test-key",
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "DATABASE_URL": database_url,
            "SANDBOX_DATABASE_URL": f"sqlite:///{tmp_path / f'sandbox-{port}.db'}",
            "SANDBOX_WEBHOOK_DELAY_SECONDS": "-1",
            "RETRY_BASE_SECONDS": "0",
            "RETRY_MAX_ATTEMPTS": "4",
            "INLINE_FULFIL_SECONDS": "3",
            **overrides,
        }
        server = LiveServer(create_app(settings), port).start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


def wait_for(url: str, seconds: float = 45.0) -> None:
    """Until `url` answers 200: a gunicorn start takes a second or two, much longer on a loaded
    machine (CI runs the suite beside browser tests)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@pytest.fixture
def gunicorn_sandbox(database_url, tmp_path):
    """The portal in sandbox mode under real gunicorn (2 workers), plus helpers to run workers."""
    processes = []
    port = free_port()
    env = {
        **os.environ,
        "PORTAL_SANDBOX": "1",
        "PORTAL_SECRET_KEY": "gunicorn-test-key",
        "PORTAL_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "PORTAL_DATABASE_URL": database_url,
        "PORTAL_SANDBOX_DATABASE_URL": f"sqlite:///{tmp_path / 'sandbox.db'}",
        "PORTAL_SANDBOX_WEBHOOK_DELAY_SECONDS": "0.2",
        "PORTAL_RETRY_BASE_SECONDS": "0",
    }
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [str(bin_dir / "flask"), "--app", "wsgi", "portal", "init-db"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [
            str(bin_dir / "gunicorn"),
            "-c",
            "gunicorn.conf.py",
            "-b",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--threads",
            "8",
            "wsgi:app",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    processes.append(proc)
    wait_for(f"http://127.0.0.1:{port}/healthz")

    class Handle:
        url = f"http://127.0.0.1:{port}"
        environment = env
        log_path = tmp_path / "gunicorn.log"

        def worker(self, *args):
            worker = subprocess.Popen(
                [str(bin_dir / "flask"), "--app", "wsgi", "portal", "worker", *args],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            processes.append(worker)
            return worker

    yield Handle()
    for process in processes:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()  # reaped: no "subprocess is still running" warning later
    log.close()


# --- outbound destinations (portal.outbound) -------------------------------------------------

# A merchant's webhook URL is resolved when it is registered and when each delivery is sent. Tests
# never ask real DNS: names resolve from `fake_dns` (a test may add its own answers, such as a
# private or metadata address), loopback names to 127.0.0.1, and any other name to a public
# address that `responses` stands in for. A connection to anything but loopback fails the test.
FAKE_PUBLIC_ADDRESS = "93.184.215.14"


def _answers(addresses, port):
    found = []
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
        found.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
    return found


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch):
    from portal import outbound

    table: dict[str, list[str]] = {}

    def getaddrinfo(host, port, *args, **kwargs):
        host = str(host).lower()
        if host in table:
            if not table[host]:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return _answers(table[host], port)
        if host in {"localhost", "127.0.0.1"} or host.endswith(".localhost"):
            return _answers(["127.0.0.1"], port)
        return _answers([FAKE_PUBLIC_ADDRESS], port)

    original = outbound.PinnedAdapter.build_connection_pool_key_attributes

    def loopback_only(self, request, verify, cert=None):
        host_params, pool_kwargs = original(self, request, verify, cert)
        if not ipaddress.ip_address(host_params["host"]).is_loopback:
            raise AssertionError(f"a test connected to {host_params['host']}, not loopback")
        return host_params, pool_kwargs

    monkeypatch.setattr(outbound, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(
        outbound.PinnedAdapter, "build_connection_pool_key_attributes", loopback_only
    )
    return table
