"""Rate limits per client address on the entry points, pay, the merchant API and the console
sign-in; webhooks never limited but size-capped; counters in memory or shared through Redis."""

from __future__ import annotations

import random
import socket
import uuid

import pytest

from portal import ConfigError, create_app
from tests.conftest import UNIT_SETTINGS

BAD_ID = "/skilljar/checkout?purchase_id=NOT-VALID"  # refused before any call: no HTTP mock
REDIS_URL = "redis://127.0.0.1:6379/15"


def random_ip() -> str:
    return f"10.{random.randint(0, 255)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def get(client, path, ip="203.0.113.7", **kwargs):
    return client.get(path, environ_base={"REMOTE_ADDR": ip}, **kwargs)


def post(client, path, ip="203.0.113.7", **kwargs):
    return client.post(path, environ_base={"REMOTE_ADDR": ip}, **kwargs)


def test_entry_point_limit_answers_a_branded_429_with_retry_after(make_app):
    client = make_app(RATELIMIT_ENTRY="2/minute").test_client()
    assert [get(client, BAD_ID).status_code for _ in range(2)] == [400, 400]
    refused = get(client, BAD_ID)
    assert refused.status_code == 429
    assert refused.mimetype == "text/html"
    assert "Too many requests" in refused.text
    assert "Please wait a moment and try again." in refused.text
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    # Another address is counted on its own.
    assert get(client, BAD_ID, ip="198.51.100.9").status_code == 400


def test_each_entry_point_and_pay_are_limited(make_app):
    client = make_app(RATELIMIT_ENTRY="1/minute").test_client()
    for path, method in [
        (BAD_ID, get),
        ("/cleeng/checkout?orderId=x", get),
        ("/openlearning/enrol", post),
        ("/orders/ord_abcdefghijkl/pay", post),
    ]:
        first = method(client, path)
        assert first.status_code != 429, path
        assert method(client, path).status_code == 429, path


def test_limits_follow_the_address_the_trusted_proxy_saw(make_app):
    client = make_app(RATELIMIT_ENTRY="1/minute", TRUSTED_PROXY_HOPS="1").test_client()
    proxy = "127.0.0.1"
    first = get(client, BAD_ID, ip=proxy, headers={"X-Forwarded-For": "198.51.100.1"})
    assert first.status_code == 400
    # The same proxy, another learner: not refused. The first learner again (with a forged
    # left-most entry they added themselves): refused.
    assert (
        get(client, BAD_ID, ip=proxy, headers={"X-Forwarded-For": "198.51.100.2"}).status_code
        == 400
    )
    forged = {"X-Forwarded-For": "1.2.3.4, 198.51.100.1"}
    assert get(client, BAD_ID, ip=proxy, headers=forged).status_code == 429


