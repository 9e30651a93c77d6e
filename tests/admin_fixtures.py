"""Fixtures for the operator console tests, loaded by `pytest_plugins = ["tests.admin_fixtures"]`
in the test modules that use them."""

from __future__ import annotations

import pytest

from portal.admin import auth
from tests.admin_support import make_user, sign_in


@pytest.fixture
def fast_hashing(monkeypatch):
    """scrypt at a test-sized cost: the same code, a fraction of the time per sign-in."""
    monkeypatch.setattr(auth, "SCRYPT_N", 2**10)
    monkeypatch.setattr(auth, "_dummy_hash", None)


@pytest.fixture
def console(app, fast_hashing):
    """console("operator") -> a test client signed in as a new user with that role."""
    made = {}

    def factory(role: str, email: str | None = None):
        email = email or f"{role}@example.com"
        if email not in made:
            made[email] = make_user(email, role)
        client = app.test_client()
        response = sign_in(client, email)
        assert response.status_code == 303, response.text
        client.user = made[email]
        return client

    return factory
