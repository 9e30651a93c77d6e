"""Every `flask --app wsgi portal ...` command: a configuration error is one line naming the
setting, exit status 2, no traceback. And the sandbox's demo console accounts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import select

from portal.admin.auth import verify_password
from portal.db import db
from portal.models import User
from tests.conftest import ROOT

COMMANDS = [
    ["init-db"],
    ["worker", "--once"],
    ["reconcile"],
    ["create-user", "ops@example.com", "--role", "operator", "--password-stdin"],
    ["create-demo-users"],
    ["create-api-key", "ERP"],
    ["revoke-api-key", "sk_test_abc"],
    ["--help"],
]

BROKEN = [
    pytest.param({}, "PORTAL_SECRET_KEY", id="no-secret-key"),
    pytest.param({"PORTAL_SANDBOX": "maybe"}, "PORTAL_SANDBOX", id="malformed-flag"),
    pytest.param(
        {"PORTAL_SANDBOX": "1", "PORTAL_DATABASE_URL": "not a url"},
        "PORTAL_DATABASE_URL",
        id="malformed-database-url",
    ),
    pytest.param(
        {"PORTAL_SANDBOX": "1", "PORTAL_DATABASE_URL": "mysql://db.invalid/portal"},
        "PORTAL_DATABASE_URL",
        id="database-without-driver",
    ),
    pytest.param(
        {"PORTAL_SANDBOX": "1", "PORTAL_TAX_MODE": "fixed"}, "PORTAL_TAX_RATES", id="cross-rule"
    ),
]


def _run(args, extra_env, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env.update(extra_env)
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", str(ROOT / "wsgi"), "portal", *args],
        cwd=cwd,  # no .env there
        env=env,
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize(("environment", "setting"), BROKEN)
def test_configuration_error_is_one_line_naming_the_setting(
    command, environment, setting, tmp_path
):
    result = _run(command, environment, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("Error: ")
    assert setting in errors[0]


def test_unreachable_database_is_one_line_naming_the_setting(tmp_path):
    env = {"PORTAL_SANDBOX": "1", "PORTAL_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"}
    result = _run(["init-db"], env, tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: PORTAL_DATABASE_URL")


def test_schema_missing_says_run_init_db(tmp_path):
    env = {"PORTAL_SANDBOX": "1", "PORTAL_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    result = _run(["create-demo-users"], env, tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "init-db" in result.stderr.strip().splitlines()[-1]


def test_demo_users_are_sandbox_only(runner):
    result = runner.invoke(args=["portal", "create-demo-users"])
    assert result.exit_code == 2
    assert "PORTAL_SANDBOX" in result.output
    with db.reader() as session:
        assert session.scalars(select(User)).all() == []


def test_demo_users_one_per_role_and_idempotent(make_app):
    app = make_app(SANDBOX=True, CLEENG_RETURN_URL="https://academy.test/return")
    runner = app.test_cli_runner()
    first = runner.invoke(args=["portal", "create-demo-users"])
    assert first.exit_code == 0, first.output
    with db.reader() as session:
        users = {u.email: u for u in session.scalars(select(User))}
    assert {u.role for u in users.values()} == {"admin", "operator", "marketer"}
    for user in users.values():
        password = f"demo-{user.role}-password"
        assert user.email in first.output
        assert password in first.output
        assert verify_password(user.password_hash, password)
    # A restart runs it again: the same accounts, the same passwords, nothing added. An account
    # someone changed in the console is put back.
    with db.transaction() as session:
        session.get(User, users["operator@demo.example"].id).active = False
    again = runner.invoke(args=["portal", "create-demo-users"])
    assert again.exit_code == 0, again.output
    assert again.output == first.output
    with db.reader() as session:
        after = {u.email: u for u in session.scalars(select(User))}
    assert after.keys() == users.keys()
    assert all(u.active for u in after.values())
