"""Merchant API authentication and the contract: every way a key can be wrong, another merchant's
order, the CLI that makes and revokes keys, and the OpenAPI document matching the routes."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from portal.api import schema
from portal.db import db
from portal.models import ApiKey, WebhookEndpoint
from tests.api_support import ApiClient, make_key, session_body


@pytest.fixture
def key(app):
    return make_key()


@pytest.fixture
def api(client, key):
    return ApiClient(client, key.secret)


def create(api) -> dict:
    response = api.post("/checkout-sessions", session_body())
    assert response.status_code == 200, response.json
    return response.json


def error_of(response) -> dict:
    return response.json["error"]


def test_no_key_is_401(client, key):
    response = ApiClient(client, None).post("/checkout-sessions", session_body())
    assert response.status_code == 401
    assert error_of(response)["code"] == "api_key_missing"


@pytest.mark.parametrize(
    "header",
    ["Basic abc", "Bearer", "Bearer pk_test_123", "Token sk_test_abc", "Bearer sk_test_wrong"],
)
def test_malformed_or_wrong_key_is_401(client, key, header):
    response = ApiClient(client, None).get(
        "/orders/ord_abcdefghijklmnop", headers={"Authorization": header}
    )
    assert response.status_code == 401
    assert error_of(response)["code"] == "api_key_invalid"


def test_a_key_one_character_off_is_refused(client, key):
    wrong = key.secret[:-1] + ("A" if key.secret[-1] != "A" else "B")
    response = ApiClient(client, wrong).post("/checkout-sessions", session_body())
    assert response.status_code == 401
    assert error_of(response)["code"] == "api_key_invalid"


def test_revoked_key_is_401(app, api, key):
    order = create(api)
    result = app.test_cli_runner().invoke(args=["portal", "revoke-api-key", key.key.prefix])
    assert result.exit_code == 0, result.output
    assert "revoked" in result.output
    response = api.get(f"/orders/{order['order']['id']}")
    assert response.status_code == 401
    assert error_of(response)["code"] == "api_key_revoked"
    with db.reader() as session:
        assert session.scalar(select(WebhookEndpoint.active)) is False


def test_revoking_an_unknown_prefix_fails(app):
    result = app.test_cli_runner().invoke(args=["portal", "revoke-api-key", "sk_test_nope"])
    assert result.exit_code != 0
    assert "no active API key" in result.output


def test_live_key_is_refused_while_stripe_is_in_test_mode(client, app):
    live = make_key(live=True)
    assert live.secret.startswith("sk_live_")
    response = ApiClient(client, live.secret).post("/checkout-sessions", session_body())
    assert response.status_code == 403
    assert error_of(response)["code"] == "api_key_mode_mismatch"


def test_test_key_is_refused_by_a_live_portal(make_app):
    app = make_app(STRIPE_SECRET_KEY="sk_live_unit")
    test_key = make_key()
    response = ApiClient(app.test_client(), test_key.secret).post(
        "/checkout-sessions", session_body()
    )
    assert response.status_code == 403
    assert error_of(response)["code"] == "api_key_mode_mismatch"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/orders/{id}", None),
        ("PATCH", "/orders/{id}", {"items": [{"name": "x", "unit_amount": 1, "quantity": 1}]}),
        ("POST", "/orders/{id}/capture", {}),
        ("POST", "/orders/{id}/cancel", {}),
        ("POST", "/refunds", {"order": "{id}"}),
    ],
)
def test_another_merchants_order_is_not_found(client, api, method, path, body):
    order_id = create(api)["order"]["id"]
    other = ApiClient(client, make_key(name="Other shop").secret)
    if body and "order" in body:
        body = {"order": order_id}
    response = other.request(method, path.replace("{id}", order_id), body)
    assert response.status_code == 404
    assert error_of(response)["code"] == "resource_missing"
    # ...and it is untouched for its owner.
    assert api.get(f"/orders/{order_id}").json["status"] == "open"


def test_cli_prints_the_key_once_and_stores_only_its_hash(app):
    result = app.test_cli_runner().invoke(
        args=[
            "portal",
            "create-api-key",
            "Acme ERP",
            "--allowed-host",
            "Shop.Example.com",
            "--webhook-url",
            "https://hooks.example.com/portal",
            "--brand",
            "Acme",
        ]
    )
    assert result.exit_code == 0, result.output
    secret = re.search(r"^  (sk_test_\S+)$", result.output, re.M).group(1)
    webhook_secret = re.search(r"^  (whsec_\S+)$", result.output, re.M).group(1)
    with db.reader() as session:
        stored = session.scalar(select(ApiKey))
        endpoint = session.scalar(select(WebhookEndpoint))
    assert stored.allowed_hosts == ["shop.example.com"]
    assert stored.prefix == secret[:14]
    assert secret not in (stored.secret_hash, stored.prefix)
    assert len(stored.secret_hash) == 64
    assert endpoint.secret == webhook_secret
    assert endpoint.url == "https://hooks.example.com/portal"
    response = ApiClient(app.test_client(), secret).post("/checkout-sessions", session_body())
    assert response.status_code == 200


def test_cli_refuses_a_host_with_a_scheme(app):
    result = app.test_cli_runner().invoke(
        args=["portal", "create-api-key", "x", "--allowed-host", "https://shop.example.com"]
    )
    assert result.exit_code != 0
    assert "not a host name" in result.output


def test_live_key_from_cli(app):
    result = app.test_cli_runner().invoke(args=["portal", "create-api-key", "Prod", "--live"])
    assert result.exit_code == 0
    assert "sk_live_" in result.output


def test_openapi_document_is_served_without_a_key(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.json["openapi"].startswith("3.1")
    assert response.json == schema.document()


def test_unknown_api_urls_answer_json_not_html(client, key):
    api = ApiClient(client, key.secret)
    for method, path in (
        ("GET", "/nope"),
        ("PUT", "/orders/ord_abcdefghijkl"),
        ("DELETE", "/"),
        ("GET", ""),
    ):
        response = api.request(method, path)
        assert response.status_code in {404, 405}
        assert response.json["error"]["code"] in {"resource_missing", "method_not_allowed"}


def test_every_route_is_documented_and_every_documented_operation_exists(app):
    documented = {
        (method.upper(), "/api/v1" + path)
        for path, item in schema.document()["paths"].items()
        for method in item
    }
    routed = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1") or rule.endpoint == "api.unknown":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", "{id}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routed.add((method, path))
    assert routed == documented


def test_every_schema_in_the_document_is_valid_json_schema():
    from jsonschema import Draft202012Validator

    doc = schema.document()
    for component in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(component)  # raises, naming the problem
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert operation["responses"], (method, path)
            assert operation.get("operationId"), (method, path)