def test_without_trusted_proxies_forwarded_for_is_ignored(make_app):
    client = make_app(RATELIMIT_ENTRY="1/minute").test_client()
    assert get(client, BAD_ID, headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 400
    spoofed = get(client, BAD_ID, headers={"X-Forwarded-For": "198.51.100.2"})
    assert spoofed.status_code == 429


def test_merchant_api_limit_answers_json(make_app):
    client = make_app(RATELIMIT_API="2/minute").test_client()
    for _ in range(2):
        assert get(client, "/api/v1/openapi.json").status_code == 200
    refused = get(client, "/api/v1/openapi.json")
    assert refused.status_code == 429
    assert refused.json["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) > 0
    # The limit is shared by the whole API.
    assert get(client, "/api/v1/checkout-sessions/cs_x").status_code == 429


def test_console_sign_in_posts_are_limited_but_the_page_is_not(make_app):
    client = make_app(RATELIMIT_LOGIN="2/minute").test_client()
    for _ in range(2):
        assert post(client, "/admin/login", data={"email": "a@b.c"}).status_code != 429
    refused = post(client, "/admin/login", data={"email": "a@b.c"})
    assert refused.status_code == 429
    assert "Too many requests" in refused.text
    assert get(client, "/admin/login").status_code == 200


def test_webhooks_are_never_rate_limited(make_app):
    client = make_app(RATELIMIT_ENTRY="1/minute", RATELIMIT_API="1/minute").test_client()
    statuses = {
        post(
            client, "/webhooks/stripe", data=b"{}", headers={"Stripe-Signature": "t=1,v1=x"}
        ).status_code
        for _ in range(5)
    }
    assert statuses == {400}  # a bad signature, every time; never 429


def test_oversized_webhook_is_refused_with_413_json(make_app):
    client = make_app(WEBHOOK_MAX_BYTES=str(64 * 1024)).test_client()
    big = b"{" + b" " * (64 * 1024) + b"}"
    refused = post(client, "/webhooks/stripe", data=big, headers={"Stripe-Signature": "t=1,v1=x"})
    assert refused.status_code == 413
    assert refused.json["error"]["code"] == 413
    just_under = b"{" + b" " * (60 * 1024) + b"}"
    answered = post(
        client, "/webhooks/stripe", data=just_under, headers={"Stripe-Signature": "t=1,v1=x"}
    )
    assert answered.status_code == 400  # read and checked: only the signature is wrong


def test_other_requests_are_capped_at_one_megabyte(client):
    refused = post(client, "/openlearning/enrol", data={"jwt": "x" * (1024 * 1024 + 10)})
    assert refused.status_code == 413


def test_rate_limits_can_be_switched_off(make_app):
    client = make_app(RATELIMIT_ENTRY="1/minute", RATELIMIT_ENABLED="0").test_client()
    assert {get(client, BAD_ID).status_code for _ in range(3)} == {400}


@pytest.mark.parametrize(
    ("name", "value"),
    [("RATELIMIT_ENTRY", "lots"), ("RATELIMIT_STORAGE_URL", "memcached://x"), ("LOG_FORMAT", "x")],
)
def test_malformed_serving_settings_are_refused_by_name(name, value, database_url):
    with pytest.raises(ConfigError, match=f"PORTAL_{name}"):
        create_app({**UNIT_SETTINGS, "DATABASE_URL": database_url, name: value})


# --- Redis ---------------------------------------------------------------------------------------


def redis_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not redis_reachable(), reason="no Redis on 127.0.0.1:6379")
def test_redis_storage_shares_one_limit_between_processes(make_app):
    import redis

    first = make_app(RATELIMIT_STORAGE_URL=REDIS_URL, RATELIMIT_ENTRY="2/minute").test_client()
    second = make_app(RATELIMIT_STORAGE_URL=REDIS_URL, RATELIMIT_ENTRY="2/minute").test_client()
    ip = random_ip()
    connection = redis.Redis.from_url(REDIS_URL)
    try:
        assert get(first, BAD_ID, ip=ip).status_code == 400
        assert get(second, BAD_ID, ip=ip).status_code == 400
        # Two apps (two hosts) with one counter: the third request is refused by either.
        assert get(first, BAD_ID, ip=ip).status_code == 429
        assert get(second, BAD_ID, ip=ip).status_code == 429
        keys = [k.decode() for k in connection.scan_iter(match=f"*portal*{ip}*")]
        assert keys, "the counters are kept in Redis"
    finally:
        for key in connection.scan_iter(match=f"*portal*{ip}*"):
            connection.delete(key)
        connection.close()


def test_unreachable_redis_falls_back_to_memory_and_keeps_answering(make_app):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]  # nothing listens once the socket closes
    client = make_app(
        RATELIMIT_STORAGE_URL=f"redis://127.0.0.1:{dead_port}/0", RATELIMIT_ENTRY="2/minute"
    ).test_client()
    ip = f"192.0.2.{uuid.uuid4().int % 250 + 1}"
    statuses = [get(client, BAD_ID, ip=ip).status_code for _ in range(4)]
    assert not [status for status in statuses if status >= 500]
    assert statuses[:2] == [400, 400]
    assert statuses[-1] == 429  # counted in memory while Redis is away
