"""Settings: every problem stops the app at start with a message naming the variable."""

from __future__ import annotations

import dataclasses

import pytest

from portal import create_app
from portal.config import (
    SETTINGS,
    ConfigError,
    Setting,
    Settings,
    declarations,
    load_settings,
    secret_names,
    validate,
)
from portal.platforms import registry

PRODUCTION = {
    "PORTAL_SECRET_KEY": "s3cret",
    "PORTAL_STRIPE_SECRET_KEY": "sk_live_abc",
    "PORTAL_STRIPE_WEBHOOK_SECRET": "whsec_1",
    "PORTAL_PUBLIC_URL": "https://pay.example.com",
}


def check(environ: dict, *, testing: bool = False) -> Settings:
    settings = load_settings(environ=environ, extra=registry.settings())  # as create_app does
    validate(settings, testing=testing)
    return settings


def test_a_complete_production_configuration_is_accepted():
    settings = check(PRODUCTION)
    assert settings.stripe_api_base == "https://api.stripe.com"
    assert settings.skilljar_api_base == "https://api.skilljar.com"
    assert settings.stripe_webhook_secret == ("whsec_1",)


@pytest.mark.parametrize(
    "missing", ["PORTAL_SECRET_KEY", "PORTAL_STRIPE_SECRET_KEY", "PORTAL_STRIPE_WEBHOOK_SECRET"]
)
def test_a_missing_required_setting_names_the_variable(missing):
    environ = {k: v for k, v in PRODUCTION.items() if k != missing}
    with pytest.raises(ConfigError, match=missing):
        check(environ)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORTAL_RETRY_BASE_SECONDS", "soon"),
        ("PORTAL_RETRY_BASE_SECONDS", "-1"),
        ("PORTAL_SANDBOX", "maybe"),
        ("PORTAL_PUBLIC_URL", "pay.example.com"),
        ("PORTAL_STRIPE_API_BASE", "ftp://stripe"),
        ("PORTAL_REDIRECT_HOSTS", "academy.example.com/path"),
        ("PORTAL_TAX_MODE", "vat"),
        ("PORTAL_TAX_RATES", "GBR:20"),
        ("PORTAL_TAX_RATES", "GB:abc"),
        ("PORTAL_TAX_RATES", "GB:120"),
    ],
)
def test_a_malformed_setting_names_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        check({**PRODUCTION, name: value})


def test_plain_http_public_url_is_refused_in_production():
    with pytest.raises(ConfigError, match="PORTAL_PUBLIC_URL"):
        check({**PRODUCTION, "PORTAL_PUBLIC_URL": "http://pay.example.com"})


def test_fixed_tax_needs_rates():
    with pytest.raises(ConfigError, match="PORTAL_TAX_RATES"):
        check({**PRODUCTION, "PORTAL_TAX_MODE": "fixed"})


def test_the_sandbox_refuses_live_stripe_keys():
    with pytest.raises(ConfigError, match="live key"):
        check({**PRODUCTION, "PORTAL_SANDBOX": "1"})


def test_webhook_secrets_may_be_rotated():
    settings = check({**PRODUCTION, "PORTAL_STRIPE_WEBHOOK_SECRET": "whsec_old, whsec_new"})
    assert settings.stripe_webhook_secret == ("whsec_old", "whsec_new")


def test_redirect_hosts_and_tax_rates_are_parsed():
    settings = check(
        {
            **PRODUCTION,
            "PORTAL_REDIRECT_HOSTS": "Academy.Example.com, learn.example.org",
            "PORTAL_TAX_MODE": "fixed",
            "PORTAL_TAX_RATES": "gb:20,DE:19,US:8.875",
        }
    )
    assert settings.redirect_hosts == ("academy.example.com", "learn.example.org")
    assert [str(v) for v in settings.tax_rates.values()] == ["20", "19", "8.875"]


def test_create_app_stops_with_the_variable_name(monkeypatch, tmp_path):
    monkeypatch.delenv("PORTAL_SANDBOX", raising=False)
    monkeypatch.delenv("PORTAL_SECRET_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env to pick up
    with pytest.raises(ConfigError, match="PORTAL_SECRET_KEY"):
        create_app({"DATABASE_URL": f"sqlite:///{tmp_path}/x.db"})


def test_sandbox_defaults_point_at_the_built_in_stand_ins(monkeypatch, tmp_path):
    for name in ("PORTAL_STRIPE_API_BASE", "PORTAL_SKILLJAR_API_BASE", "PORTAL_STRIPE_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    app = create_app(
        {
            "TESTING": True,
            "SANDBOX": "1",
            "PUBLIC_URL": "http://127.0.0.1:5999",
            "DATABASE_URL": f"sqlite:///{tmp_path}/p.db",
            "SANDBOX_DATABASE_URL": f"sqlite:///{tmp_path}/s.db",
        }
    )
    settings = app.config["PORTAL"]
    assert settings.stripe_api_base == "http://127.0.0.1:5999/sandbox/stripe"
    assert settings.skilljar_api_base == "http://127.0.0.1:5999/sandbox/skilljar"
    assert settings.stripe_secret_key.startswith("sk_test_")


def test_settings_are_a_frozen_object_with_one_typed_attribute_per_setting():
    settings = load_settings({"RETRY_MAX_ATTEMPTS": "3"}, environ={})
    assert isinstance(settings, Settings)
    assert settings.retry_max_attempts == 3
    fields = {field.name: field.type for field in dataclasses.fields(settings)}
    assert list(fields) == [setting.name.lower() for setting in SETTINGS]
    assert fields["retry_max_attempts"] is int
    assert fields["stripe_secret_key"] == str | None  # no default: may be unset
    assert fields["redirect_hosts"] == tuple[str, ...]  # the parser's return annotation
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.retry_max_attempts = 4
    changed = dataclasses.replace(settings, retry_max_attempts=4)
    assert (changed.retry_max_attempts, settings.retry_max_attempts) == (4, 3)
    assert "s3cret" not in repr(load_settings({"SECRET_KEY": "s3cret"}, environ={}))


def test_settings_declared_elsewhere_join_the_object():
    extra = (Setting("ACME_API_KEY", None, str, secret=True), Setting("ACME_PAGES", 2, int))
    settings = load_settings(environ={"PORTAL_ACME_API_KEY": "acme-key-1"}, extra=extra)
    assert isinstance(settings, Settings)
    assert (settings.acme_api_key, settings.acme_pages) == ("acme-key-1", 2)
    assert declarations(settings)[-2:] == extra
    assert "ACME_API_KEY" in secret_names(settings)
    assert type(settings) is type(load_settings(environ={}, extra=extra))  # made once
    with pytest.raises(ConfigError, match="PORTAL_ACME_PAGES is malformed"):
        load_settings(environ={"PORTAL_ACME_PAGES": "many"}, extra=extra)
    with pytest.raises(ConfigError, match="PORTAL_SANDBOX is declared twice"):
        load_settings(environ={}, extra=(Setting("SANDBOX", False, bool),))
